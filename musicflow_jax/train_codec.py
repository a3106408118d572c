"""Train the project's own codec: `python -m musicflow_jax.train_codec --config configs/codec_corpus.py --workdir W
[--set data.manifest=CORPUS/manifest.jsonl ...] [--export OUT]`.

A thin CLI over musicflow_jax/codec_train.py: trains (or resumes) the SEANet Encodec in W, then with --export writes
the converted Encodec folder OUT (what `Codec.load` and the "encodec" acoustic part read). Conventions of
musicflow_jax/train.py: bad input -> one `error:` line naming it and the fix, exit 2; divergence or a locked workdir
-> exit 1; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from musicflow_jax import checkpoint, codec_train, workdir_lock
from musicflow_jax.config import ConfigError


def input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (config, manifest, audio, checkpoints), not a bug."""
    from musicflow_jax.weights import WeightsError

    return (ConfigError, codec_train.CodecDataError, checkpoint.CheckpointError, WeightsError, FileNotFoundError)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="configs/codec_<name>.py with get_config()")
    ap.add_argument("--workdir", required=True, help="run folder; an existing checkpoint there is resumed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--export", default=None, metavar="OUT", help="after training, write the converted Encodec "
                    "folder OUT")
    ap.add_argument("--ema", action="store_true", help="export the EMA of the weights instead of the raw ones")
    ap.add_argument("--debug", action="store_true", help="show the traceback of input errors too")
    args = ap.parse_args(argv)
    try:
        cfg = codec_train.load_config(args.config, args.set)
        codec_train.train_codec(cfg, args.workdir)
        if args.export:
            out = codec_train.export_codec(args.workdir, args.export, ema=args.ema)
            print(f"exported codec: {out}")
    except (codec_train.TrainingDivergedError, workdir_lock.WorkdirLockedError) as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except input_errors() as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m musicflow_jax.train_codec --config configs/codec_corpus.py --workdir W [--set
data.manifest=CORPUS/manifest.jsonl ...] [--export OUT] [--ema]`: train (or resume) the project's own codec
(musicflow_jax/training/codec_trainer.py) in W, then with --export write the converted Encodec folder OUT (what
`Codec.load` and the "encodec" acoustic part read). Bad input: one `error:` line naming it and the fix, exit 2;
divergence or a locked workdir: exit 1; a run stopped early (SIGTERM, Ctrl-C; its step saved, nothing exported):
exit 75, the same command resumes.
"""

from __future__ import annotations

import sys

from musicflow_jax.cli import _common
from musicflow_jax.cli.train import add_run_flags
from musicflow_jax.training import codec_config, codec_trainer, loop


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("train_codec", __doc__)
    add_run_flags(ap, "configs/codec_<name>.py with get_config(), or its name (e.g. codec_corpus)")
    ap.add_argument("--export", default=None, metavar="OUT", help="after training, write the converted Encodec "
                    "folder OUT")
    ap.add_argument("--ema", action="store_true", help="export the EMA of the weights instead of the raw ones")
    args = ap.parse_args(argv)
    _common.enable_compile_cache()

    def body() -> None:
        cfg = codec_config.load_config(args.config, args.set)
        state = codec_trainer.train_codec(cfg, args.workdir)
        loop.require_finished(state, cfg.train.steps, args.workdir)  # stopped early: exit 75, nothing exported
        if args.export:
            print(f"exported codec: {codec_trainer.export_codec(args.workdir, args.export, ema=args.ema)}")

    return _common.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

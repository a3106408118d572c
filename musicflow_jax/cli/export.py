"""`python -m musicflow_jax.export --workdir runs/stage1 --out exported/stage1.safetensors [--step N] [--raw]
[--merge-lora] [--store-dtype float16]`: a training run's EMA weights + resolved config -> one stage file for inference
(musicflow_jax/training/export.py); a codec run -> a converted Encodec folder.

    python -m musicflow_jax.export --workdir runs/lora --out exported/lora.safetensors          # the adapters alone
    python -m musicflow_jax.export --workdir runs/lora --out exported/stage2.safetensors --merge-lora
    python -m musicflow_jax.export --workdir runs/codec --out exported/codec                    # codec run

Reads workdir/checkpoints (latest step unless --step) and restores onto one device whatever mesh trained it. Bad
input: one line on stderr, exit 2.
"""

from __future__ import annotations

import sys

from musicflow_jax.cli import _common
from musicflow_jax.models.stage_file import STORE_DTYPES
from musicflow_jax.training import codec_trainer, export


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("export", __doc__)
    ap.add_argument("--workdir", required=True, help="training run folder (holds checkpoints/)")
    ap.add_argument("--out", required=True, help="output .safetensors file (a codec run: a folder)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--raw", action="store_true", help="export the raw params instead of the EMA")
    ap.add_argument("--merge-lora", action="store_true", help="LoRA run: write the base with the adapters folded in "
                    "(a plain stage file) instead of the adapters alone")
    ap.add_argument("--store-dtype", choices=STORE_DTYPES, default="float32", help="the stage file's tensors: float16 "
                    "halves it (a shipped asset; loading upcasts them)")
    args = ap.parse_args(argv)

    def body() -> None:
        if codec_trainer.is_codec_run(args.workdir):
            path = codec_trainer.export_codec(args.workdir, args.out, step=args.step, ema=not args.raw)
        else:
            path = export.export(args.workdir, args.out, args.step, ema=not args.raw, merge_lora=args.merge_lora,
                                 store_dtype=args.store_dtype)
        print(f"wrote {path}")

    return _common.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

"""Export a training run's EMA weights + resolved config to one safetensors file for inference (CLI over
musicflow_jax.export).

    python tools/export.py --workdir runs/stage1 --out exported/stage1.safetensors [--step N] [--raw]
    python tools/export.py --workdir runs/lora --out exported/lora.safetensors          # the adapters alone
    python tools/export.py --workdir runs/lora --out exported/stage2.safetensors --merge-lora

Reads workdir/checkpoints (latest step unless --step), restores onto one device whatever mesh trained it, and
writes musicflow_jax.stage_io's format (load it with `stage_io.load_stage`); a LoRA fine-tune writes its adapter
file (`generate --lora FILE`) unless --merge-lora folds the adapters into the base weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musicflow_jax import checkpoint  # noqa: E402
from musicflow_jax.config import ConfigError  # noqa: E402
from musicflow_jax.export import export  # noqa: E402
from musicflow_jax.finetune import FineTuneError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="training run folder (holds checkpoints/)")
    ap.add_argument("--out", required=True, help="output .safetensors file")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--raw", action="store_true", help="export the raw params instead of the EMA")
    ap.add_argument("--merge-lora", action="store_true", help="LoRA run: write the base with the adapters folded in "
                    "(a plain stage file) instead of the adapters alone")
    args = ap.parse_args(argv)
    try:
        path = export(args.workdir, args.out, args.step, ema=not args.raw, merge_lora=args.merge_lora)
    except (FileNotFoundError, checkpoint.CheckpointError, FineTuneError, ConfigError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

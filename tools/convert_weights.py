"""Convert PyTorch checkpoints to the torch-free Flax format (safetensors + config.json) used at runtime.

    python tools/convert_weights.py t5 ckpt/flan-t5-base ckpt/flax/t5            # HF folder (T5 / FLAN-T5 / ByT5)
    python tools/convert_weights.py encodec ckpt/encodec_24khz ckpt/flax/encodec  # HF EncodecModel folder
    python tools/convert_weights.py encodec encodec_24khz-d7cc33bc.th ckpt/flax/encodec --preset 24khz
    python tools/convert_weights.py hubert ckpt/hubert-base-ls960 ckpt/flax/hubert

HF folders may hold model.safetensors (sharded or not) or pytorch_model.bin (read with weights_only=True).
A T5 folder's tokenizer (spiece.model / tokenizer.json / a ByT5 tokenizer_config.json) is copied along; a T5 source
without one is refused (exit 2). Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musicflow_jax.convert.encodec import PRESETS, convert_encodec  # noqa: E402
from musicflow_jax.convert.hubert import convert_hubert  # noqa: E402
from musicflow_jax.convert.t5 import convert_t5  # noqa: E402
from musicflow_jax.tokenizer import TokenizerError  # noqa: E402
from musicflow_jax.weights import WeightsError  # noqa: E402


def convert(a: argparse.Namespace) -> Path:
    if not Path(a.src).exists():
        raise FileNotFoundError(f"SRC {a.src} does not exist: pass an HF checkpoint folder (or an encodec .th file)")
    if a.kind == "t5":
        return convert_t5(a.src, a.dst)
    if a.kind == "hubert":
        return convert_hubert(a.src, a.dst)
    if a.config and not Path(a.config).is_file():
        raise FileNotFoundError(f"--config {a.config} does not exist: pass an HF-style EncodecConfig json file")
    try:
        hf_config = json.loads(Path(a.config).read_text()) if a.config else None
    except ValueError as e:
        raise WeightsError(f"--config {a.config} is not valid JSON ({e}): pass an HF EncodecConfig json") from None
    return convert_encodec(a.src, a.dst, preset=a.preset, hf_config=hf_config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("t5", "encodec", "hubert"))
    ap.add_argument("src", help="HF checkpoint folder, or an original encodec .th file")
    ap.add_argument("dst", help="output folder (config.json + model.safetensors)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="encodec .th only: which released model it is")
    ap.add_argument("--config", help="encodec .th only: an HF-style EncodecConfig json instead of --preset")
    a = ap.parse_args(argv)
    try:
        out = convert(a)
    except (WeightsError, TokenizerError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps({"kind": a.kind, "src": a.src, "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m musicflow_jax.convert KIND SRC DST`: convert a PyTorch checkpoint to the torch-free Flax format
(safetensors + config.json) used at run time (musicflow_jax/convert/).

    python -m musicflow_jax.convert t5 ckpt/flan-t5-base ckpt/flax/t5            # HF folder (T5 / FLAN-T5 / ByT5)
    python -m musicflow_jax.convert bert ckpt/all-MiniLM-L6-v2 ckpt/flax/minilm   # HF BertModel folder
    python -m musicflow_jax.convert encodec ckpt/encodec_24khz ckpt/flax/encodec  # HF EncodecModel folder
    python -m musicflow_jax.convert encodec encodec_24khz-d7cc33bc.th ckpt/flax/encodec --preset 24khz
    python -m musicflow_jax.convert hubert ckpt/hubert-base-ls960 ckpt/flax/hubert

HF folders may hold model.safetensors (sharded or not) or pytorch_model.bin (read with weights_only=True).
A T5 folder's tokenizer (spiece.model / tokenizer.json / a ByT5 tokenizer_config.json) is copied along; a T5 source
without one is refused. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import json
import sys

from musicflow_jax.cli import _common
from musicflow_jax.convert import KINDS, convert
from musicflow_jax.convert.encodec import PRESETS


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("convert", __doc__)
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("src", help="HF checkpoint folder, or an original encodec .th file")
    ap.add_argument("dst", help="output folder (config.json + model.safetensors)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="encodec .th only: which released model it is")
    ap.add_argument("--config", help="encodec .th only: an HF-style EncodecConfig json instead of --preset")
    a = ap.parse_args(argv)

    def body() -> None:
        out = convert(a.kind, a.src, a.dst, preset=a.preset, config_file=a.config)
        print(json.dumps({"kind": a.kind, "src": a.src, "out": str(out)}))

    return _common.run(body, debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())

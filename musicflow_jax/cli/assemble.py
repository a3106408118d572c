"""`python -m musicflow_jax.assemble --stage1 S1 --stage2 S2 --index FEATURES/index.json --out MODEL [--encodec E
--hubert H --kmeans KM --layer L]`: assemble a MusicFlow model folder (what `python -m musicflow_jax.generate
--checkpoint MODEL` loads) from the two exported stages, the feature index they were trained on and the encoders
(musicflow_jax/inference/model_folder.py).

The backend follows the index: weight-free parts (chroma, mel) need no files; HuBERT/Encodec parts need the
*converted* (Flax) folders (python -m musicflow_jax.convert); the k-means codebook the features were made with is
taken from the index unless --kmeans names another copy. The text encoder the stages were trained with is written
to `text_encoder/`.

    python -m musicflow_jax.assemble --semantic '{"kind": "chroma"}' \
        --acoustic '{"kind": "encodec", "folder": "runs/codec/export"}' --out runs/codec/backend

writes a backend-only folder instead (features.json + the parts' files) from two part specs: `python -m
musicflow_jax.evaluate --checkpoint FOLDER --mode ceiling|halves` measures a backend's round trip with it before
any flow model is trained on it. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import sys

from musicflow_jax.backends import BackendError
from musicflow_jax.backends.registry import with_files
from musicflow_jax.cli import _common
from musicflow_jax.cli.precompute import add_part_files, part_files
from musicflow_jax.inference import model_folder


def _spec(flag: str, text: str) -> dict:
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise BackendError(f"{flag} is not JSON ({e}); quote it, e.g. {flag} '{{\"kind\": \"chroma\"}}'") from None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise BackendError(f"{flag} must be a JSON object with a \"kind\", e.g. {{\"kind\": \"chroma\"}}")
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("assemble", __doc__)
    ap.add_argument("--out", required=True, help="the folder to write")
    ap.add_argument("--stage1", help="exported stage-1 .safetensors")
    ap.add_argument("--stage2", help="exported stage-2 .safetensors")
    ap.add_argument("--index", help="index.json of the precomputed features the stages trained on")
    add_part_files(ap)
    ap.add_argument("--semantic", help='backend-only folder: semantic part spec as JSON, e.g. {"kind": "chroma"}')
    ap.add_argument("--acoustic", help='backend-only folder: acoustic part spec as JSON, e.g. {"kind": "encodec", '
                    '"folder": "runs/codec/export"}')
    a = ap.parse_args(argv)
    backend_only = a.semantic is not None or a.acoustic is not None
    if backend_only and (a.stage1 or a.stage2 or a.index):
        ap.error("--semantic/--acoustic write a backend-only folder: drop --stage1/--stage2/--index")
    if backend_only and not (a.semantic and a.acoustic):
        ap.error("a backend-only folder needs both --semantic and --acoustic")
    if not backend_only and not (a.stage1 and a.stage2 and a.index):
        ap.error("a model folder needs --stage1, --stage2 and --index (or --semantic and --acoustic for a backend "
                 "folder)")

    def body() -> None:
        if backend_only:  # a part's weight files: from its spec or the flags (--encodec E fills "folder")
            files = part_files(a)
            specs = [with_files(_spec(flag, text), files, flag) for flag, text in (("--semantic", a.semantic),
                                                                                  ("--acoustic", a.acoustic))]
            print(model_folder.write_backend(a.out, *specs))
        else:
            print(model_folder.assemble(a.stage1, a.stage2, a.index, a.out, part_files(a)))

    return _common.run(body, debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())

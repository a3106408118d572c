"""`python -m musicflow_jax.fit_kmeans --manifest M --hubert HF_HUBERT --layer 6 --k 500 --out km.safetensors`: fit
the k-means codebook of the semantic units on HuBERT features of a sample of the corpus (PyTorch, offline;
musicflow_jax/data/kmeans.py). Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import sys

from musicflow_jax.cli import _common
from musicflow_jax.data.kmeans import fit_codebook


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("fit_kmeans", __doc__)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--hubert", required=True, help="HF save_pretrained folder of a HubertModel")
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--max-files", type=int, default=200)
    ap.add_argument("--max-frames", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    return _common.run(lambda: print(json.dumps(fit_codebook(
        a.manifest, a.hubert, a.layer, a.out, k=a.k, max_files=a.max_files, max_frames=a.max_frames,
        seed=a.seed))), debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())

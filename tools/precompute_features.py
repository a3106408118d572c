"""Precompute features (CLI over musicflow_jax.precompute): manifest -> ArrayRecord shards + index.json.

    python tools/precompute_features.py --manifest data/corpus/manifest.jsonl --out data/features \
        --backend hubert+encodec --hubert ckpt/hubert --encodec ckpt/encodec --kmeans ckpt/kmeans.safetensors \
        --layer 6 [--t5 ckpt/t5] [--engine jax|torch] [--num-shards N --shard-index i]
    python tools/precompute_features.py --manifest ... --out ... --backend chroma+mel   # weight-free
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musicflow_jax.backends import BackendError  # noqa: E402
from musicflow_jax.precompute import PrecomputeError, precompute  # noqa: E402
from musicflow_jax.weights import WeightsError  # noqa: E402

INPUT_ERRORS = (PrecomputeError, BackendError, WeightsError, FileNotFoundError, NotADirectoryError, OSError)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True, help="folder for <split>-*.array_record, index.json, failures.jsonl")
    ap.add_argument("--backend", default="hubert+encodec",
                    help="SEMANTIC+ACOUSTIC: hubert+encodec (default, the paper's), chroma+mel (weight-free), ...")
    ap.add_argument("--engine", choices=("jax", "torch"), default="jax",
                    help="jax: the Flax ports, batched (default); torch: transformers' PyTorch models (reference)")
    ap.add_argument("--hubert", help="HuBERT folder: HF save_pretrained or converted (semantic part 'hubert')")
    ap.add_argument("--encodec", help="24 kHz Encodec folder: HF save_pretrained or converted (acoustic 'encodec')")
    ap.add_argument("--layer", type=int, help="HuBERT hidden_states index (0 = transformer input)")
    ap.add_argument("--kmeans", default=None, help="codebook from tools/fit_kmeans.py (omit: raw hidden states)")
    ap.add_argument("--t5", default=None, help="T5 encoder folder: also store caption embeddings")
    ap.add_argument("--text-max-len", type=int, default=64)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--shard-index", type=int, default=None, help="run only this shard (default: all)")
    ap.add_argument("--segment-seconds", type=float, default=20.0)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--end-aligned", action="store_true", help="the last segment of a file ends at its end (full "
                    "length, overlapping the one before): equal-length segments, one compiled encoder")
    ap.add_argument("--batch-size", type=int, default=8, help="equal-length segments per encoder call")
    ap.add_argument("--workers", type=int, default=2, help="audio decoding threads")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (engine torch; 0 = torch default)")
    ap.add_argument("--overwrite", action="store_true", help="replace the features of another precompute in --out")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    a = ap.parse_args(argv)
    if a.shard_index is not None and not 0 <= a.shard_index < a.num_shards:
        ap.error(f"--shard-index {a.shard_index} not in [0, {a.num_shards})")
    if a.batch_size < 1 or a.workers < 1:
        ap.error("--batch-size and --workers must be >= 1")
    try:
        result = precompute(a.manifest, a.out, backend=a.backend, engine=a.engine, hubert=a.hubert,
                            encodec=a.encodec, layer=a.layer, kmeans=a.kmeans, t5=a.t5, text_max_len=a.text_max_len,
                            num_shards=a.num_shards, shard_index=a.shard_index, segment_seconds=a.segment_seconds,
                            min_seconds=a.min_seconds, batch_size=a.batch_size, workers=a.workers,
                            threads=a.threads, overwrite=a.overwrite, end_aligned=a.end_aligned)
    except INPUT_ERRORS as e:  # bad input: one line naming it and the fix (tracebacks are for bugs, or --debug)
        if a.debug:
            raise
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    if result["merged"] is None:
        print("index.json not written yet: other shards are still missing; the last one to finish merges it")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m musicflow_jax.precompute --manifest M --out FEATURES --backend hubert+encodec --hubert H --encodec E
--layer 6 [--kmeans KM] [--t5 T5] [--engine jax|torch] [--num-shards N --shard-index i]`: manifest -> ArrayRecord
shards + index.json through a feature backend (musicflow_jax/data/precompute.py).

    python -m musicflow_jax.precompute --manifest ... --out ... --backend chroma+mel    # weight-free

Finished shards are kept (a rerun skips them); the process that sees every shard done merges index.json.
Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import sys

from musicflow_jax.backends.registry import PartFiles
from musicflow_jax.cli import _common
from musicflow_jax.data.precompute import Segmenting, precompute


def add_part_files(ap: _common.Parser) -> None:
    """The flags naming the weight-based parts' files (backends.registry.PartFiles)."""
    ap.add_argument("--hubert", help="HuBERT folder: HF save_pretrained or converted (semantic part 'hubert')")
    ap.add_argument("--encodec", help="24 kHz Encodec folder: HF save_pretrained or converted (acoustic 'encodec')")
    ap.add_argument("--layer", type=int, help="HuBERT hidden_states index (0 = transformer input)")
    ap.add_argument("--kmeans", default=None, help="codebook from python -m musicflow_jax.fit_kmeans (omit: raw "
                    "hidden states)")


def part_files(a: object) -> PartFiles:
    return PartFiles(hubert=a.hubert, layer=a.layer, kmeans=a.kmeans, encodec=a.encodec)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("precompute", __doc__)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True, help="folder for <split>-*.array_record, index.json, failures.jsonl")
    ap.add_argument("--backend", default="hubert+encodec",
                    help="SEMANTIC+ACOUSTIC: hubert+encodec (default, the paper's), chroma+mel (weight-free), ...")
    ap.add_argument("--engine", choices=("jax", "torch"), default="jax",
                    help="jax: the Flax ports, batched (default); torch: transformers' PyTorch models (reference)")
    add_part_files(ap)
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
    a = ap.parse_args(argv)

    def body() -> None:
        result = precompute(a.manifest, a.out, backend=a.backend, files=part_files(a), t5=a.t5,
                            text_max_len=a.text_max_len, engine=a.engine,
                            cut=Segmenting(a.segment_seconds, a.min_seconds, a.end_aligned),
                            num_shards=a.num_shards, shard_index=a.shard_index, batch_size=a.batch_size,
                            workers=a.workers, threads=a.threads, overwrite=a.overwrite)
        print(json.dumps(result, indent=1))
        if result["merged"] is None:
            print("index.json not written yet: other shards are still missing; the last one to finish merges it")

    return _common.run(body, debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())

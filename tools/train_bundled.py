"""Reproduce the bundled model (musicflow_jax/assets/bundled/) with the project's own pipeline, on CPU.

Steps: render the music21 corpus (tools/build_corpus.py) -> precompute features with the weight-free "mel"
backend (chroma 50 Hz semantic, log-mel 75 Hz acoustic; the shard/index code of tools/precompute_features.py,
`--backend mel`) -> train stage 1 and stage 2 with
musicflow_jax.train.train -> write the EMA weights, the embedded T5 it was trained with, the backend description
and normalisation stats, and per-clip corpus features for the spectral classifier test into the bundle folder.

    python tools/train_bundled.py --work /tmp/bundled --out musicflow_jax/assets/bundled --steps1 500 --steps2 700
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from musicflow_jax.config import Config  # noqa: E402

SEGMENT_SECONDS = 8.0


def precompute_mel(manifest: Path, out: Path) -> dict[str, Any]:
    """musicflow_jax.precompute with the chroma+mel backend (reruns skip finished shards)."""
    from musicflow_jax.precompute import precompute

    precompute(manifest, out, backend="chroma+mel", segment_seconds=SEGMENT_SECONDS, min_seconds=1.0)
    return json.loads((out / "index.json").read_text())


def bundled_configs(data: Path, steps1: int, steps2: int) -> tuple[Config, Config]:
    """configs/bundled_stage1.py and bundled_stage2.py on `data` with the given step counts."""
    from musicflow_jax import config as config_lib

    return tuple(config_lib.load(ROOT / "configs" / f"bundled_stage{i}.py", [f"data.path={data}",
                                                                            f"train.steps={steps}"])
                 for i, steps in ((1, steps1), (2, steps2)))


def train_stage(cfg: Config, workdir: Path, out_file: Path) -> dict[str, Any]:
    """Train with musicflow_jax.train, then export the EMA weights with tools/export.py."""
    from musicflow_jax import train
    from musicflow_jax.export import export

    t0 = time.perf_counter()
    train.train(cfg, workdir, async_ckpt=False)
    wall = time.perf_counter() - t0
    export(workdir, out_file)
    logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in logs if r.get("split") == "train" and "loss" in r]
    return {"steps": cfg.train.steps, "wall_seconds": round(wall, 1), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None}


def corpus_features(data: Path, split: str = "train") -> dict[str, np.ndarray]:
    """Per-clip mean log-mel (acoustic stream) and the instrument phrase of its caption."""
    from musicflow_jax.data import load_index, shard_paths
    from musicflow_jax.records import ShardSource

    src = ShardSource(shard_paths(data, split, load_index(data)))
    feats, labels = [], []
    for i in range(len(src)):
        clip = src[i]
        feats.append(clip.acoustic.mean(0))
        labels.append(clip.caption.split(" played on ")[-1])
    return {"mean_logmel": np.stack(feats).astype(np.float32), "instrument": np.asarray(labels)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/bundled", help="scratch folder (corpus, features, run dirs)")
    ap.add_argument("--out", default=str(ROOT / "musicflow_jax" / "assets" / "bundled"))
    ap.add_argument("--corpus", default=None, help="existing corpus folder with manifest.jsonl (else rendered)")
    ap.add_argument("--limit", type=int, default=160, help="scores to render")
    ap.add_argument("--steps1", type=int, default=500)
    ap.add_argument("--steps2", type=int, default=700)
    ap.add_argument("--stage", choices=("all", "1", "2"), default="all")
    a = ap.parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    corpus = Path(a.corpus) if a.corpus else work / "corpus"
    if not (corpus / "manifest.jsonl").is_file():
        from build_corpus import build_corpus

        print(json.dumps(build_corpus(corpus, composers=("bach",), limit=a.limit, seed=0, max_seconds=30.0)))
    data = work / "features"
    index = precompute_mel(corpus / "manifest.jsonl", data)
    print(json.dumps({"clips": {k: v["clips"] for k, v in index["splits"].items()}}))
    s1, s2 = bundled_configs(data, a.steps1, a.steps2)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    if a.stage in ("all", "1"):
        report["stage1"] = train_stage(s1, work / "run1", out / "stage1.safetensors")
    if a.stage in ("all", "2"):
        report["stage2"] = train_stage(s2, work / "run2", out / "stage2.safetensors")
    from musicflow_jax.text_encoder import TextEncoder

    TextEncoder.load(s1.text, s1.train.seed).save(out / "text_encoder")
    from assemble_model import backend_from_index

    backend_from_index(index).save(out)  # the chroma+mel backend of the index, with its stats
    np.savez_compressed(out / "corpus_features.npz", **corpus_features(data))
    prev = json.loads((out / "train_report.json").read_text()) if (out / "train_report.json").is_file() else {}
    prev.update(report)
    prev["data"] = {"clips": {k: v["clips"] for k, v in index["splits"].items()},
                    "audio_seconds": index.get("totals", {}).get("audio_seconds")}
    (out / "train_report.json").write_text(json.dumps(prev, indent=1) + "\n")
    print(json.dumps(prev, indent=1))


if __name__ == "__main__":
    main()

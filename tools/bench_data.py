"""Data-side throughput numbers: corpus render speed, precompute speed with tiny random encoders, and loader
batches/s against the consumption of the tiny configs' real train step (tools/bench_train.py's `bench`).

    python tools/bench_data.py --out /tmp/bench --pieces 4 --batches 50
Prints one JSON object; each number names what it measures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

BATCH = 8  # every loader and train-step number is for batches of this size


def bench_render(out: Path, pieces: int, seed: int) -> dict[str, Any]:
    from musicflow_jax.data.corpus import build_corpus

    s = build_corpus(out, composers=("bach",), limit=pieces, seed=seed, progress=False)
    return {"render_pieces": s["ok"], "render_audio_s": s["audio_seconds"],
            "render_audio_s_per_wall_s": s["audio_s_per_wall_s"]}


def bench_precompute(out: Path, manifest: Path, threads: int) -> dict[str, Any]:
    from musicflow_jax.backends.registry import PartFiles
    from musicflow_jax.data.precompute import Segmenting, precompute
    from musicflow_jax.testing.tiny_models import save_tiny_encodec, save_tiny_hubert, save_tiny_t5

    ck = out / "ckpt"
    hub, enc, t5 = save_tiny_hubert(ck / "hubert"), save_tiny_encodec(ck / "encodec"), save_tiny_t5(ck / "t5")
    r = precompute(manifest, out / "features", files=PartFiles(hubert=str(hub), encodec=str(enc), layer=2),
                   t5=str(t5), text_max_len=32, cut=Segmenting(seconds=10.0), threads=threads, progress=False)
    return {"precompute_clips": r["clips_ok"], "precompute_audio_s": r["audio_seconds"],
            "precompute_audio_s_per_wall_s": r["audio_s_per_wall_s"], "features": str(out / "features")}


def bench_loader(cfg: Any, batches: int) -> float:
    from musicflow_jax.data import loader as data

    it = iter(data.make_dataset(cfg, cfg.data.split, process_index=0, process_count=1))
    next(it)  # start-up (threads, file handles) excluded
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def bench_train_step(cfg: Any, steps: int) -> float:
    """Steps/s of the real sharded train step (frozen T5, flow loss, AdamW, EMA) on the config's batch."""
    from bench_train import bench  # the sibling tool (python puts tools/ first on the path)

    return bench(cfg, steps, warmup=1, peak_tflops=0.0, matmul_n=256)["steps_per_s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="scratch folder (each run uses a new bench-* subfolder)")
    ap.add_argument("--pieces", type=int, default=4, help="chorales to render (0 = skip render + precompute)")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10, help="train steps to time (0 = skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for precompute")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import tempfile

    from musicflow_jax.core import config

    Path(a.out).mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="bench-", dir=a.out))  # fresh: nothing reused from an earlier run
    res: dict[str, Any] = {}
    features = None
    if a.pieces:
        res.update(bench_render(out / "corpus", a.pieces, a.seed))
        pre = bench_precompute(out, out / "corpus" / "manifest.jsonl", a.threads)
        features = pre.pop("features")
        res.update(pre)
    for stage in (1, 2):
        cfg = config.load(f"stage{stage}_tiny", [f"data.batch_size={BATCH}"])
        res[f"stage{stage}_loader_synthetic_batches_per_s"] = round(bench_loader(cfg, a.batches), 1)
        if features:
            rcfg = config.apply_overrides(cfg, ["data.source=arrayrecord", f"data.path={features}"])
            res[f"stage{stage}_loader_arrayrecord_batches_per_s"] = round(bench_loader(rcfg, a.batches), 1)
        if a.steps:
            res[f"stage{stage}_tiny_train_steps_per_s"] = round(bench_train_step(cfg, a.steps), 2)
    res["batch_size"] = BATCH
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

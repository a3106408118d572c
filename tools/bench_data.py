"""Data-side throughput numbers: corpus render speed, precompute speed with tiny random encoders, and loader
batches/s against the consumption of a tiny jitted train step (FlowTransformer + flow_loss + Adam).

    python tools/bench_data.py --out /tmp/bench --pieces 4 --batches 50
Prints one JSON object; each number names what it measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)


def bench_render(out: Path, pieces: int, seed: int) -> dict[str, Any]:
    from tools.build_corpus import build_corpus

    s = build_corpus(out, composers=("bach",), limit=pieces, seed=seed, progress=False)
    return {"render_pieces": s["ok"], "render_audio_s": s["audio_seconds"],
            "render_audio_s_per_wall_s": s["audio_s_per_wall_s"]}


def bench_precompute(out: Path, manifest: Path, threads: int) -> dict[str, Any]:
    from tiny_models import save_tiny_encodec, save_tiny_hubert, save_tiny_t5

    from tools.precompute_features import precompute

    ck = out / "ckpt"
    hub, enc, t5 = save_tiny_hubert(ck / "hubert"), save_tiny_encodec(ck / "encodec"), save_tiny_t5(ck / "t5")
    r = precompute(manifest, out / "features", hubert=str(hub), encodec=str(enc), layer=2, t5=str(t5),
                   text_max_len=32, segment_seconds=10.0, threads=threads, progress=False)
    return {"precompute_clips": r["clips_ok"], "precompute_audio_s": r["audio_seconds"],
            "precompute_audio_s_per_wall_s": r["audio_s_per_wall_s"], "features": str(out / "features")}


def bench_loader(cfg: Any, batches: int) -> float:
    from musicflow_jax import data

    it = iter(data.make_dataset(cfg, cfg.data.split, process_index=0, process_count=1))
    next(it)  # start-up (threads, file handles) excluded
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def bench_train_step(cfg: Any, steps: int) -> float:
    """Steps/s of a tiny jitted flow-matching step on one synthetic batch (text embeddings random)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from musicflow_jax import data, flow
    from musicflow_jax.models.transformer import FlowTransformer

    batch = next(iter(data.make_dataset(cfg, "train", process_index=0, process_count=1)))
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "text_ids"}
    batch["text_emb"] = jnp.asarray(rng.normal(size=(*batch["text_mask"].shape, cfg.text.dim)), jnp.float32)
    model = FlowTransformer(cfg, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model: Any, opt: Any, key: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        def loss_fn(m: Any) -> jax.Array:
            return flow.flow_loss(lambda *a: m(*a), key, batch, cfg.flow)[0]

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    key = jax.random.key(0)
    step(model, opt, key, batch).block_until_ready()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(model, opt, jax.random.fold_in(key, i), batch)
    loss.block_until_ready()
    return steps / (time.perf_counter() - t0)


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

    from musicflow_jax import config

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
        cfg = config.load(ROOT / "configs" / f"stage{stage}_tiny.py")
        res[f"stage{stage}_loader_synthetic_batches_per_s"] = round(bench_loader(cfg, a.batches), 1)
        if features:
            rcfg = config.apply_overrides(cfg, ["data.source=arrayrecord", f"data.path={features}",
                                                "data.batch_size=8"])
            res[f"stage{stage}_loader_arrayrecord_batches_per_s"] = round(bench_loader(rcfg, a.batches), 1)
        if a.steps:
            res[f"stage{stage}_tiny_train_steps_per_s"] = round(bench_train_step(cfg, a.steps), 2)
    res["batch_size"] = 8
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

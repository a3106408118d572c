"""Benchmark the sharded train step: steps/s, frames/s and MFU against a matmul peak measured in the same run.

    python tools/bench_train.py --preset tiny            # configs/stage1_tiny.py
    python tools/bench_train.py --preset mid             # stage-1 transformer of dim 256, depth 8, 250 frames
    python tools/bench_train.py --config configs/stage1_base.py --set data.batch_size=32 --steps 20   # e.g. on a GPU
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tools/bench_train.py --config configs/stage2_base.py \
        --set 'mesh.shape=(1,-1,1)' --aot     # compile time + per-device memory from AOT compilation, no arrays

MFU = FLOPs of one global step * steps/s / (peak * devices). FLOPs: XLA's cost analysis of the lowered step, or
the analytic 6N count where XLA gives none (GPU). Peak: the best FLOP/s of an n x n matmul on one device in the
model's compute dtype, measured in the same run (--peak-tflops overrides).
`--lora-vs-full R` benches the config as a full fine-tune and as a LoRA fine-tune of rank R, one after the other.
On CPU run it without --xla_force_host_platform_device_count (virtual devices share the same cores).
`--aot` lowers and compiles the train step from abstract shapes only (no parameter is allocated, so paper-scale
configs fit on any machine) and reports the lower / compile seconds and `compiled.memory_analysis()` per device:
arguments (state + batch), outputs, temporaries (activations kept for the backward pass, ...) and their sum.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from musicflow_jax.pod.compile import random_batch, report, train_step

PRESETS = {
    "tiny": ("stage1_tiny", []),
    "mid": ("stage1_tiny", ["model.dim=256", "model.depth=8", "model.heads=4", "model.mlp_dim=1024",
                            "model.time_dim=128", "data.frames=250", "data.batch_size=8", "name=stage1_mid"]),
}


def bench(cfg, steps: int, warmup: int, peak_tflops: float, matmul_n: int) -> dict:  # noqa: ANN001
    import jax
    import jax.numpy as jnp

    from musicflow_jax.core import sharding
    from musicflow_jax.training import flow_step
    from musicflow_jax.training import flow_trainer as train
    from musicflow_jax.training import logger as metrics

    mesh = sharding.make_mesh(cfg.mesh)
    setup = flow_step.make_setup(cfg, mesh)
    encode, tp = train.load_text_encoder(cfg, mesh)
    state = flow_step.create_state(cfg, setup)
    local = random_batch(cfg, jax.process_count())
    batch = sharding.global_batch(local, mesh, setup.rules, cfg.data.batch_size)
    t0 = time.perf_counter()
    compiled = flow_step.make_train_step(cfg, setup, encode).lower(state, batch, tp).compile()
    compile_s = time.perf_counter() - t0
    n_params = metrics.count_params(state.params)
    flops, flops_source = flow_step.step_flops(cfg, mesh, encode, state, batch, tp)
    for _ in range(warmup):
        state, m = compiled(state, batch, tp)
        jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch, tp)
        jax.block_until_ready(m)
    sps = steps / (time.perf_counter() - t0)
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    peak = peak_tflops * 1e12 if peak_tflops > 0 else metrics.measure_matmul_peak(matmul_n, dtype)
    return {"config": cfg.name, "devices": mesh.size, "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind, "mesh": dict(mesh.shape), "params": n_params,
            "batch": cfg.data.batch_size, "frames": cfg.data.frames, "dtype": cfg.model.dtype,
            "compile_s": round(compile_s, 2), "steps_per_s": round(sps, 3),
            "frames_per_s": round(sps * cfg.data.batch_size * cfg.data.frames, 1),
            "step_gflop": round(flops / 1e9, 3), "flops_source": flops_source,
            "achieved_tflops": round(flops * sps / 1e12, 5),
            "peak_tflops_per_device": round(peak / 1e12, 5), "peak_source": "config" if peak_tflops > 0 else
            f"measured {matmul_n}^3 matmul", "mfu": round(metrics.mfu(flops, sps, peak, mesh.size), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--config", default=None, help="configs/<name>.py (instead of --preset)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="per-device peak; 0 = measure a matmul")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--aot", action="store_true", help="compile time and per-device memory from AOT compilation only")
    ap.add_argument("--lora-vs-full", type=int, default=0, metavar="RANK", help="bench the config as a full fine-tune "
                    "and as a LoRA fine-tune of this rank (base frozen), one after the other; print both and the ratio")
    args = ap.parse_args(argv)
    from musicflow_jax.core import config

    path, preset_sets = PRESETS[args.preset or "tiny"] if not args.config else (args.config, [])
    cfg = config.load(path, [*preset_sets, *args.set])
    if args.lora_vs_full:
        full = bench(cfg, args.steps, args.warmup, args.peak_tflops, args.matmul_n)
        lora_cfg = config.apply_overrides(cfg, [f"model.lora_rank={args.lora_vs_full}"])
        lora = bench(lora_cfg, args.steps, args.warmup, full["peak_tflops_per_device"], args.matmul_n)
        print(json.dumps({"full": full, "lora": lora, "trained_params": {"full": full["params"],
                                                                          "lora": lora["params"]},
                          "lora_over_full_steps_per_s": round(lora["steps_per_s"] / full["steps_per_s"], 3)}))
        return 0
    print(json.dumps(report(train_step(cfg)) if args.aot
                     else bench(cfg, args.steps, args.warmup, args.peak_tflops, args.matmul_n)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

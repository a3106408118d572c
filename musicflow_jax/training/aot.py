"""Ahead-of-time compilation of the flow train step from abstract shapes (no parameter is allocated, so paper-scale
configs compile on any machine): lower + compile times, the per-device memory XLA's memory analysis reports, and the
FLOPs of one step. `tools/bench_train.py --aot` prints it.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from musicflow_jax.core import sharding
from musicflow_jax.core.config import Config
from musicflow_jax.training import flow_step, flow_trainer


def random_batch(cfg: Config, process_count: int = 1) -> dict[str, np.ndarray]:
    """A batch of the data contract's shapes (random content; the step's cost does not depend on it)."""
    rng = np.random.default_rng(0)
    b, t, lt = cfg.data.batch_size // process_count, cfg.data.frames, cfg.text.max_len
    batch = {"x1": rng.normal(size=(b, t, cfg.model.feature_dim)).astype(np.float32),
             "frame_mask": np.ones((b, t), bool),
             "text_ids": rng.integers(3, 259, (b, lt)).astype(np.int32), "text_mask": np.arange(lt)[None] < lt // 2
             + np.zeros((b, 1), int)}
    if cfg.model.cond_dim:
        batch["cond"] = rng.normal(size=(b, t, cfg.model.cond_dim)).astype(np.float32)
    if cfg.text.precomputed:
        batch["text_emb"] = rng.normal(size=(b, lt, cfg.text.dim)).astype(np.float32)
    return batch


def aot(cfg: Config) -> dict[str, Any]:
    """Lower + compile the train step of `cfg` on this process's devices from abstract shapes; compile time and
    per-device memory (bytes) from XLA's memory analysis."""
    mesh = sharding.make_mesh(cfg.mesh)
    setup = flow_step.make_setup(cfg, mesh)
    encode, tp = flow_trainer.load_text_encoder(cfg, mesh)
    local = random_batch(cfg, jax.process_count())
    batch_sh = {k: sharding.batch_sharding(mesh, setup.rules, v.ndim) for k, v in local.items()}
    batch = {k: jax.ShapeDtypeStruct((cfg.data.batch_size, *v.shape[1:]), v.dtype, sharding=batch_sh[k])
             for k, v in local.items()}
    t0 = time.perf_counter()
    lowered = flow_step.make_train_step(cfg, setup, encode).lower(setup.abstract_state, batch, tp)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    per_device = {f.removesuffix("_size_in_bytes"): int(getattr(mem, f, 0) or 0) for f in fields}
    # donated state: outputs alias the arguments, so the peak is arguments + temporaries + unaliased outputs
    per_device["peak_estimate"] = (per_device["argument"] + per_device["temp"] + per_device["output"]
                                   - per_device["alias"])
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state.params)))
    return {"config": cfg.name, "devices": mesh.size, "mesh": dict(mesh.shape), "platform": jax.devices()[0].platform,
            "params": n_params, "batch": cfg.data.batch_size, "frames": cfg.data.frames, "dtype": cfg.model.dtype,
            "scan_layers": cfg.model.scan_layers, "remat": cfg.model.remat,
            "lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2),
            "memory_per_device_gib": {k: round(v / 2**30, 3) for k, v in per_device.items()},
            "step_gflop": round(flow_step.step_flops(cfg, mesh, encode, setup.abstract_state, batch, tp)[0] / 1e9,
                                1)}

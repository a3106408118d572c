"""Choosing how to train a config on a topology: for each candidate mesh (pure FSDP; FSDP x tensor parallelism;
data x FSDP), every remat policy on the whole per-device batch, and micro-batching (optim.grad_accum, the global
batch unchanged) only where no policy fits; among the compiled steps that fit the chip's HBM, the one with the best
estimated MFU in the compiled order (pod/schedule.py: collectives hidden only where the compiler overlapped them; less
recomputation is not always faster when saved activations cost HBM traffic).
The answer is the `--set` line that trains with it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from musicflow_jax.core.config import Config
from musicflow_jax.pod import compile as pod_compile
from musicflow_jax.pod.chips import Chip

# (remat, grad_accum) from the most to the least memory; micro-batches (accum > 1) only when nothing whole fits
LADDER = (("none", 1), ("dots", 1), ("full", 1), ("dots", 2), ("full", 2), ("full", 4), ("full", 8))


def meshes(cfg: Config, chips: int) -> list[tuple[int, int, int]]:
    """Candidate (data, fsdp, tensor) shapes: all-FSDP, FSDP x 4-way tensor (when the heads and FFN divide), and
    replicas of FSDP groups of 8, 16, 32, ... chips. Smaller groups keep each chip's weight shard a whole number of
    the TPU's 8-row tiles (768 rows over 256 chips are 3 rows: the compiler then gathers by all-reducing zero-padded
    shards, twice the wire bytes of an all-gather)."""
    out = [(1, chips, 1)]
    m = cfg.model
    if chips % 4 == 0 and chips > 4 and m.heads % 4 == 0 and m.mlp_dim % 4 == 0:
        out.append((1, chips // 4, 4))
    group = 8
    while group < chips and chips % group == 0:
        out.append((chips // group, group, 1))
        group *= 2
    return [s for s in out if cfg.data.batch_size % (s[0] * s[1]) == 0]


def with_choice(cfg: Config, shape: tuple[int, int, int], remat: str, accum: int) -> Config:
    return dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, shape=shape),
                               model=dataclasses.replace(cfg.model, remat=remat),
                               optim=dataclasses.replace(cfg.optim, grad_accum=accum))


def set_line(shape: tuple[int, int, int], remat: str, accum: int) -> str:
    mesh = ",".join(str(d) for d in shape)
    return f"--set 'mesh.shape=({mesh})' --set model.remat={remat} --set optim.grad_accum={accum}"


def sweep(cfg: Config, devices: Sequence[Any], chip: Chip,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
          train_step: Callable[..., pod_compile.Compiled] = pod_compile.train_step) -> dict[str, Any]:
    """Compile the ladder for every candidate mesh; returns every compile's summary and the best that fits.
    `train_step(cfg, devices, flops_cache)` compiles one candidate (a caller may hand in one that reuses compiles)."""
    tried, fitting = [], []
    cache: dict[str, float] = {}
    for shape in meshes(cfg, len(devices)):
        fits_whole = False
        for remat, accum in LADDER:
            per_step = cfg.data.batch_size // (shape[0] * shape[1])
            if per_step % accum or (accum > 1 and fits_whole):
                continue
            c = train_step(with_choice(cfg, shape, remat, accum), devices, cache)
            r = pod_compile.report(c, chip)
            rl = r.get("roofline", {})  # none: refused
            row = {"mesh": list(shape), "remat": remat, "grad_accum": accum, "fits": r["fits"],
                   "peak_gib": r["memory_per_device_gib"]["peak"], "mfu_sched": rl.get("mfu_sched", 0.0),
                   "mfu_bound": rl.get("mfu_bound", 0.0), "mfu_serial": rl.get("mfu_serial", 0.0),
                   "sched_s": rl.get("sched_s"), "bound_s": rl.get("bound_s"),
                   "compile_s": r["compile_s"], "set": set_line(shape, remat, accum)}
            log(f"  mesh {shape} remat {remat:4s} accum {accum}: peak {row['peak_gib']:.2f} GiB of {chip.hbm_gib} "
                f"{'fits' if row['fits'] else 'does not fit'}, MFU {row['mfu_sched']:.2f} in the compiled order "
                f"({row['mfu_serial']:.2f}-{row['mfu_bound']:.2f} serial-overlapped; compiled in "
                f"{row['compile_s']:.0f} s)")
            tried.append(row)
            if row["fits"]:
                fitting.append(row)
                fits_whole = fits_whole or accum == 1
                if accum > 1:
                    break
    best = max(fitting, key=lambda r: (r["mfu_sched"], r["mfu_serial"])) if fitting else None
    return {"tried": tried, "best": best}

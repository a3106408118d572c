"""pod/sweep.py compiles every remat policy (micro-batches only when none fits), keeps those that fit the chip's HBM
and names the --set line of the best estimated MFU in the compiled order: here on this machine's CPU devices, for a
chip whose HBM lies between the step's measured peak without rematerialisation and with "dots"."""

import dataclasses

import jax

from musicflow_jax.core import config
from musicflow_jax.pod import compile as pod_compile
from musicflow_jax.pod import sweep
from musicflow_jax.pod.chips import CHIPS

# long crops make the activations (the attention scores above all) dominate the step's memory
OVERRIDES = ["data.frames=512", "data.batch_size=8", "mesh.shape=(1,-1,1)", "model.remat=none"]


def test_sweep_picks_the_best_of_what_fits():
    devices = jax.devices()[:4]
    cfg = config.load("stage1_tiny", OVERRIDES)
    compiled: dict[str, pod_compile.Compiled] = {}

    def train_step(c, devices, cache=None):  # noqa: ANN001, ANN202 - each candidate compiled once in this test
        key = c.model.remat + str(c.optim.grad_accum)
        if key not in compiled:
            compiled[key] = pod_compile.train_step(c, devices, cache)
        return compiled[key]

    peak = {r: train_step(sweep.with_choice(cfg, (1, 4, 1), r, 1), devices).memory["peak"] for r in ("none", "dots")}
    assert peak["dots"] < peak["none"]
    chip = dataclasses.replace(CHIPS["v5e"], hbm_gib=(peak["none"] + peak["dots"]) / 2 / 2**30)
    out = sweep.sweep(cfg, devices, chip, log=lambda _: None, train_step=train_step)
    assert sweep.meshes(cfg, 4) == [(1, 4, 1)]  # 4 devices: all-FSDP only
    # 256 chips: all-FSDP, 4-way tensor, and data x FSDP groups of 8 ... 128 chips (the batch of 256 divides)
    wide = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=256))
    assert sweep.meshes(wide, 256) == [(1, 256, 1), (1, 64, 4), (32, 8, 1), (16, 16, 1), (8, 32, 1), (4, 64, 1),
                                       (2, 128, 1)]
    tried = [(r["remat"], r["grad_accum"], r["fits"]) for r in out["tried"]]
    assert tried == [("none", 1, False), ("dots", 1, True), ("full", 1, True)]  # no micro-batching: a policy fits
    best = out["best"]
    assert best == max(out["tried"][1:], key=lambda r: (r["mfu_sched"], r["mfu_serial"]))
    assert best["peak_gib"] <= chip.hbm_gib < out["tried"][0]["peak_gib"]
    assert best["set"] == f"--set 'mesh.shape=(1,4,1)' --set model.remat={best['remat']} --set optim.grad_accum=1"
    assert 0 < best["mfu_serial"] <= best["mfu_bound"] <= 1 and best["mfu_serial"] <= best["mfu_sched"]

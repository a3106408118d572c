"""The train step compiled for NVIDIA GPUs with no GPU (JAX's CUDA plugin with an XLA target config; .ci/setup_env.sh
installs the plugin with tools/install_jax_cuda.sh): FSDP over 8 H100s holds 1/8 of the state per GPU, the
gradients are reduce-scattered and the weights all-gathered over NVLink, and 16 H200s are two hosts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TINY = ["model.dim=128", "model.mlp_dim=512", "model.heads=4", "data.batch_size=16", "mesh.shape=(1,-1,1)"]


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot_gpu") / "gpu.json"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("gpu_child.py")), str(out), json.dumps(TINY)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_fsdp_over_eight_h100s(gpu):
    h = gpu["h100"]
    r = h["report"]
    assert h["kind"] == "NVIDIA H100 80GB HBM3" and r["chip"] == "h100" and r["fits"] and r["hbm_gib"] == 79.1
    assert r["devices"] == 8 and r["hosts"] == 1 and r["mesh"]["fsdp"] == 8
    # each GPU's arguments: at least its 1/8 of the state (16 bytes per parameter: params, EMA, two Adam moments)
    sharded = h["params_total_bytes"] - h["params_replicated_bytes"]
    state_per_gpu = 4 * (sharded / 8 + h["params_replicated_bytes"])
    argument = r["memory_per_device_gib"]["argument"] * 2**30
    assert state_per_gpu <= argument + 2**20 < 2 * state_per_gpu
    coll = r["collectives"]
    assert coll["all-gather"]["count"] > 0 and coll["reduce-scatter"]["count"] > 0
    assert r["roofline"]["compute_s"] == pytest.approx(r["step_gflop"] / 8 / 989e3, rel=0.02)


def test_sixteen_h200s_are_two_hosts(gpu):
    assert gpu["h200"] == {"hosts": 2, "devices": 16, "hbm_gib": 140.4}

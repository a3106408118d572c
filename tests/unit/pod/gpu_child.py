"""Run by test_gpu_compile.py in a child process (JAX's CUDA plugin stays out of the test workers): compiles a tiny
config for 8 H100s and 16 H200s (two hosts) with no GPU and writes what the tests check as JSON to argv[1]."""

import json
import sys

import jax

from musicflow_jax.core import config, sharding
from musicflow_jax.core.config import MeshConfig
from musicflow_jax.pod import compile as pod_compile
from musicflow_jax.pod import topology
from musicflow_jax.training import flow_step


def main(out: str, overrides: str) -> None:
    tiny = json.loads(overrides)
    res = {}
    h100 = topology.load("h100:8")
    cfg = config.load("stage1_tiny", tiny)
    c = pod_compile.train_step(cfg, h100.devices)
    mesh = sharding.make_mesh(MeshConfig(shape=(1, 8, 1)), h100.devices)
    params = jax.tree.leaves(flow_step.make_setup(cfg, mesh).abstract_state.params)
    res["h100"] = {"report": pod_compile.report(c, h100.chip), "kind": h100.devices[0].device_kind,
                   "params_total_bytes": int(sum(a.size * a.dtype.itemsize for a in params)),
                   "params_replicated_bytes": int(sum(a.size * a.dtype.itemsize for a in params
                                                      if a.sharding.is_fully_replicated))}
    h200 = topology.load("h200:16")
    res["h200"] = {"hosts": h200.hosts, "devices": h200.chips, "hbm_gib": h200.chip.hbm_gib}
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

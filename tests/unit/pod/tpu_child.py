"""Run by test_tpu_compile.py in a child process (the TPU plugin stays out of the test workers): compiles tiny
configs for TPU topologies with libtpu's compile-only devices and writes what the tests check as JSON to argv[1]."""

import contextlib
import io
import json
import sys

import jax
import numpy as np

from musicflow_jax.cli import aot as aot_cli
from musicflow_jax.core import config, sharding
from musicflow_jax.core.config import MeshConfig
from musicflow_jax.pod import compile as pod_compile
from musicflow_jax.pod import topology
from musicflow_jax.training import flow_step


def shard_bytes(tree) -> int:
    return int(sum(np.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree)))


def main(out: str, tiny: str) -> None:
    TINY = json.loads(tiny)  # noqa: N806 (the test's overrides)
    res = {}
    single = topology.load("v5e:2x2")
    cfg = config.load("stage1_tiny", [*TINY, "model.scan_layers=false"])
    c = pod_compile.train_step(cfg, single.devices)
    rep = pod_compile.report(c, single.chip)
    setup = flow_step.make_setup(cfg, sharding.make_mesh(MeshConfig(shape=(1, 4, 1)), single.devices))
    state = setup.abstract_state
    res["single"] = {"report": rep, "xla_flops_per_chip": c.xla_cost["flops"],
                     "params_total_bytes": int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state.params))),
                     "params_chip_bytes": shard_bytes(state.params), "state_chip_bytes": shard_bytes(state),
                     "replicated_param_bytes": int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state.params)
                                                       if a.sharding.is_fully_replicated))}
    multi = topology.load("v5e:4x4")
    rep = pod_compile.report(pod_compile.train_step(config.load("stage1_tiny", TINY), multi.devices), multi.chip)
    res["multi"] = {"report": rep, "hosts": multi.hosts}
    big = config.load("stage1_tiny", [*TINY, "model.dim=8192", "model.mlp_dim=32768", "model.heads=64",
                                      "model.depth=8"])
    res["too_large"] = pod_compile.report(pod_compile.train_step(big, single.devices), single.chip)
    for name, argv in {"cli_generate": ["--config", "stage1_tiny", "--topology", "v5e:2x2", "--generate",
                                        "--no-train", "--seconds", "2", "--set", "mesh.shape=(1,-1,1)"],
                       "cli_bad_mesh": ["--config", "stage1_tiny", "--topology", "v5e:2x2", "--set",
                                        "mesh.shape=(3,-1,1)"]}.items():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = aot_cli.main(argv)
        res[name] = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

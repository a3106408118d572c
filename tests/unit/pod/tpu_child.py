"""Run by test_tpu_compile.py in a child process (the TPU plugin stays out of the test workers): compiles tiny
configs for TPU topologies with libtpu's compile-only devices and writes what the tests check as JSON to argv[1]."""

import contextlib
import io
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from musicflow_jax.cli import aot as aot_cli
from musicflow_jax.core import config, sharding
from musicflow_jax.core.config import MeshConfig
from musicflow_jax.pod import compile as pod_compile
from musicflow_jax.pod import hlo, roofline, schedule, topology
from musicflow_jax.training import flow_step


def shard_bytes(tree) -> int:
    return int(sum(np.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree)))


def fsdp_layers(devices, chip, layers: int, dim: int, hidden: int) -> tuple[list[list[float]], dict[str, float]]:
    """The collectives of an SGD step of `layers` scanned, rematerialised residual MLP blocks whose f32 weights are
    FSDP-sharded over 2 chips, replicated over 2 data-parallel pairs, cast to bf16 for the matmuls:
    [kind, group, bytes, count] as pod/hlo.py reads them off the TPU compiler's program, and its replay in the
    compiled order (pod/schedule.py) beside the roofline."""
    mesh = sharding.make_mesh(MeshConfig(shape=(2, 2, 1)), devices)

    def loss(ws, x):
        def block(h, w):
            return h + jnp.tanh(h @ w[0].astype(jnp.bfloat16)) @ w[1].astype(jnp.bfloat16), None
        return jnp.mean(jax.lax.scan(jax.checkpoint(block), x.astype(jnp.bfloat16), ws)[0].astype(jnp.float32) ** 2)

    def step(ws, x):
        return jax.tree.map(lambda w, g: w - 1e-3 * g, ws, jax.grad(loss)(ws, x))

    ws = (jax.ShapeDtypeStruct((layers, dim, hidden), jnp.float32, sharding=NamedSharding(mesh, P(None, "fsdp"))),
          jax.ShapeDtypeStruct((layers, hidden, dim), jnp.float32,
                               sharding=NamedSharding(mesh, P(None, None, "fsdp"))))
    x = jax.ShapeDtypeStruct((8, 256, dim), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    text = jax.jit(step, out_shardings=tuple(w.sharding for w in ws)).lower(ws, x).compile().as_text()
    traffic = hlo.traffic(text)
    total: dict[tuple[str, int, float], float] = {}
    for c in traffic.collectives:
        total[(c.kind, c.group, c.bytes)] = total.get((c.kind, c.group, c.bytes), 0.0) + c.count
    tl = schedule.timeline(text, chip)
    rl = roofline.estimate(chip, tl.matmul_flops, tl.matmul_flops, traffic.bytes_accessed, traffic.wire_bytes,
                           tl.seconds)
    return ([[kind, group, nbytes, count] for (kind, group, nbytes), count in sorted(total.items())],
            {"matmul_flops": tl.matmul_flops, "exposed_s": tl.exposed_s, "collective_s": tl.collective_s, **rl})


def main(out: str, tiny: str) -> None:
    TINY = json.loads(tiny)  # noqa: N806 (the test's overrides)
    res = {}
    single = topology.load("v5e:2x2")
    res["fsdp_layers"], res["fsdp_schedule"] = fsdp_layers(single.devices, single.chip, 6, 512, 2048)
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

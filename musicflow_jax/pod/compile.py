"""Ahead-of-time compilation of the real steps from abstract shapes (no parameter is allocated, so paper-scale
configs compile on any machine), on this process's devices or on a TPU topology's compile-only devices
(pod/topology.py):

- `train_step(cfg, devices)`: the flow train step of training/flow_step.py (frozen text encoder inside, the
  distillation teacher when the config has one) on the config's mesh and logical rules;
- `generation_step(cfg1, cfg2, seconds, batch, devices)`: both stages' ODE solves for one window of `seconds`
  (stage 1's semantic stream at 50 Hz upsampled to stage 2's 75 Hz condition, as the cascade runs them), text
  embeddings given.

Each returns a `Compiled`: lower/compile times, XLA's per-device memory analysis, the FLOPs of one step counted on
the unrolled program (what the training loop's MFU uses), and what the optimized program moves (pod/hlo.py: HBM bytes
and collectives per device, loop trip counts applied). `report(compiled, chip)` adds the fit against the chip's
HBM and the roofline estimate (pod/roofline.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.core import beat, config_io, frames, sampling, sharding
from musicflow_jax.core.config import Config, MeshConfig
from musicflow_jax.core.flow import FlowInput, guided_apply
from musicflow_jax.pod import hlo, roofline, schedule
from musicflow_jax.pod.chips import Chip
from musicflow_jax.training import flow_step, flow_trainer, logger

SEMANTIC_HZ, ACOUSTIC_HZ = 50.0, 75.0  # the paper's streams: HuBERT features, Encodec latents
MEMORY_FIELDS = ("argument", "output", "temp", "alias", "generated_code")


@dataclasses.dataclass
class Compiled:
    what: str  # "train" | "generate"
    config: str
    mesh: dict[str, int]
    devices: int
    hosts: int
    params: int
    lower_s: float
    compile_s: float
    memory: dict[str, int]  # bytes per device (XLA's memory analysis) + "peak"
    flops: float  # one step, all devices, counted on the unrolled program (remat's recomputation included)
    model_flops: float  # the same without rematerialisation: the work MFU credits
    traffic: hlo.Traffic  # per device
    xla_cost: dict[str, float]  # the compiled program's cost analysis (loop bodies counted once)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    hlo_text: str = ""  # the optimized program (empty when the compiler refused it)
    unknown_trips: tuple[int, ...] = ()  # trip counts of its data-dependent loops (hlo.multiplicities)


_SIZE = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


# Without a GPU XLA cannot autotune, and its heuristic Triton GEMM tiling fails on some of the step's matmuls ("Couldn't
# find output tile sizes"): deviceless GPU compiles use cuBLAS GEMMs, what autotuning picks for most large matmuls.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def _compile(lowered: Any, args: Any, platform: str) -> tuple[Any | None, dict[str, int], str]:
    """(executable or None, memory per device, the compiler's refusal). The TPU compiler refuses a program whose
    temporaries exceed the chip's HBM ("RESOURCE_EXHAUSTED: ... required for HLO temporaries (47.32G) exceeds
    available HBM (15.75G)"): then the memory is the temporaries it asked for + the arguments' shards."""
    try:
        compiled = lowered.compile(GPU_COMPILER_OPTIONS if platform in ("cuda", "gpu") else None)
    except jax.errors.JaxRuntimeError as e:
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg:
            raise
        sizes = [float(v) * _SIZE[u] for v, u in re.findall(r"\((\d+(?:\.\d+)?)([KMGT])\)", msg)]
        argument = sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
                       for a in jax.tree.leaves(args) if hasattr(a, "sharding"))
        temp = int(sizes[0]) if sizes else 0
        mem = {f: 0 for f in MEMORY_FIELDS} | {"argument": argument, "temp": temp, "peak": argument + temp}
        return None, mem, msg.strip().splitlines()[0][:300]
    return compiled, _memory(compiled), ""


def _memory(compiled: Any) -> dict[str, int]:
    mem = compiled.memory_analysis()
    out = {f: int(getattr(mem, f"{f}_size_in_bytes", 0) or 0) for f in MEMORY_FIELDS}
    # donated state: outputs alias the arguments, so the peak is arguments + temporaries + unaliased outputs
    out["peak"] = out["argument"] + out["temp"] + out["output"] - out["alias"]
    return out


def _xla_cost(compiled: Any) -> dict[str, float]:
    if compiled is None:
        return {}
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    return {k: float(cost[k]) for k in ("flops", "bytes accessed", "optimal_seconds") if k in cost}


def abstract_batch(cfg: Config, mesh: jax.sharding.Mesh, rules: dict[str, str | None]) -> dict[str, Any]:
    """The train step's global batch as ShapeDtypeStructs split over the batch axes (the data contract's shapes)."""
    b, t, lt = cfg.data.batch_size, cfg.data.frames, cfg.text.max_len
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        "x1": ((b, t, cfg.model.feature_dim), jnp.float32), "frame_mask": ((b, t), jnp.bool_),
        "text_ids": ((b, lt), jnp.int32), "text_mask": ((b, lt), jnp.bool_)}
    if cfg.model.cond_dim:
        shapes["cond"] = ((b, t, cfg.model.cond_dim), jnp.float32)
    if cfg.model.beat:
        shapes["beat"] = ((b, t, beat.CHANNELS), jnp.float32)
    if cfg.text.precomputed:
        shapes["text_emb"] = ((b, lt, cfg.text.dim), jnp.float32)
    if cfg.text.meta:
        shapes["text_bpm"], shapes["text_key"] = ((b,), jnp.float32), ((b,), jnp.int32)
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding.batch_sharding(mesh, rules, len(s)))
            for k, (s, d) in shapes.items()}


def random_batch(cfg: Config, process_count: int = 1) -> dict[str, np.ndarray]:
    """One process's rows of a batch of the data contract's shapes (random content; the cost does not depend on it)."""
    rng = np.random.default_rng(0)
    b, t, lt = cfg.data.batch_size // process_count, cfg.data.frames, cfg.text.max_len
    batch = {"x1": rng.normal(size=(b, t, cfg.model.feature_dim)).astype(np.float32),
             "frame_mask": np.ones((b, t), bool),
             "text_ids": rng.integers(3, 259, (b, lt)).astype(np.int32), "text_mask": np.arange(lt)[None] < lt // 2
             + np.zeros((b, 1), int)}
    if cfg.model.cond_dim:
        batch["cond"] = rng.normal(size=(b, t, cfg.model.cond_dim)).astype(np.float32)
    if cfg.model.beat:
        batch["beat"] = beat.features(np.full(b, 96.0), rng.random(b), t, cfg.frame_rate)
    if cfg.text.precomputed:
        batch["text_emb"] = rng.normal(size=(b, lt, cfg.text.dim)).astype(np.float32)
    return batch


def _abstract(tree: Any, shard: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shard), tree)


def _hosts(devices: Sequence[Any]) -> int:
    return len({d.process_index for d in devices})


def train_step(cfg: Config, devices: Sequence[Any] | None = None, flops_cache: dict[str, float] | None = None
               ) -> Compiled:
    """Compile the config's train step on `devices` (default: this process's view of all devices). `flops_cache`
    keeps the unrolled FLOP counts across calls that differ only in mesh or accumulation (a sweep)."""
    devices = list(jax.devices() if devices is None else devices)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    setup = flow_step.make_setup(cfg, mesh)
    encode, text_params = flow_trainer.load_text_encoder(cfg)  # frozen: host arrays, only their shapes are used
    tp = _abstract(text_params, sharding.replicated(mesh))
    batch = abstract_batch(cfg, mesh, setup.rules)
    teacher = flow_step.teacher_spec(cfg, mesh)
    weights = () if teacher is None else (teacher.abstract,)
    t0 = time.perf_counter()
    lowered = flow_step.make_train_step(cfg, setup, encode, teacher).lower(setup.abstract_state, batch, tp, *weights)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled, memory, refusal = _compile(lowered, (setup.abstract_state, batch, tp, *weights), devices[0].platform)
    compile_s = time.perf_counter() - t0
    cache = {} if flops_cache is None else flops_cache

    def count(c: Config) -> float:  # the global count does not depend on the mesh or the micro-batching; a Pallas
        # kernel is opaque to XLA's count: the same attention is counted in its XLA form
        c = dataclasses.replace(c, mesh=MeshConfig(), optim=dataclasses.replace(c.optim, grad_accum=1),
                                model=dataclasses.replace(c.model, attention="xla"))
        key = config_io.config_hash(c)
        if key not in cache:
            cache[key] = flow_step.step_flops(c, mesh, encode, setup.abstract_state, batch, tp, *weights)[0]
        return cache[key]

    flops, model_flops = count(cfg), count(_without_remat(cfg))
    n_params = logger.count_params(setup.abstract_state.params)
    return Compiled("train", cfg.name, dict(mesh.shape), mesh.size, _hosts(devices), n_params, lower_s, compile_s,
                    memory, flops, model_flops, _traffic(compiled), _xla_cost(compiled),
                    {"batch": cfg.data.batch_size, "grad_accum": cfg.optim.grad_accum,
                     "batch_per_device_step": cfg.data.batch_size // max(_batch_shards(mesh, setup.rules), 1)
                     // cfg.optim.grad_accum, "frames": cfg.data.frames, "remat": cfg.model.remat,
                     "scan_layers": cfg.model.scan_layers, "dtype": cfg.model.dtype,
                     "batch_per_host": cfg.data.batch_size // max(_hosts(devices), 1),
                     "data_shards": data_shards(mesh, setup.rules, cfg.data.batch_size),
                     **({"refused": refusal} if refusal else {})}, _text(compiled))


def _text(compiled: Any) -> str:
    return "" if compiled is None else compiled.as_text()


def _traffic(compiled: Any, unknown_trips: Sequence[int] = ()) -> hlo.Traffic:
    """What the executable moves; nothing for a program the compiler refused."""
    if compiled is None:
        return hlo.Traffic(0.0, (), ())
    return hlo.traffic(compiled.as_text(), unknown_trips=unknown_trips)


def _batch_shards(mesh: jax.sharding.Mesh, rules: dict[str, str | None]) -> int:
    return math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh, rules))


def _without_remat(cfg: Config) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, remat="none"))


def data_shards(mesh: jax.sharding.Mesh, rules: dict[str, str | None], batch: int) -> dict[str, Any]:
    """How the global batch splits: batch shards (devices holding distinct rows), rows per shard, and for each host
    the rows it feeds (its process-local slice, as sharding.global_batch assembles it) - the first hosts listed."""
    n = _batch_shards(mesh, rules)
    spec = sharding.batch_sharding(mesh, rules, 1)
    rows_of: dict[int, set[int]] = {}
    for dev, idx in spec.devices_indices_map((batch,)).items():
        rows_of.setdefault(dev.process_index, set()).update(range(*idx[0].indices(batch)))
    hosts = sorted(rows_of)
    return {"batch_shards": n, "rows_per_shard": batch // n if n and batch % n == 0 else None,
            "rows_per_host": {h: [min(rows_of[h]), max(rows_of[h]) + 1] for h in hosts[:4]},
            "hosts_with_disjoint_rows": len({tuple(sorted(r)) for r in rows_of.values()}) == len(hosts)}


def _stage_model(cfg: Config, mesh: jax.sharding.Mesh) -> tuple[Any, Any, int]:
    """(graphdef, abstract params sharded by the rules, parameter count) of a stage's flow transformer."""
    graphdef, abstract = flow_step.abstract_model(cfg)
    shardings = sharding.state_shardings(abstract, mesh, dict(cfg.mesh.rules))
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return graphdef, params, logger.count_params(abstract)


def generation_step(cfg1: Config, cfg2: Config, seconds: float, batch: int,
                    devices: Sequence[Any] | None = None) -> Compiled:
    """Compile the cascade's two ODE solves for one window of `seconds` (each stage at its config's sampler: solver,
    steps, CFG) for `batch` captions, rows split over the mesh's batch axes, weights sharded by stage 1's rules."""
    devices = list(jax.devices() if devices is None else devices)
    mesh = sharding.make_mesh(cfg1.mesh, devices)
    rules = dict(cfg1.mesh.rules)
    t1, t2 = frames.frames_at(seconds, SEMANTIC_HZ), frames.frames_at(seconds, ACOUSTIC_HZ)
    g1, p1, n1 = _stage_model(cfg1, mesh)
    g2, p2, n2 = _stage_model(cfg2, mesh)
    up = jnp.asarray(frames.upsample_index(t2, t1, SEMANTIC_HZ, ACOUSTIC_HZ))
    lt = cfg1.text.max_len
    emb = jax.ShapeDtypeStruct((batch, lt, cfg1.text.dim), jnp.float32,
                               sharding=sharding.batch_sharding(mesh, rules, 3))
    mask = jax.ShapeDtypeStruct((batch, lt), jnp.bool_, sharding=sharding.batch_sharding(mesh, rules, 2))
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))

    def stage(cfg: Config, model: Any, key: jax.Array, emb: jax.Array, mask: jax.Array, n: int,
              cond: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        s = cfg.sample
        return sampling.sample(model, key, text_emb=emb, text_mask=mask, frames=n, feature_dim=cfg.model.feature_dim,
                               cond=cond, solver=s.solver, steps=s.steps, cfg_scale=s.cfg_scale,
                               temperature=s.temperature, sigma_min=cfg.flow.sigma_min,
                               # a beat grid's cost does not depend on its values
                               beat=jnp.zeros((emb.shape[0], n, beat.CHANNELS)) if cfg.model.beat else None)

    def generate(p1: Any, p2: Any, key: jax.Array, emb: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        with sharding.activation_mesh(mesh):  # activation constraints and per-device kernels as in training
            return _generate(p1, p2, key, emb, mask)

    def _generate(p1: Any, p2: Any, key: jax.Array, emb: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_sem, nfe1 = stage(cfg1, nnx.merge(g1, p1), key, emb, mask, t1, None)
        x_ac, nfe2 = stage(cfg2, nnx.merge(g2, p2), jax.random.fold_in(key, 1), emb, mask, t2, x_sem[:, up])
        return x_ac, nfe1 + nfe2

    out_sh = (sharding.batch_sharding(mesh, rules, 3), sharding.replicated(mesh))
    fn = jax.jit(generate, out_shardings=out_sh)
    t0 = time.perf_counter()
    lowered = fn.lower(p1, p2, key, emb, mask)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled, memory, refusal = _compile(lowered, (p1, p2, key, emb, mask), devices[0].platform)
    compile_s = time.perf_counter() - t0
    flops = _generation_flops(cfg1, cfg2, batch, t1, t2)
    nfe = {"stage1": sampling.expected_nfe(cfg1.sample.solver, cfg1.sample.steps),
           "stage2": sampling.expected_nfe(cfg2.sample.solver, cfg2.sample.steps)}
    # diffrax's step loops end on a data-dependent condition: they run the fixed-step solvers' `steps` times, stage 1's
    # first (stage 2 reads its result)
    trips = (cfg1.sample.steps, cfg2.sample.steps)
    traffic = _traffic(compiled, trips)
    return Compiled("generate", f"{cfg1.name}+{cfg2.name}", dict(mesh.shape), mesh.size, _hosts(devices), n1 + n2,
                    lower_s, compile_s, memory, flops, flops, traffic, _xla_cost(compiled),
                    {"batch": batch, "seconds": seconds, "frames": [t1, t2], "nfe": nfe,
                     "cfg_scale": [cfg1.sample.cfg_scale, cfg2.sample.cfg_scale],
                     **({"refused": refusal} if refusal else {})}, _text(compiled), trips)


def _generation_flops(cfg1: Config, cfg2: Config, batch: int, t1: int, t2: int) -> float:
    """FLOPs of the two solves: one network evaluation of each stage (the guided field on its doubled batch when
    CFG is on), counted on the lowered unrolled program (XLA counts a scan's body once), times the solver's
    evaluations. The global count does not depend on the mesh: it is lowered without shardings."""
    def one_eval(cfg: Config, n: int) -> float:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=False, attention="xla"))
        graphdef, params = flow_step.abstract_model(cfg)
        lt, m = cfg.text.max_len, cfg.model

        def f(p: Any, emb: jax.Array, mask: jax.Array) -> jax.Array:
            x = jnp.zeros((batch, n, m.feature_dim))
            cond = jnp.zeros((batch, n, m.cond_dim)) if m.cond_dim else None
            grid = jnp.zeros((batch, n, beat.CHANNELS)) if m.beat else None
            inp = FlowInput(x, jnp.zeros_like(x), jnp.full((batch,), 0.5), emb, mask, cond, jnp.ones((batch, n), bool),
                            None, grid)
            return guided_apply(nnx.merge(graphdef, p), inp, cfg.sample.cfg_scale)

        lowered = jax.jit(f).lower(params, jax.ShapeDtypeStruct((batch, lt, cfg.text.dim), jnp.float32),
                                   jax.ShapeDtypeStruct((batch, lt), jnp.bool_))
        return logger.program_flops(lowered) * sampling.expected_nfe(cfg.sample.solver, cfg.sample.steps)

    return one_eval(cfg1, t1) + one_eval(cfg2, t2)


def report(c: Compiled, chip: Chip | None = None) -> dict[str, Any]:
    """The JSON report of a compile: memory per device (GiB), FLOPs, collectives, and with `chip` the fit against
    its HBM and the roofline estimate."""
    gib = {k: round(v / 2**30, 3) for k, v in c.memory.items()}
    sig = lambda x: float(f"{x:.4g}")  # noqa: E731
    out: dict[str, Any] = {
        "what": c.what, "config": c.config, "devices": c.devices, "hosts": c.hosts, "mesh": c.mesh,
        "params": c.params, **c.extra, "lower_s": round(c.lower_s, 2), "compile_s": round(c.compile_s, 2),
        "memory_per_device_gib": gib,
        "step_gflop": sig(c.flops / 1e9), "model_gflop": sig(c.model_flops / 1e9),
        "step_gflop_per_device": sig(c.flops / c.devices / 1e9),
        "hbm_gb_per_device": sig(c.traffic.bytes_accessed / 1e9),
        "loops": list(c.traffic.loops),
        "hbm_gb_by_op": {k: sig(v / 1e9) for k, v in c.traffic.by_op[:8]},
        "collectives": {k: {"count": int(v["count"]), "gb": sig(v["bytes"] / 1e9),
                            "wire_gb": sig(v["wire_bytes"] / 1e9)}
                        for k, v in sorted(c.traffic.collective_summary().items())},
        "xla_cost_analysis_loops_once": {k.replace("bytes accessed", "gb").replace("flops", "gflop"):
                                         sig(v if k == "optimal_seconds" else v / 1e9) for k, v in c.xla_cost.items()},
    }
    if chip is not None:
        out["chip"] = chip.name
        out["hbm_gib"] = chip.hbm_gib
        out["fits"] = c.memory["peak"] <= chip.hbm_bytes and "refused" not in c.extra
        if "refused" in c.extra:  # no program: nothing to estimate
            return out
        tl = schedule.timeline(c.hlo_text, chip, flops_per_device=c.flops / c.devices,
                               unknown_trips=c.unknown_trips) if c.hlo_text else None
        out["roofline"] = roofline.estimate(chip, c.flops / c.devices, c.model_flops / c.devices,
                                            c.traffic.bytes_accessed, c.traffic.wire_bytes,
                                            tl.seconds if tl else None)
        if tl is not None:
            out["schedule"] = {"collectives_exposed_s": float(f"{tl.exposed_s:.4g}"),
                               "collectives_hidden": round(max(1 - tl.exposed_s / tl.collective_s, 0.0), 3)
                               if tl.collective_s else 1.0,
                               "matmul_gflop_per_device": float(f"{tl.matmul_flops / 1e9:.4g}"),
                               "kernel_gflop_per_device": float(f"{tl.kernel_flops / 1e9:.4g}")}
    return out

"""Train-state pieces against references: gradient accumulation equals the averaged micro-batch gradients,
bf16 compute keeps fp32 master weights and matches fp32, the schedule's shape, and EMA/raw export to safetensors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from musicflow_jax.core import config, flow, sharding
from musicflow_jax.data import loader as data
from musicflow_jax.models import stage_file as stage_io
from musicflow_jax.training import checkpoint, flow_step
from musicflow_jax.training import export as export_tool
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.training import logger as metrics
from musicflow_jax.training import state as train_state


def _one_device(cfg: config.Config):
    cfg = config.apply_overrides(cfg, ["mesh.shape=(1,1,1)"])
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    setup = flow_step.make_setup(cfg, mesh)
    encode, tp = train.load_text_encoder(cfg)
    batch = sharding.global_batch(next(iter(data.make_dataset(cfg, process_index=0, process_count=1))), mesh,
                                  setup.rules, cfg.data.batch_size)
    return cfg, setup, encode, jax.device_put(tp, sharding.replicated(mesh)), batch


@pytest.mark.slow
def test_grad_accumulation_matches_mean_of_micro_batch_gradients():
    cfg0 = config.load("stage1_tiny", ["optim.grad_accum=2", "model.depth=2"])
    cfg, setup, encode, tp, batch = _one_device(cfg0)
    state = flow_step.create_state(cfg, setup)
    params0 = jax.device_get(state.params)
    rest0 = state.rest
    new_state, m = flow_step.make_train_step(cfg, setup, encode)(state, batch, tp)
    jax.block_until_ready(m)

    # reference: the definition, written out: mean over micro-batches i of the flow loss with key fold_in(k, i)
    text_emb = jax.jit(encode)(tp, batch["text_ids"], batch["text_mask"])  # jitted: eager ops compile one by one
    full = {k: v for k, v in batch.items() if k != "text_ids"} | {"text_emb": text_emb}
    key = jax.random.fold_in(jax.random.key(cfg.train.seed), 0)

    def ref_loss(params):
        total = 0.0
        for i in range(2):
            mb = {k: v[4 * i: 4 * (i + 1)] for k, v in full.items()}
            model = nnx.merge(setup.graphdef, params, rest0)
            total += flow.flow_loss(lambda inp, model=model: model(inp, deterministic=True),
                                    jax.random.fold_in(key, i), mb, cfg.flow)[0]
        return total / 2

    loss, grads = jax.jit(jax.value_and_grad(ref_loss))(jax.device_put(params0, jax.devices()[0]))
    tx = train_state.make_optimizer(cfg)
    expected = jax.jit(lambda g, p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(grads, params0)
    np.testing.assert_allclose(float(m["loss"]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), float(jax.jit(optax.global_norm)(grads)), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_bf16_compute_keeps_fp32_master_weights():
    losses = {}
    for dtype in ("float32", "bfloat16"):
        # grad_accum=2: the float32 run is the gradient-accumulation test's program (one compile per session)
        cfg0 = config.load("stage1_tiny", [f"model.dtype={dtype}", "model.depth=2", "optim.grad_accum=2"])
        cfg, setup, encode, tp, batch = _one_device(cfg0)
        state = flow_step.create_state(cfg, setup)
        state, m = flow_step.make_train_step(cfg, setup, encode)(state, batch, tp)
        losses[dtype] = float(jax.block_until_ready(m)["loss"])
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.ema, state.opt_state))
                   if jnp.issubdtype(x.dtype, jnp.floating))
    assert losses["bfloat16"] != losses["float32"]  # the compute really ran in bf16
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)


def test_schedule_warmup_then_cosine_to_zero():
    cfg = config.load("stage1_tiny", ["optim.lr=1e-3", "optim.warmup_steps=10", "train.steps=110"])
    s = train_state.make_schedule(cfg)
    np.testing.assert_allclose([float(s(0)), float(s(5)), float(s(10)), float(s(60)), float(s(110))],
                               [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
    lin = train_state.make_schedule(config.apply_overrides(cfg, ["optim.schedule=linear"]))
    np.testing.assert_allclose([float(lin(10)), float(lin(60)), float(lin(110))], [1e-3, 5e-4, 0.0], atol=1e-9)


def test_export_writes_ema_weights_and_config(tmp_path):
    cfg = config.load("stage1_tiny", ["mesh.shape=(2,4,1)"])
    mesh = sharding.make_mesh(cfg.mesh)
    setup = flow_step.make_setup(cfg, mesh)
    state = flow_step.create_state(cfg, setup)
    state = state.replace(ema=jax.jit(lambda ps: jax.tree.map(lambda p: p * 0.5 + 0.25, ps))(state.params))  # != params
    mgr = checkpoint.make_manager(tmp_path, cfg)
    checkpoint.save(mgr, 7, state, cfg, force=True)
    mgr.wait_until_finished()
    mgr.close()
    for raw, ref in ((False, state.ema), (True, state.params)):
        out = export_tool.export(tmp_path, tmp_path / f"model_{raw}.safetensors", ema=not raw)
        got_cfg, model = stage_io.load_stage(out, expect_stage="semantic")
        assert got_cfg == cfg
        got = nnx.state(model, nnx.Param)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # sampling defaults chosen after training replace the run's in the stage file; the weights are the same
    chosen = config.SampleConfig(solver="euler", steps=3, cfg_scale=2.5)
    got_cfg, model = stage_io.load_stage(export_tool.export(tmp_path, tmp_path / "s.safetensors", sample=chosen))
    assert got_cfg == dataclasses.replace(cfg, sample=chosen) and got_cfg.sample != cfg.sample
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(state.ema)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_step_flops_count_every_scanned_layer():
    """XLA's cost analysis counts a scan's body once; flow_step.step_flops lowers the unrolled twin (same
    parameters), so a scanned model's MFU counts all its layers: it equals the unrolled model's count and the
    analytic 6N estimate within 10%."""
    cfg, setup, encode, tp, batch = _one_device(config.load("stage1_tiny", ["model.depth=8"]))
    scanned = flow_step.make_train_step(cfg, setup, encode).lower(setup.abstract_state, batch, tp)
    flops, source = flow_step.step_flops(cfg, setup.mesh, encode, setup.abstract_state, batch, tp)
    unrolled_cfg = config.apply_overrides(cfg, ["model.scan_layers=false"])
    unrolled_setup = flow_step.make_setup(unrolled_cfg, setup.mesh)
    unrolled = flow_step.make_train_step(unrolled_cfg, unrolled_setup, encode).lower(setup.abstract_state, batch, tp)
    assert source == "xla" and flops == metrics.program_flops(unrolled)
    assert metrics.program_flops(scanned) < 0.5 * flops  # one of the four layers per half
    analytic = metrics.analytic_flops(cfg, metrics.count_params(setup.abstract_state.params), metrics.count_params(tp))
    assert abs(flops - analytic) / analytic < 0.1, (flops, analytic)


def test_aot_compile_reports_per_device_memory():
    """pod/compile.py (python -m musicflow_jax.aot, tools/bench_train.py --aot): the train step compiles from abstract
    shapes on an 8-device FSDP mesh; XLA's memory analysis gives per-device sizes, and each device holds about 1/8 of
    the state (params, EMA, two Adam moments: 16 bytes per parameter), against that closed form."""
    from musicflow_jax.pod import compile as pod_compile

    cfg = config.load("stage1_tiny", ["model.depth=2", "model.dim=256", "model.mlp_dim=1024", "mesh.shape=(1,8,1)"])
    fsdp = pod_compile.report(pod_compile.train_step(cfg))
    mem = fsdp["memory_per_device_gib"]
    assert fsdp["compile_s"] > 0 and mem["argument"] > 0 and mem["temp"] > 0 and mem["peak"] > 0
    assert fsdp["step_gflop"] > 0 and fsdp["devices"] == 8 and fsdp["mesh"]["fsdp"] == 8
    state_gib = 16 * fsdp["params"] / 2**30
    # at least its slice of every array (+ rounding to 1e-3 GiB), far below the whole state that replication holds
    assert state_gib / 8 - 5e-4 <= mem["argument"] < 0.25 * state_gib, (mem, state_gib)

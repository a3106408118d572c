"""Sharded training on the 8-device CPU mesh: identical losses across mesh layouts, parameters sharded as the
rules say, and a checkpoint saved on one mesh restored onto another."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from musicflow_jax.core import config, sharding
from musicflow_jax.data import loader as data
from musicflow_jax.training import checkpoint, flow_step
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.training import state as train_state

MESHES = {"1dev": (1, 1, 1), "data8": (8, 1, 1), "data2_fsdp4": (2, 4, 1), "data2_fsdp2_tensor2": (2, 2, 2)}


def _cfg(shape: tuple[int, int, int], *extra: str) -> config.Config:
    return config.load("stage1_tiny",
                       [f"mesh.shape={shape}", "optim.warmup_steps=5", "model.depth=2", *extra])


def _setup(cfg: config.Config) -> tuple[flow_step.Setup, train_state.TrainState, object, object]:
    devices = jax.devices()[: math.prod(cfg.mesh.shape)]
    mesh = sharding.make_mesh(cfg.mesh, devices)
    setup = flow_step.make_setup(cfg, mesh)
    encode, text_params = train.load_text_encoder(cfg)
    text_params = jax.device_put(text_params, sharding.replicated(mesh))
    step = flow_step.make_train_step(cfg, setup, encode)
    return setup, flow_step.create_state(cfg, setup), step, text_params


def _run(cfg: config.Config, steps: int) -> list[float]:
    setup, state, step, text_params = _setup(cfg)
    it = iter(data.make_dataset(cfg, process_index=0, process_count=1))
    losses = []
    for _ in range(steps):
        batch = sharding.global_batch(next(it), setup.mesh, setup.rules, cfg.data.batch_size)
        state, m = step(state, batch, text_params)
        losses.append(float(jax.block_until_ready(m)["loss"]))
    return losses


@pytest.mark.slow
def test_same_losses_on_every_mesh_layout():
    ref = _run(_cfg(MESHES["1dev"]), 10)
    assert ref[-1] < ref[0]  # it learns something in 10 steps
    for name in ("data8", "data2_fsdp2_tensor2"):  # (2, 4, 1)'s layout: test_params_sharded_as_the_rules_say
        got = _run(_cfg(MESHES[name]), 10)
        np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=name)


def _expected_spec(var, mesh, rules) -> tuple:
    """Independent restatement of the rule: logical name -> mesh axis when it divides the dim, once per array."""
    names = var.get_metadata().get("out_sharding")
    shape = var.get_value().shape
    out, used = [], set()
    for name, size in zip(names, shape):
        axis = rules[name]
        ok = axis is not None and axis not in used and mesh.shape[axis] > 1 and size % mesh.shape[axis] == 0
        out.append(axis if ok else None)
        used |= {axis} if ok else set()
    return tuple(out)


@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2)])
def test_params_sharded_as_the_rules_say(shape):
    from flax import nnx

    cfg = _cfg(shape)
    mesh = sharding.make_mesh(cfg.mesh)
    setup = flow_step.make_setup(cfg, mesh)
    state = flow_step.create_state(cfg, setup)
    rules = dict(cfg.mesh.rules)
    abstract_vars = jax.tree.leaves(flow_step._abstract_init(cfg, setup.tx, flow_step.build_model)[1].params,
                                    is_leaf=lambda x: isinstance(x, nnx.Variable))
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    assert len(abstract_vars) == len(leaves) > 10
    total = split = 0
    for var, (path, arr) in zip(abstract_vars, leaves):
        spec = tuple(arr.sharding.spec) + (None,) * (arr.ndim - len(arr.sharding.spec))
        assert spec == _expected_spec(var, mesh, rules), jax.tree_util.keystr(path)
        # each device really holds only its slice
        n_split = math.prod(mesh.shape[a] for a in spec if a is not None)
        assert arr.addressable_shards[0].data.size * n_split == arr.size
        total += arr.nbytes
        split += arr.nbytes if n_split > 1 else 0
    # spot checks on known layers: the stacked (layers, embed, mlp) kernels are split over fsdp and tensor
    half = cfg.model.depth // 2
    mlp = [(jax.tree_util.keystr(p), a.sharding.spec) for p, a in leaves if a.shape == (half, 64, 128)]
    assert len(mlp) == 2 and all(tuple(s) == (None, "fsdp", "tensor" if shape[2] > 1 else None)[: len(s)]
                                 for _, s in mlp), mlp
    # optimizer moments and EMA follow the params
    mu = state.opt_state[1][0].mu
    for a, b in zip(jax.tree.leaves(mu), jax.tree.leaves(state.params)):
        assert a.sharding == b.sharding
    for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.params)):
        assert a.sharding == b.sharding
    if shape[1] == 4:
        assert split / total >= 0.9, split / total


@pytest.mark.slow
def test_restore_checkpoint_onto_another_mesh(tmp_path):
    cfg8 = _cfg((8, 1, 1))
    setup, state, step, tp = _setup(cfg8)
    it = iter(data.make_dataset(cfg8, process_index=0, process_count=1))
    for _ in range(3):
        state, m = step(state, sharding.global_batch(next(it), setup.mesh, setup.rules, 8), tp)
        jax.block_until_ready(m)
    mgr = checkpoint.make_manager(tmp_path, cfg8)
    checkpoint.save(mgr, 3, state, cfg8, force=True)
    mgr.wait_until_finished()
    ref_params = jax.device_get(state.params)
    next_local = next(it)  # the batch after the checkpoint
    state, m8 = step(state, sharding.global_batch(next_local, setup.mesh, setup.rules, 8), tp)
    loss8 = float(jax.block_until_ready(m8)["loss"])
    mgr.close()

    cfg_ft = _cfg(MESHES["data2_fsdp2_tensor2"])  # fsdp + tensor; the layout test compiled its step already
    setup2, _, step2, tp2 = _setup(cfg_ft)
    mgr2 = checkpoint.make_manager(tmp_path, cfg_ft)
    start, restored, saved_cfg = checkpoint.restore(mgr2, setup2.abstract_state)
    it2 = iter(data.make_dataset(cfg_ft, process_index=0, process_count=1, start_batch=start))
    mgr2.close()
    assert start == 3 and int(restored.step) == 3 and saved_cfg.mesh.shape == (8, 1, 1)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(ref_params)):
        np.testing.assert_array_equal(np.asarray(a), b)
    for a, s in zip(jax.tree.leaves(restored), jax.tree.leaves(setup2.state_shardings)):
        assert a.sharding == s
    local = next(it2)
    np.testing.assert_array_equal(local["x1"], next_local["x1"])  # the data position is the step
    restored, m = step2(restored, sharding.global_batch(local, setup2.mesh, setup2.rules, 8), tp2)
    np.testing.assert_allclose(float(jax.block_until_ready(m)["loss"]), loss8, rtol=1e-5)

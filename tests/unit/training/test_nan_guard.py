"""Non-finite steps: a forced NaN is skipped (params, optimizer and EMA untouched) and counted; a persistent
one stops training with a clear error and leaves the last good checkpoint intact."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from musicflow_jax.core import config, sharding
from musicflow_jax.data import loader as data
from musicflow_jax.training import checkpoint, flow_step, loop
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.training import logger as metrics
from musicflow_jax.training import state as train_state


def _cfg(*extra: str) -> config.Config:
    return config.load("stage1_tiny",
                       ["optim.warmup_steps=2", "train.eval_every=0", "model.depth=2", *extra])


def test_nan_step_is_skipped_and_counted():
    cfg = _cfg()
    mesh = sharding.make_mesh(cfg.mesh)
    setup = flow_step.make_setup(cfg, mesh)
    encode, tp = train.load_text_encoder(cfg)
    tp = jax.device_put(tp, sharding.replicated(mesh))
    step = flow_step.make_train_step(cfg, setup, encode)
    state = flow_step.create_state(cfg, setup)
    it = iter(data.make_dataset(cfg, process_index=0, process_count=1))
    state, m = step(state, sharding.global_batch(next(it), mesh, setup.rules, 8), tp)
    assert bool(jax.block_until_ready(m)["finite"])
    schedule = train_state.make_schedule(cfg)
    assert float(m["lr"]) == float(schedule(0)) == 0.0  # the logged lr is the one the step applied
    before = jax.device_get(state)
    bad = next(it)
    bad["x1"] = bad["x1"].copy()
    bad["x1"][0, 3, 0] = np.nan
    state, m = step(state, sharding.global_batch(bad, mesh, setup.rules, 8), tp)
    m = jax.device_get(jax.block_until_ready(m))
    assert not m["finite"] and np.isnan(m["loss"]) and int(m["nan_in_row"]) == 1 and int(m["nan_total"]) == 1
    after = jax.device_get(state)
    assert int(after.step) == int(before.step) + 1
    for name in ("params", "opt_state", "ema", "rest"):
        for a, b in zip(jax.tree.leaves(getattr(after, name)), jax.tree.leaves(getattr(before, name))):
            np.testing.assert_array_equal(a, b, err_msg=name)
    state, m = step(state, sharding.global_batch(next(it), mesh, setup.rules, 8), tp)
    m = jax.device_get(jax.block_until_ready(m))
    assert m["finite"] and int(m["nan_in_row"]) == 0 and int(m["nan_total"]) == 1
    np.testing.assert_allclose(m["lr"], schedule(1), rtol=1e-6)  # the skipped step did not advance the schedule
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(after.params))]
    assert all(changed)


@pytest.mark.slow
def test_persistent_nan_stops_with_last_good_checkpoint(tmp_path):
    cfg = _cfg("train.steps=40", "train.log_every=1", "train.ckpt_every=5", "train.max_nan_in_row=3")

    def hook(step: int, batch: dict) -> dict:
        if step == 2 or step >= 7:  # one isolated NaN step, then NaN for good
            batch = dict(batch, x1=np.full_like(batch["x1"], np.nan))
        return batch

    with pytest.raises(loop.TrainingDivergedError, match=r"3 non-finite steps in a row.*Last good checkpoint: step 5"):
        train.train(cfg, tmp_path, batch_hook=hook)
    rows = {r["step"]: r for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")}
    assert np.isnan(rows[3]["loss"]) and rows[3]["nan_skipped_total"] == 1
    assert all(np.isfinite(rows[s]["loss"]) for s in (1, 2, 4, 5, 6, 7))
    assert rows[7]["nan_skipped_total"] == 1 and rows[10]["nan_skipped_total"] == 4 and max(rows) == 10
    mgr = checkpoint.make_manager(tmp_path, cfg)
    assert mgr.all_steps() == [5]
    setup = flow_step.make_setup(cfg, sharding.make_mesh(cfg.mesh))
    step, state, _ = checkpoint.restore(mgr, setup.abstract_state)
    mgr.close()
    assert step == 5 and int(state.step) == 5 and int(state.nan_total) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))

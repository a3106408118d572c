"""Broken checkpoints: a truncated newest step falls back to the previous one (warning naming the skipped step, the
broken folder set aside so the resumed run saves that step again); non-finite parameters count as unrestorable; no
restorable step, an incompatible model shape (through the train CLI) and a missing export step are one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from musicflow_jax.cli import export as export_cli
from musicflow_jax.cli import train as train_cli
from musicflow_jax.core import config, sharding
from musicflow_jax.testing.cli import run_main
from musicflow_jax.training import checkpoint, flow_step
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.training import logger as metrics

OVERRIDES = ["train.steps=3", "train.ckpt_every=1", "train.keep=3", "train.log_every=1", "train.eval_every=0",
             "model.depth=2"]


def _cfg(*extra: str) -> config.Config:
    return config.load("stage1_tiny", [*OVERRIDES, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 3-step run with checkpoints at steps 1, 2 and 3."""
    workdir = tmp_path_factory.mktemp("ckpt") / "run"
    train.train(_cfg(), workdir, async_ckpt=False)
    return workdir


@pytest.fixture()
def work(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _truncate_state(workdir: Path, step: int) -> Path:
    """Truncate the largest data file of the step's state (as a full disk or a killed copy would leave it)."""
    files = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(100)
    return biggest


def _restore(workdir: Path, cfg: config.Config, **kw):
    mgr = checkpoint.make_manager(workdir, cfg, async_save=False)
    setup = flow_step.make_setup(cfg, sharding.make_mesh(cfg.mesh))
    try:
        return checkpoint.restore(mgr, setup.abstract_state, **kw), mgr.all_steps()
    finally:
        mgr.close()


def _assert_same_params(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_truncated_newest_checkpoint_falls_back_and_training_resumes(work, run, capsys):
    cfg = _cfg()
    (_, want, _), _ = _restore(run, cfg, step=2)
    _truncate_state(work, 3)
    (step, state, saved_cfg), steps = _restore(work, cfg, set_aside_broken=True)
    assert step == 2 and int(state.step) == 2 and saved_cfg == cfg
    _assert_same_params(state.params, want.params)
    err = capsys.readouterr().err
    assert f"warning: checkpoint step 3 in {work / 'checkpoints'} cannot be restored (" in err
    assert "falling back to step 2" in err
    assert steps == [1, 2]
    aside = [p.name for p in (work / "checkpoints").iterdir() if p.name.startswith("3.unrestorable.")]
    assert len(aside) == 1  # kept for inspection, no longer a step
    # the resumed run redoes step 3 (saving it again) and goes on
    train.train(_cfg("train.steps=4"), work, async_ckpt=False)
    mgr = checkpoint.make_manager(work, cfg)
    assert mgr.all_steps() == [2, 3, 4]
    mgr.close()
    rows = metrics.read_jsonl(work / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 3, 4]  # the lost step 3 was trained again


def test_non_finite_checkpoint_is_skipped(work, capsys):
    cfg = _cfg()
    (_, state, _), _ = _restore(work, cfg, step=3)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state.params)
    bad_path = "params." + checkpoint._dotted(leaves[1][0])
    arrays = [np.asarray(x).copy() for _, x in leaves]
    arrays[1].reshape(-1)[0] = np.inf  # what a flipped exponent bit gives
    state = state.replace(params=jax.tree_util.tree_unflatten(treedef, arrays))
    mgr = checkpoint.make_manager(work, cfg, async_save=False)
    checkpoint.save(mgr, 4, state, cfg, force=True)
    mgr.wait_until_finished()
    mgr.close()
    (step, restored, _), _ = _restore(work, cfg)
    assert step == 3 and int(restored.step) == 3
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
    err = capsys.readouterr().err
    assert (f"warning: checkpoint step 4 in {work / 'checkpoints'} cannot be restored (non-finite values (NaN/Inf) "
            f"in '{bad_path}'); falling back to step 3") in err


def test_no_restorable_checkpoint_is_one_line(work):
    for s in (1, 2, 3):
        _truncate_state(work, s)
    with pytest.raises(checkpoint.CheckpointError) as e:
        _restore(work, _cfg())
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"no restorable checkpoint in {work / 'checkpoints'} (step 3: ")
    assert "; step 2: " in msg and "; step 1: " in msg and msg.endswith("or use a new --workdir")


def test_resume_with_another_model_size_is_one_line_exit_2(work, capsys):
    proc = run_main(train_cli.main, ["--config", "stage1_tiny", "--workdir", str(work),
                                     *[a for o in [*OVERRIDES, "model.dim=128"] for a in ("--set", o)]], capsys)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == (
        f"error: checkpoint step 3 in {work / 'checkpoints'} does not fit this model: "
        "'params.down.layers.block.cross_attn.null_k.value' has shape (1, 4, 16) in the checkpoint but (1, 4, 32) in "
        "the model (was a model size such as model.dim changed?): resume with the config the run was trained with "
        "(see its config.json) or use a new --workdir")
    assert not (work / "train.lock").exists()


def test_export_missing_step_lists_the_steps(work, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    proc = run_main(export_cli.main, ["--workdir", str(work), "--out", str(out), "--step", "123"], capsys)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: no checkpoint step 123 in {work / 'checkpoints'}; available steps: 1, 2, 3: pass one of them"]
    assert not out.exists()
    proc = run_main(export_cli.main, ["--workdir", str(tmp_path / "nowhere"), "--out", str(out)], capsys)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: no checkpoint steps under {tmp_path / 'nowhere' / 'checkpoints'}: is {tmp_path / 'nowhere'} a "
        "training run folder?"]
    for bad, msg in ((tmp_path, f"error: --out {tmp_path} is a folder: give the stage file to write"),
                     (Path("/proc/model.safetensors"), "error: --out /proc/model.safetensors: cannot create files "
                      "under /proc")):  # the latter was a traceback after the checkpoint was read
        proc = run_main(export_cli.main, ["--workdir", str(work), "--out", str(bad)], capsys)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(msg), proc.stderr[-3000:]

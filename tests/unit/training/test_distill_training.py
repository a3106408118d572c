"""Few-step students in the trainer (distill.teacher; flow.distill_loss): the student starts as its teacher (step 0's
loss is zero where the target is the teacher's velocity), the distillation step gives the same losses on every mesh
layout, a run resumes exactly (and refuses a changed teacher), and an exported student in a model folder samples with
its own sampler (the folder's defaults: 'average', 2 jumps, no doubled batch) with in-context frames bit-exact."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musicflow_jax.cli import export as export_cli
from musicflow_jax.core import config, flow, sharding
from musicflow_jax.data import loader as data
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.models.stage_file import save_stage
from musicflow_jax.models.transformer import FlowTransformer
from musicflow_jax.testing.cli import one_error_line, run_main
from musicflow_jax.testing.model_folders import tiny_configs, tone
from musicflow_jax.training import distill, flow_step
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.training.state import merge_model

STUDENT = ["model.interval=true", "sample.solver=average", "sample.steps=2", "sample.cfg_scale=1.0"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported stage1_tiny (depth 2) stage with random weights."""
    cfg = config.load("stage1_tiny", ["model.depth=2"])
    return save_stage(tmp_path_factory.mktemp("teacher") / "teacher.safetensors", cfg,
                      FlowTransformer(cfg, rngs=nnx.Rngs(3)))


def _cfg(teacher: Path, shape: tuple[int, int, int], *extra: str) -> config.Config:
    return config.load("stage1_tiny", ["model.depth=2", f"mesh.shape={shape}", "optim.warmup_steps=2", *STUDENT,
                                       f"distill.teacher={teacher}", *extra])


def _setup(cfg: config.Config):
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[: math.prod(cfg.mesh.shape)])
    setup = flow_step.make_setup(cfg, mesh)
    encode, text_params = train.load_text_encoder(cfg, mesh)
    spec, weights, base = distill.load_teacher(cfg, mesh)
    state = flow_step.create_state(cfg, setup, base=base)
    return setup, state, flow_step.make_train_step(cfg, setup, encode, spec), text_params, weights, spec


def _run(cfg: config.Config, steps: int) -> list[float]:
    setup, state, step, tp, weights, _ = _setup(cfg)
    it = iter(data.make_dataset(cfg, process_index=0, process_count=1))
    losses = []
    for _ in range(steps):
        state, m = step(state, sharding.global_batch(next(it), setup.mesh, setup.rules, cfg.data.batch_size), tp,
                        weights)
        losses.append(float(jax.block_until_ready(m)["loss"]))
    return losses


def test_student_starts_as_its_teacher(teacher: Path) -> None:
    """The student's velocity is the teacher's for any interval (its interval embedding starts at zero), so with
    s = t and no guidance the first distillation step's loss is zero."""
    cfg = _cfg(teacher, (1, 1, 1), "distill.cfg_scale=1.0", "distill.p_instant=1.0")
    setup, state, step, tp, weights, spec = _setup(cfg)
    student = merge_model(setup.graphdef, state.params, state.frozen, state.rest)
    t_model = nnx.merge(spec.graphdef, *weights)
    b, n = 2, cfg.data.frames
    keys = jax.random.split(jax.random.key(0), 4)
    inp = flow.FlowInput(jax.random.normal(keys[0], (b, n, 32)), jnp.zeros((b, n, 32)),
                         jax.random.uniform(keys[1], (b,)), jax.random.normal(keys[2], (b, 5, 32)),
                         jnp.ones((b, 5), bool))
    np.testing.assert_array_equal(np.asarray(student(inp._replace(s_b=jnp.array([0.9, 1.0])))),
                                  np.asarray(t_model(inp)))
    it = iter(data.make_dataset(cfg, process_index=0, process_count=1))
    _, m = step(state, sharding.global_batch(next(it), setup.mesh, setup.rules, cfg.data.batch_size), tp, weights)
    assert float(m["loss"]) < 1e-10


@pytest.mark.slow
def test_same_distillation_losses_on_every_mesh_layout(teacher: Path) -> None:
    ref = _run(_cfg(teacher, (1, 1, 1)), 4)
    assert all(np.isfinite(ref)) and ref[0] > 0
    for shape in ((2, 2, 2),):  # data x fsdp x tensor
        np.testing.assert_allclose(_run(_cfg(teacher, shape), 4), ref, rtol=1e-5, err_msg=str(shape))


@pytest.mark.slow
def test_resume_is_exact_and_the_exported_student_samples_with_its_own_sampler(
        teacher: Path, tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # a student of the tiny model folder's stage 1: 4 steps straight vs 2 + resume + 2
    c1, _ = tiny_configs()
    t_path = tiny_folder / "stage1.safetensors"
    cfg = config.apply_overrides(c1, ["mesh.shape=(1,1,1)", *STUDENT, f"distill.teacher={t_path}", "train.steps=4",
                                      "train.ckpt_every=2", "train.log_every=1", "train.eval_every=0",
                                      "train.sample_every=0", "optim.warmup_steps=1"])
    one = jax.devices()[:1]
    straight = train.train(cfg, tmp_path / "a", devices=one, async_ckpt=False)
    train.train(cfg, tmp_path / "b", devices=one, async_ckpt=False, stop_at=2)
    resumed = train.train(cfg, tmp_path / "b", devices=one, async_ckpt=False)
    for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a changed teacher is refused on resume
    moved = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher=str(tmp_path / "other.st")))
    save_stage(tmp_path / "other.st", c1, FlowTransformer(c1, rngs=nnx.Rngs(9)))
    with pytest.raises(train.TrainInputError, match="distill.teacher"):
        train.check_init_source(moved, tmp_path / "b", resuming=True)

    # exported into a copy of the folder as its stage 1: the folder's defaults are the student's sampler
    folder = tmp_path / "folder"
    shutil.copytree(tiny_folder, folder)
    assert run_main(export_cli.main, ["--workdir", str(tmp_path / "a"), "--out", str(folder / "stage1.safetensors")],
                    capsys).returncode == 0
    mf = MusicFlow.load(folder)
    g = mf.generate(["a calm piano piece"], 1.0, seed=0, progress=False)
    assert g.nfe["stage1"] == 2 and g.settings["stage1"]["solver"] == "average"
    assert np.isfinite(g.audio).all()
    prompt = tone(0.5)
    c = mf.continue_(["a calm piano piece"], prompt, 1.0, seed=0, progress=False)
    n_s = c.prompt_semantic.shape[0]
    np.testing.assert_array_equal(c.semantic[0, :n_s], c.prompt_semantic)


def test_a_missing_teacher_is_one_error_line_naming_its_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from musicflow_jax.cli import train as train_cli

    done = run_main(train_cli.main, ["--config", "stage1_tiny", "--workdir", str(tmp_path / "run"),
                                     *[a for o in STUDENT for a in ("--set", o)],
                                     "--set", f"distill.teacher={tmp_path / 'nope.safetensors'}"], capsys)
    one_error_line(done, f"distill.teacher {tmp_path / 'nope.safetensors'} does not exist")

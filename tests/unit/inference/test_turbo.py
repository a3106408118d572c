"""A model folder's few-step students (turbo/, model_folder.write_turbo): drafts run them at their own sampler (2
average-velocity jumps per window, no doubled batch) and give exactly what `turbo=True` / `generate --turbo` gives;
refining such a draft runs the teacher's stage 2 over its semantic stream bit for bit; stages given in place of the
folder's drop the students (they are the folder's stages' students); float16 stage files hold the float32 weights
rounded to float16 in half the bytes; wrong students and a missing turbo/ are one-line errors."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from musicflow_jax.app.studio import Limits, Studio
from musicflow_jax.cli import generate as generate_cli
from musicflow_jax.core.audio import read_wav_metadata
from musicflow_jax.core.config import Config, SampleConfig
from musicflow_jax.inference import model_folder
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.inference.checks import DRAFT_STEPS, GenerateError, StageSettings
from musicflow_jax.models.params import flat_params
from musicflow_jax.models.stage_file import load_stage, save_stage
from musicflow_jax.models.transformer import FlowTransformer
from musicflow_jax.testing.cli import one_error_line, run_main
from musicflow_jax.testing.model_folders import tiny_configs

TEXT = ["a calm piano piece"]


def student_config(cfg: Config) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, interval=True),
                               sample=SampleConfig(solver="average", steps=2, cfg_scale=1.0))


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Students of the tiny folder's two stages (random weights: the plumbing is under test), stored in float16."""
    out = tmp_path_factory.mktemp("students")
    files = []
    for i, cfg in enumerate(tiny_configs(), start=1):
        s = student_config(cfg)
        files.append(save_stage(out / f"turbo{i}.safetensors", s, FlowTransformer(s, rngs=nnx.Rngs(10 + i)),
                                store_dtype="float16"))
    return files[0], files[1]


@pytest.fixture(scope="module")
def folder(tiny_folder: Path, students: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("turbo") / "model"
    shutil.copytree(tiny_folder, folder)
    model_folder.write_turbo(folder, *students)
    return folder


def test_float16_stage_file_is_the_rounded_weights_in_half_the_bytes(tmp_path: Path) -> None:
    cfg = tiny_configs()[0]
    model = FlowTransformer(cfg, rngs=nnx.Rngs(0))
    f32 = save_stage(tmp_path / "a.safetensors", cfg, model)
    f16 = save_stage(tmp_path / "b.safetensors", cfg, model, store_dtype="float16")
    assert f16.stat().st_size < 0.55 * f32.stat().st_size
    want, got = flat_params(model), flat_params(load_stage(f16)[1])
    for k, v in want.items():
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v.astype(np.float16).astype(np.float32), err_msg=k)
    with pytest.raises(Exception, match="store_dtype 'int8'"):
        save_stage(tmp_path / "c.safetensors", cfg, model, store_dtype="int8")


def test_drafts_run_the_students_as_turbo_does(folder: Path) -> None:
    mf = MusicFlow.load(folder)
    assert mf.turbo is not None and [st.cfg.model.interval for st in mf.turbo] == [True, True]
    assert mf.turbo[0].text is mf.stages[0].text  # one text encoder for both
    d = mf.generate(TEXT, 2.0, seed=3, progress=False, draft=True)
    windows = [st.num_windows(st.frames(2.0), 0.5) for st in mf.stages]
    assert windows == [3, 3]  # 1-s windows, half overlap
    assert d.nfe == {"stage1": 2 * windows[0], "stage2": 2 * windows[1]}  # 2 jumps a window, one batch
    assert d.settings["stage1"]["solver"] == d.settings["stage2"]["solver"] == "average"
    t = MusicFlow.load(folder, turbo=True).generate(TEXT, 2.0, seed=3, progress=False)
    np.testing.assert_array_equal(t.audio, d.audio)
    np.testing.assert_array_equal(t.semantic, d.semantic)
    # refine: the teacher's stage 2 (its euler steps) over the draft's semantic stream, kept bit for bit
    r = mf.refine(d, progress=False)
    np.testing.assert_array_equal(r.semantic, d.semantic)
    teacher = mf.stages[1].settings
    assert r.settings["stage2"]["solver"] == teacher.solver and r.nfe["stage2"] == teacher.steps * windows[1]
    assert not np.array_equal(r.acoustic, d.acoustic)


def test_the_apps_draft_button_runs_the_students(folder: Path, tiny_mf: MusicFlow, tmp_path: Path) -> None:
    """The page's settings (here 8 midpoint steps at CFG 3) give way to the students' own sampler; without students
    the draft is the stages at DRAFT_STEPS midpoint steps with the page's guidance and temperature."""
    page = (StageSettings(steps=8, solver="midpoint", cfg_scale=3.0, temperature=0.6),) * 2
    studio = Studio(MusicFlow.load(folder), tmp_path / "a", limits=Limits(max_duration=2.0))
    s = studio.draft_settings(page)
    assert s == (StageSettings(steps=2, solver="average", cfg_scale=1.0),) * 2
    g, _ = studio.run("generate", TEXT[0], 1.0, 0, 1, None, "", s, True)
    assert g.mode == "draft" and g.nfe == {"stage1": 2, "stage2": 2}
    plain = Studio(tiny_mf, tmp_path / "b", limits=Limits(max_duration=2.0)).draft_settings(page)
    assert plain == (StageSettings(steps=DRAFT_STEPS, solver="midpoint", cfg_scale=3.0, temperature=0.6),) * 2


def test_stages_given_in_place_of_the_folders_drop_its_students(folder: Path, tiny_folder: Path) -> None:
    mf = MusicFlow.load(folder, stage1=tiny_folder / "stage1.safetensors")
    assert mf.turbo is None
    d = mf.generate(TEXT, 1.0, seed=0, progress=False, draft=True)
    assert d.settings["stage1"]["solver"] == "midpoint"  # the teacher's draft: DRAFT_STEPS midpoint steps


def test_wrong_students_and_a_missing_turbo_are_one_line_errors(folder: Path, tiny_folder: Path, students,
                                                                tmp_path: Path, capsys) -> None:
    other = tmp_path / "model"
    shutil.copytree(tiny_folder, other)
    with pytest.raises(GenerateError, match="not a few-step student"):  # the teachers themselves
        model_folder.write_turbo(other, tiny_folder / "stage1.safetensors", tiny_folder / "stage2.safetensors")
    with pytest.raises(GenerateError, match="stage 2 .* given as stage 1|swap"):
        model_folder.write_turbo(other, students[1], students[0])
    assert not model_folder.has_turbo(other)
    done = run_main(generate_cli.main, ["--checkpoint", str(other), "--turbo", "--text", TEXT[0], "--duration", "1",
                                        "--out", str(tmp_path / "x.wav")], capsys)
    one_error_line(done, "--turbo", "no turbo/ stages")
    # generate --turbo with the students: its WAV names their sampler
    done = run_main(generate_cli.main, ["--checkpoint", str(folder), "--turbo", "--text", TEXT[0], "--duration", "1",
                                        "--out", str(tmp_path / "t.wav"), "--quiet", "--no-spectrogram"], capsys)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = read_wav_metadata(tmp_path / "t.wav")
    assert meta["steps"] == [2, 2] and meta["solver"] == ["average", "average"] and meta["cfg"] == [1.0, 1.0]

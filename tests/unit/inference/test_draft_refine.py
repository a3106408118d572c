"""Draft then refine on the tiny random two-stage model: a draft runs both stages at 4 midpoint steps, refine keeps
its semantic stream bit for bit and redoes stage 2 at full quality (API with a Generation or a draft file, and the
CLI's --draft / --refine); Generation.save / load round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.cli import generate
from musicflow_jax.core.audio import read_audio, read_wav_metadata
from musicflow_jax.inference.cascade import DRAFT_STEPS, GenerateError, MusicFlow, StageSettings
from musicflow_jax.inference.generation import Generation, read_draft
from musicflow_jax.testing.cli import one_error_line, run_main

TEXTS = ["a calm organ chorale in G minor", "a fast jazz piano trio"]


@pytest.fixture(scope="module")
def draft(tiny_mf: MusicFlow) -> Generation:
    return tiny_mf.generate(TEXTS, 0.8, seed=7, draft=True, progress=False)


def test_draft_is_cheap_and_refine_keeps_its_semantic_stream(tiny_mf: MusicFlow, draft: Generation) -> None:
    full = tiny_mf.generate(TEXTS, 0.8, seed=7, progress=False)  # tiny configs: euler 4 steps per stage
    assert draft.mode == "draft" and draft.nfe == {"stage1": 2 * DRAFT_STEPS, "stage2": 2 * DRAFT_STEPS}
    assert draft.settings["stage1"]["solver"] == "midpoint" and full.settings["stage1"]["solver"] == "euler"
    r = tiny_mf.refine(draft, progress=False)
    assert r.mode == "refine" and r.nfe == {"stage1": 0, "stage2": full.nfe["stage2"]} and list(r.settings) == [
        "stage2"]
    np.testing.assert_array_equal(r.semantic, draft.semantic)  # bit for bit
    assert r.texts == TEXTS and r.seed == 7 and r.audio.shape == draft.audio.shape
    assert not np.allclose(r.acoustic, draft.acoustic, atol=1e-3)  # stage 2 really ran again
    # same seed -> the same stage-2 noise: refining a draft is exactly stage 1 at the draft's settings + stage 2 at
    # the defaults (what tools/quality_table.py's refine row evaluates), and refining a full run reproduces it
    mixed = tiny_mf.generate(TEXTS, 0.8, seed=7, stage1=tiny_mf.draft_settings(tiny_mf.stages[0]), progress=False)
    np.testing.assert_allclose(r.acoustic, mixed.acoustic, atol=1e-6)
    np.testing.assert_allclose(r.audio, mixed.audio, atol=1e-6)
    again = tiny_mf.refine(full, progress=False)
    np.testing.assert_allclose(again.acoustic, full.acoustic, atol=1e-6)
    np.testing.assert_allclose(again.audio, full.audio, atol=1e-6)
    # another text for the same draft: the semantic stream still kept exactly
    other = tiny_mf.refine(draft, ["a church organ", "a church organ"], seed=1, progress=False)
    np.testing.assert_array_equal(other.semantic, draft.semantic)
    assert not np.allclose(other.acoustic, r.acoustic, atol=1e-3)


def test_draft_file_refines_like_the_generation(tiny_mf: MusicFlow, draft: Generation, tmp_path: Path) -> None:
    path = draft.save_draft(1, tmp_path / "jazz.draft.npz")
    d = read_draft(path)
    np.testing.assert_array_equal(d.semantic, draft.semantic[1])
    assert (d.text, d.seed, d.duration) == (TEXTS[1], 7, pytest.approx(0.8))
    from_file = tiny_mf.refine(path, progress=False)
    from_gen = tiny_mf.refine(draft, progress=False)
    np.testing.assert_array_equal(from_file.semantic[0], draft.semantic[1])
    np.testing.assert_allclose(from_file.acoustic[0], from_gen.acoustic[1], atol=1e-5)  # alone, with its row id
    np.testing.assert_allclose(from_file.audio[0], from_gen.audio[1], atol=1e-5)
    bad = tmp_path / "bad.draft.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(GenerateError, match=r"^draft .*bad\.draft\.npz is not a draft file"):
        tiny_mf.refine(bad)
    with pytest.raises(GenerateError, match="^draft is a continue result: refine works on text-to-music"):
        tiny_mf.refine(Generation(**{**draft.__dict__, "mode": "continue"}))
    with pytest.raises(GenerateError, match="^draft: its semantic stream is"):
        tiny_mf.refine(Generation(**{**draft.__dict__, "semantic": draft.semantic[:, :10]}))


def test_generation_save_load_round_trip(draft: Generation, tmp_path: Path) -> None:
    wavs = draft.save(tmp_path / "gen", spectrograms=True)
    assert [w.name for w in wavs] == ["00.wav", "01.wav"] and (tmp_path / "gen" / "01.png").stat().st_size > 1000
    g = Generation.load(tmp_path / "gen")
    np.testing.assert_array_equal(g.audio, draft.audio)  # float WAV: exact
    np.testing.assert_array_equal(g.semantic, draft.semantic)
    np.testing.assert_array_equal(g.acoustic, draft.acoustic)
    assert (g.texts, g.seed, g.mode, g.nfe, g.settings) == (draft.texts, 7, "draft", draft.nfe, draft.settings)
    assert read_wav_metadata(wavs[1])["text"] == TEXTS[1]


def test_cli_draft_then_refine(tiny_folder: Path, tiny_mf: MusicFlow, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    base = ["--checkpoint", str(tiny_folder), "--quiet", "--no-spectrogram"]
    assert generate.main([*base, "--text", TEXTS[0], "--text", TEXTS[1], "--duration", "0.8", "--seed", "7",
                          "--draft", "--out", str(tmp_path / "d.wav")]) == 0
    drafts = sorted(tmp_path.glob("*.draft.npz"))
    assert [p.name for p in drafts] == ["d_0.draft.npz", "d_1.draft.npz"]
    assert read_wav_metadata(tmp_path / "d_1.wav")["mode"] == "draft"
    assert generate.main([*base, "--refine", str(drafts[1]), "--out", str(tmp_path / "r.wav")]) == 0
    meta = read_wav_metadata(tmp_path / "r.wav")
    assert meta["mode"] == "refine" and meta["text"] == TEXTS[1] and meta["seed"] == 7
    want = tiny_mf.refine(tiny_mf.generate(TEXTS, 0.8, seed=7, draft=True, progress=False), progress=False)
    got, _ = read_audio(tmp_path / "r.wav", mono=True)
    np.testing.assert_allclose(got, want.audio[1], atol=1.5 / 32768)  # PCM-16 WAV
    bad = run_main(generate.main, [*base, "--refine", str(drafts[0]), "--duration", "3"], capsys)
    assert one_error_line(bad) == (
        "error: --duration does not go with --refine: a refined clip keeps its draft's length and semantic stream")
    missing = run_main(generate.main, [*base, "--refine", str(tmp_path / "nope.draft.npz")], capsys)
    one_error_line(missing, "does not exist: give the .draft.npz written by generate --draft")


def test_draft_settings_can_be_overridden(tiny_mf: MusicFlow) -> None:
    g = tiny_mf.generate(TEXTS[:1], 0.4, draft=True, stage2=StageSettings(steps=1, solver="euler"), progress=False)
    assert g.nfe == {"stage1": 2 * DRAFT_STEPS, "stage2": 1}

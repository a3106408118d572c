"""The cascade gives a stage with model.beat its captions' beat grid (core/beat.py): from the clip's start for
text-to-music, in phase with the prompt for continuation, all zero for a caption naming no tempo; cut window by
window like the other frame-aligned conditions."""

from __future__ import annotations

import numpy as np
import pytest

from musicflow_jax.core import beat
from musicflow_jax.inference import cascade, longform
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.testing.model_folders import make_model_folder

RATE = 50.0


@pytest.fixture(scope="module")
def beat_mf(tmp_path_factory: pytest.TempPathFactory) -> MusicFlow:
    return MusicFlow.load(make_model_folder(tmp_path_factory.mktemp("beat_model"), beat=True))


@pytest.fixture
def grids(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, np.ndarray | None]]:
    """Each window's (stage feature dim, beat grid) as the sampler receives them."""
    seen: list[tuple[int, np.ndarray | None]] = []
    real = cascade.sample

    def spy(model, key, **kw):
        seen.append((kw["ctx"].shape[-1], None if kw.get("beat") is None else np.asarray(kw["beat"])))
        return real(model, key, **kw)

    monkeypatch.setattr(cascade, "sample", spy)
    return seen


def _stage1(seen: list, mf: MusicFlow) -> list[np.ndarray]:
    dim1 = mf.stages[0].cfg.model.feature_dim
    assert all(g is None for d, g in seen if d != dim1), "stage 2 has no model.beat: it gets no grid"
    return [g for d, g in seen if d == dim1]


def test_text_to_music_grids_start_with_the_clip(beat_mf: MusicFlow, grids: list) -> None:
    texts = ["A Bach chorale in G major at 120 BPM played on a piano", "an organ chorale in D minor"]
    beat_mf.generate(texts, duration=1.8, seed=0, progress=False)
    windows = _stage1(grids, beat_mf)
    plan = longform.plan_windows(90, 50, 25)  # 90 frames in 1-s windows overlapping by half
    assert len(windows) == len(plan) == 3
    whole = beat.features(np.array([120.0, 0.0]), np.zeros(2), 90, RATE)
    for (s, e), w in zip(plan, windows):
        np.testing.assert_allclose(w[:, : e - s], whole[:, s:e], atol=1e-6)
    assert not windows[0][1].any(), "a caption naming no tempo has no grid"
    np.testing.assert_allclose(windows[0][0, [0, 25], :2], [[1, 0], [1, 0]], atol=1e-6)  # 120 BPM: a beat per 25 frames


def _clicks(seconds: float, bpm: float, beat0: float, sr: int = 24_000) -> np.ndarray:
    """Short decaying tone bursts on the beats of a grid that is `beat0` beats in at the first sample."""
    x = np.zeros(int(seconds * sr), np.float32)
    t = np.arange(int(0.12 * sr)) / sr
    burst = (np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 660 * t)) * np.exp(-t / 0.03)
    first = (1 - beat0) % 1 * 60 / bpm
    for start in np.arange(first, seconds, 60 / bpm):
        i = int(round(start * sr))
        n = min(len(burst), len(x) - i)
        x[i:i + n] += 0.5 * burst[:n]
    return x


@pytest.mark.parametrize("beat0", [0.0, 0.35, 0.7])
def test_continuation_grid_is_in_phase_with_the_prompt(beat_mf: MusicFlow, monkeypatch: pytest.MonkeyPatch,
                                                       beat0: float) -> None:
    made = []
    real = cascade.beat_grid
    monkeypatch.setattr(cascade, "beat_grid", lambda *a: made.append(real(*a)) or made[-1])
    prompt = _clicks(1.6, 100.0, beat0)
    beat_mf.continue_(["a piano piece at 100 BPM"], prompt, duration=2.0, seed=0, progress=False)
    whole = made[0][0]  # stage 1's grid over the whole clip
    assert made[1] is None and whole.shape == (100, 5)
    got = np.mod(np.arctan2(whole[0, 1], whole[0, 0]) / (2 * np.pi), 1.0)  # the grid's phase at frame 0
    d = abs(got - beat0) % 1
    assert min(d, 1 - d) < 0.06, (got, beat0)

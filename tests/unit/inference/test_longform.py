"""Long-form windowing: window plans, exact context/crossfade arithmetic with a traceable sampler, audio-domain
crossfade, and end-to-end long-form generation (length + no discontinuity at the seams) on a tiny model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from musicflow_jax.inference import longform
from musicflow_jax.inference.cascade import MusicFlow, StageSettings
from musicflow_jax.testing.model_folders import make_model_folder


@pytest.mark.parametrize("total,window,overlap", [(10, 10, 5), (7, 10, 5), (23, 10, 5), (100, 30, 10), (31, 30, 0)])
def test_plan_windows_cover_with_full_windows(total: int, window: int, overlap: int) -> None:
    wins = longform.plan_windows(total, window, overlap)
    assert wins[0][0] == 0 and wins[-1][1] == total
    covered = np.zeros(total, bool)
    for s, e in wins:
        assert e - s == min(window, total)
        covered[s:e] = True
    assert covered.all()
    for (_, e0), (s1, _) in zip(wins, wins[1:]):
        assert s1 <= e0 - overlap  # consecutive windows share at least `overlap` frames
    with pytest.raises(ValueError):
        longform.plan_windows(total, window, window)


def test_generate_windowed_context_and_crossfade_exact() -> None:
    b, n, d, window, overlap, xf = 2, 23, 3, 10, 4, 2
    prompt = np.random.default_rng(0).normal(size=(b, n, d)).astype(np.float32)
    gen = np.ones((b, n), bool)
    gen[:, :3] = False  # a 3-frame prompt
    calls = []

    def sampler(key: jax.Array, ctx: np.ndarray, gen_w: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        k = len(calls)
        calls.append((ctx.copy(), gen_w.copy()))
        return np.where(gen_w[..., None], 100.0 * (k + 1), ctx)  # window k writes the constant 100 (k + 1)

    out = longform.generate_windowed(sampler, jax.random.key(0), prompt, gen, None, window=window, overlap=overlap,
                                     crossfade=xf)
    wins = longform.plan_windows(n, window, overlap)  # (0,10) (6,16) (12,22) (13,23)
    assert len(calls) == len(wins) == 4
    np.testing.assert_array_equal(out[:, :3], prompt[:, :3])  # prompt frames bit-exact
    w = longform.crossfade_weights(xf)
    # window 0 generates 3..9; window 1 (6..16): context 6..7, regenerates 8..9 (crossfade), generates 10..15
    np.testing.assert_array_equal(calls[1][1][0], np.arange(6, 16) >= 8)
    np.testing.assert_allclose(out[0, 8:10, 0], (1 - w) * 100 + w * 200, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out[0, 10:12, 0], 200.0)
    # window 2 (12..22): crossfades 14..15 with window 1, generates 16..21 (20..21 blended again below)
    np.testing.assert_allclose(out[0, 14:16, 0], (1 - w) * 200 + w * 300, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out[0, 16:20, 0], 300.0)
    # last window (13..23) only has frame 22 missing: crossfades 20..21, generates 22
    np.testing.assert_allclose(out[0, 20:22, 0], (1 - w) * 300 + w * 400, rtol=0, atol=1e-4)
    assert out[0, 22, 0] == 400.0
    ctx_last = calls[3][0][0, :, 0]  # the frames before the crossfade were given as context
    np.testing.assert_array_equal(ctx_last[: 20 - 13], out[0, 13:20, 0])


def test_audio_crossfade_keeps_prompt_and_ramps_inside_regions() -> None:
    n, fade = 100, 10
    prompt, gen = np.full(n, 1.0, np.float32), np.full(n, -1.0, np.float32)
    keep = np.ones(n, bool)
    keep[40:70] = False
    out = longform.audio_crossfade(prompt, gen, keep, fade)
    np.testing.assert_array_equal(out[keep], prompt[keep])
    np.testing.assert_array_equal(out[50:60], gen[50:60])  # beyond the fades: generated audio only
    assert np.all(np.diff(out[40:50]) < 0) and np.all(np.diff(out[60:70]) > 0)  # monotone ramps in and out
    assert -1.0 < out[40] < 1.0 and -1.0 < out[69] < 1.0


@pytest.fixture(scope="module")
def mf(tmp_path_factory: pytest.TempPathFactory) -> MusicFlow:
    return MusicFlow.load(make_model_folder(tmp_path_factory.mktemp("model")))


def test_long_form_length_and_seams(mf: MusicFlow) -> None:
    settings = StageSettings(steps=2, solver="euler", cfg_scale=2.0)
    g = mf.generate(["a string quartet in D major"], duration=3.3, seed=0, stage1=settings, stage2=settings,
                    overlap=0.5, progress=False)
    assert g.audio.shape == (1, round(3.3 * mf.sample_rate))
    assert g.semantic.shape[1] == 165 and g.acoustic.shape[1] == 248  # ceil(3.3 * 50), ceil(3.3 * 75)
    assert np.isfinite(g.audio).all() and np.abs(g.audio).max() > 1e-3
    for x, window in ((g.semantic, 50), (g.acoustic, 75)):
        wins = longform.plan_windows(x.shape[1], window, window // 2)
        assert len(wins) >= 5
        seams = [e for _, e in wins[:-1]]  # where each later window's new frames begin
        at, elsewhere = longform.seam_jumps(x, seams)
        assert at <= 1.5 * elsewhere, (at, elsewhere)


def test_seam_jumps_among_a_subset_of_frames():
    """`among` restricts both sides to the chosen jumps: a stream that steps by 4 on every 10th frame and by 1
    elsewhere, with a seam on a step, has its seam jump 4 among the steps (their 99th percentile 4) and 1 among the
    rest."""
    steps = np.where(np.arange(99) % 10 == 9, 4.0, 1.0)
    x = np.cumsum(np.concatenate([[0.0], steps]))[None, :, None]
    on = np.arange(99) % 10 == 9
    assert longform.seam_jumps(x, [50]) == (4.0, pytest.approx(4.0))
    assert longform.seam_jumps(x, [50], on) == (4.0, pytest.approx(4.0))
    assert longform.seam_jumps(x, [50], ~on) == (1.0, pytest.approx(1.0))
    assert longform.seam_jumps(x, [55], on)[0] == 0.0  # no step within the seam's frames

"""The beat grid (core/beat.py): its features in closed form, the prompt-phase fit, and how the flow drops it with
the text (training's CFG dropout, the sampler's unconditional branch, the distillation teacher)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musicflow_jax.core import beat, flow
from musicflow_jax.core.config import FlowConfig


def test_features_closed_form():
    # 100 BPM at 50 Hz: 1/30 beat per frame; frame 30 is beat 1, frame 15 the half beat, frame 45 beat 1.5
    f = beat.features(np.array([100.0, 0.0]), np.array([0.0, 0.3]), 61, 50.0)
    assert f.shape == (2, 61, beat.CHANNELS) and f.dtype == np.float32
    np.testing.assert_allclose(f[0, [0, 30, 60]], [[1, 0, 1, 0, 1]] * 3, atol=1e-6)
    np.testing.assert_allclose(f[0, [15, 45]], [[-1, 0, 1, 0, 1]] * 2, atol=1e-6)
    np.testing.assert_allclose(f[0, 10], [np.cos(2 * np.pi / 3), np.sin(2 * np.pi / 3), np.cos(4 * np.pi / 3),
                                          np.sin(4 * np.pi / 3), 1], atol=1e-6)
    assert not f[1].any(), "no tempo named: the grid is all zero, also its 'given' channel"
    # a start beat0 shifts the grid: starting 0.25 beats in puts frame 0 where frame 7.5 of the unshifted grid is
    g = beat.features(np.array([100.0]), np.array([0.25]), 4, 50.0)
    np.testing.assert_allclose(g[0, 0, :2], [0.0, 1.0], atol=1e-6)
    # long clips stay exact: frame 50 000 of a 97-BPM grid
    far = beat.features(np.array([97.0]), np.array([0.0]), 50_001, 50.0)[0, -1]
    b = 50_000 * 97 / 3000
    np.testing.assert_allclose(far[:2], [np.cos(2 * np.pi * b), np.sin(2 * np.pi * b)], atol=1e-4)


def _onset_stream(bpm: float, beat0: float, frames: int, rate: float, seed: int = 0) -> np.ndarray:
    """A stream whose channels jump at every beat (and, weaker, at some half beats) of the grid (bpm, beat0)."""
    rng = np.random.default_rng(seed)
    b = beat0 + np.arange(frames) * bpm / (60 * rate)
    on_beat = np.floor(b) != np.floor(np.concatenate([[b[0] - 1e-9], b[:-1]]))
    half = np.floor(2 * b) != np.floor(2 * np.concatenate([[b[0] - 1e-9], b[:-1]]))
    jumps = on_beat[:, None] * rng.uniform(1, 2, (frames, 6)) + (half & ~on_beat)[:, None] * rng.uniform(
        0, 0.5, (frames, 6)) * (rng.random((frames, 1)) < 0.5)
    decay = np.zeros((frames, 6))
    for i in range(frames):  # notes that rise and decay, like a stream's band energies
        decay[i] = (decay[i - 1] * 0.8 if i else 0) + jumps[i]
    return decay + 0.05 * rng.normal(size=decay.shape)


def _circular(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


@pytest.mark.parametrize("bpm,beat0", [(96.0, 0.0), (72.0, 0.3), (120.0, 0.75), (60.0, 0.5)])
def test_phase_of_recovers_the_grid(bpm, beat0):
    rate = 50.0
    x = _onset_stream(bpm, beat0, 400, rate)
    # a jump lands on the first frame at or after the beat: up to one frame late (bpm / 3000 beats)
    assert _circular(beat.phase_of(x, bpm, rate), beat0) <= bpm / 3000 + 0.02
    # only the prompt's frames are known (a continuation's first 3 s; an infill's two sides)
    known = np.arange(400) < 150
    assert _circular(beat.phase_of(np.where(known[:, None], x, 0.0), bpm, rate, known), beat0) <= bpm / 3000 + 0.03
    gap = (np.arange(400) < 120) | (np.arange(400) >= 280)
    assert _circular(beat.phase_of(np.where(gap[:, None], x, 0.0), bpm, rate, gap), beat0) <= bpm / 3000 + 0.03


def test_phase_of_without_tempo_or_onsets_is_zero():
    x = _onset_stream(90.0, 0.4, 200, 50.0)
    assert beat.phase_of(x, 0.0, 50.0) == 0.0
    assert beat.phase_of(np.ones((200, 3)), 90.0, 50.0) == 0.0
    assert beat.phase_of(x, 90.0, 50.0, np.zeros(200, bool)) == 0.0


def _batch(b: int = 32, t: int = 12, d: int = 3) -> dict:
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"x1": jax.random.normal(k1, (b, t, d)), "frame_mask": jnp.ones((b, t), bool),
            "text_emb": jax.random.normal(k2, (b, 4, 7)), "text_mask": jnp.ones((b, 4), bool),
            "beat": jnp.asarray(beat.features(np.full(b, 90.0), np.linspace(0, 1, b), t, 50.0))}


def test_flow_loss_drops_the_beat_with_the_text():
    cfg = dataclasses.replace(FlowConfig(), p_drop_text=0.5, p_drop_context=0.0)
    batch = _batch()
    seen = {}

    def apply_fn(inp: flow.FlowInput):
        seen.update(beat=np.asarray(inp.beat_btc), text_mask=np.asarray(inp.text_mask_bl))
        return jnp.zeros_like(inp.x_t_btd)

    flow.flow_loss(apply_fn, jax.random.key(3), batch, cfg)
    dropped = ~seen["text_mask"].any(1)
    assert 0 < dropped.sum() < len(dropped)
    assert not seen["beat"][dropped].any()
    np.testing.assert_array_equal(seen["beat"][~dropped], np.asarray(batch["beat"])[~dropped])


def test_guided_apply_and_distillation_teacher_drop_the_beat_in_the_unconditional_branch():
    batch = _batch(b=4)
    rows = []

    def apply_fn(inp: flow.FlowInput):
        rows.append((np.asarray(inp.beat_btc), np.asarray(inp.text_mask_bl)))
        # a velocity that reads the beat: guidance must see different beats in its two branches
        return jnp.broadcast_to(inp.beat_btc[..., :1], inp.x_t_btd.shape)

    b = batch["x1"]
    inp = flow.FlowInput(b, jnp.zeros_like(b), jnp.full((4,), 0.5), batch["text_emb"], batch["text_mask"], None,
                         None, None, batch["beat"])
    v = flow.guided_apply(apply_fn, inp, 3.0)
    grid, mask = rows[-1]
    np.testing.assert_array_equal(grid[:4], np.asarray(batch["beat"]))
    assert not grid[4:].any() and not mask[4:].any()
    # v = v_u + 3 (v_c - v_u) with v_u = 0: three times the conditional branch's
    np.testing.assert_allclose(np.asarray(v), 3.0 * np.broadcast_to(np.asarray(batch["beat"])[..., :1], b.shape),
                               atol=1e-6)
    rows.clear()
    flow.distill_loss(lambda i: jnp.zeros_like(i.x_t_btd), apply_fn, jax.random.key(0), batch, FlowConfig(),
                      method="trajectory", cfg_scale=2.0, p_instant=0.0, teacher_steps=1)
    for grid, _ in rows:  # every teacher evaluation: [beat; 0]
        np.testing.assert_array_equal(grid[:4], np.asarray(batch["beat"]))
        assert not grid[4:].any()

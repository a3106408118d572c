"""Inference paths on the tiny random two-stage model (mel backend, 1-s windows): length buckets (padded == exact
shapes, no compilation for a new duration in a compiled bucket), the per-evaluation progress bar, bfloat16 compute
and device selection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musicflow_jax.core import noise
from musicflow_jax.core.sampling import expected_nfe
from musicflow_jax.inference import buckets, cascade
from musicflow_jax.inference.cascade import GenerateError, MusicFlow, StageSettings, resolve_device

TEXT = ["a calm organ chorale in G minor", "a fast jazz piano trio"]
SETTINGS = StageSettings(steps=3, solver="midpoint", cfg_scale=2.0)


def _gen(tiny_mf: MusicFlow, duration: float, **kw: object) -> object:
    return tiny_mf.generate(TEXT, duration, seed=5, stage1=SETTINGS, stage2=SETTINGS, progress=False, **kw)


@contextmanager
def count_lowerings() -> Iterator[list[str]]:
    """Every jit lowering (a new executable: a jit cache miss) while the block runs."""
    events: list[str] = []

    def listener(event: str, duration: float, **_: object) -> None:
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_bucket_lengths_closed_form() -> None:
    # window 50, 8 per window: multiples of ceil(50/8) = 7 up to the window, then whole windows
    assert [buckets.bucket_length(n, 50) for n in (1, 7, 8, 43, 44, 49, 50, 51, 100, 101)] == [
        7, 7, 14, 49, 49, 49, 50, 100, 100, 150]
    assert all(buckets.bucket_length(n, 75, 0) == n for n in (1, 33, 75, 200))  # off: exact shapes
    for n in range(1, 300):
        b = buckets.bucket_length(n, 75)
        assert n <= b and (b - n < 10 if n <= 75 else b % 75 == 0 and b - n < 75)
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    r = buckets.pad_frames(x, 8, "reflect")
    np.testing.assert_array_equal(r[:, 5:], x[:, [3, 2, 1]])  # mirror image of the last frames
    np.testing.assert_array_equal(buckets.pad_frames(x, 12, "reflect")[:, 5:], np.repeat(x[:, 4:], 7, axis=1))


def test_frame_random_does_not_depend_on_the_length_or_the_batch() -> None:
    key = jax.random.key(3)
    a = np.asarray(noise.frame_random(jax.random.normal, key, jnp.arange(2), 13, 4))
    b = np.asarray(noise.frame_random(jax.random.normal, key, jnp.arange(3), 20, 4))
    np.testing.assert_array_equal(a, b[:2, :13])  # padding (frames) and more rows leave the others' draws
    np.testing.assert_array_equal(np.asarray(noise.frame_random(jax.random.normal, key, jnp.array([2]), 7, 4)),
                                  b[2:, :7])  # a row alone, with its id, gets its batch values
    assert abs(float(b.std()) - 1.0) < 0.2 and b[0, 0, 0] != b[1, 0, 0] and b[0, 0, 0] != b[0, 1, 0]


def test_bucketed_equals_exact_shapes(tiny_folder: Path, tiny_mf: MusicFlow) -> None:
    duration = 0.46  # 23 -> 28 semantic, 35 -> 40 acoustic frames (the decoder's too)
    exact = MusicFlow.load(tiny_folder, per_window=0)
    g, g0 = _gen(tiny_mf, duration), _gen(exact, duration)
    assert g.semantic.shape == g0.semantic.shape == (2, round(duration * 50), tiny_mf.backend.dims["semantic"])
    np.testing.assert_allclose(g.semantic, g0.semantic, atol=1e-5, rtol=0)
    np.testing.assert_allclose(g.acoustic, g0.acoustic, atol=1e-5, rtol=0)
    assert g.audio.shape == g0.audio.shape == (2, round(duration * 24_000))
    # the decoder (Griffin-Lim here) sees its latents padded with their mirror image: the same audio but for its
    # right context at the end (8 iterations x n_fft / hop frames of 320 samples at most)
    a, a0 = tiny_mf.decode(g0.acoustic), exact.decode(g0.acoustic)
    mel = tiny_mf.backend.acoustic
    tail = 8 * (mel.cfg.n_fft // mel.hop_length) * mel.hop_length
    assert a.shape == a0.shape == (2, g0.acoustic.shape[1] * 320) and np.abs(a0).max() > 1e-2
    np.testing.assert_allclose(a[:, :-tail], a0[:, :-tail], atol=1e-5, rtol=0)


def test_no_compilation_for_a_new_duration_in_the_same_bucket(tiny_mf: MusicFlow) -> None:
    _gen(tiny_mf, 0.5)  # 25 / 38 frames -> buckets 28 / 40: compiles stage 1, stage 2 and the decoder
    with count_lowerings() as same_bucket:
        _gen(tiny_mf, 0.52)  # 26 / 39 frames: the same buckets
    assert same_bucket == []
    exact = MusicFlow.load(tiny_mf.folder, per_window=0)
    _gen(exact, 0.5)
    with count_lowerings() as unbucketed:
        _gen(exact, 0.52)
    # without buckets every new duration compiles (and the counter sees compilations: two stages and the decoder)
    assert len(unbucketed) >= 3


def test_progress_moves_per_window_or_per_network_evaluation(tiny_folder: Path, tiny_mf: MusicFlow,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm

    ticks: list[tuple[int, int]] = []  # (update size, total)

    class Bar(tqdm.tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            ticks.append((int(n or 0), int(self.total)))
            return super().update(n)

    monkeypatch.setattr(cascade, "tqdm", Bar)
    s1, s2 = StageSettings(steps=3, solver="midpoint", cfg_scale=2.0), StageSettings(steps=5, solver="euler")
    g = tiny_mf.generate(TEXT[:1], 1.5, seed=0, stage1=s1, stage2=s2, progress=True)  # 1.5 s: two 1-s windows
    assert g.nfe == {"stage1": 2 * 6, "stage2": 2 * 5}
    assert ticks == [(1, 5)] * 5  # default: per window of each stage, then the decoder
    ticks.clear()
    per_eval = MusicFlow.load(tiny_folder, eval_progress=True)  # the app's bar
    per_eval.generate(TEXT[:1], 1.5, seed=0, stage1=s1, stage2=s2, progress=True)
    evals = 2 * expected_nfe("midpoint", 3) + 2 * expected_nfe("euler", 5)
    assert ticks.count((1, evals + 1)) >= evals  # one tick per network evaluation, then the decoder
    assert sum(n for n, _ in ticks) == evals + 1


def test_bfloat16_stays_close_to_float32(tiny_folder: Path, tiny_mf: MusicFlow) -> None:
    bf = MusicFlow.load(tiny_folder, dtype="bfloat16")
    assert bf.stages[0].cfg.model.dtype == "bfloat16" and tiny_mf.stages[0].cfg.model.dtype == "float32"
    g32, g16 = _gen(tiny_mf, 0.5), _gen(bf, 0.5)
    for a, b in ((g32.semantic, g16.semantic), (g32.acoustic, g16.acoustic)):
        rel = np.linalg.norm(a - b) / np.linalg.norm(a)
        assert 1e-5 < rel < 0.05, rel  # bf16 really computes (not equal) and stays within 5 % (measured 0.7 %, 0.6 %)
    assert np.isfinite(g16.audio).all() and g16.audio.dtype == np.float32
    with pytest.raises(GenerateError, match="^dtype 'float16'.*choose float32 or bfloat16"):
        MusicFlow.load(tiny_folder, dtype="float16")


def test_device_selection(tiny_folder: Path) -> None:
    cpu = resolve_device("cpu")
    assert cpu == jax.devices("cpu")[0] and resolve_device(None) is None
    mf = MusicFlow.load(tiny_folder, device="cpu:0")
    g = _gen(mf, 0.3)
    assert mf.device == cpu and np.isfinite(g.audio).all()
    assert all(leaf.devices() == {cpu} for leaf in jax.tree.leaves(nnx.state(mf.stages[1].model)))
    with pytest.raises(GenerateError, match="^device 'tpu': no tpu devices here"):
        resolve_device("tpu")
    with pytest.raises(GenerateError, match=r"^device 'cpu:99': cpu has devices 0\.\."):
        resolve_device("cpu:99")

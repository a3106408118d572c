"""Frame-aligned beat conditioning (model.beat): the caption's tempo as a beat grid a stage can copy frame by frame.

The tempo token (encoders/meta.py) tells a stage the caption's BPM once, in the cross-attention memory; measured,
no stage 1 trained that way put that tempo into its stream (its onsets read the caption's tempo within 4 % in 0.00-0.09
of clips, real streams in 0.84; docs/training.md). A beat grid on the stage's own frames is what rhythm-conditioned
peers give instead (Music ControlNet's and JASCO's beat / downbeat streams): frame f of a window starting `beat0`
beats into the music is

    b_f = beat0 + f * bpm / (60 * rate)          (beats; one beat = one quarter note, the corpus's metronome unit)

and its features are [cos 2 pi b, sin 2 pi b, cos 4 pi b, sin 4 pi b, 1] (beat and half-beat phase, the last channel
"a grid is given"), all zero when there is none: the caption names no tempo, or the text is dropped (classifier-free
guidance's unconditional branch, training's text dropout; flow.py).

Where beat0 comes from:
- training: the rendered corpus's beats are at multiples of 60 / bpm from the audio's start (its MIDI is written from
  the score at one metronome mark; tests check note onsets sit on the grid), so a crop starting `s` seconds into the
  audio has beat0 = s * bpm / 60 (data/loader.py);
- text-to-music: 0, the grid starts with the clip;
- continuation / infilling: `phase_of`, the grid's phase that best fits the prompt's own onsets.
"""

from __future__ import annotations

import numpy as np

CHANNELS = 5


def beat_positions(bpm_b: np.ndarray, beat0_b: np.ndarray, frames: int, rate: float) -> np.ndarray:
    """(B, T) float64 beat count b_f of each frame (module docstring)."""
    bpm_b = np.asarray(bpm_b, np.float64).reshape(-1)
    beat0_b = np.broadcast_to(np.asarray(beat0_b, np.float64), bpm_b.shape)
    return beat0_b[:, None] + np.arange(frames, dtype=np.float64)[None] * (bpm_b[:, None] / (60.0 * float(rate)))


def features(bpm_b: np.ndarray, beat0_b: np.ndarray, frames: int, rate: float) -> np.ndarray:
    """(B, T, CHANNELS) float32 beat-grid features; rows with bpm <= 0 (no tempo named) are all zero."""
    bpm_b = np.asarray(bpm_b, np.float64).reshape(-1)
    has_b = bpm_b > 0
    phase = 2.0 * np.pi * np.mod(beat_positions(np.where(has_b, bpm_b, 0.0), beat0_b, frames, rate), 2.0)
    out = np.stack([np.cos(phase), np.sin(phase), np.cos(2 * phase), np.sin(2 * phase), np.ones_like(phase)], axis=-1)
    return (out * has_b[:, None, None]).astype(np.float32)


def phase_of(x_tc: np.ndarray, bpm: float, rate: float, known_t: np.ndarray | None = None) -> float:
    """beat0 in [0, 1): the phase of a `bpm` grid starting at frame 0 that best fits the stream's onsets - the
    argument of the envelope's Fourier coefficient at the beat frequency (the grid cos 2 pi b_f correlates most with
    the envelope there). `known_t` (T,) bool: only those frames are the stream (a prompt with gaps; a rise counts
    where it and the frame before are known). 0 when no onsets are seen or no tempo is given."""
    x = np.asarray(x_tc, np.float64)
    known = np.ones(len(x), bool) if known_t is None else np.asarray(known_t, bool)
    if bpm <= 0 or known.sum() < 2:
        return 0.0
    mu, sd = x[known].mean(0), x[known].std(0) + 1e-6
    rise = np.concatenate([[0.0], np.maximum(np.diff((x - mu) / sd, axis=0), 0.0).sum(1)])
    seen = known & np.concatenate([[False], known[:-1]])
    if not rise[seen].any():
        return 0.0
    steps = np.flatnonzero(seen) * (bpm / (60.0 * float(rate)))
    env = rise[seen]
    c = np.sum((env - env.mean()) * np.exp(-2j * np.pi * steps))
    return float(np.mod(np.angle(c) / (2 * np.pi), 1.0)) if abs(c) > 0 else 0.0

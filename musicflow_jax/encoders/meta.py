"""Explicit tempo and key conditioning (text.meta): two tokens appended to the text encoder's output.

A sentence encoder carries a caption's instrument but hardly its tempo (tools/probe_text_encoder.py: linear probes
on all-MiniLM-L6-v2 read the instrument of held-out wordings 0.93 of the time, the tempo within 4 % 0.17, like the
random byte-T5), so the tempo and key are parsed from the caption (`parse_bpm`, `parse_key` below: every wording of
musicflow_jax/data/captions.py and what users type, "Bb major", "E-flat minor", "120 bpm", "tempo 96", "quarter
note = 72"; the same parser in training and generation) and given to the flow stages as fixed features in the text
embedding space, each its own token of the cross-attention memory:

- tempo token: log2(bpm / 60) and its sines / cosines at 8 octave-spaced frequencies (the finest period is 2^(1/16),
  4.4 %, the evaluation's tempo tolerance), marker 1 at dim -2;
- key token: one-hot of the 24 keys, of the 12 tonics and of the 2 modes, marker 1 at dim -1.
A token whose fact the caption does not name is masked out, and dropping the text for classifier-free guidance
(text mask all False) drops both: the unconditional branch is unchanged. The stage's learned text projection reads
them like any other token, so no parameter is added and a stage without text.meta is untouched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musicflow_jax.core import beat

TOKENS = 2
FREQS = 2.0 ** np.arange(-3, 5)  # cycles per octave of tempo: 1/8 .. 16
MIN_DIM = 64  # text.dim the features need

# ------------------------------------------------------------------------------------- parsing free text

MODES = ("major", "minor")  # key index = mode index * 12 + tonic pitch class (evaluate.music.key_scores' order)
_TONIC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_KEY_RE = re.compile(r"(?<![\w-])([A-G])(?:[\s-]*(flat|sharp|b|#|\u266d|\u266f))?[\s-]+(major|minor)\b")
_NUMBER = r"(\d{2,3}(?:\.\d+)?)"
BPM_RANGE = (20.0, 400.0)  # numbers outside are not read as tempi
# a number with tempo words right after it ("96 BPM", "96 beats per minute", "96 crotchets", "96 per minute", "96 to
# the minute") or right before it ("tempo 96", "metronome at 96", "pulse of 96", "quarter note = 96", "pace: 96")
_BPM_AFTER = re.compile(_NUMBER + r"\s*(?:bpm\b|beats?\b|crotchets?\b|quarter[ -]notes?\b|(?:to|per|each|a|in a)\s+"
                        r"minute\b|/\s*min)", re.IGNORECASE)
_BPM_BEFORE = re.compile(r"(?:tempo|metronome|marking|mark|pulse|pace|speed|rate|tactus|=)\s*(?:of|at|is|:)?\s*"
                         + _NUMBER + r"\b", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER + r"(?![\w.])")


def parse_key(text: str) -> int | None:
    """The key a free-text caption names (the first "<letter>[ flat|sharp|b|#] major|minor"): mode index * 12 +
    tonic pitch class ("F sharp minor" -> 18), or None."""
    m = _KEY_RE.search(text)
    if m is None:
        return None
    accidental = {"flat": -1, "b": -1, "\u266d": -1, "sharp": 1, "#": 1, "\u266f": 1}.get((m[2] or "").lower(), 0)
    return MODES.index(m[3].lower()) * 12 + (_TONIC[m[1]] + accidental) % 12


def parse_bpm(text: str) -> float | None:
    """The tempo a free-text caption names: a number in BPM_RANGE next to tempo words, else the caption's only number
    in that range; None if neither."""
    for pattern in (_BPM_AFTER, _BPM_BEFORE):
        for m in pattern.finditer(text):
            if BPM_RANGE[0] <= float(m[1]) <= BPM_RANGE[1]:
                return float(m[1])
    numbers = [float(m[1]) for m in _ANY_NUMBER.finditer(text) if BPM_RANGE[0] <= float(m[1]) <= BPM_RANGE[1]]
    return numbers[0] if len(numbers) == 1 else None


def parse(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(bpm_b float32, 0 = none named; key_b int32, mode * 12 + tonic, -1 = none named) of each caption."""
    bpm = [parse_bpm(t) for t in texts]
    key = [parse_key(t) for t in texts]
    return (np.asarray([0.0 if b is None else b for b in bpm], np.float32),
            np.asarray([-1 if k is None else k for k in key], np.int32))


def beat_grid(texts: Sequence[str], frames: int, rate: float, beat0_b: np.ndarray | float = 0.0) -> np.ndarray:
    """(B, T, 5) the beat grid of each caption's tempo on `frames` frames at `rate` Hz, starting `beat0_b` beats in
    (core/beat.py; all zero for a caption naming no tempo): what a stage with model.beat reads."""
    return beat.features(parse(texts)[0], np.asarray(beat0_b, np.float64), frames, rate)


def tokens(bpm_b: jnp.ndarray, key_b: jnp.ndarray, dim: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """((B, 2, dim) float32 tempo and key tokens, (B, 2) bool: the caption named it)."""
    if dim < MIN_DIM:
        raise ValueError(f"text.meta needs text.dim >= {MIN_DIM}, got {dim}")
    bpm_b, key_b = jnp.asarray(bpm_b, jnp.float32), jnp.asarray(key_b, jnp.int32)
    has_bpm, has_key = bpm_b > 0, key_b >= 0
    x = jnp.log2(jnp.where(has_bpm, bpm_b, 60.0) / 60.0)[:, None]
    phase = 2 * jnp.pi * x * jnp.asarray(FREQS, jnp.float32)[None]
    tempo = jnp.concatenate([x, jnp.sin(phase), jnp.cos(phase)], axis=1)  # (B, 17)
    k = jnp.where(has_key, key_b, 0)
    key = jnp.concatenate([jax.nn.one_hot(k, 24), jax.nn.one_hot(k % 12, 12), jax.nn.one_hot(k // 12, 2)],
                          axis=1)  # (B, 38)
    b = bpm_b.shape[0]
    tok = jnp.zeros((b, TOKENS, dim), jnp.float32)
    tok = tok.at[:, 0, : tempo.shape[1]].set(tempo).at[:, 0, dim - 2].set(1.0)
    tok = tok.at[:, 1, : key.shape[1]].set(key).at[:, 1, dim - 1].set(1.0)
    return tok, jnp.stack([has_bpm, has_key], axis=1)


def append(emb_bld: jnp.ndarray, mask_bl: jnp.ndarray, bpm_b: jnp.ndarray, key_b: jnp.ndarray
           ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The text memory with the tempo and key tokens after the caption's: (B, L + 2, E), (B, L + 2)."""
    tok, has = tokens(bpm_b, key_b, emb_bld.shape[-1])
    return (jnp.concatenate([emb_bld.astype(jnp.float32), tok], axis=1),
            jnp.concatenate([jnp.asarray(mask_bl).astype(bool), has], axis=1))

"""Frame-rate alignment between the semantic (50 Hz) and acoustic (75 Hz) streams, aligned crops, padding
and normalisation with the index statistics. Pure numpy; used by the data pipeline and the generation cascade.

Alignment convention (the batch contract): acoustic frame i takes semantic frame floor(i * r_s / r_a),
clipped to the last semantic frame (HuBERT yields a frame or so fewer than Encodec for the same audio).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def _ratio(src_rate: float, dst_rate: float) -> Fraction:
    return Fraction(src_rate).limit_denominator(10_000) / Fraction(dst_rate).limit_denominator(10_000)


def upsample_index(n_out: int, n_src: int, src_rate: float, dst_rate: float, start: int = 0) -> np.ndarray:
    """Source frame index for destination frames start..start+n_out-1 (nearest-previous, exact rational math)."""
    r = _ratio(src_rate, dst_rate)
    i = np.arange(start, start + n_out, dtype=np.int64)
    return np.minimum((i * r.numerator) // r.denominator, max(n_src - 1, 0))


def upsample_nearest(x_tc: np.ndarray, n_out: int, src_rate: float, dst_rate: float, start: int = 0) -> np.ndarray:
    """Semantic (T_s, C) -> (n_out, C) on the acoustic grid, for acoustic frames start..start+n_out-1."""
    return x_tc[upsample_index(n_out, len(x_tc), src_rate, dst_rate, start)]


def frames_at(duration_s: float, rate: float) -> int:
    """Number of whole frames of `duration_s` seconds at `rate` Hz."""
    return int(np.floor(duration_s * rate + 1e-6))


def crop_offset(rng: np.random.Generator | None, length: int, frames: int) -> int:
    """Uniform random start so that a `frames` window fits in `length`; 0 when it does not or rng is None."""
    if rng is None or length <= frames:
        return 0
    return int(rng.integers(0, length - frames + 1))


def pad_or_crop(x_tc: np.ndarray, frames: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Window [start, start+frames) of x, zero-padded at the end. Returns (x (frames, C), mask (frames,) bool)."""
    win = x_tc[start : start + frames]
    out = np.zeros((frames, *x_tc.shape[1:]), x_tc.dtype)
    out[: len(win)] = win
    mask = np.zeros((frames,), bool)
    mask[: len(win)] = True
    return out, mask


def normalize(x_tc: np.ndarray, mean_c: np.ndarray | None, std_c: np.ndarray | None, eps: float = 1e-5) -> np.ndarray:
    """(x - mean) / max(std, eps), per channel; identity when stats are None."""
    if mean_c is None or std_c is None:
        return x_tc.astype(np.float32)
    return ((x_tc - mean_c) / np.maximum(std_c, eps)).astype(np.float32)


def denormalize(x_tc: np.ndarray, mean_c: np.ndarray | None, std_c: np.ndarray | None, eps: float = 1e-5) -> np.ndarray:
    """Inverse of `normalize` (generation maps model outputs back to encoder units)."""
    if mean_c is None or std_c is None:
        return x_tc
    return x_tc * np.maximum(std_c, eps) + mean_c


def crop_semantic(rng: np.random.Generator | None, sem_tc: np.ndarray, frames: int, start: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: random `frames` window of the semantic stream with its validity mask (`start`: that window instead)."""
    return pad_or_crop(sem_tc, frames, crop_offset(rng, len(sem_tc), frames) if start is None else start)


def crop_aligned(rng: np.random.Generator | None, sem_tc: np.ndarray, ac_td: np.ndarray, frames: int,
                 sem_rate: float, ac_rate: float, start: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 2: a `frames` window of the acoustic stream and the semantic stream upsampled onto the same frames.

    Returns (x1 (frames, D), cond (frames, C), mask (frames,)); padding frames are zero in both streams. `start`
    (acoustic frames): that window instead of a random one.
    """
    start = crop_offset(rng, len(ac_td), frames) if start is None else start
    x1, mask = pad_or_crop(ac_td, frames, start)
    n_valid = int(mask.sum())
    cond = np.zeros((frames, sem_tc.shape[1]), sem_tc.dtype)
    cond[:n_valid] = upsample_nearest(sem_tc, n_valid, sem_rate, ac_rate, start)
    return x1, cond, mask

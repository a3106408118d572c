"""Length buckets: sequences padded up to a few fixed lengths, so a new duration reuses a compiled executable.

XLA compiles one executable per input shape. Generation pads every stage's frames (and the decoder's latents) up to
a bucket and masks the padding (`frame_mask`: padded frames are never attended to, the velocity there is 0), so the
real frames come out as without padding (to float round-off; tests/test_inference.py), and only the first duration
of each bucket compiles.

Buckets of a sequence with a trained window of W frames (`per_window` = k): up to W, multiples of ceil(W / k)
(padding at most W / k frames); beyond W (only the decoder sees whole long sequences; the stages run window by
window, longform.py), multiples of W. `per_window` = 0 turns bucketing off (exact shapes).

Random draws must not depend on the padded length either: core/noise.py's `frame_random` gives frame t of row r the
values drawn from fold_in(fold_in(key, r), t), whatever the number of frames after it (or of rows beside it).
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_PER_WINDOW = 8


def bucket_length(n: int, window: int, per_window: int = DEFAULT_PER_WINDOW) -> int:
    """The padded length of an `n`-frame sequence (>= n) for a stage with a `window`-frame window."""
    if n < 1 or window < 1:
        raise ValueError(f"need n >= 1 and window >= 1, got n={n} window={window}")
    if per_window <= 0:
        return n
    if n > window:
        return math.ceil(n / window) * window
    q = math.ceil(window / per_window)
    return min(window, math.ceil(n / q) * q)


def pad_frames(x_btd: np.ndarray, n: int, mode: str = "constant") -> np.ndarray:
    """(B, T, ...) -> (B, n, ...) padded at the end: zeros ("constant") or the mirror image of the last frames
    ("reflect": what a decoder's own reflect padding would see; falls back to repeating the last frame when the
    sequence is shorter than the padding)."""
    pad = n - x_btd.shape[1]
    if pad < 0:
        raise ValueError(f"cannot pad {x_btd.shape[1]} frames down to {n}")
    if pad == 0:
        return x_btd
    widths = [(0, 0), (0, pad)] + [(0, 0)] * (x_btd.ndim - 2)
    if mode == "reflect" and pad >= x_btd.shape[1]:
        mode = "edge"
    return np.pad(x_btd, widths, mode=mode)


def frame_mask(n: int, padded: int) -> np.ndarray:
    """(padded,) bool: True on the n real frames."""
    return np.arange(padded) < n

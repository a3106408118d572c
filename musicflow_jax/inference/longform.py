"""Long-form and in-context generation by windowed continuation (both stages), with overlap and crossfade.

A flow stage is trained on windows of `window` frames (cfg.data.frames). To produce N > window frames (or to
fill gaps anywhere in a long prompt) the sequence is covered by windows of `window` frames placed every
`stride = window - overlap` frames, left to right; the last one is shifted back to end at N, so every window
has the trained length (one compilation). Like MusicGen's `extend_stride`, each window is generated in context:
frames already fixed (the user's prompt, or earlier windows) are given to the model as context and returned
bit-exact by the sampler; only the frames still missing are generated.

Crossfade: of the frames an earlier window *generated* (never of the user's prompt), the last `crossfade` ones
before the first missing frame are generated again by the new window instead of being context, and the two
versions are blended with a linear ramp (old -> new). The seam therefore moves smoothly from the old window's
continuation into the new window's, instead of a hard cut at the context boundary.

Prompt frames (gen_mask False on input) are never modified: the result equals `ctx` on them bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# sample_window(key, ctx_bwd, gen_mask_bw, conds) -> x_bwd (context frames returned unchanged); conds: the window's
# frame-aligned conditions, generate_windowed's `cond_bnc` cut to the window
WindowSampler = Callable[[jax.Array, np.ndarray, np.ndarray, Any], np.ndarray]


def plan_windows(total: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of each window: starts every window - overlap frames, the last one ends at `total`."""
    if total <= 0:
        raise ValueError(f"total frames must be > 0, got {total}")
    if window <= 0 or not 0 <= overlap < window:
        raise ValueError(f"need window > 0 and 0 <= overlap < window, got window={window} overlap={overlap}")
    if total <= window:
        return [(0, total)]
    stride = window - overlap
    out, start = [], 0
    while True:
        if start + window >= total:
            out.append((total - window, total))
            return out
        out.append((start, start + window))
        start += stride


def crossfade_weights(n: int) -> np.ndarray:
    """Weights of the new window over n blended frames: strictly inside (0, 1), increasing."""
    return (np.arange(1, n + 1, dtype=np.float32) / (n + 1)).astype(np.float32)


def generate_windowed(sample_window: WindowSampler, key: jax.Array, ctx_bnd: np.ndarray, gen_mask_bn: np.ndarray,
                      cond_bnc: Any, *, window: int, overlap: int, crossfade: int,
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Fill every frame where gen_mask is True, window by window (see module docstring).

    ctx_bnd: (B, N, D) known frames (values on gen_mask frames are ignored); gen_mask_bn: (B, N) bool, the same
    for every batch row; cond_bnc: the frame-aligned conditions, a (B, N, C) array, None or a tuple of them (e.g. the
    previous stage's stream and the beat grid), each cut to the window's frames. Returns (B, N, D) float32.
    """
    gen_mask_bn = np.asarray(gen_mask_bn, bool)
    if not (gen_mask_bn == gen_mask_bn[:1]).all():
        raise ValueError("generate_windowed needs the same gen_mask for every batch row")
    gen_n = gen_mask_bn[0]
    n = gen_n.shape[0]
    crossfade = max(0, min(crossfade, overlap))
    out = np.where(gen_n[None, :, None], 0.0, np.asarray(ctx_bnd, np.float32)).astype(np.float32)
    done_n = ~gen_n  # frames with a value
    generated_n = np.zeros(n, bool)  # frames produced by an earlier window (eligible for crossfade)
    for k, (s, e) in enumerate(plan_windows(n, window, overlap)):
        missing = ~done_n[s:e]
        if not missing.any():
            if progress:
                progress(1)
            continue
        first = int(np.argmax(missing))
        regen = np.zeros(e - s, bool)
        j = first - 1
        while j >= 0 and generated_n[s + j] and first - j <= crossfade:
            regen[j] = True
            j -= 1
        gen_w = missing | regen
        ctx_w = np.where(gen_w[None, :, None], 0.0, out[:, s:e])
        gen_bw = np.broadcast_to(gen_w, (out.shape[0], e - s))
        cond_w = jax.tree.map(lambda c, s=s, e=e: np.asarray(c[:, s:e], np.float32), cond_bnc)
        x_w = np.asarray(sample_window(jax.random.fold_in(key, k), ctx_w, np.array(gen_bw), cond_w), np.float32)
        new = out[:, s:e].copy()
        new[:, missing] = x_w[:, missing]
        idx = np.flatnonzero(regen)
        if len(idx):
            w = crossfade_weights(len(idx))[None, :, None]
            new[:, idx] = (1.0 - w) * out[:, s + idx] + w * x_w[:, idx]
        out[:, s:e] = new
        generated_n[s:e] |= missing
        done_n[s:e] = True
        if progress:
            progress(1)
    return out


def audio_crossfade(prompt_s: np.ndarray, generated_s: np.ndarray, keep_s: np.ndarray, fade: int) -> np.ndarray:
    """Audio-domain merge for continuation/infilling: prompt samples where `keep_s`, generated elsewhere, with a
    linear `fade`-sample ramp placed inside each generated region (prompt samples stay untouched).

    prompt_s, generated_s: (..., S); keep_s: (S,) bool."""
    keep_s = np.asarray(keep_s, bool)
    w_s = (~keep_s).astype(np.float32)  # weight of the generated audio
    if fade > 0:
        ramp = crossfade_weights(fade)
        edges = np.flatnonzero(np.diff(keep_s.astype(np.int8)))
        for i in edges:  # transition between samples i and i+1
            if keep_s[i]:  # prompt -> generated: ramp up after i
                seg = slice(i + 1, min(i + 1 + fade, len(w_s)))
                w_s[seg] = np.minimum(w_s[seg], ramp[: seg.stop - seg.start])
            else:  # generated -> prompt: ramp down before i+1
                seg = slice(max(i + 1 - fade, 0), i + 1)
                w_s[seg] = np.minimum(w_s[seg], ramp[::-1][fade - (seg.stop - seg.start):])
    return np.where(keep_s, prompt_s, (1.0 - w_s) * prompt_s + w_s * generated_s).astype(np.float32)


def seam_jumps(x_btd: np.ndarray, seams: list[int], among: np.ndarray | None = None) -> tuple[float, float]:
    """(largest frame-to-frame jump at the seams, 99th percentile of the jumps elsewhere) of windowed streams
    (B, T, D): a seam the crossfade hides is no larger than the stream's own jumps. `among` (T - 1,) bool: only those
    jumps count, at the seams and elsewhere (e.g. those onto a beat: a rhythmic stream's largest jumps are its
    onsets); 0 at the seams when none of theirs is among them."""
    jump_t = np.linalg.norm(np.diff(x_btd, axis=1), axis=-1).max(axis=0)  # jump_t[i] = |x[i+1] - x[i]|
    at = np.zeros_like(jump_t, bool)
    for s in seams:
        at[max(s - 3, 0): s + 2] = True  # around the seam, crossfade included
    keep = np.ones_like(at) if among is None else np.asarray(among, bool)
    seam = jump_t[at & keep]
    return float(seam.max()) if seam.size else 0.0, float(np.percentile(jump_t[~at & keep], 99))

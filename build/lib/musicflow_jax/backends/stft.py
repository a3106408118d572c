"""The STFT (jnp) and the part base shared by the weight-free parts (mel acoustic, chroma semantic).

Frame convention: T = ceil(S / hop); frame t is centred on samples [t*hop, (t+1)*hop) (zero padding of
(n_fft - hop) / 2 on the left), periodic Hann window, so `istft` of T frames returns exactly T * hop samples, as
Encodec's decoder does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic


def _pad_left(n_fft: int, hop: int) -> int:
    return (n_fft - hop) // 2


def num_frames(n_samples: int, hop: int) -> int:
    return -(-n_samples // hop)


def _frame_index(n_frames: int, n_fft: int, hop: int) -> np.ndarray:
    return hop * np.arange(n_frames)[:, None] + np.arange(n_fft)[None, :]


def frames(x_s: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(S,) numpy -> (T, n_fft) zero-padded frames on `stft`'s grid (T = ceil(S / hop), same padding), no window:
    for per-frame statistics that must line up with the parts' frames."""
    n_frames = num_frames(x_s.shape[-1], hop)
    left = _pad_left(n_fft, hop)
    padded = np.pad(x_s, (left, (n_frames - 1) * hop + n_fft - left - x_s.shape[-1]))
    return padded[_frame_index(n_frames, n_fft, hop)]


def stft(x_bs: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """(B, S) -> complex (B, T, n_fft/2+1), T = ceil(S / hop), centred frames, periodic Hann window."""
    n_frames = num_frames(x_bs.shape[-1], hop)
    left = _pad_left(n_fft, hop)
    total = (n_frames - 1) * hop + n_fft
    x_bs = jnp.pad(x_bs, ((0, 0), (left, total - left - x_bs.shape[-1])))
    frames_btn = x_bs[:, _frame_index(n_frames, n_fft, hop)] * _hann(n_fft)
    return jnp.fft.rfft(frames_btn, axis=-1)


def istft(spec_btf: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """Inverse of `stft` (weighted overlap-add): (B, T, F) -> (B, T * hop)."""
    b, n_frames, _ = spec_btf.shape
    win = _hann(n_fft)
    frames_btn = jnp.fft.irfft(spec_btf, n=n_fft, axis=-1) * win
    idx = _frame_index(n_frames, n_fft, hop)
    total = (n_frames - 1) * hop + n_fft
    out_bs = jnp.zeros((b, total), frames_btn.dtype).at[:, idx].add(frames_btn)
    wsum = np.bincount(idx.ravel(), np.broadcast_to(win**2, idx.shape).ravel(), minlength=total)
    left = _pad_left(n_fft, hop)
    out_bs = out_bs / jnp.asarray(np.maximum(wsum, 1e-3))
    return out_bs[:, left: left + n_frames * hop]


# ----------------------------------------------------------------------------------------- part base


class FramedPart:
    """What both weight-free parts share: a frozen config (JSON-able) with sample_rate and hop_length."""

    cfg: Any
    kind: str

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self.cfg)}

    def files(self) -> dict[str, Path]:
        return {}

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def frame_rate(self) -> float:
        return self.cfg.sample_rate / self.cfg.hop_length


def config_from_spec(config_type: type, spec: dict[str, Any]) -> Any:
    """A part's frozen config from its spec (the "kind" key dropped; unknown keys are an error naming them)."""
    fields = {f.name for f in dataclasses.fields(config_type)}
    extra = sorted(set(spec) - fields - {"kind"})
    if extra:
        raise ValueError(f"unknown {config_type.__name__} settings {extra}; valid: {sorted(fields)}")
    return config_type(**{k: v for k, v in spec.items() if k != "kind"})

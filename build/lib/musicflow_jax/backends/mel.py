"""The weight-free "mel" acoustic part: log-mel frames at 75 Hz, decoded to audio with Griffin-Lim.

24 kHz, hop 320 -> 75 Hz like Encodec-24k: natural-log mel magnitudes (HTK mel scale, triangular filters of peak
1), frame-major (B, T, n_mels). `decode` maps mels back to a linear magnitude (each FFT bin linearly interpolates
the per-band mean magnitudes; the triangles sum to 1 in range) and recovers a phase with fast Griffin-Lim
(momentum 0.99, Perraudin et al. 2013) from a seeded random phase: deterministic. Frames follow stft.py.
Used by the bundled model, since no pretrained codec weights are available offline.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from musicflow_jax.backends.stft import FramedPart, config_from_spec, istft, stft
from musicflow_jax.core.noise import frame_random


@dataclasses.dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 24_000
    n_fft: int = 1024
    hop_length: int = 320  # 24000 / 320 = 75 Hz
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 12_000.0
    log_floor: float = 1e-4  # magnitude floor before the log
    griffin_lim_iters: int = 48
    momentum: float = 0.99
    seed: int = 0  # initial Griffin-Lim phase



def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """(n_mels, F) HTK triangles of peak 1 on the rfft bin frequencies."""
    freqs = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
    pts = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


class MelAcoustic(FramedPart):
    """The "mel" acoustic part: log-mel frames, decoded by Griffin-Lim."""

    kind = "mel"

    def __init__(self, cfg: MelConfig = MelConfig()):
        self.cfg = cfg
        self.basis_mf = mel_filterbank(cfg)
        area_m = self.basis_mf.sum(1)
        if (area_m <= 0).any():
            raise ValueError(f"mel config {cfg}: some mel bands contain no FFT bin; use fewer mels or a larger n_fft")
        self.area_m = area_m

    @property
    def dim(self) -> int:
        return self.cfg.n_mels

    def encode(self, audio_bs: np.ndarray | jax.Array) -> np.ndarray:
        """(B, S) audio -> (B, ceil(S / hop), n_mels) log-mel magnitudes."""
        audio_bs = jnp.asarray(audio_bs, jnp.float32)
        if audio_bs.ndim != 2:
            raise ValueError(f"audio must be (B, S) mono, got shape {tuple(audio_bs.shape)}")
        mag_btf = jnp.abs(stft(audio_bs, self.cfg.n_fft, self.cfg.hop_length))
        mel_btm = jnp.einsum("btf,mf->btm", mag_btf, self.basis_mf)
        return np.asarray(jnp.log(jnp.maximum(mel_btm, self.cfg.log_floor)))

    def magnitude(self, z_btm: jax.Array) -> jax.Array:
        """Log-mel -> linear STFT magnitude (B, T, F): per-band mean magnitude, linearly interpolated over bins."""
        band_mean_btm = jnp.exp(z_btm) / self.area_m
        return jnp.einsum("btm,mf->btf", band_mean_btm, self.basis_mf)

    def decode(self, z_btm: np.ndarray | jax.Array) -> np.ndarray:
        """(B, T, n_mels) -> audio (B, T * hop) by Griffin-Lim (seeded initial phase: deterministic)."""
        z_btm = jnp.asarray(z_btm, jnp.float32)
        if z_btm.ndim != 3 or z_btm.shape[-1] != self.dim:
            raise ValueError(f"latents must be (B, T, {self.dim}), got {tuple(z_btm.shape)}")
        return np.asarray(_griffin_lim(self.cfg, self.magnitude(z_btm)))


@functools.partial(jax.jit, static_argnums=0)
def _griffin_lim(c: MelConfig, mag_btf: jax.Array) -> jax.Array:
    """Fast Griffin-Lim: a phase for the magnitude (B, T, F), from a seeded random start; audio (B, T * hop)."""
    b, t, f = mag_btf.shape  # the start phase of frame i: the same for every row, whatever the frames after it
    phase = frame_random(lambda k, shape: jax.random.uniform(k, shape, jnp.float32, 0.0, 2 * math.pi),
                         jax.random.key(c.seed), jnp.zeros(b), t, f)
    angles = jnp.exp(1j * phase).astype(jnp.complex64)
    fac = c.momentum / (1.0 + c.momentum)

    def body(_: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        angles, prev = carry
        rebuilt = stft(istft(mag_btf * angles, c.n_fft, c.hop_length), c.n_fft, c.hop_length)
        ang = rebuilt - fac * prev
        return ang / (jnp.abs(ang) + 1e-16), rebuilt

    angles, _ = jax.lax.fori_loop(0, c.griffin_lim_iters, body, (angles, jnp.zeros_like(angles)))
    return istft(mag_btf * angles, c.n_fft, c.hop_length)


def build(spec: dict[str, Any], folder: Path | None) -> MelAcoustic:
    return MelAcoustic(config_from_spec(MelConfig, spec))

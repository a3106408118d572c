"""The weight-free "chroma" semantic part: 12 chroma bins + coarse band energies at 50 Hz.

16 kHz, hop 320 -> 50 Hz like HuBERT: 12 chroma bins (Gaussian pitch-class weights, sigma 0.5 semitone,
110 Hz - 4.2 kHz, normalised to sum 1 per frame with an energy floor) followed by `bands` log band energies (band
edges log-spaced 50 Hz - 8 kHz): harmony + coarse loudness/brightness, no timbre detail, which is what stage 2
adds from the text. Continuous (no k-means). Frames follow stft.py.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from musicflow_jax.backends.stft import FramedPart, config_from_spec, stft


@dataclasses.dataclass(frozen=True)
class ChromaConfig:
    sample_rate: int = 16_000
    n_fft: int = 2048
    hop_length: int = 320  # 16000 / 320 = 50 Hz
    fmin: float = 110.0
    fmax: float = 4_200.0
    sigma: float = 0.5  # semitones
    bands: int = 4
    energy_floor: float = 1e-2  # added to the chroma sum so silence does not give noisy chroma



@functools.lru_cache(maxsize=8)
def _chroma_weights(cfg: ChromaConfig) -> tuple[np.ndarray, np.ndarray]:
    """((12, F) pitch-class weights, (bands, F) band-averaging weights)."""
    freqs = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
    w_cf = np.zeros((12, len(freqs)), np.float32)
    ok = (freqs >= cfg.fmin) & (freqs <= cfg.fmax)
    midi = 12.0 * np.log2(np.maximum(freqs[ok], 1e-3) / 440.0) + 69.0
    for c in range(12):
        d = (midi - c + 6.0) % 12.0 - 6.0
        w_cf[c, ok] = np.exp(-0.5 * (d / cfg.sigma) ** 2)
    edges = np.geomspace(50.0, min(8000.0, cfg.sample_rate / 2), cfg.bands + 1)
    b_bf = np.zeros((cfg.bands, len(freqs)), np.float32)
    for i in range(cfg.bands):
        sel = (freqs >= edges[i]) & (freqs < edges[i + 1])
        b_bf[i, sel] = 1.0 / max(int(sel.sum()), 1)
    return w_cf, b_bf


class ChromaSemantic(FramedPart):
    """The "chroma" semantic part: continuous features, no k-means units (units are all -1)."""

    kind = "chroma"

    def __init__(self, cfg: ChromaConfig = ChromaConfig()):
        self.cfg = cfg
        self.w_cf, self.b_bf = _chroma_weights(cfg)

    @property
    def dim(self) -> int:
        return 12 + self.cfg.bands

    def encode(self, audio_bs: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) audio at 16 kHz -> ((B, ceil(S / hop), 12 + bands) features, (B, T) units, all -1)."""
        h = np.asarray(self.features(audio_bs))
        return h, np.full(h.shape[:2], -1, np.int32)

    def features(self, audio_bs: np.ndarray | jax.Array) -> jax.Array:
        """(B, S) audio at 16 kHz -> (B, ceil(S / hop), 12 + bands)."""
        audio_bs = jnp.asarray(audio_bs, jnp.float32)
        if audio_bs.ndim != 2:
            raise ValueError(f"audio must be (B, S) mono, got shape {tuple(audio_bs.shape)}")
        power_btf = jnp.square(jnp.abs(stft(audio_bs, self.cfg.n_fft, self.cfg.hop_length)))
        chroma_btc = jnp.einsum("btf,cf->btc", power_btf, self.w_cf)
        chroma_btc = chroma_btc / (chroma_btc.sum(-1, keepdims=True) + self.cfg.energy_floor)
        bands_btk = jnp.log(jnp.einsum("btf,kf->btk", power_btf, self.b_bf) + 1e-6)
        return jnp.concatenate([chroma_btc, bands_btk], axis=-1)


def build(spec: dict[str, Any], folder: Path | None) -> ChromaSemantic:
    return ChromaSemantic(config_from_spec(ChromaConfig, spec))

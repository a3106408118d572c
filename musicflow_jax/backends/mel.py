"""Weight-free feature backend (documented alternative to HuBERT + Encodec): log-mel "latents" and chroma "units".

No pretrained codec/HuBERT weights exist offline, so the bundled model uses representations that need none:
- acoustic (`MelCodec`, 24 kHz, hop 320 -> 75 Hz like Encodec-24k): natural-log mel magnitudes (HTK mel scale,
  triangular filters of peak 1), frame-major (B, T, n_mels). `decode_latents` maps mels back to a linear magnitude
  (each FFT bin linearly interpolates the per-band mean magnitudes; the triangles sum to 1 in range) and recovers
  a phase with fast Griffin-Lim (momentum 0.99, Perraudin et al. 2013) from a seeded random phase: deterministic.
- semantic (`ChromaSemantic`, 16 kHz, hop 320 -> 50 Hz like HuBERT): 12 chroma bins (Gaussian pitch-class
  weights, sigma 0.5 semitone, 110 Hz - 4.2 kHz, normalised to sum 1 per frame with an energy floor) followed by
  `bands` log band energies (band edges log-spaced 50 Hz - 8 kHz): harmony + coarse loudness/brightness, no timbre
  detail, which is what stage 2 adds from the text.
Frame convention: T = ceil(S / hop); frame t is centred on samples [t*hop, (t+1)*hop) (zero padding of
(n_fft - hop) / 2 on the left), so decode_latents(T frames) returns exactly T * hop samples, as Encodec does.
Everything is jnp (jittable); encode runs eagerly for arbitrary lengths, decode is jitted per length.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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


# ----------------------------------------------------------------------------------------- STFT


def _hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic


def _pad_left(n_fft: int, hop: int) -> int:
    return (n_fft - hop) // 2


def num_frames(n_samples: int, hop: int) -> int:
    return -(-n_samples // hop)


def _frame_index(n_frames: int, n_fft: int, hop: int) -> np.ndarray:
    return hop * np.arange(n_frames)[:, None] + np.arange(n_fft)[None, :]


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


# ----------------------------------------------------------------------------------------- mel codec


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


class _FramedFeatures:
    """What both weight-free backends share: a frozen config (JSON-able) with sample_rate and hop_length."""

    cfg: Any
    kind: str  # "mel" | "chroma", as in features.json
    config_type: type

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of `to_dict`; also takes a features.json entry ({"kind": ..., **config fields})."""
        if d.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"a {d['kind']!r} feature spec cannot build the {cls.kind!r} backend")
        return cls(cls.config_type(**{k: v for k, v in d.items() if k != "kind"}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def frame_rate(self) -> float:
        return self.cfg.sample_rate / self.cfg.hop_length


class MelCodec(_FramedFeatures):
    """Acoustic backend with the Codec interface: encode_latents / decode_latents, sample_rate, frame_rate."""

    kind = "mel"
    config_type = MelConfig

    def __init__(self, cfg: MelConfig = MelConfig()):
        self.cfg = cfg
        self.basis_mf = mel_filterbank(cfg)
        area_m = self.basis_mf.sum(1)
        if (area_m <= 0).any():
            raise ValueError(f"mel config {cfg}: some mel bands contain no FFT bin; use fewer mels or a larger n_fft")
        self.area_m = area_m

    @property
    def latent_dim(self) -> int:
        return self.cfg.n_mels

    def encode_latents(self, audio_bs: np.ndarray | jax.Array) -> jax.Array:
        """(B, S) audio -> (B, ceil(S / hop), n_mels) log-mel magnitudes."""
        audio_bs = jnp.asarray(audio_bs, jnp.float32)
        if audio_bs.ndim != 2:
            raise ValueError(f"audio must be (B, S) mono, got shape {tuple(audio_bs.shape)}")
        mag_btf = jnp.abs(stft(audio_bs, self.cfg.n_fft, self.cfg.hop_length))
        mel_btm = jnp.einsum("btf,mf->btm", mag_btf, self.basis_mf)
        return jnp.log(jnp.maximum(mel_btm, self.cfg.log_floor))

    def magnitude(self, z_btm: jax.Array) -> jax.Array:
        """Log-mel -> linear STFT magnitude (B, T, F): per-band mean magnitude, linearly interpolated over bins."""
        band_mean_btm = jnp.exp(z_btm) / self.area_m
        return jnp.einsum("btm,mf->btf", band_mean_btm, self.basis_mf)

    def decode_latents(self, z_btm: np.ndarray | jax.Array) -> jax.Array:
        """(B, T, n_mels) -> audio (B, T * hop) by Griffin-Lim (seeded initial phase: deterministic)."""
        z_btm = jnp.asarray(z_btm, jnp.float32)
        if z_btm.ndim != 3 or z_btm.shape[-1] != self.latent_dim:
            raise ValueError(f"latents must be (B, T, {self.latent_dim}), got {tuple(z_btm.shape)}")
        return _griffin_lim(self.cfg, self.magnitude(z_btm))


@functools.partial(jax.jit, static_argnums=0)
def _griffin_lim(c: MelConfig, mag_btf: jax.Array) -> jax.Array:
    """Fast Griffin-Lim: a phase for the magnitude (B, T, F), from a seeded random start; audio (B, T * hop)."""
    phase = jax.random.uniform(jax.random.key(c.seed), mag_btf.shape, jnp.float32, 0.0, 2 * math.pi)
    angles = jnp.exp(1j * phase).astype(jnp.complex64)
    fac = c.momentum / (1.0 + c.momentum)

    def body(_: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        angles, prev = carry
        rebuilt = stft(istft(mag_btf * angles, c.n_fft, c.hop_length), c.n_fft, c.hop_length)
        ang = rebuilt - fac * prev
        return ang / (jnp.abs(ang) + 1e-16), rebuilt

    angles, _ = jax.lax.fori_loop(0, c.griffin_lim_iters, body, (angles, jnp.zeros_like(angles)))
    return istft(mag_btf * angles, c.n_fft, c.hop_length)


# ----------------------------------------------------------------------------------------- chroma semantic


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


class ChromaSemantic(_FramedFeatures):
    """Semantic backend with the SemanticEncoder interface: features(audio_16k) -> (B, T, 12 + bands) at 50 Hz.

    Continuous features, no k-means: `units` is all -1 and `unit_vectors` is the identity, like precompute without
    --kmeans."""

    kind = "chroma"
    config_type = ChromaConfig

    def __init__(self, cfg: ChromaConfig = ChromaConfig()):
        self.cfg = cfg
        self.w_cf, self.b_bf = _chroma_weights(cfg)

    @property
    def dim(self) -> int:
        return 12 + self.cfg.bands

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

    def units(self, h_btc: jax.Array) -> np.ndarray:
        return np.full(h_btc.shape[:2], -1, np.int32)

    def unit_vectors(self, h_btc: jax.Array) -> jax.Array:
        return h_btc


class MelFeatureEncoders:
    """The weight-free backend behind the offline feature interface of tools/precompute_features.py
    (`hubert_features`, `encodec_latents`, `info`, `dims`): chroma+band semantic at 50 Hz, log-mel at 75 Hz."""

    def __init__(self) -> None:
        self.semantic, self.codec = ChromaSemantic(), MelCodec()
        self.centroids, self.t5, self.tokenizer = None, None, None
        self.info = {"backend": "mel", "semantic": {"kind": "chroma", **self.semantic.to_dict()},
                     "acoustic": {"kind": "mel", **self.codec.to_dict()}, "semantic_target": "chroma"}
        self.dims = {"semantic": self.semantic.dim, "acoustic": self.codec.latent_dim, "t5": None}

    def hubert_features(self, audio_16k: np.ndarray) -> np.ndarray:
        return np.asarray(self.semantic.features(audio_16k[None]))[0]

    def encodec_latents(self, audio_24k: np.ndarray) -> tuple[np.ndarray, None]:
        return np.asarray(self.codec.encode_latents(audio_24k[None]))[0], None


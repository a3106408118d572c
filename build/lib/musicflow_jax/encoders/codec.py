"""Runtime Encodec wrapper (no torch): audio <-> continuous latents (what stage 2 generates) and audio <-> codes.

Audio is (B, S) for mono models and (B, channels, S) for stereo ones, float32 at `sample_rate`; latents are
frame-major (B, T, latent_dim) at `frame_rate`. Codes follow transformers' EncodecModel.encode: (chunks, B, n_q, T)
with per-chunk loudness scales for `normalize` models (48 kHz), decoded with the same linear overlap-add.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.encoders.converted import load_encodec
from musicflow_jax.models.encodec import Encodec, EncodecConfig


class Codec:
    def __init__(self, cfg: EncodecConfig, model: Encodec):
        self.cfg = cfg
        self.graphdef, self.state = nnx.split(model)
        g = self.graphdef
        self._enc = jax.jit(lambda st, x: nnx.merge(g, st).encode_latents(x))
        self._dec = jax.jit(lambda st, z: nnx.merge(g, st).decode_latents(z))
        self._quant = jax.jit(lambda st, z, n_q: nnx.merge(g, st).quantize(z, n_q), static_argnums=2)
        self._dequant = jax.jit(lambda st, c: nnx.merge(g, st).dequantize(c))

    @classmethod
    def load(cls, folder: str | Path) -> Codec:
        """A converted Encodec folder (python -m musicflow_jax.convert encodec SRC DST)."""
        return cls(*load_encodec(folder))

    @property
    def sample_rate(self) -> int:
        return self.cfg.sampling_rate

    @property
    def frame_rate(self) -> int:
        return self.cfg.frame_rate

    @property
    def latent_dim(self) -> int:
        return self.cfg.hidden_size

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    # ------------------------------------------------------------------ layout helpers
    def _to_bsc(self, audio: np.ndarray | jax.Array) -> jax.Array:
        audio = jnp.asarray(audio, jnp.float32)
        if audio.ndim == 2 and self.cfg.audio_channels == 1:
            return audio[:, :, None]
        if audio.ndim == 3 and audio.shape[1] == self.cfg.audio_channels:
            return jnp.swapaxes(audio, 1, 2)
        want = "(B, S)" if self.cfg.audio_channels == 1 else f"(B, {self.cfg.audio_channels}, S)"
        raise ValueError(f"audio of shape {tuple(audio.shape)} does not fit this codec: expected {want}")

    def _from_bsc(self, audio_bsc: jax.Array) -> jax.Array:
        return audio_bsc[..., 0] if self.cfg.audio_channels == 1 else jnp.swapaxes(audio_bsc, 1, 2)

    def _scale(self, x_bsc: jax.Array) -> jax.Array | None:
        if not self.cfg.normalize:
            return None
        mono_bs = x_bsc.mean(-1)
        return jnp.sqrt(jnp.mean(mono_bs**2, axis=-1, keepdims=True)) + 1e-8  # (B, 1)

    # ------------------------------------------------------------------ continuous latents
    def encode_latents(self, audio: np.ndarray | jax.Array, return_scale: bool = False):
        """Audio -> z_btc (B, ceil(S / hop), latent_dim), pre-quantisation. `normalize` models divide by the
        clip's RMS first; pass return_scale=True to get it (B, 1) for decode_latents."""
        x_bsc = self._to_bsc(audio)
        scale = self._scale(x_bsc)
        if scale is not None:
            x_bsc = x_bsc / scale[:, :, None]
        z_btc = self._enc(self.state, x_bsc)
        return (z_btc, scale) if return_scale else z_btc

    def decode_latents(self, z_btc: np.ndarray | jax.Array, scale: jax.Array | None = None) -> jax.Array:
        """z_btc -> audio (B, T * hop) (or (B, channels, T * hop)); optional (B, 1) loudness scale."""
        z_btc = jnp.asarray(z_btc, jnp.float32)
        if z_btc.ndim != 3 or z_btc.shape[-1] != self.latent_dim:
            raise ValueError(f"latents must be (B, T, {self.latent_dim}), got {tuple(z_btc.shape)}")
        audio = self._from_bsc(self._dec(self.state, z_btc))
        if scale is not None:
            audio = audio * jnp.reshape(scale, (-1,) + (1,) * (audio.ndim - 1))
        return audio

    # ------------------------------------------------------------------ discrete codes
    def quantizers_for_bandwidth(self, bandwidth: float | None) -> int:
        bw = self.cfg.target_bandwidths[0] if bandwidth is None else bandwidth
        if bw not in self.cfg.target_bandwidths:
            raise ValueError(f"bandwidth {bw} not supported; choose one of {self.cfg.target_bandwidths}")
        return self.cfg.quantizers_for_bandwidth(bw)

    def quantize_latents(self, z_btc: jax.Array, bandwidth: float | None = None) -> jax.Array:
        """Continuous latents -> codes (B, n_q, T) int32 with the residual VQ."""
        return self._quant(self.state, jnp.asarray(z_btc, jnp.float32), self.quantizers_for_bandwidth(bandwidth))

    def codes_to_latents(self, codes_bqt: jax.Array) -> jax.Array:
        return self._dequant(self.state, jnp.asarray(codes_bqt, jnp.int32))

    def encode_codes(self, audio: np.ndarray | jax.Array, bandwidth: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Like EncodecModel.encode: (codes (chunks, B, n_q, T) int32, scales (chunks, B, 1) or None, last pad)."""
        x_bsc = self._to_bsc(audio)
        n_q = self.quantizers_for_bandwidth(bandwidth)
        length = x_bsc.shape[1]
        chunk, stride = self.cfg.chunk_length, self.cfg.chunk_stride
        if chunk is None:
            chunk = stride = length
        codes, scales = [], []
        for off in range(0, length, stride or chunk):
            frame = x_bsc[:, off: off + chunk]
            scale = self._scale(frame)
            if scale is not None:
                frame = frame / scale[:, :, None]
            codes.append(np.asarray(self._quant(self.state, self._enc(self.state, frame), n_q)))
            scales.append(None if scale is None else np.asarray(scale))
        pad = codes[0].shape[-1] - codes[-1].shape[-1]
        if pad > 0:
            codes[-1] = np.pad(codes[-1], ((0, 0), (0, 0), (0, pad)))
        return np.stack(codes), (None if scales[0] is None else np.stack(scales)), pad

    def decode_codes(self, codes: np.ndarray, scales: np.ndarray | None = None, last_frame_pad_length: int = 0
                     ) -> jax.Array:
        """Inverse of encode_codes (chunks decoded and linearly overlap-added as in transformers)."""
        codes = np.asarray(codes)
        if codes.ndim == 3:  # (B, n_q, T): one chunk
            codes = codes[None]
        frames = []
        for i, c_bqt in enumerate(codes):
            if i == len(codes) - 1 and last_frame_pad_length > 0:
                c_bqt = c_bqt[..., :-last_frame_pad_length]
            a_bsc = self._dec(self.state, self.codes_to_latents(c_bqt))
            if scales is not None and scales[i] is not None:
                a_bsc = a_bsc * jnp.asarray(scales[i]).reshape(-1, 1, 1)
            frames.append(a_bsc)
        if self.cfg.chunk_length is None:
            if len(frames) != 1:
                raise ValueError(f"this codec is not chunked: expected 1 chunk of codes, got {len(frames)}")
            return self._from_bsc(frames[0])
        return self._from_bsc(_linear_overlap_add(frames, self.cfg.chunk_stride or 1))


def _linear_overlap_add(frames: list[jax.Array], stride: int) -> jax.Array:
    """Triangular-weighted overlap-add of (B, S_i, C) chunks placed every `stride` samples."""
    total = stride * (len(frames) - 1) + frames[-1].shape[1]
    n = frames[0].shape[1]
    t = np.linspace(0, 1, n + 2, dtype=np.float32)[1:-1]
    weight = (0.5 - np.abs(t - 0.5)).astype(np.float32)
    out = jnp.zeros((frames[0].shape[0], total, frames[0].shape[2]), jnp.float32)
    wsum = np.zeros(total, np.float32)
    for i, f in enumerate(frames):
        k, off = f.shape[1], i * stride
        out = out.at[:, off: off + k].add(weight[:k, None] * f)
        wsum[off: off + k] += weight[:k]
    return out / jnp.asarray(wsum)[None, :, None]

"""Flax NNX Encodec (SEANet encoder/decoder + residual vector quantiser), matching transformers' EncodecModel.

Channel-last throughout: audio (B, S, channels), latents (B, T, hidden). Layer lists mirror the HF/original
`layers` numbering (ELU entries included, parameter-free), so converted parameter paths read like the
PyTorch names: `decoder.layers.3.conv.weight_v`. Supports weight_norm and time_group_norm convs, causal and
non-causal padding (reflect or zero), any ratios / residual layers / LSTM depth / conv or identity shortcuts,
and mono or stereo; loudness normalisation and chunking (48 kHz model) live in musicflow_jax/codec.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from musicflow_jax.models.port_layers import LSTM, Conv1d, ConvTranspose1d, GroupNorm, nearest_code


@dataclasses.dataclass(frozen=True)
class EncodecConfig:
    sampling_rate: int = 24_000
    audio_channels: int = 1
    hidden_size: int = 128
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    norm_type: str = "weight_norm"  # "weight_norm" | "time_group_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 1024
    codebook_dim: int = 128
    use_conv_shortcut: bool = True
    target_bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)
    normalize: bool = False
    chunk_length_s: float | None = None
    overlap: float | None = None

    def __post_init__(self) -> None:
        if self.norm_type not in ("weight_norm", "time_group_norm"):
            raise ValueError(f"Encodec norm_type must be weight_norm or time_group_norm, got {self.norm_type!r}")
        if self.pad_mode not in ("reflect", "constant", "zero"):
            raise ValueError(f"Encodec pad_mode {self.pad_mode!r} is not supported (reflect | constant)")
        if not self.use_causal_conv and self.trim_right_ratio != 1.0:
            raise ValueError("Encodec trim_right_ratio != 1.0 only makes sense for causal convolutions")

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> EncodecConfig:
        kw = {f.name: hf[f.name] for f in dataclasses.fields(cls) if f.name in hf and hf[f.name] is not None}
        for k in ("upsampling_ratios", "target_bandwidths"):
            if k in kw:
                kw[k] = tuple(kw[k])
        kw.setdefault("codebook_dim", kw.get("hidden_size", cls.hidden_size))  # HF: None means hidden_size
        return cls(**kw)

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsampling_ratios)

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def num_quantizers(self) -> int:
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * math.log2(self.codebook_size)))

    def quantizers_for_bandwidth(self, bandwidth: float) -> int:
        bw_per_q = math.log2(self.codebook_size) * self.frame_rate
        return int(max(1, math.floor(bandwidth * 1000 / bw_per_q)))

    @property
    def chunk_length(self) -> int | None:
        return None if self.chunk_length_s is None else int(self.chunk_length_s * self.sampling_rate)

    @property
    def chunk_stride(self) -> int | None:
        if self.chunk_length_s is None or self.overlap is None:
            return None
        return max(1, int((1.0 - self.overlap) * self.chunk_length))


def _elu(x: jax.Array) -> jax.Array:
    return jnp.where(x > 0, x, jnp.expm1(jnp.minimum(x, 0.0)))


class ELU(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return _elu(x)


def _pad1d(x_btc: jax.Array, left: int, right: int, mode: str) -> jax.Array:
    """torch pad on the time axis; reflect on inputs shorter than the pad first zero-extends (as HF does)."""
    if mode != "reflect":
        return jnp.pad(x_btc, ((0, 0), (left, right), (0, 0)))
    length, extra = x_btc.shape[1], 0
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        x_btc = jnp.pad(x_btc, ((0, 0), (0, extra), (0, 0)))
    out = jnp.pad(x_btc, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return out[:, : out.shape[1] - extra]


class SConv1d(nnx.Module):
    """EncodecConv1d: same-length-by-stride padding (causal or centred) + conv (+ time group norm)."""

    def __init__(self, cfg: EncodecConfig, din: int, dout: int, width: int, stride: int = 1, dilation: int = 1, *,
                 rngs: nnx.Rngs):
        wn = cfg.norm_type == "weight_norm"
        self.conv = Conv1d(din, dout, width, stride=stride, dilation=dilation, wn_axis=2 if wn else None, rngs=rngs)
        self.norm = None if wn else GroupNorm(1, dout, rngs=rngs)
        self.causal, self.pad_mode = cfg.use_causal_conv, cfg.pad_mode
        self.stride, self.eff_width = stride, (width - 1) * dilation + 1

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        length, s = x_btc.shape[1], self.stride
        pad_total = self.eff_width - s
        extra = -(-length // s) * s - length  # HF _get_extra_padding_for_conv1d simplified
        if self.causal:
            left, right = pad_total, extra
        else:
            left, right = pad_total - pad_total // 2, pad_total // 2 + extra
        y = self.conv(_pad1d(x_btc, left, right, self.pad_mode))
        return y if self.norm is None else self.norm(y)


class SConvTranspose1d(nnx.Module):
    """EncodecConvTranspose1d: transposed conv (+ time group norm) then trim the kernel overhang."""

    def __init__(self, cfg: EncodecConfig, din: int, dout: int, width: int, stride: int, *, rngs: nnx.Rngs):
        wn = cfg.norm_type == "weight_norm"
        self.conv = ConvTranspose1d(din, dout, width, stride=stride, wn_axis=1 if wn else None, rngs=rngs)
        self.norm = None if wn else GroupNorm(1, dout, rngs=rngs)
        pad_total = width - stride
        right = math.ceil(pad_total * cfg.trim_right_ratio) if cfg.use_causal_conv else pad_total // 2
        self.trim = (pad_total - right, right)

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        y = self.conv(x_btc)
        if self.norm is not None:
            y = self.norm(y)
        return y[:, self.trim[0]: y.shape[1] - self.trim[1]]


class SLSTM(nnx.Module):
    def __init__(self, cfg: EncodecConfig, dim: int, *, rngs: nnx.Rngs):
        self.lstm = LSTM(dim, dim, cfg.num_lstm_layers, rngs=rngs)

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        return self.lstm(x_btc) + x_btc


class ResnetBlock(nnx.Module):
    def __init__(self, cfg: EncodecConfig, dim: int, dilation: int, *, rngs: nnx.Rngs):
        hidden = dim // cfg.compress
        self.block = nnx.List([
            ELU(), SConv1d(cfg, dim, hidden, cfg.residual_kernel_size, dilation=dilation, rngs=rngs),
            ELU(), SConv1d(cfg, hidden, dim, 1, rngs=rngs)])
        self.shortcut = SConv1d(cfg, dim, dim, 1, rngs=rngs) if cfg.use_conv_shortcut else None

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        y = x_btc
        for layer in self.block:
            y = layer(y)
        return (x_btc if self.shortcut is None else self.shortcut(x_btc)) + y


def encoder_layers(cfg: EncodecConfig, rngs: nnx.Rngs) -> list[nnx.Module]:
    layers: list[nnx.Module] = [SConv1d(cfg, cfg.audio_channels, cfg.num_filters, cfg.kernel_size, rngs=rngs)]
    scaling = 1
    for ratio in reversed(cfg.upsampling_ratios):
        dim = scaling * cfg.num_filters
        layers += [ResnetBlock(cfg, dim, cfg.dilation_growth_rate**j, rngs=rngs)
                   for j in range(cfg.num_residual_layers)]
        layers += [ELU(), SConv1d(cfg, dim, dim * 2, ratio * 2, stride=ratio, rngs=rngs)]
        scaling *= 2
    dim = scaling * cfg.num_filters
    layers += [SLSTM(cfg, dim, rngs=rngs), ELU(), SConv1d(cfg, dim, cfg.hidden_size, cfg.last_kernel_size, rngs=rngs)]
    return layers


def decoder_layers(cfg: EncodecConfig, rngs: nnx.Rngs) -> list[nnx.Module]:
    scaling = 2 ** len(cfg.upsampling_ratios)
    dim = scaling * cfg.num_filters
    layers: list[nnx.Module] = [SConv1d(cfg, cfg.hidden_size, dim, cfg.kernel_size, rngs=rngs),
                                SLSTM(cfg, dim, rngs=rngs)]
    for ratio in cfg.upsampling_ratios:
        dim = scaling * cfg.num_filters
        layers += [ELU(), SConvTranspose1d(cfg, dim, dim // 2, ratio * 2, ratio, rngs=rngs)]
        layers += [ResnetBlock(cfg, dim // 2, cfg.dilation_growth_rate**j, rngs=rngs)
                   for j in range(cfg.num_residual_layers)]
        scaling //= 2
    layers += [ELU(), SConv1d(cfg, cfg.num_filters, cfg.audio_channels, cfg.last_kernel_size, rngs=rngs)]
    return layers


class SEANet(nnx.Module):
    def __init__(self, layers: list[nnx.Module]):
        self.layers = nnx.List(layers)

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        for layer in self.layers:
            x_btc = layer(x_btc)
        return x_btc


class Codebook(nnx.Module):
    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.codebook_size, cfg.codebook_dim)))


class VQLayer(nnx.Module):
    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        self.codebook = Codebook(cfg, rngs=rngs)

    def encode(self, x_btd: jax.Array) -> jax.Array:
        return nearest_code(x_btd, self.codebook.embed[...])

    def decode(self, ids_bt: jax.Array) -> jax.Array:
        return jnp.take(self.codebook.embed[...], ids_bt, axis=0)


class Quantizer(nnx.Module):
    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([VQLayer(cfg, rngs=rngs) for _ in range(cfg.num_quantizers)])

    def encode(self, z_btd: jax.Array, n_q: int) -> jax.Array:
        """Residual VQ with the first n_q codebooks -> codes (B, n_q, T) int32."""
        residual, codes = z_btd, []
        for layer in self.layers[:n_q]:
            ids = layer.encode(residual)
            residual = residual - layer.decode(ids)
            codes.append(ids)
        return jnp.stack(codes, axis=1)

    def decode(self, codes_bqt: jax.Array) -> jax.Array:
        out = 0.0
        for q in range(codes_bqt.shape[1]):
            out = out + self.layers[q].decode(codes_bqt[:, q])
        return out


class Encodec(nnx.Module):
    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = SEANet(encoder_layers(cfg, rngs))
        self.decoder = SEANet(decoder_layers(cfg, rngs))
        self.quantizer = Quantizer(cfg, rngs=rngs)

    def encode_latents(self, audio_bsc: jax.Array) -> jax.Array:
        """(B, S, channels) audio -> (B, ceil(S / hop), hidden) continuous pre-quantisation latents."""
        return self.encoder(audio_bsc)

    def decode_latents(self, z_btd: jax.Array) -> jax.Array:
        """(B, T, hidden) -> (B, T * hop, channels) audio."""
        return self.decoder(z_btd)

    def quantize(self, z_btd: jax.Array, n_q: int) -> jax.Array:
        return self.quantizer.encode(z_btd, n_q)

    def dequantize(self, codes_bqt: jax.Array) -> jax.Array:
        return self.quantizer.decode(codes_bqt)

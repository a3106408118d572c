"""Flax NNX HuBERT feature extractor matching transformers' HubertModel (inference, no masking):
conv feature encoder (group-norm or layer-norm variant), feature projection, weight-normalised convolutional
positional embedding, post-LN or "stable" pre-LN transformer. Returns the hidden state after any layer.

Layer indexing follows transformers' `output_hidden_states`: hidden_states[0] is the transformer input (after
the positional embedding, and after the encoder LayerNorm in the post-LN variant); hidden_states[i] is the
output of layer i (transformers >= 5 records raw layer outputs; in the stable pre-LN variant only
`last_hidden_state` gets the final encoder LayerNorm).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from musicflow_jax.models.port_layers import Conv1d, GroupNorm, LayerNorm, Linear


@dataclasses.dataclass(frozen=True)
class HubertConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group" | "layer"
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    layer_norm_eps: float = 1e-5
    sampling_rate: int = 16_000

    def __post_init__(self) -> None:
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"HuBERT feat_extract_norm must be group | layer, got {self.feat_extract_norm!r}")
        if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel):
            raise ValueError("HuBERT conv_dim, conv_stride and conv_kernel must have the same length")

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> HubertConfig:
        for key, want in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
            if hf.get(key, "gelu") != want:
                raise ValueError(f"HuBERT {key}={hf[key]!r} is not supported (only {want!r})")
        if hf.get("conv_pos_batch_norm", False):
            raise ValueError("HuBERT conv_pos_batch_norm=True is not supported")
        kw = {f.name: hf[f.name] for f in dataclasses.fields(cls) if f.name in hf}
        for k in ("conv_dim", "conv_stride", "conv_kernel"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @property
    def hop_length(self) -> int:
        n = 1
        for s in self.conv_stride:
            n *= s
        return n


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


class ConvLayer(nnx.Module):
    def __init__(self, cfg: HubertConfig, i: int, *, rngs: nnx.Rngs):
        din = 1 if i == 0 else cfg.conv_dim[i - 1]
        dout = cfg.conv_dim[i]
        self.conv = Conv1d(din, dout, cfg.conv_kernel[i], stride=cfg.conv_stride[i], bias=cfg.conv_bias, rngs=rngs)
        if cfg.feat_extract_norm == "layer":
            self.layer_norm = LayerNorm(dout, eps=1e-5, rngs=rngs)
        elif i == 0:
            self.layer_norm = GroupNorm(dout, dout, eps=1e-5, rngs=rngs)
        else:
            self.layer_norm = None

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        x_btc = self.conv(x_btc)
        if self.layer_norm is not None:
            x_btc = self.layer_norm(x_btc)
        return _gelu(x_btc)


class FeatureExtractor(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.conv_layers = nnx.List([ConvLayer(cfg, i, rngs=rngs) for i in range(len(cfg.conv_dim))])

    def __call__(self, audio_bs: jax.Array) -> jax.Array:
        x_btc = audio_bs[:, :, None]
        for layer in self.conv_layers:
            x_btc = layer(x_btc)
        return x_btc


class FeatureProjection(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.layer_norm = LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps, rngs=rngs) \
            if cfg.feat_proj_layer_norm else None
        self.projection = Linear(cfg.conv_dim[-1], cfg.hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.projection(x if self.layer_norm is None else self.layer_norm(x))


class PositionalConvEmbedding(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        k = cfg.num_conv_pos_embeddings
        self.conv = Conv1d(cfg.hidden_size, cfg.hidden_size, k, groups=cfg.num_conv_pos_embedding_groups,
                           wn_axis=0, rngs=rngs)
        self.pad, self.remove = k // 2, 1 if k % 2 == 0 else 0

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        y = self.conv(jnp.pad(x_btc, ((0, 0), (self.pad, self.pad), (0, 0))))
        if self.remove:
            y = y[:, : -self.remove]
        return _gelu(y)


class Attention(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj = Linear(d, d, rngs=rngs), Linear(d, d, rngs=rngs)
        self.v_proj, self.out_proj = Linear(d, d, rngs=rngs), Linear(d, d, rngs=rngs)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        b, t, d = x_btd.shape
        h, k = self.heads, d // self.heads
        q_bthk = self.q_proj(x_btd).reshape(b, t, h, k) * k**-0.5
        k_bthk = self.k_proj(x_btd).reshape(b, t, h, k)
        v_bthk = self.v_proj(x_btd).reshape(b, t, h, k)
        p_bhqs = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q_bthk, k_bthk), axis=-1)
        return self.out_proj(jnp.einsum("bhqs,bshk->bqhk", p_bhqs, v_bthk).reshape(b, t, d))


class FeedForward(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.intermediate_dense = Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs)
        self.output_dense = Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.output_dense(_gelu(self.intermediate_dense(x)))


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.stable = cfg.do_stable_layer_norm
        self.attention = Attention(cfg, rngs=rngs)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=rngs)
        self.feed_forward = FeedForward(cfg, rngs=rngs)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        if self.stable:
            x_btd = x_btd + self.attention(self.layer_norm(x_btd))
            return x_btd + self.feed_forward(self.final_layer_norm(x_btd))
        x_btd = self.layer_norm(x_btd + self.attention(x_btd))
        return self.final_layer_norm(x_btd + self.feed_forward(x_btd))


class Encoder(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.stable = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(cfg, rngs=rngs)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x_btd: jax.Array, upto: int) -> list[jax.Array]:
        x_btd = x_btd + self.pos_conv_embed(x_btd)
        if not self.stable:
            x_btd = self.layer_norm(x_btd)
        states = [x_btd]
        for i in range(upto):
            x_btd = self.layers[i](x_btd)
            states.append(x_btd)
        return states


class Hubert(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.feature_extractor = FeatureExtractor(cfg, rngs=rngs)
        self.feature_projection = FeatureProjection(cfg, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)

    def hidden_states(self, audio_bs: jax.Array, upto: int | None = None) -> list[jax.Array]:
        """[transformer input, layer 1 out, ..., layer `upto` out], each (B, T, hidden); T = frames at 50 Hz."""
        n = self.cfg.num_hidden_layers
        upto = n if upto is None else upto
        if not 0 <= upto <= n:
            raise ValueError(f"HuBERT layer must be in [0, {n}], got {upto}")
        return self.encoder(self.feature_projection(self.feature_extractor(audio_bs)), upto)

    def last_hidden_state(self, audio_bs: jax.Array) -> jax.Array:
        """transformers' `last_hidden_state`: the last layer output (+ the encoder LayerNorm if stable)."""
        h_btd = self.hidden_states(audio_bs)[-1]
        return self.encoder.layer_norm(h_btd) if self.cfg.do_stable_layer_norm else h_btd

    def __call__(self, audio_bs: jax.Array, layer: int) -> jax.Array:
        return self.hidden_states(audio_bs, layer)[layer]

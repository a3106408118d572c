"""Flax NNX T5 encoder (v1.0 relu FFN, v1.1/FLAN gated-gelu FFN), numerically matching transformers'
T5EncoderModel: RMS norm without mean subtraction, no attention scaling, bidirectional relative position
buckets shared by all layers (only the first layer owns the bias table), padding masked with finfo.min.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from musicflow_jax.models.port_layers import Embed, Linear

FFN_KINDS = ("relu", "gelu", "gated-relu", "gated-gelu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 384
    d_model: int = 32
    d_kv: int = 8
    d_ff: int = 64
    num_layers: int = 2
    num_heads: int = 4
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.feed_forward_proj not in FFN_KINDS:
            raise ValueError(f"T5 feed_forward_proj must be one of {FFN_KINDS}, got {self.feed_forward_proj!r}")

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> T5Config:
        """From a transformers T5Config dict (config.json of a T5 / FLAN-T5 / ByT5 checkpoint)."""
        ffn = hf.get("feed_forward_proj", "relu")
        ffn = {"gated-gelu_new": "gated-gelu", "gelu_new": "gelu"}.get(ffn, ffn)
        return cls(vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
                   num_layers=hf["num_layers"], num_heads=hf["num_heads"],
                   relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
                   relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
                   feed_forward_proj=ffn, layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6))


def relative_position_bucket(rel_qk: jax.Array, num_buckets: int, max_distance: int) -> jax.Array:
    """Bidirectional T5 bucket of (key - query) offsets: half the buckets per sign, log-spaced beyond exact."""
    num_buckets //= 2
    bucket = (rel_qk > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(rel_qk)
    max_exact = num_buckets // 2
    large = max_exact + (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
                         / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(n < max_exact, n, large)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        del rngs
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        var = jnp.mean(jnp.square(x), -1, keepdims=True)
        return x * jax.lax.rsqrt(var + self.eps) * self.scale[...]


class T5Attention(nnx.Module):
    def __init__(self, cfg: T5Config, has_bias: bool, *, rngs: nnx.Rngs):
        inner = cfg.num_heads * cfg.d_kv
        self.cfg = cfg
        self.q = Linear(cfg.d_model, inner, bias=False, rngs=rngs)
        self.k = Linear(cfg.d_model, inner, bias=False, rngs=rngs)
        self.v = Linear(cfg.d_model, inner, bias=False, rngs=rngs)
        self.o = Linear(inner, cfg.d_model, bias=False, rngs=rngs)
        self.rel_bias = Embed(cfg.relative_attention_num_buckets, cfg.num_heads, rngs=rngs) if has_bias else None

    def position_bias(self, length: int) -> jax.Array:
        pos = jnp.arange(length)
        bucket_qk = relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.relative_attention_num_buckets,
                                             self.cfg.relative_attention_max_distance)
        return jnp.transpose(self.rel_bias(bucket_qk), (2, 0, 1))[None]  # (1, H, Lq, Lk)

    def __call__(self, x_bld: jax.Array, bias_bhqk: jax.Array) -> jax.Array:
        b, l, _ = x_bld.shape
        h, k = self.cfg.num_heads, self.cfg.d_kv
        q_blhk = self.q(x_bld).reshape(b, l, h, k)
        k_blhk = self.k(x_bld).reshape(b, l, h, k)
        v_blhk = self.v(x_bld).reshape(b, l, h, k)
        s_bhqk = jnp.einsum("bqhk,bshk->bhqs", q_blhk, k_blhk) + bias_bhqk
        p_bhqk = jax.nn.softmax(s_bhqk, axis=-1)
        out_blhk = jnp.einsum("bhqs,bshk->bqhk", p_bhqk, v_blhk)
        return self.o(out_blhk.reshape(b, l, h * k))


class T5FeedForward(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.gated = cfg.feed_forward_proj.startswith("gated")
        self.act = jax.nn.relu if cfg.feed_forward_proj.endswith("relu") else (
            lambda x: jax.nn.gelu(x, approximate=True))
        if self.gated:
            self.wi_0 = Linear(cfg.d_model, cfg.d_ff, bias=False, rngs=rngs)
            self.wi_1 = Linear(cfg.d_model, cfg.d_ff, bias=False, rngs=rngs)
        else:
            self.wi = Linear(cfg.d_model, cfg.d_ff, bias=False, rngs=rngs)
        self.wo = Linear(cfg.d_ff, cfg.d_model, bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(hidden)


class T5Block(nnx.Module):
    def __init__(self, cfg: T5Config, has_bias: bool, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, rngs=rngs)
        self.attn = T5Attention(cfg, has_bias, rngs=rngs)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, rngs=rngs)
        self.ff = T5FeedForward(cfg, rngs=rngs)

    def __call__(self, x_bld: jax.Array, bias_bhqk: jax.Array) -> jax.Array:
        x_bld = x_bld + self.attn(self.attn_norm(x_bld), bias_bhqk)
        return x_bld + self.ff(self.ff_norm(x_bld))


class T5Encoder(nnx.Module):
    """ids (B, L) int32 + mask (B, L) bool -> last hidden state (B, L, d_model) float32."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.block = nnx.List([T5Block(cfg, i == 0, rngs=rngs) for i in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, rngs=rngs)

    def __call__(self, ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
        x_bld = self.embed_tokens(ids_bl)
        neg = jnp.where(mask_bl, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
        bias_bhqk = self.block[0].attn.position_bias(ids_bl.shape[1]) + neg
        for blk in self.block:
            x_bld = blk(x_bld, bias_bhqk)
        return self.final_norm(x_bld)

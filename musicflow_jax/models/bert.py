"""Flax NNX BERT encoder (post-LayerNorm, absolute positions, token types), numerically matching transformers'
BertModel's last hidden state: all-MiniLM-L6-v2 and other sentence encoders of the BERT family. Token-level
outputs (no pooling): the flow transformer cross-attends to every token. Padding is masked with finfo.min, as
transformers does; the FFN activation is exact (erf) GELU, or tanh GELU for "gelu_new"-style checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from musicflow_jax.models.port_layers import Embed, LayerNorm, Linear

ACTIVATIONS = ("gelu", "gelu_new", "relu")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BERT hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BERT hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        """From a transformers BertConfig dict (config.json of a BERT / MiniLM / sentence-transformers folder)."""
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BERT position_embedding_type {hf['position_embedding_type']!r}: only 'absolute' "
                             "is ported")
        return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                   num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=hf["num_attention_heads"],
                   intermediate_size=hf["intermediate_size"],
                   max_position_embeddings=hf.get("max_position_embeddings", 512),
                   type_vocab_size=hf.get("type_vocab_size", 2), hidden_act=hf.get("hidden_act", "gelu"),
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-12), pad_token_id=hf.get("pad_token_id", 0))

    @property
    def dim(self) -> int:
        return self.hidden_size


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.word = Embed(cfg.vocab_size, cfg.hidden_size, std=0.02, rngs=rngs)
        self.position = Embed(cfg.max_position_embeddings, cfg.hidden_size, std=0.02, rngs=rngs)
        self.token_type = Embed(cfg.type_vocab_size, cfg.hidden_size, std=0.02, rngs=rngs)
        self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, ids_bl: jax.Array) -> jax.Array:
        pos_l = jnp.arange(ids_bl.shape[1])
        x_bld = self.word(ids_bl) + self.position(pos_l)[None] + self.token_type(jnp.zeros_like(ids_bl))
        return self.norm(x_bld)


class BertLayer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q = Linear(d, d, rngs=rngs)
        self.k = Linear(d, d, rngs=rngs)
        self.v = Linear(d, d, rngs=rngs)
        self.attn_out = Linear(d, d, rngs=rngs)
        self.attn_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.ff_in = Linear(d, cfg.intermediate_size, rngs=rngs)
        self.ff_out = Linear(cfg.intermediate_size, d, rngs=rngs)
        self.ff_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.act = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
                    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu}[cfg.hidden_act]

    def __call__(self, x_bld: jax.Array, neg_b11k: jax.Array) -> jax.Array:
        b, l, d = x_bld.shape
        h = self.heads
        q_blhk, k_blhk, v_blhk = (f(x_bld).reshape(b, l, h, d // h) for f in (self.q, self.k, self.v))
        s_bhqk = jnp.einsum("bqhk,bshk->bhqs", q_blhk, k_blhk) / math.sqrt(d // h) + neg_b11k
        out_blhk = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(s_bhqk, axis=-1), v_blhk)
        x_bld = self.attn_norm(x_bld + self.attn_out(out_blhk.reshape(b, l, d)))
        return self.ff_norm(x_bld + self.ff_out(self.act(self.ff_in(x_bld))))


class BertEncoder(nnx.Module):
    """ids (B, L) int32 + mask (B, L) bool -> last hidden state (B, L, hidden_size) float32 (no pooler)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layer = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
        if ids_bl.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(f"BERT input of {ids_bl.shape[1]} tokens exceeds max_position_embeddings "
                             f"{self.cfg.max_position_embeddings}: lower text.max_len")
        x_bld = self.embeddings(ids_bl)
        neg_b11k = jnp.where(mask_bl, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
        for blk in self.layer:
            x_bld = blk(x_bld, neg_b11k)
        return x_bld

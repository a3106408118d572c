"""The Voicebox-style flow-matching transformer shared by both MusicFlow stages, and `count_params`.

Stage 1 ("semantic": text -> HuBERT features) and stage 2 ("acoustic": upsampled semantic features +
text -> Encodec latents) are two configs of this one module; only cfg.model.cond_dim differs in kind.

Architecture (per frame t; B batch, T frames, D = cfg.model.dim):
  h = in_proj(concat(x_t, ctx, cond)) + time_mlp(sinusoidal(t))     # time embedding added to every frame
  depth pre-norm blocks: h += SelfAttn(LN h; RoPE, keys = valid frames)
                         h += CrossAttn(LN h; text keys with padding mask + one learned null key/value)
                         h += MLP(LN h)
  U-Net skips: block i < depth/2 stores its output; block j >= depth/2 first merges its input with the
  output of block depth-1-j: h = h W_h + skip W_s + b (= a Linear on the concatenation, as in Voicebox).
  v = out_proj(LN h), float32, zero on padded frames.

Choices (documented per the issue):
- Time conditioning: the time embedding is added to the projected input (Voicebox prepends it as a token;
  adding keeps every sequence length equal to T and works with RoPE without a special position).
- Positions: RoPE in self-attention instead of Voicebox's conv-pos + ALiBi: it is relative (scores depend
  on i - j only), has no learned table so any crop length works, and extrapolates to long-form windows.
- Text dropped for classifier-free guidance = text mask all False: the null key/value keeps the softmax
  well defined, so the unconditional branch is exactly "text_mask all False, ctx zeros".
- Logical parameter axes (config.LOGICAL_AXES): "embed" = model width, "mlp" = FFN / time-MLP hidden and the
  skip branch's input, "heads"/"kv" = attention heads / head dim, "text" = text-encoder feature axis,
  "vocab" = external feature spaces read or written (target stream, condition, sinusoidal time features).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.config import Config
from musicflow_jax.flow import FlowInput
from musicflow_jax.models.layers import (
    MLP,
    Dense,
    LayerNorm,
    MultiHeadAttention,
    param,
    sinusoidal_embedding,
)


class Block(nnx.Module):
    """Pre-norm transformer block: self-attention (RoPE) -> cross-attention to text -> MLP."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        m = cfg.model
        dt, pdt = jnp.dtype(m.dtype), jnp.dtype(m.param_dtype)
        self.norm_self = LayerNorm(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.self_attn = MultiHeadAttention(m.dim, m.dim, m.heads, rope_theta=m.rope_theta, null_kv=False,
                                            dtype=dt, param_dtype=pdt, rngs=rngs)
        self.norm_cross = LayerNorm(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.cross_attn = MultiHeadAttention(m.dim, m.dim, m.heads, rope_theta=None, null_kv=True,
                                             dtype=dt, param_dtype=pdt, rngs=rngs)
        self.norm_mlp = LayerNorm(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.mlp = MLP(m.dim, m.mlp_dim, dropout=m.dropout, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.drop = nnx.Dropout(m.dropout, rngs=rngs) if m.dropout > 0 else nnx.data(None)

    def _residual(self, x_btd: jax.Array, h_btd: jax.Array, deterministic: bool) -> jax.Array:
        if self.drop is not None:
            h_btd = self.drop(h_btd, deterministic=deterministic)
        return x_btd + h_btd.astype(x_btd.dtype)

    def __call__(self, x_btd: jax.Array, text_bld: jax.Array, text_mask_bl: jax.Array, frame_mask_bt: jax.Array,
                 positions_bt: jax.Array, *, deterministic: bool = True) -> jax.Array:
        h_btd = self.norm_self(x_btd)
        x_btd = self._residual(x_btd, self.self_attn(h_btd, h_btd, frame_mask_bt, positions_bt), deterministic)
        x_btd = self._residual(x_btd, self.cross_attn(self.norm_cross(x_btd), text_bld, text_mask_bl), deterministic)
        return self._residual(x_btd, self.mlp(self.norm_mlp(x_btd), deterministic=deterministic), deterministic)


class SkipMerge(nnx.Module):
    """U-Net skip: h W_h + skip W_s + b, i.e. a Linear(2D -> D) on concat(h, skip) stored as two halves."""

    def __init__(self, dim: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        init = nnx.initializers.variance_scaling(0.5, "fan_in", "truncated_normal")  # fan_in of the concat = 2D
        self.kernel_h = nnx.Param(param(init, ("mlp", "embed"))(rngs.params(), (dim, dim), param_dtype))
        self.kernel_skip = nnx.Param(param(init, ("mlp", "embed"))(rngs.params(), (dim, dim), param_dtype))
        self.bias = nnx.Param(param(nnx.initializers.zeros, ("embed",))(None, (dim,), param_dtype))
        self.dtype = dtype

    def __call__(self, h_btd: jax.Array, skip_btd: jax.Array) -> jax.Array:
        dt = self.dtype
        y_btd = (jnp.einsum("btd,de->bte", h_btd.astype(dt), self.kernel_h[...].astype(dt))
                 + jnp.einsum("btd,de->bte", skip_btd.astype(dt), self.kernel_skip[...].astype(dt)))
        return y_btd + self.bias[...].astype(dt)


class FlowTransformer(nnx.Module):
    """Predicts the flow-matching velocity v(x_t, t | ctx, cond, text) for one MusicFlow stage."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        m = cfg.model
        dt, pdt = jnp.dtype(m.dtype), jnp.dtype(m.param_dtype)
        self.stage, self.feature_dim, self.cond_dim, self.text_dim = m.stage, m.feature_dim, m.cond_dim, cfg.text.dim
        self.dim, self.depth, self.time_dim, self.remat = m.dim, m.depth, m.time_dim, m.remat
        in_dim = 2 * m.feature_dim + m.cond_dim
        self.in_proj = Dense(in_dim, m.dim, ("vocab", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.time_fc1 = Dense(m.time_dim, m.dim, ("vocab", "mlp"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.time_fc2 = Dense(m.dim, m.dim, ("mlp", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.text_norm = LayerNorm(cfg.text.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.text_proj = Dense(cfg.text.dim, m.dim, ("text", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(m.depth)])
        self.skips = nnx.List([SkipMerge(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs) for _ in range(m.depth // 2)])
        self.norm_out = LayerNorm(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.out_proj = Dense(m.dim, m.feature_dim, ("embed", "vocab"), dtype=dt, param_dtype=pdt, rngs=rngs)

    def _check_inputs(self, x_t_btd: jax.Array, ctx_btd: jax.Array, text_bld: jax.Array, text_mask_bl: jax.Array,
                      cond_btc: jax.Array | None) -> None:
        b, t, f = x_t_btd.shape
        if f != self.feature_dim or ctx_btd.shape != x_t_btd.shape:
            raise ValueError(f"x_t {x_t_btd.shape} and ctx {ctx_btd.shape} must both be (B, T, model.feature_dim="
                             f"{self.feature_dim})")
        if text_bld.shape[-1] != self.text_dim or text_mask_bl.shape != text_bld.shape[:2] or text_bld.shape[0] != b:
            raise ValueError(f"text {text_bld.shape} / text_mask {text_mask_bl.shape} must be (B={b}, L, text.dim="
                             f"{self.text_dim}) / (B, L)")
        if self.cond_dim and (cond_btc is None or cond_btc.shape != (b, t, self.cond_dim)):
            got = None if cond_btc is None else cond_btc.shape
            raise ValueError(f"stage {self.stage!r} needs cond_btc of shape (B={b}, T={t}, model.cond_dim="
                             f"{self.cond_dim}) (semantic features upsampled to the acoustic rate), got {got}")
        if not self.cond_dim and cond_btc is not None:
            raise ValueError(f"stage {self.stage!r} has model.cond_dim=0 and takes no cond_btc; pass None")

    def __call__(self, inp: FlowInput, *, deterministic: bool = True) -> jax.Array:
        """The velocity v (B, T, F) float32 for `inp` (flow.FlowInput), 0 on padded frames."""
        x_t_btd, ctx_btd, t_b, text_bld, text_mask_bl, cond_btc, frame_mask_bt = inp
        self._check_inputs(x_t_btd, ctx_btd, text_bld, text_mask_bl, cond_btc)
        b, t, _ = x_t_btd.shape
        frame_mask_bt = jnp.ones((b, t), bool) if frame_mask_bt is None else frame_mask_bt.astype(bool)
        text_mask_bl = text_mask_bl.astype(bool)
        feats = [x_t_btd, ctx_btd] + ([cond_btc] if cond_btc is not None else [])
        h_btd = self.in_proj(jnp.concatenate([f.astype(jnp.float32) for f in feats], axis=-1))
        temb_bd = self.time_fc2(jax.nn.silu(self.time_fc1(sinusoidal_embedding(t_b, self.time_dim))))
        h_btd = h_btd + temb_bd[:, None, :]
        text_bld = self.text_proj(self.text_norm(text_bld))
        positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

        def run_block(block: Block, x_btd: jax.Array, text_bld: jax.Array, text_mask_bl: jax.Array,
                      frame_mask_bt: jax.Array, positions_bt: jax.Array) -> jax.Array:
            return block(x_btd, text_bld, text_mask_bl, frame_mask_bt, positions_bt, deterministic=deterministic)

        if self.remat:
            run_block = nnx.remat(run_block)
        half, skips = self.depth // 2, []
        for i, block in enumerate(self.blocks):
            if i >= half:
                h_btd = self.skips[i - half](h_btd, skips[self.depth - 1 - i])
            h_btd = run_block(block, h_btd, text_bld, text_mask_bl, frame_mask_bt, positions_bt)
            if i < half:
                skips.append(h_btd)
        v_btd = self.out_proj(self.norm_out(h_btd)).astype(jnp.float32)
        return jnp.where(frame_mask_bt[..., None], v_btd, 0.0)


def count_params(cfg: Config) -> int:
    """Number of trainable parameters of FlowTransformer(cfg), from shapes only (nnx.eval_shape, no FLOPs)."""
    abstract = nnx.eval_shape(lambda: FlowTransformer(cfg, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))

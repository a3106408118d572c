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

Layers are stacked (MaxText's scanned layers): the two U-Net halves are `BlockStack`s whose parameters carry a
leading "layers" axis (depth/2 blocks each; the upper half's layers also hold their SkipMerge), run by a
`jax.lax.scan` (nnx.scan) that carries h; the lower half's per-layer outputs are the scan's stacked outputs and
feed the upper half in reverse order. One block is traced and compiled per half, whatever the depth (stage2_base:
24 blocks). `model.scan_layers=false` runs the same stacked parameters in a Python loop (the unrolled reference,
same outputs); `model.remat` ("none" | "dots" | "full") rematerialises each block in the backward pass saving
nothing or only matmul outputs. Stage files written before stacking (`blocks.<i>.*`, `skips.<j>.*`) load through
`stack_unrolled`.

Choices (documented per the issue):
- Time conditioning: the time embedding is added to the projected input (Voicebox prepends it as a token;
  adding keeps every sequence length equal to T and works with RoPE without a special position). A few-step
  student (`model.interval`) adds a second embedding, of the interval s - t (flow.py's average velocity), whose
  output layer starts at zero, so a teacher's weights make a student that predicts exactly the teacher's velocity.
- Positions: RoPE in self-attention instead of Voicebox's conv-pos + ALiBi: it is relative (scores depend
  on i - j only), has no learned table so any crop length works, and extrapolates to long-form windows.
- Text dropped for classifier-free guidance = text mask all False: the null key/value keeps the softmax
  well defined, so the unconditional branch is exactly "text_mask all False, ctx zeros".
- Logical parameter axes (config.LOGICAL_AXES): "embed" = model width, "mlp" = FFN / time-MLP hidden and the
  skip branch's input, "heads"/"kv" = attention heads / head dim, "text" = text-encoder feature axis,
  "vocab" = external feature spaces read or written (target stream, condition, sinusoidal time features).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.core import beat
from musicflow_jax.core.config import Config
from musicflow_jax.core.flow import FlowInput
from musicflow_jax.core.sharding import constrain
from musicflow_jax.models.layers import (
    MLP,
    Dense,
    LayerNorm,
    MultiHeadAttention,
    kernel_einsum,
    param,
    sinusoidal_embedding,
)


class Block(nnx.Module):
    """Pre-norm transformer block: self-attention (RoPE) -> cross-attention to text -> MLP."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        m = cfg.model
        dt, pdt = jnp.dtype(m.dtype), jnp.dtype(m.param_dtype)
        self.rules = rules = tuple(cfg.mesh.rules)
        attn = dict(dtype=dt, param_dtype=pdt, implementation=m.attention, rules=rules, rngs=rngs)
        self.norm_self = LayerNorm(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.self_attn = MultiHeadAttention(m.dim, m.dim, m.heads, rope_theta=m.rope_theta, null_kv=False, **attn)
        self.norm_cross = LayerNorm(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.cross_attn = MultiHeadAttention(m.dim, m.dim, m.heads, rope_theta=None, null_kv=True, **attn)
        self.norm_mlp = LayerNorm(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.mlp = MLP(m.dim, m.mlp_dim, dropout=m.dropout, dtype=dt, param_dtype=pdt, rules=rules, rngs=rngs)
        self.drop = nnx.Dropout(m.dropout, rngs=rngs) if m.dropout > 0 else nnx.data(None)

    def _residual(self, x_btd: jax.Array, h_btd: jax.Array, deterministic: bool) -> jax.Array:
        if self.drop is not None:
            h_btd = self.drop(h_btd, deterministic=deterministic)
        return constrain(x_btd + h_btd.astype(x_btd.dtype), ("batch", "frames", "embed"), self.rules)

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
        y_btd = (kernel_einsum(self, "kernel_h", "btd,de->bte", h_btd.astype(dt), dt)
                 + kernel_einsum(self, "kernel_skip", "btd,de->bte", skip_btd.astype(dt), dt))
        return y_btd + self.bias[...].astype(dt)


def _remat_policy(name: str):  # noqa: ANN202 - a jax.checkpoint policy
    return {"dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
            "full": jax.checkpoint_policies.nothing_saveable}[name]


class StackLayer(nnx.Module):
    """One layer of a BlockStack: the U-Net skip merge (upper half only) and a Block."""

    def __init__(self, cfg: Config, with_skip: bool, *, rngs: nnx.Rngs):
        m = cfg.model
        self.skip = (SkipMerge(m.dim, dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype), rngs=rngs)
                     if with_skip else nnx.data(None))
        self.block = Block(cfg, rngs=rngs)

    def __call__(self, h_btd: jax.Array, skip_btd: jax.Array | None, text_bld: jax.Array, text_mask_bl: jax.Array,
                 frame_mask_bt: jax.Array, positions_bt: jax.Array, deterministic: bool) -> jax.Array:
        if self.skip is not None:
            h_btd = self.skip(h_btd, skip_btd)
        return self.block(h_btd, text_bld, text_mask_bl, frame_mask_bt, positions_bt, deterministic=deterministic)


class BlockStack(nnx.Module):
    """`n` StackLayers with stacked parameters (leading logical axis "layers"), applied in order by a scan (or, with
    model.scan_layers=false, a Python loop over the same parameters). Returns (h, per-layer outputs (n, B, T, D))."""

    def __init__(self, cfg: Config, n: int, with_skip: bool, *, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(rngs: nnx.Rngs) -> StackLayer:
            return StackLayer(cfg, with_skip, rngs=rngs)

        self.layers = make(rngs)
        self.n, self.scan, self.remat = n, cfg.model.scan_layers, cfg.model.remat

    def __call__(self, h_btd: jax.Array, skips_nbtd: jax.Array | None, text_bld: jax.Array, text_mask_bl: jax.Array,
                 frame_mask_bt: jax.Array, positions_bt: jax.Array, deterministic: bool
                 ) -> tuple[jax.Array, jax.Array]:
        # functional scan over the split layer state (nnx.scan cannot take modules closed over by an outer
        # transform, e.g. diffrax's ODE solve); the layers' non-parameter state (dropout RNG counters) comes back
        # as a stacked output and is written back
        graphdef, state = nnx.split(self.layers)

        def body(h: jax.Array, xs: tuple[Any, jax.Array | None]) -> tuple[jax.Array, tuple[jax.Array, Any]]:
            layer_state, skip = xs
            layer = nnx.merge(graphdef, layer_state)
            h = layer(h, skip, text_bld, text_mask_bl, frame_mask_bt, positions_bt, deterministic)
            return h, (h, nnx.state(layer, nnx.Not(nnx.Param)))

        if self.remat != "none":
            body = jax.checkpoint(body, policy=_remat_policy(self.remat))
        if self.scan:
            h_btd, (outs_nbtd, new_state) = jax.lax.scan(body, h_btd, (state, skips_nbtd))
        else:
            rows = []
            for i in range(self.n):
                xs = jax.tree.map(lambda x, i=i: x[i], (state, skips_nbtd))
                h_btd, row = body(h_btd, xs)
                rows.append(row)
            outs_nbtd, new_state = jax.tree.map(lambda *xs: jnp.stack(xs), *rows)
        if jax.tree.leaves(new_state):  # e.g. dropout's RNG counters; parameters are never written
            nnx.update(self.layers, new_state)
        return h_btd, outs_nbtd


class FlowTransformer(nnx.Module):
    """Predicts the flow-matching velocity v(x_t, t | ctx, cond, text) for one MusicFlow stage."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        m = cfg.model
        dt, pdt = jnp.dtype(m.dtype), jnp.dtype(m.param_dtype)
        self.stage, self.feature_dim, self.cond_dim, self.text_dim = m.stage, m.feature_dim, m.cond_dim, cfg.text.dim
        self.dim, self.depth, self.time_dim = m.dim, m.depth, m.time_dim
        self.beat = m.beat
        in_dim = 2 * m.feature_dim + m.cond_dim + (beat.CHANNELS if m.beat else 0)
        self.in_proj = Dense(in_dim, m.dim, ("vocab", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.time_fc1 = Dense(m.time_dim, m.dim, ("vocab", "mlp"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.time_fc2 = Dense(m.dim, m.dim, ("mlp", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.interval = m.interval
        if m.interval:  # s - t, embedded like t; zero output at init: the student starts as its teacher
            self.interval_fc1 = Dense(m.time_dim, m.dim, ("vocab", "mlp"), dtype=dt, param_dtype=pdt, rngs=rngs)
            self.interval_fc2 = Dense(m.dim, m.dim, ("mlp", "embed"), dtype=dt, param_dtype=pdt, init_scale=0.0,
                                      rngs=rngs)
        self.text_norm = LayerNorm(cfg.text.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.text_proj = Dense(cfg.text.dim, m.dim, ("text", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.down = BlockStack(cfg, m.depth // 2, False, rngs=rngs)
        self.up = BlockStack(cfg, m.depth // 2, True, rngs=rngs)
        self.norm_out = LayerNorm(m.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.out_proj = Dense(m.dim, m.feature_dim, ("embed", "vocab"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.activation_rules = tuple(cfg.mesh.rules)

    def _check_inputs(self, x_t_btd: jax.Array, ctx_btd: jax.Array, text_bld: jax.Array, text_mask_bl: jax.Array,
                      cond_btc: jax.Array | None, beat_btc: jax.Array | None) -> None:
        b, t, f = x_t_btd.shape
        if f != self.feature_dim or ctx_btd.shape != x_t_btd.shape:
            raise ValueError(f"x_t {x_t_btd.shape} and ctx {ctx_btd.shape} must both be (B, T, model.feature_dim="
                             f"{self.feature_dim})")
        if text_bld.shape[-1] != self.text_dim or text_mask_bl.shape != text_bld.shape[:2] or text_bld.shape[0] != b:
            raise ValueError(f"text {text_bld.shape} / text_mask {text_mask_bl.shape} must be (B={b}, L, text.dim="
                             f"{self.text_dim}) / (B, L)")
        self._check_frame_input(cond_btc, "cond_btc", (b, t, self.cond_dim) if self.cond_dim else None,
                                f"needs cond_btc of shape (B={b}, T={t}, model.cond_dim={self.cond_dim}) (semantic "
                                "features upsampled to the acoustic rate)", "has model.cond_dim=0")
        self._check_frame_input(beat_btc, "beat_btc", (b, t, beat.CHANNELS) if self.beat else None,
                                f"has model.beat and needs beat_btc of shape (B={b}, T={t}, {beat.CHANNELS}) "
                                "(core/beat.py; zeros = no tempo)", "has model.beat=false")

    def _check_frame_input(self, arr: jax.Array | None, name: str, shape: tuple[int, ...] | None, needs: str,
                           without: str) -> None:
        """A frame-aligned input the stage reads (`shape` given: it must have that shape) or does not (must be None)."""
        if shape is not None and (arr is None or arr.shape != shape):
            raise ValueError(f"stage {self.stage!r} {needs}, got {None if arr is None else arr.shape}")
        if shape is None and arr is not None:
            raise ValueError(f"stage {self.stage!r} {without} and takes no {name}; pass None")

    def __call__(self, inp: FlowInput, *, deterministic: bool = True) -> jax.Array:
        """The velocity v (B, T, F) float32 for `inp` (flow.FlowInput), 0 on padded frames."""
        x_t_btd, ctx_btd, t_b, text_bld, text_mask_bl, cond_btc, frame_mask_bt, s_b, beat_btc = inp
        if s_b is not None and not self.interval:
            raise ValueError("an interval end s_b was given to a stage without model.interval (not a few-step student)")
        self._check_inputs(x_t_btd, ctx_btd, text_bld, text_mask_bl, cond_btc, beat_btc)
        b, t, _ = x_t_btd.shape
        frame_mask_bt = jnp.ones((b, t), bool) if frame_mask_bt is None else frame_mask_bt.astype(bool)
        text_mask_bl = text_mask_bl.astype(bool)
        feats = [x_t_btd, ctx_btd] + [c for c in (cond_btc, beat_btc) if c is not None]
        h_btd = self.in_proj(jnp.concatenate([f.astype(jnp.float32) for f in feats], axis=-1))
        temb_bd = self.time_fc2(jax.nn.silu(self.time_fc1(sinusoidal_embedding(t_b, self.time_dim))))
        if self.interval:
            gap_b = jnp.zeros_like(t_b) if s_b is None else s_b - t_b
            temb_bd = temb_bd + self.interval_fc2(jax.nn.silu(self.interval_fc1(
                sinusoidal_embedding(gap_b, self.time_dim))))
        h_btd = constrain(h_btd + temb_bd[:, None, :], ("batch", "frames", "embed"), self.activation_rules)
        text_bld = constrain(self.text_proj(self.text_norm(text_bld)), ("batch", "text", "embed"),
                             self.activation_rules)
        positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        args = (text_bld, text_mask_bl, frame_mask_bt, positions_bt, deterministic)
        h_btd, skips_nbtd = self.down(h_btd, None, *args)
        h_btd, _ = self.up(h_btd, skips_nbtd[::-1], *args)  # upper layer j merges lower layer depth/2-1-j's output
        v_btd = self.out_proj(self.norm_out(h_btd)).astype(jnp.float32)
        return jnp.where(frame_mask_bt[..., None], v_btd, 0.0)


def stack_unrolled(flat: dict[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
    """Parameters of a stage file written before layers were stacked (`blocks.<i>.<rest>` for i < depth,
    `skips.<j>.<rest>`) in the stacked layout: blocks 0..depth/2-1 -> `down.layers.block.<rest>`, blocks
    depth/2..depth-1 -> `up.layers.block.<rest>`, skip j -> `up.layers.skip.<rest>` (upper layer j used skips[j]).
    Files already stacked are returned unchanged."""
    if not any(k.startswith(("blocks.", "skips.")) for k in flat):
        return flat
    half = depth // 2
    out = {k: v for k, v in flat.items() if not k.startswith(("blocks.", "skips."))}
    groups: dict[str, dict[int, np.ndarray]] = {}
    for k, v in flat.items():
        if k.startswith(("blocks.", "skips.")):
            kind, i, rest = k.split(".", 2)
            i = int(i)
            name = (f"down.layers.block.{rest}" if i < half else f"up.layers.block.{rest}") if kind == "blocks" \
                else f"up.layers.skip.{rest}"
            groups.setdefault(name, {})[i % half if kind == "blocks" else i] = v
    for name, by_layer in groups.items():
        if sorted(by_layer) != list(range(half)):
            raise ValueError(f"unrolled stage parameters for {name!r} cover layers {sorted(by_layer)}, expected "
                             f"0..{half - 1} (model.depth={depth})")
        out[name] = np.stack([by_layer[i] for i in range(half)])
    return out


def count_params(cfg: Config) -> int:
    """Number of trainable parameters of FlowTransformer(cfg), from shapes only (nnx.eval_shape, no FLOPs)."""
    abstract = nnx.eval_shape(lambda: FlowTransformer(cfg, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))

"""Building blocks of the flow transformer: a logical-axis initializer wrapper, LayerNorm, dense layers, rotary
position embedding, masked multi-head attention (self and cross, with a learned null key/value),
GELU MLP and the sinusoidal time embedding.

Choices (see also models/transformer.py):
- Norm: LayerNorm (scale + bias, as in Voicebox), pre-norm, always computed in float32.
- Positions: rotary embedding (RoPE) on self-attention queries/keys only. It is relative (scores depend
  on i - j only, see `apply_rope`), needs no learned table, so any crop length works and long-form
  windows extrapolate; Voicebox's conv-pos + ALiBi play the same role. Cross-attention to text has no
  positions (T5 already encodes them).
- Precision: parameters are stored in `param_dtype` and cast to the compute `dtype` at use; attention
  logits/softmax and norms run in float32.
- Sharding: every parameter carries logical axis names (config.LOGICAL_AXES) as `out_sharding` metadata
  with eager sharding off, so the model builds without a mesh; the train step maps the names with
  cfg.mesh.rules (sharding.state_shardings). Activations are pinned with `sharding.constrain` under the same
  rules (`rules`, the cfg.mesh.rules pairs): attention q/k/v ("batch", "frames"|"text", "heads", "kv"), the MLP
  hidden ("batch", "frames", "mlp"), the residual stream ("batch", "frames", "embed"); a no-op outside a step
  traced under `sharding.activation_mesh`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from musicflow_jax.core.sharding import constrain, per_shard

Rules = tuple[tuple[str, str | None], ...]

Initializer = nnx.initializers.Initializer


def kernel_einsum(module: nnx.Module, name: str, spec: str, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """einsum(spec, x, module.<name>) in `dtype`, plus the LoRA term when the kernel has adapters
    (`<name>_lora_a` over the contracted axes, `<name>_lora_b` over the output axes; finetune.add_adapters):
    x W + lora_factor * (x A) B, never forming W + A B, so no gradient of the frozen W is computed."""
    y = jnp.einsum(spec, x, getattr(module, name)[...].astype(dtype))
    a = getattr(module, name + "_lora_a", None)
    if a is None:
        return y
    b = getattr(module, name + "_lora_b")
    ins, out = spec.split("->")
    xs, ks = ins.split(",")
    contracted = "".join(c for c in ks if c in xs)
    kept = "".join(c for c in xs if c not in contracted)
    produced = "".join(c for c in ks if c not in contracted)
    xa = jnp.einsum(f"{xs},{contracted}z->{kept}z", x, a[...].astype(dtype))
    return y + module.lora_factor * jnp.einsum(f"{kept}z,z{produced}->{out}", xa, b[...].astype(dtype))


def param(init: Initializer, names: tuple[str | None, ...]) -> Initializer:
    """Wrap an initializer so the created nnx.Param carries logical axis `names` (not eagerly sharded)."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis computed in float32; output in `dtype`."""

    def __init__(self, dim: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, eps: float = 1e-5, rngs: nnx.Rngs):
        del rngs  # deterministic init
        self.scale = nnx.Param(param(nnx.initializers.ones, ("embed",))(None, (dim,), param_dtype))
        self.bias = nnx.Param(param(nnx.initializers.zeros, ("embed",))(None, (dim,), param_dtype))
        self.dtype, self.eps = dtype, eps

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        x_btd = x_btd.astype(jnp.float32)
        mean_bt1 = x_btd.mean(-1, keepdims=True)
        var_bt1 = jnp.square(x_btd - mean_bt1).mean(-1, keepdims=True)
        y_btd = (x_btd - mean_bt1) * jax.lax.rsqrt(var_bt1 + self.eps)
        y_btd = y_btd * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y_btd.astype(self.dtype)


class Dense(nnx.Module):
    """y = x W + b over the last axis, with logical names (in_name, out_name) on W (init_scale 0: W = 0)."""

    def __init__(self, in_dim: int, out_dim: int, names: tuple[str, str], *, dtype: jnp.dtype,
                 param_dtype: jnp.dtype, use_bias: bool = True, init_scale: float = 1.0, rngs: nnx.Rngs):
        init = (nnx.initializers.variance_scaling(init_scale, "fan_in", "truncated_normal") if init_scale > 0
                else nnx.initializers.zeros)
        self.kernel = nnx.Param(param(init, names)(rngs.params(), (in_dim, out_dim), param_dtype))
        self.bias = (nnx.Param(param(nnx.initializers.zeros, (names[1],))(None, (out_dim,), param_dtype))
                     if use_bias else nnx.data(None))
        self.dtype = dtype

    def __call__(self, x_bti: jax.Array) -> jax.Array:
        y_bto = kernel_einsum(self, "kernel", "...i,io->...o", x_bti.astype(self.dtype), self.dtype)
        if self.bias is not None:
            y_bto = y_bto + self.bias[...].astype(self.dtype)
        return y_bto


# --------------------------------------------------------------------------- rotary embedding


def rope_tables(positions_bt: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables (B, T, head_dim/2) in float32 for integer or real positions."""
    inv_freq_k = theta ** (-jnp.arange(0, head_dim // 2, dtype=jnp.float32) / (head_dim // 2))
    ang_btk = positions_bt.astype(jnp.float32)[..., None] * inv_freq_k
    return jnp.cos(ang_btk), jnp.sin(ang_btk)


def apply_rope(x_bthk: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
    """Rotate channel pairs (k, k + K/2) of each head by angle position * theta^(-2k/K).

    Relative: <rope(q, i), rope(k, j)> depends on i - j only, so shifting every position by the same
    offset leaves attention scores unchanged. Computed in float32, returned in x's dtype.
    """
    cos_btk, sin_btk = rope_tables(positions_bt, x_bthk.shape[-1], theta)
    cos_bt1k, sin_bt1k = cos_btk[:, :, None, :], sin_btk[:, :, None, :]
    x1_bthk, x2_bthk = jnp.split(x_bthk.astype(jnp.float32), 2, axis=-1)
    out_bthk = jnp.concatenate([x1_bthk * cos_bt1k - x2_bthk * sin_bt1k, x2_bthk * cos_bt1k + x1_bthk * sin_bt1k], -1)
    return out_bthk.astype(x_bthk.dtype)


# --------------------------------------------------------------------------- attention


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "flash")
FLASH_BLOCK = 128  # the TPU flash kernel's tile along the sequences: they are padded to a multiple of it


def flash_attention(q_bthk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, key_mask_bs: jax.Array) -> jax.Array:
    """Pallas' TPU flash attention (jax.experimental.pallas.ops.tpu.flash_attention): the (T, S) scores stay in the
    chip's on-chip memory, tile by tile, forward and backward. The sequences are padded to a multiple of 128; the key
    mask becomes segment ids (queries are segment 1, valid keys 1, masked and padded keys 0), so masked keys get
    exactly zero weight, as with "xla". Runs on TPU (on CPU only under pallas.tpu.force_tpu_interpret_mode)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # Pallas: only where it is asked for

    b, t, _, k = q_bthk.shape
    s = k_bshk.shape[1]
    tp, sp = -(-t // FLASH_BLOCK) * FLASH_BLOCK, -(-s // FLASH_BLOCK) * FLASH_BLOCK

    def heads_first(x: jax.Array, n: int) -> jax.Array:
        return jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    segments = tpu_flash.SegmentIds(q=jnp.ones((b, tp), jnp.int32),
                                    kv=jnp.pad(key_mask_bs.astype(jnp.int32), ((0, 0), (0, sp - s))))
    o_bhtk = tpu_flash.flash_attention(heads_first(q_bthk, tp), heads_first(k_bshk, sp), heads_first(v_bshk, sp),
                                       segment_ids=segments, sm_scale=1.0 / math.sqrt(k))
    return o_bhtk.transpose(0, 2, 1, 3)[:, :t]


def attention(q_bthk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, key_mask_bs: jax.Array,
              implementation: str = "xla", rules: Rules = (), kv_axis: str = "frames") -> jax.Array:
    """Scaled dot-product attention through `jax.nn.dot_product_attention`; keys with key_mask False get exactly
    zero weight.

    "xla": logits and softmax in float32 with the boolean mask (any mask; a query whose keys are all masked gets a
    uniform, finite average). "cudnn": cuDNN flash attention on NVIDIA GPUs (bf16/fp16, no (T, S) score matrix in
    memory); the mask is passed as per-example key lengths, so it must be a prefix mask (valid keys first, padding
    at the end), which is what the data pipeline, the tokenizer and the null key (prepended) produce. "flash": Pallas'
    TPU flash attention (`flash_attention`), run per device block (sharding.per_shard: batch over the batch axes,
    heads over "tensor") since XLA cannot partition a Pallas kernel.
    """
    if implementation == "flash":
        q_names = ("batch", "frames", "heads", "kv")
        kv_names = ("batch", kv_axis, "heads", "kv")
        return per_shard(flash_attention, (q_names, kv_names, kv_names, ("batch", kv_axis)), rules,
                         q_bthk, k_bshk, v_bshk, key_mask_bs)
    if implementation == "cudnn":
        kv_len_b = jnp.sum(key_mask_bs, axis=-1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(q_bthk, k_bshk, v_bshk, key_value_seq_lengths=kv_len_b,
                                            implementation="cudnn")
    return jax.nn.dot_product_attention(q_bthk, k_bshk, v_bshk, mask=key_mask_bs[:, None, None, :],
                                        implementation="xla")


class MultiHeadAttention(nnx.Module):
    """Multi-head attention. Self-attention (rope=True) or cross-attention to a context sequence with
    `null_kv=True`: one learned null key/value every query can see, so an all-False context mask (text
    dropped for classifier-free guidance) is well defined."""

    def __init__(self, dim: int, ctx_dim: int, heads: int, *, rope_theta: float | None, null_kv: bool,
                 dtype: jnp.dtype, param_dtype: jnp.dtype, implementation: str = "xla", rules: Rules = (),
                 rngs: nnx.Rngs):
        head_dim = dim // heads
        init_in = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=(1, 2))
        init_out = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
        names_in, names_out = ("embed", "heads", "kv"), ("heads", "kv", "embed")
        self.w_q = nnx.Param(param(init_in, names_in)(rngs.params(), (dim, heads, head_dim), param_dtype))
        self.w_k = nnx.Param(param(init_in, names_in)(rngs.params(), (ctx_dim, heads, head_dim), param_dtype))
        self.w_v = nnx.Param(param(init_in, names_in)(rngs.params(), (ctx_dim, heads, head_dim), param_dtype))
        self.w_o = nnx.Param(param(init_out, names_out)(rngs.params(), (heads, head_dim, dim), param_dtype))
        if null_kv:
            init_null = nnx.initializers.normal(1.0)
            self.null_k = nnx.Param(param(init_null, ("heads", "kv"))(rngs.params(), (heads, head_dim), param_dtype))
            self.null_v = nnx.Param(param(init_null, ("heads", "kv"))(rngs.params(), (heads, head_dim), param_dtype))
        else:
            self.null_k = self.null_v = nnx.data(None)
        self.rope_theta, self.dtype, self.implementation, self.rules = rope_theta, dtype, implementation, rules

    def __call__(self, x_btd: jax.Array, ctx_bsc: jax.Array, key_mask_bs: jax.Array,
                 positions_bt: jax.Array | None = None) -> jax.Array:
        dt = self.dtype
        x_btd, ctx_bsc = x_btd.astype(dt), ctx_bsc.astype(dt)
        q_bthk = kernel_einsum(self, "w_q", "btd,dhk->bthk", x_btd, dt)
        k_bshk = kernel_einsum(self, "w_k", "bsc,chk->bshk", ctx_bsc, dt)
        v_bshk = kernel_einsum(self, "w_v", "bsc,chk->bshk", ctx_bsc, dt)
        kv_axis = "frames" if self.rope_theta is not None else "text"
        q_bthk = constrain(q_bthk, ("batch", "frames", "heads", "kv"), self.rules)
        k_bshk = constrain(k_bshk, ("batch", kv_axis, "heads", "kv"), self.rules)
        v_bshk = constrain(v_bshk, ("batch", kv_axis, "heads", "kv"), self.rules)
        if self.rope_theta is not None:
            assert positions_bt is not None, "self-attention with rope needs positions_bt"
            q_bthk = apply_rope(q_bthk, positions_bt, self.rope_theta)
            k_bshk = apply_rope(k_bshk, positions_bt, self.rope_theta)
        if self.null_k is not None:
            b, h, k = k_bshk.shape[0], k_bshk.shape[2], k_bshk.shape[3]
            null_k_b1hk = jnp.broadcast_to(self.null_k[...].astype(dt), (b, 1, h, k))
            null_v_b1hk = jnp.broadcast_to(self.null_v[...].astype(dt), (b, 1, h, k))
            k_bshk = jnp.concatenate([null_k_b1hk, k_bshk], axis=1)
            v_bshk = jnp.concatenate([null_v_b1hk, v_bshk], axis=1)
            key_mask_bs = jnp.concatenate([jnp.ones((b, 1), bool), key_mask_bs], axis=1)
        o_bthk = attention(q_bthk, k_bshk, v_bshk, key_mask_bs, self.implementation, self.rules, kv_axis)
        return kernel_einsum(self, "w_o", "bthk,hkd->btd", o_bthk, dt)


class MLP(nnx.Module):
    """Position-wise feed-forward: Dense(dim->mlp) -> GELU -> dropout -> Dense(mlp->dim)."""

    def __init__(self, dim: int, mlp_dim: int, *, dropout: float, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 rules: Rules = (), rngs: nnx.Rngs):
        self.fc_in = Dense(dim, mlp_dim, ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc_out = Dense(mlp_dim, dim, ("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else nnx.data(None)
        self.rules = rules

    def __call__(self, x_btd: jax.Array, *, deterministic: bool = True) -> jax.Array:
        h_btf = constrain(jax.nn.gelu(self.fc_in(x_btd)), ("batch", "frames", "mlp"), self.rules)
        if self.drop is not None:
            h_btf = self.drop(h_btf, deterministic=deterministic)
        return self.fc_out(h_btf)


# --------------------------------------------------------------------------- time embedding


def sinusoidal_embedding(t_b: jax.Array, dim: int, scale: float = 1000.0, max_period: float = 10_000.0) -> jax.Array:
    """[cos | sin] features of scale * t at geometric frequencies; (B,) -> (B, dim) float32.

    t in [0, 1] is scaled by 1000 so the fastest frequencies resolve the small steps of an ODE solver.
    """
    half = dim // 2
    freqs_k = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    ang_bk = scale * t_b.astype(jnp.float32)[:, None] * freqs_k
    emb_bd = jnp.concatenate([jnp.cos(ang_bk), jnp.sin(ang_bk)], axis=-1)
    if dim % 2:
        emb_bd = jnp.pad(emb_bd, ((0, 0), (0, 1)))
    return emb_bd

"""Small NNX building blocks shared by the frozen pretrained ports (T5, Encodec, HuBERT), and the nearest-code
search used by Encodec's residual VQ and the HuBERT k-means units.

Layouts are JAX-style: Linear kernels are (in, out); conv kernels are (width, in/groups, out) and
channel-last activations (batch, time, channels). Weight-normalised convs keep `weight_g` / `weight_v`
(w = g * v / ||v||, the norm taken over every axis where g has size 1), exactly as PyTorch stores them
after the layout change done by the converters in musicflow_jax/convert.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> jax.Array:
    return std * jax.random.normal(rngs.params(), shape, jnp.float32)


class Linear(nnx.Module):
    def __init__(self, din: int, dout: int, *, bias: bool = True, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_normal(rngs, (din, dout), 1.0 / math.sqrt(din)))
        self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...]
        return y if self.bias is None else y + self.bias[...]


class Embed(nnx.Module):
    def __init__(self, num: int, dim: int, *, std: float = 1.0, rngs: nnx.Rngs):
        self.embedding = nnx.Param(_normal(rngs, (num, dim), std))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float = 1e-5, rngs: nnx.Rngs):
        del rngs
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        mu = x.mean(-1, keepdims=True)
        var = jnp.square(x - mu).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm on channel-last (B, T, C) input: statistics over time and the group's channels."""

    def __init__(self, groups: int, dim: int, *, eps: float = 1e-5, rngs: nnx.Rngs):
        del rngs
        self.groups, self.eps = groups, eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        b, t, c = x_btc.shape
        x = x_btc.reshape(b, t, self.groups, c // self.groups)
        mu = x.mean((1, 3), keepdims=True)
        var = jnp.square(x - mu).mean((1, 3), keepdims=True)
        x = ((x - mu) * jax.lax.rsqrt(var + self.eps)).reshape(b, t, c)
        return x * self.scale[...] + self.bias[...]


def nearest_code(x_btd: jax.Array, codebook_kd: jax.Array) -> jax.Array:
    """Index of the nearest codebook row (squared Euclidean distance, first on ties) per frame -> int32 (B, T)."""
    xe_btk = jnp.einsum("btd,kd->btk", x_btd, codebook_kd, precision=jax.lax.Precision.HIGHEST)
    d_btk = jnp.sum(x_btd**2, -1, keepdims=True) - 2 * xe_btk + jnp.sum(codebook_kd**2, -1)
    return jnp.argmin(d_btk, -1).astype(jnp.int32)


def _wn_kernel(g: jax.Array, v: jax.Array) -> jax.Array:
    axes = tuple(i for i, n in enumerate(g.shape) if n == 1)
    return g * v / jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


class _ConvBase(nnx.Module):
    """Holds a (width, in/groups, out) kernel, plain or weight-normalised along `wn_axis` (0 width, 2 out)."""

    def __init__(self, shape: tuple[int, int, int], bias_dim: int, *, bias: bool, wn_axis: int | None,
                 rngs: nnx.Rngs):
        v = _normal(rngs, shape, 1.0 / math.sqrt(shape[0] * shape[1]))
        if wn_axis is None:
            self.kernel = nnx.Param(v)
        else:
            g_shape = tuple(n if i == wn_axis else 1 for i, n in enumerate(shape))
            self.weight_v = nnx.Param(v)
            self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(
                i for i in range(3) if i != wn_axis), keepdims=True)).reshape(g_shape))
        self.wn = wn_axis is not None
        self.bias = nnx.Param(jnp.zeros((bias_dim,), jnp.float32)) if bias else None

    def weight(self) -> jax.Array:
        return _wn_kernel(self.weight_g[...], self.weight_v[...]) if self.wn else self.kernel[...]

    def _add_bias(self, y: jax.Array) -> jax.Array:
        return y if self.bias is None else y + self.bias[...]


class Conv1d(_ConvBase):
    """torch.nn.Conv1d (no implicit padding: callers pad) on channel-last input."""

    def __init__(self, din: int, dout: int, width: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
                 bias: bool = True, wn_axis: int | None = None, rngs: nnx.Rngs):
        super().__init__((width, din // groups, dout), dout, bias=bias, wn_axis=wn_axis, rngs=rngs)
        self.stride, self.dilation, self.groups = stride, dilation, groups

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x_btc, self.weight(), window_strides=(self.stride,), padding="VALID", rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=self.groups,
            precision=jax.lax.Precision.HIGHEST)
        return self._add_bias(y)


class ConvTranspose1d(_ConvBase):
    """torch.nn.ConvTranspose1d (padding 0): output length (T - 1) * stride + width, untrimmed.

    Computed in polyphase form: with m = ceil(width / stride) taps per phase, output sample q * stride + p is
    sum_i x[q - i] W[i * stride + p], i.e. one stride-1 convolution of the (m - 1)-zero-padded input with stride *
    out channels, interleaved. Same result as the zero-inserting (lhs-dilated) convolution, without its stride-fold
    multiply-by-zero work: its gradient on CPU was ~15x slower (the codec trainer's decoder).
    """

    def __init__(self, din: int, dout: int, width: int, *, stride: int = 1, bias: bool = True,
                 wn_axis: int | None = None, rngs: nnx.Rngs):
        # kernel (width, in, out); torch's weight-norm dim=0 is the *input* channel axis here (wn_axis=1)
        super().__init__((width, din, dout), dout, bias=bias, wn_axis=wn_axis, rngs=rngs)
        self.stride, self.width = stride, width

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        k, r = self.width, self.stride
        w_kio = self.weight()
        cin, cout = w_kio.shape[1], w_kio.shape[2]
        m = -(-k // r)
        w_mrio = jnp.pad(w_kio, ((0, m * r - k), (0, 0), (0, 0))).reshape(m, r, cin, cout)[::-1]
        w_mio = w_mrio.transpose(0, 2, 1, 3).reshape(m, cin, r * cout)  # out channel = phase * cout + c
        x_btc_padded = jnp.pad(x_btc, ((0, 0), (m - 1, m - 1), (0, 0)))  # explicit: XLA CPU's weight gradient of a
        y = jax.lax.conv_general_dilated(  # convolution with built-in padding is ~30x slower than of a VALID one
            x_btc_padded, w_mio, window_strides=(1,), padding="VALID", dimension_numbers=("NWC", "WIO", "NWC"),
            precision=jax.lax.Precision.HIGHEST)
        b, t = y.shape[0], y.shape[1]
        y = y.reshape(b, t * r, cout)[:, : (x_btc.shape[1] - 1) * r + k]
        return self._add_bias(y)


class LSTM(nnx.Module):
    """Multi-layer unidirectional torch.nn.LSTM (gate order i, f, g, o) over (B, T, C), zero initial state."""

    def __init__(self, din: int, hidden: int, num_layers: int, *, rngs: nnx.Rngs):
        std = 1.0 / math.sqrt(hidden)
        self.hidden = hidden
        self.w_ih = nnx.List([nnx.Param(_normal(rngs, (din if i == 0 else hidden, 4 * hidden), std))
                              for i in range(num_layers)])
        self.w_hh = nnx.List([nnx.Param(_normal(rngs, (hidden, 4 * hidden), std)) for _ in range(num_layers)])
        self.b_ih = nnx.List([nnx.Param(jnp.zeros((4 * hidden,), jnp.float32)) for _ in range(num_layers)])
        self.b_hh = nnx.List([nnx.Param(jnp.zeros((4 * hidden,), jnp.float32)) for _ in range(num_layers)])

    def __call__(self, x_btc: jax.Array) -> jax.Array:
        h_tbc = jnp.swapaxes(x_btc, 0, 1)
        hp = jax.lax.Precision.HIGHEST
        for w_ih, w_hh, b_ih, b_hh in zip(self.w_ih, self.w_hh, self.b_ih, self.b_hh):
            xg_tbg = jnp.einsum("tbc,cg->tbg", h_tbc, w_ih[...], precision=hp) + b_ih[...] + b_hh[...]
            whh = w_hh[...]

            def step(carry, xg_bg, whh=whh):
                h, c = carry
                gates = xg_bg + jnp.dot(h, whh, precision=hp)
                i, f, g, o = jnp.split(gates, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), h

            b = h_tbc.shape[1]
            zeros = jnp.zeros((b, self.hidden), h_tbc.dtype)
            _, h_tbc = jax.lax.scan(step, (zeros, zeros), xg_tbg)
        return jnp.swapaxes(h_tbc, 0, 1)

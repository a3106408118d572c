"""Padding-invariant random draws: the sampler's starting noise and Griffin-Lim's start phase are drawn per (row id,
frame), so a sequence padded to a length bucket (inference/buckets.py) keeps its real frames' values, and a clip
generated alone with its row id gets the values it had as that row of a batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def frame_random(draw: Callable[[jax.Array, tuple[int, ...]], jax.Array], key: jax.Array, rows_b: jax.Array, t: int,
                 d: int) -> jax.Array:
    """(b, t, d) random values: row r, frame i holds draw(fold_in(fold_in(key, rows_b[r]), i), (d,)). A row's values
    depend only on its id and a frame's only on its index: padding a sequence does not change its real frames, and
    a clip generated alone with row id r gets the noise it had as row r of a batch."""
    frames = jnp.arange(t, dtype=jnp.uint32)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.asarray(rows_b, jnp.uint32))
    keys_bt = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(frames))(row_keys)
    return jax.vmap(jax.vmap(lambda k: draw(k, (d,))))(keys_bt)

"""Device mesh, logical-axis -> mesh-axis rules, parameter/batch shardings and global batch assembly.

The mesh has the axes ("data", "fsdp", "tensor") with sizes from `cfg.mesh.shape` (one entry may be -1 =
"the remaining devices"). Parameters carry logical axis names ("embed", "mlp", ...) in their `out_sharding`
metadata; `cfg.mesh.rules` maps each logical name to a mesh axis or None (replicated). A mesh axis is used at
most once per array and only on a dimension it divides; otherwise that dimension stays replicated.
Batches are split along their leading axis over every mesh axis the "batch" rule names plus "fsdp"
(FSDP shards the batch as well as the weights), and replicated over "tensor".

Activations get sharding constraints from the same rules (MaxText's activation annotations): the model calls
`constrain(x, ("batch", "frames", "mlp"), rules)`, which, while a train/eval step is traced inside
`activation_mesh(mesh)`, pins x to the spec those logical axes map to ("batch" over the batch axes, "heads" /
"mlp" over "tensor", each mesh axis at most once per array) and is the identity elsewhere (generation, tests).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from musicflow_jax.core.config import MESH_AXES, ConfigError, MeshConfig


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """Fill the (at most one) -1 entry so the product equals `num_devices`."""
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(f"config key 'mesh.shape': {tuple(shape)} cannot fill {num_devices} devices "
                              f"({num_devices} is not a multiple of {known})")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(f"config key 'mesh.shape': {tuple(shape)} needs {math.prod(shape)} devices but "
                          f"{num_devices} are available; use -1 for one axis to fill the rest")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_cfg.shape, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * 3  # shardings are given explicitly at jit boundaries
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_to_spec(logical: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: dict[str, str | None]) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims have the logical names `logical`."""
    if not logical:
        return PartitionSpec()
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match an array of shape {tuple(shape)}")
    used: set[str] = set()
    return PartitionSpec(*(_rule_axis(name, size, mesh, rules, used) for name, size in zip(logical, shape)))


def _rule_axis(name: str | None, size: int, mesh: Mesh, rules: dict[str, str | None], used: set[str]) -> str | None:
    """The mesh axis `rules` gives logical axis `name` of `size`, or None where it is unmapped, already used by
    another dim (added to `used` otherwise), of size 1, or does not divide `size`."""
    axis = rules.get(name) if name is not None else None
    if axis is None or axis in used or mesh.shape[axis] == 1 or size % mesh.shape[axis]:
        return None
    used.add(axis)
    return axis


def logical_names(var: nnx.Variable) -> tuple[str | None, ...] | None:
    """A variable's logical axis names (its sharding metadata), or None."""
    meta = var.get_metadata()
    names = meta.get("out_sharding") or meta.get("sharding_names")
    return tuple(names) if names else None


def state_specs(state: Any, mesh: Mesh, rules: dict[str, str | None]) -> Any:
    """PartitionSpec tree (same structure as `state`, Variables kept) for an nnx.State of (abstract) arrays."""

    def spec(var: Any) -> Any:
        if isinstance(var, nnx.Variable):
            value = var.get_value()
            return var.replace(logical_to_spec(logical_names(var), value.shape, mesh, rules))
        return PartitionSpec()

    return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: Any, mesh: Mesh, rules: dict[str, str | None]) -> Any:
    """NamedSharding tree for an nnx.State (see `state_specs`)."""
    return jax.tree.map(lambda p: NamedSharding(mesh, p), state_specs(state, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_axes(mesh: Mesh, rules: dict[str, str | None]) -> tuple[str, ...]:
    """Mesh axes the leading (batch) dimension is split over: the "batch" rule's axis plus "fsdp"."""
    axes = [a for a in (rules.get("batch"), "fsdp") if a is not None]
    return tuple(dict.fromkeys(axes))


def batch_sharding(mesh: Mesh, rules: dict[str, str | None], ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh, rules), *([None] * (ndim - 1))))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, rules: dict[str, str | None],
                 global_batch_size: int) -> dict[str, jax.Array]:
    """Assemble per-process batches into global arrays split over the batch axes.

    `local` holds this process's rows (global_batch_size // process_count of them).
    """
    n_split = math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))
    if global_batch_size % n_split:
        raise ConfigError(f"config key 'data.batch_size': {global_batch_size} must be divisible by the "
                          f"{n_split} batch shards of mesh {dict(mesh.shape)}")
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        sharding = batch_sharding(mesh, rules, v.ndim)
        out[k] = jax.make_array_from_process_local_data(sharding, v, (global_batch_size, *v.shape[1:]))
    return out



# --------------------------------------------------------------------------------------------- activations

_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("musicflow_activation_mesh",
                                                                                default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh) -> Iterator[None]:
    """While active (wrap the Python body of a function being traced), `constrain` pins activations on `mesh`."""
    token = _ACTIVATION_MESH.set(mesh)
    try:
        yield
    finally:
        _ACTIVATION_MESH.reset(token)


def activation_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: dict[str, str | None]) -> PartitionSpec:
    """PartitionSpec of an activation whose dims have the logical names `logical`: "batch" over batch_axes (the
    batch rule's axis + fsdp, those that divide it), the other names by `rules`; a mesh axis is used at most once."""
    used: set[str] = set()
    out: list[Any] = []
    for name, size in zip(logical, shape):
        if name == "batch":
            axes = [a for a in batch_axes(mesh, rules) if mesh.shape[a] > 1 and a not in used]
            while axes and size % math.prod(mesh.shape[a] for a in axes):
                axes.pop()
            used.update(axes)
            out.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
        else:
            out.append(_rule_axis(name, size, mesh, rules, used))
    return PartitionSpec(*out)


def constrain(x: jax.Array, logical: Sequence[str | None], rules: Sequence[tuple[str, str | None]]) -> jax.Array:
    """`x` with a sharding constraint from its logical axes while `activation_mesh` is active, else `x`."""
    mesh = _ACTIVATION_MESH.get()
    if mesh is None or mesh.size == 1:
        return x
    spec = activation_spec(logical, x.shape, mesh, dict(rules))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def per_shard(fn: Any, logical: Sequence[Sequence[str | None]], rules: Sequence[tuple[str, str | None]],
              *args: jax.Array) -> jax.Array:
    """`fn(*args)` on each device's block (jax.shard_map) while `activation_mesh` is active, each argument split by
    its logical axes as `constrain` would (the result as the first argument): for kernels XLA cannot partition
    (Pallas). Elsewhere `fn(*args)`."""
    mesh = _ACTIVATION_MESH.get()
    if mesh is None or mesh.size == 1:
        return fn(*args)
    r = dict(rules)
    specs = tuple(activation_spec(names, a.shape, mesh, r) for names, a in zip(logical, args))
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=specs[0], check_vma=False)(*args)


"""Flat NNX parameter utilities: dotted parameter paths, shapes, and the strict assignment of flat weights into a
model (`build_with_params`), with errors that name the keys and the fix. Every weight file of the project (stage
files, converted encoder folders, adapter files) goes through these.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.errors import MusicFlowError

M = TypeVar("M", bound=nnx.Module)
Transform = Callable[[np.ndarray], np.ndarray]
Rule = tuple[str, str, Transform | None]  # (regex on a source key, replacement, layout transform)


class WeightsError(MusicFlowError):
    """Weights that do not fit the model, or a folder that is not what was asked for: names the keys/file and the
    fix."""


def key_of(path: tuple[Any, ...]) -> str:
    """The dotted name of an nnx state path ("blocks.self_attn.w_q")."""
    return ".".join(str(p) for p in path)


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Dotted parameter path -> shape for every nnx.Param of `model` (works on eval_shape'd models)."""
    return {key_of(p): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    return {key_of(p): np.asarray(v[...], np.float32) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def check_params(expected: dict[str, tuple[int, ...]], flat: dict[str, np.ndarray], source: str) -> None:
    """Raise WeightsError naming every missing, unexpected and wrongly shaped key."""
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    bad = sorted(f"{k}: checkpoint {tuple(flat[k].shape)} vs model {expected[k]}"
                 for k in set(expected) & set(flat) if tuple(flat[k].shape) != expected[k])
    if missing or unexpected or bad:
        parts = [f"weights in {source} do not match the model (was it converted for this config?)"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if bad:
            parts.append(f"shape mismatches ({len(bad)}): {'; '.join(bad)}")
        parts.append("re-run python -m musicflow_jax.convert on the original checkpoint and its config.json")
        raise WeightsError("\n  ".join(parts))


def check_finite(flat: dict[str, np.ndarray], source: str) -> None:
    """Raise WeightsError naming the first tensor with NaN/inf values (a corrupt or diverged file)."""
    for key in sorted(flat):
        arr = np.asarray(flat[key])
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise WeightsError(f"weights in {source} hold {bad} NaN/inf values in {key!r}: the file is corrupt or the "
                               "run diverged; restore it (re-export / re-convert it from a good checkpoint)")


def build_with_params(ctor: Callable[[], M], flat: dict[str, np.ndarray], source: str) -> M:
    """Build the model abstractly (no random init), check `flat` against it and fill it in."""
    model = nnx.eval_shape(ctor)
    check_params(param_shapes(model), flat, source)
    check_finite(flat, source)
    state = nnx.state(model, nnx.Param)
    new = [(p, v.replace(jnp.asarray(flat[key_of(p)], jnp.float32))) for p, v in nnx.to_flat_state(state)]
    nnx.update(model, nnx.from_flat_state(new))
    leftovers = [key_of(p) for p, v in nnx.to_flat_state(nnx.state(model)) if isinstance(v[...], jax.ShapeDtypeStruct)]
    if leftovers:
        raise WeightsError(f"{source}: model state without values after loading: {leftovers}")
    return model


def apply_rules(state: dict[str, np.ndarray], rules: Sequence[Rule], ignore: Sequence[str],
                source: str) -> dict[str, np.ndarray]:
    """Rename every source key with the first matching rule; keys matching `ignore` are dropped;
    keys matching nothing are a WeightsError listing them."""
    out: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    compiled = [(re.compile(p), r, t) for p, r, t in rules]
    ign = [re.compile(p) for p in ignore]
    for key, arr in state.items():
        for pat, rep, fn in compiled:
            if pat.fullmatch(key):
                arr = np.asarray(arr, np.float32)
                out[pat.sub(rep, key)] = fn(arr) if fn is not None else arr
                break
        else:
            if not any(p.fullmatch(key) for p in ign):
                unknown.append(key)
    if unknown:
        raise WeightsError(f"{source}: {len(unknown)} checkpoint keys have no conversion rule: "
                              f"{', '.join(sorted(unknown))}; is this the right model type?")
    return out

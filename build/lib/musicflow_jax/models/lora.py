"""LoRA adapters (Hu et al. 2021) on the flow transformer, and the adapter file that carries them.

Parameter paths are the model's NNX paths joined with "." (as in exported stage files), e.g.
`down.layers.block.cross_attn.w_q` (stacked layers carry a leading "layers" axis).

A targeted kernel W of shape (*layers, *in, *out) gets A (*layers, *in, r), Gaussian with std 1/sqrt(prod(in)), and
B (*layers, r, *out), zero, so training starts at the base model. `add_adapters` makes them nnx.Params of the module
owning W (`<name>_lora_a`, `<name>_lora_b`, with W's logical axes and None on the rank axis, so they shard like W and
stack like the layers), and the layer computes x W + (lora_alpha / lora_rank) (x A) B (models/layers.kernel_einsum):
W is never differentiated. Export folds them in (`merge_flat`: W + factor A B) or writes them alone (`save_adapters`);
in adapter files, base parameters trained alongside are stored whole and applied as base + scale * (trained - base)
(`apply_adapters`), so `scale` 0 is exactly the base model and 1 the fine-tuned one. Which parameters train and the
loading of `train.init_from` are the trainer's (musicflow_jax/training/finetune.py).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.core import config as config_lib
from musicflow_jax.core.config import Config
from musicflow_jax.core.sharding import logical_names
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.models.params import key_of
from musicflow_jax.utils.atomic_io import save_safetensors

ADAPTER_FORMAT = "musicflow_jax.adapters/1"
LORA_A, LORA_B = "_lora_a", "_lora_b"
ADAPTABLE = ("kernel", "w_q", "w_k", "w_v", "w_o", "kernel_h", "kernel_skip")  # kernels kernel_einsum applies


class FineTuneError(MusicFlowError):
    """A fine-tuning input that does not fit (init_from weights, adapter file, patterns), with the fix."""


def lora_factor(cfg: Config) -> float:
    return cfg.model.lora_alpha / cfg.model.lora_rank if cfg.model.lora_rank else 0.0


def is_adapter(key: str) -> bool:
    return key.endswith((LORA_A, LORA_B))


def _names(var: nnx.Variable, ndim: int) -> tuple[str | None, ...]:
    return logical_names(var) or (None,) * ndim


def _in_axes(names: tuple[str | None, ...]) -> int:
    """Input axes of a kernel after its leading "layers" axes: (heads, kv) for the attention output projection,
    else the first axis."""
    return 2 if names and names[0] == "heads" else 1


def lora_plan(params: nnx.State, cfg: Config) -> list[tuple[tuple[Any, ...], int, int]]:
    """(path, leading layer axes, input axes) of every parameter model.lora_targets matches."""
    pattern = re.compile(cfg.model.lora_targets)
    plan, seen = [], []
    for path, var in nnx.to_flat_state(params):
        key = key_of(path)
        seen.append(key)
        if not pattern.search(key):
            continue
        names = _names(var, var[...].ndim)
        lead = sum(1 for n in names if n == "layers")
        rest = names[lead:]
        if str(path[-1]) not in ADAPTABLE or len(rest) < 2:
            raise FineTuneError(f"config key 'model.lora_targets': {cfg.model.lora_targets!r} matches {key} of shape "
                                f"{tuple(var[...].shape)}, not a weight matrix LoRA can adapt "
                                f"({', '.join(ADAPTABLE)}): narrow the pattern (e.g. end it with w_[qkvo]$ or kernel$)")
        plan.append((path, lead, _in_axes(rest)))
    if not plan:
        raise FineTuneError(f"config key 'model.lora_targets': {cfg.model.lora_targets!r} matches no parameter; "
                            f"paths look like {', '.join(seen[:3])}")
    return plan


def init_adapters(params: nnx.State, cfg: Config, key: jax.Array) -> list[tuple[tuple[Any, ...], nnx.Variable]]:
    """The (path, nnx.Param) pairs of fresh adapters for every LoRA target (A Gaussian, B zero)."""
    r, dtype = cfg.model.lora_rank, jnp.dtype(cfg.model.param_dtype)
    by_path = dict(nnx.to_flat_state(params))
    out = []
    for i, (path, lead, n_in) in enumerate(lora_plan(params, cfg)):
        var = by_path[path]
        shape, names = var[...].shape, _names(var, var[...].ndim)
        lead_shape, in_shape, out_shape = shape[:lead], shape[lead:lead + n_in], shape[lead + n_in:]
        std = 1.0 / math.sqrt(math.prod(in_shape))
        a = std * jax.random.normal(jax.random.fold_in(key, i), (*lead_shape, *in_shape, r), dtype)
        b = jnp.zeros((*lead_shape, r, *out_shape), dtype)
        a_names = (*names[:lead + n_in], None)
        b_names = (*names[:lead], None, *names[lead + n_in:])
        stem = path[:-1]
        out.append(((*stem, f"{path[-1]}{LORA_A}"), nnx.Param(a, out_sharding=a_names, eager_sharding=False)))
        out.append(((*stem, f"{path[-1]}{LORA_B}"), nnx.Param(b, out_sharding=b_names, eager_sharding=False)))
    return out


def add_adapters(model: nnx.Module, cfg: Config, key: jax.Array) -> None:
    """Give every kernel model.lora_targets matches its adapters (A Gaussian, B zero), as nnx.Params of the module
    that owns it; the layers then add the LoRA term (kernel_einsum)."""
    factor = lora_factor(cfg)
    for path, var in init_adapters(nnx.state(model, nnx.Param), cfg, key):
        owner = model
        for p in path[:-1]:
            owner = getattr(owner, p) if isinstance(p, str) else owner[p]
        setattr(owner, str(path[-1]), var)
        owner.lora_factor = factor


def lora_delta(a: Any, b: Any, w_shape: tuple[int, ...]) -> Any:
    """A B reshaped to W's shape; A (*lead, *in, r), B (*lead, r, *out), W (*lead, *in, *out)."""
    lead = a.ndim + b.ndim - 2 - len(w_shape)
    n_in = a.ndim - 1 - lead
    lead_shape = w_shape[:lead]
    a2 = a.reshape(*lead_shape, math.prod(w_shape[lead:lead + n_in]), a.shape[-1])
    b2 = b.reshape(*lead_shape, b.shape[lead], math.prod(w_shape[lead + n_in:]))
    return (a2 @ b2).reshape(w_shape)


def merge_flat(flat: dict[str, Any], factor: float) -> dict[str, Any]:
    """Base weights with every adapter pair folded in: W + factor * A B (factor = lora_alpha / lora_rank * scale);
    adapter entries are dropped. Works on jax or numpy arrays."""
    out = {k: v for k, v in flat.items() if not is_adapter(k)}
    for k in [k for k in flat if k.endswith(LORA_A)]:
        base = k[: -len(LORA_A)]
        if base not in out or base + LORA_B not in flat:
            raise FineTuneError(f"adapter {k} has no {'base weight ' + base if base not in out else base + LORA_B}")
        w = out[base]
        out[base] = w + factor * lora_delta(flat[k], flat[base + LORA_B], tuple(w.shape)).astype(w.dtype)
    return out


def save_adapters(path: str | Path, cfg: Config, trained: dict[str, np.ndarray], extra: dict[str, Any] | None = None
                  ) -> Path:
    """Write the trained tensors of a fine-tune (adapters + base parameters trained alongside) as safetensors with
    the run's config in the metadata."""
    meta = {"format": ADAPTER_FORMAT, "config": config_lib.to_json(cfg), "stage": cfg.model.stage,
            "lora_rank": str(cfg.model.lora_rank), "lora_alpha": repr(float(cfg.model.lora_alpha))}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    return save_safetensors(Path(path), {k: np.ascontiguousarray(v, np.float32) for k, v in trained.items()}, meta)


def read_adapters(path: str | Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, tensors) of an adapter file; errors name the file and the fix."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FineTuneError(f"adapter file {path} does not exist: export one with python -m musicflow_jax.export "
                            "--workdir RUN (a LoRA run, without --merge-lora)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for other files
        raise FineTuneError(f"adapter file {path} is not a readable safetensors file ({type(e).__name__})") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise FineTuneError(f"{path} is not an adapter file (format {meta.get('format')!r}, want {ADAPTER_FORMAT}): "
                            "pass the file python -m musicflow_jax.export wrote for a LoRA run")
    return meta, tensors


def apply_adapters(base: dict[str, np.ndarray], meta: dict[str, str], tensors: dict[str, np.ndarray], scale: float,
                   source: str) -> dict[str, np.ndarray]:
    """Base flat weights with an adapter file applied at `scale`: trained base parameters interpolated
    (base + scale * (trained - base)), LoRA pairs folded in (W + scale * alpha / rank * A B)."""
    out = dict(base)
    for k, v in tensors.items():
        if is_adapter(k):
            continue
        if k not in base or base[k].shape != v.shape:
            got = "missing" if k not in base else f"{tuple(base[k].shape)}"
            raise FineTuneError(f"adapter file {source}: '{k}' {tuple(v.shape)} does not fit the model ({got}): apply "
                                "it to the stage it was trained from")
        out[k] = base[k] + np.float32(scale) * (v - base[k])
    rank = int(meta.get("lora_rank", "0"))
    factor = scale * float(meta.get("lora_alpha", "0")) / rank if rank else 0.0
    pairs = {k: v for k, v in tensors.items() if is_adapter(k)}
    for k in pairs:
        stem = k[: -len(LORA_A)] if k.endswith(LORA_A) else k[: -len(LORA_B)]
        if stem not in base:
            raise FineTuneError(f"adapter file {source}: '{k}' adapts '{stem}', which this model does not have: apply "
                                "it to the stage it was trained from")
    try:
        return merge_flat(out | pairs, factor)
    except (ValueError, TypeError) as e:
        raise FineTuneError(f"adapter file {source} does not fit the model ({e}): apply it to the stage it was "
                            "trained from") from None

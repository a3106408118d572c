"""Runtime weight loading (no torch): converted folders -> filled NNX models, and the strict assignment of
flat weights into a model. Generation and training read weights here; `convert/` only turns PyTorch checkpoints
into these folders.

A converted folder holds `config.json` ({"format": FORMAT, "kind": "t5"|"encodec"|"hubert", "config": {...}
model dataclass fields, "source": ...}) and `model.safetensors` whose keys are the NNX parameter paths joined
with "." (e.g. "block.0.attn.q.kernel"), float32, in JAX layouts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.models.encodec import Encodec, EncodecConfig
from musicflow_jax.models.hubert import Hubert, HubertConfig
from musicflow_jax.models.t5 import T5Config, T5Encoder

FORMAT = "musicflow_jax.converted/1"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
M = TypeVar("M", bound=nnx.Module)
T5, ENCODEC, HUBERT = "t5", "encodec", "hubert"  # the `kind` of a converted folder


class WeightsError(ValueError):
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
        parts.append("re-run tools/convert_weights.py on the original checkpoint and its config.json")
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


def save_converted(folder: str | Path, kind: str, config: dict[str, Any], flat: dict[str, np.ndarray],
                   source: str = "", extra: dict[str, Any] | None = None) -> Path:
    from musicflow_jax.atomic_io import save_safetensors, write_text

    folder = Path(folder)
    save_safetensors(folder / WEIGHTS_FILE, {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()})
    meta = {"format": FORMAT, "kind": kind, "config": config, "source": source, "extra": extra or {}}
    write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True, default=list) + "\n")
    return folder


def read_meta(folder: str | Path, kind: str) -> dict[str, Any]:
    """The converted folder's config.json (format, kind, config, source, extra), checked."""
    folder = Path(folder)
    cfg_file, w_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_file.is_file() or not w_file.is_file():
        raise WeightsError(f"{folder}: expected converted weights ({CONFIG_FILE} + {WEIGHTS_FILE}); "
                              f"convert a PyTorch checkpoint first: python tools/convert_weights.py {kind} SRC DST")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{cfg_file}: not a converted Flax checkpoint (format={meta.get('format')!r}, "
                              f"want {FORMAT!r}); is this an original HF folder? run tools/convert_weights.py {kind}")
    if meta.get("kind") != kind:
        raise WeightsError(f"{cfg_file}: holds a {meta.get('kind')!r} model, expected {kind!r}")
    return meta


def load_converted(folder: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(model config dict, flat weights) of a converted folder; clear errors for anything else."""
    from safetensors.numpy import load_file

    meta = read_meta(folder, kind)
    return meta["config"], load_file(str(Path(folder) / WEIGHTS_FILE))


def load_model(folder: str | Path, kind: str, config_cls: Callable[..., Any], model_cls: Callable[..., M]
               ) -> tuple[Any, M]:
    """(config, filled model) of a converted folder: `config_cls(**config)` (JSON lists back to tuples) and
    `model_cls(config, rngs=...)` built abstractly and filled with the stored weights."""
    cfg_dict, flat = load_converted(folder, kind)
    cfg = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict.items()})
    return cfg, build_with_params(lambda: model_cls(cfg, rngs=nnx.Rngs(0)), flat, str(folder))


def load_t5(folder: str | Path) -> tuple[T5Config, T5Encoder]:
    """Converted T5 folder -> (config, filled T5Encoder)."""
    return load_model(folder, T5, T5Config, T5Encoder)


def load_hubert(folder: str | Path) -> tuple[HubertConfig, Hubert]:
    """Converted HuBERT folder -> (config, filled Hubert); its `extra` (do_normalize, source_sha256) via read_meta."""
    return load_model(folder, HUBERT, HubertConfig, Hubert)


def load_encodec(folder: str | Path) -> tuple[EncodecConfig, Encodec]:
    """Converted Encodec folder -> (config, filled Encodec)."""
    return load_model(folder, ENCODEC, EncodecConfig, Encodec)

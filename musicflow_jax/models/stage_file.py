"""Reading and writing one exported flow stage for inference: EMA weights + the resolved config.

Format (one file, `<name>.safetensors`): tensors keyed by the FlowTransformer's NNX parameter paths joined with
"." (float32; or float16, half the file, for shipped assets: upcast to float32 on load), and safetensors metadata
{"format": FORMAT, "config": to_json(cfg), "stage": cfg.model.stage, ...}. A folder holding `config.json` (the
resolved Config JSON, or {"config": {...}}) next to `model.safetensors` loads too. Errors name the file and the fix
(wrong stage, mismatched config, missing/misshaped tensors).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file

from musicflow_jax.core import config as config_lib
from musicflow_jax.core.config import Config, ConfigError
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.models.params import build_with_params, flat_params
from musicflow_jax.models.transformer import FlowTransformer, stack_unrolled
from musicflow_jax.utils.atomic_io import save_safetensors

FORMAT = "musicflow_jax.flow/1"


class StageError(MusicFlowError):
    """An exported stage that cannot be used as asked (wrong stage, config mismatch, unreadable)."""


STORE_DTYPES = ("float32", "float16")


def save_stage(path: str | Path, cfg: Config, model: nnx.Module, extra: dict[str, Any] | None = None,
               store_dtype: str = "float32") -> Path:
    """Write `model`'s parameters and `cfg` to a single safetensors file; `store_dtype` "float16" halves it (the
    parameters are rounded to 11 significant bits; loading upcasts them to float32)."""
    if store_dtype not in STORE_DTYPES:
        raise StageError(f"store_dtype {store_dtype!r}: use one of {', '.join(STORE_DTYPES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "config": config_lib.to_json(cfg), "stage": cfg.model.stage}
    meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()})
    return save_safetensors(path, {k: np.ascontiguousarray(v, store_dtype) for k, v in flat_params(model).items()},
                            meta)


def read_stage(path: str | Path) -> tuple[Config, dict[str, np.ndarray]]:
    """(config, flat weights as stored) of a stage file or folder; errors name the file and the fix."""
    path = Path(path)
    if path.is_dir():
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not cfg_file.is_file() or not weights.is_file():
            raise StageError(f"checkpoint folder {path} needs config.json and model.safetensors (an exported stage); "
                             "export one with python -m musicflow_jax.export")
        data = json.loads(cfg_file.read_text())
        return _config(cfg_file, lambda: config_lib.from_dict(
            data["config"] if isinstance(data.get("config"), dict) else data)), load_file(str(weights))
    if not path.is_file():
        raise StageError(f"checkpoint {path} does not exist; pass an exported .safetensors file (python -m "
                         "musicflow_jax.export)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
        flat = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types for non-safetensors files
        raise StageError(f"checkpoint {path} is not a readable safetensors file ({type(e).__name__}); pass an "
                         "exported stage from python -m musicflow_jax.export") from None
    if "config" not in meta:
        raise StageError(f"checkpoint {path} has no 'config' in its safetensors metadata: it is not an exported "
                         "flow stage; export it with python -m musicflow_jax.export")
    return _config(path, lambda: config_lib.from_json(meta["config"])), flat


def _config(source: Path, parse: Callable[[], Config]) -> Config:
    try:
        return parse()
    except (ConfigError, ValueError, TypeError, AttributeError) as e:
        raise StageError(f"checkpoint {source}: its stored config does not fit this code version ({e})") from None


def load_stage(path: str | Path, expect_stage: str | None = None, dtype: str | None = None
               ) -> tuple[Config, FlowTransformer]:
    """(config, model with the stored weights); `expect_stage` ("semantic"/"acoustic") is checked first; `dtype`
    replaces the config's compute dtype (model.dtype; the stored parameters keep model.param_dtype)."""
    path = Path(path)
    cfg, flat = read_stage(path)
    if dtype is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype))
    if expect_stage is not None and cfg.model.stage != expect_stage:
        want = {"semantic": "stage 1 (text -> semantic)", "acoustic": "stage 2 (semantic -> acoustic)"}
        raise StageError(f"checkpoint {path} is a {want.get(cfg.model.stage, cfg.model.stage)} model but was given "
                         f"as {want.get(expect_stage, expect_stage)}: swap the stage-1/stage-2 checkpoint arguments")
    try:
        flat = stack_unrolled(flat, cfg.model.depth)  # files written before the layers were stacked
        model = build_with_params(lambda: FlowTransformer(cfg, rngs=nnx.Rngs(0)), flat, str(path))
    except ValueError as e:  # WeightsError included
        lines = str(e).splitlines()
        if len(lines) == 1:  # non-finite values: the message names the tensor and the fix
            raise StageError(lines[0]) from None
        raise StageError(f"{lines[0]}; {lines[1].strip()[:200]}; re-export it with the config it was trained with"
                         ) from None
    return cfg, model

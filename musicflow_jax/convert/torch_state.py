"""PyTorch-side state dicts for conversion: reading checkpoints into flat numpy dicts, layout transforms and regex
rename rules to NNX paths.

Safetensors are read with safetensors.numpy (no torch). `pytorch_model.bin` / `.th` / `.pt` files need torch,
imported lazily here only, and are opened with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.models.params import Rule, Transform, WeightsError, apply_rules


def linear_t(w: np.ndarray) -> np.ndarray:
    """torch Linear (out, in) -> (in, out)."""
    return w.T


def conv_t(w: np.ndarray) -> np.ndarray:
    """torch Conv1d (out, in/groups, width) -> (width, in/groups, out)."""
    return w.transpose(2, 1, 0)


def convtr_t(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose1d (in, out, width) -> (width, in, out)."""
    return w.transpose(2, 0, 1)


def _torch_load(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise WeightsError(f"{path}: reading a PyTorch pickle needs torch (pip install -r requirements-torch.txt)"
                              "; safetensors checkpoints convert without it") from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "best_state" in obj and isinstance(obj["best_state"], dict):  # encodec solver ckpt
        obj = obj["best_state"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items() if hasattr(v, "detach")}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                out[k] = f.get_tensor(k)
    except (TypeError, ValueError):  # e.g. bfloat16, which numpy cannot hold: go through torch
        import torch
        from safetensors.torch import load_file

        out = {k: v.to(torch.float32).numpy() for k, v in load_file(str(path)).items()}
    return out


def read_state_dict(src: str | Path) -> dict[str, np.ndarray]:
    """Flat name -> array from an HF folder (safetensors, sharded or not, or pytorch_model.bin) or a file."""
    src = Path(src)
    if src.is_file():
        return _read_safetensors(src) if src.suffix == ".safetensors" else _torch_load(src)
    if not src.is_dir():
        raise WeightsError(f"checkpoint {src} does not exist")
    if (src / "model.safetensors").is_file():
        return _read_safetensors(src / "model.safetensors")
    for index_name, reader in (("model.safetensors.index.json", _read_safetensors),
                               ("pytorch_model.bin.index.json", _torch_load)):
        if (src / index_name).is_file():
            shards = sorted(set(json.loads((src / index_name).read_text())["weight_map"].values()))
            out: dict[str, np.ndarray] = {}
            for s in shards:
                out.update(reader(src / s))
            return out
    if (src / "pytorch_model.bin").is_file():
        return _torch_load(src / "pytorch_model.bin")
    raise WeightsError(f"{src}: no model.safetensors, sharded index or pytorch_model.bin found")


def read_hf_config(src: str | Path) -> dict[str, Any]:
    cfg_file = Path(src) / "config.json" if Path(src).is_dir() else Path(src).with_name("config.json")
    if not cfg_file.is_file():
        raise WeightsError(f"{cfg_file} not found: the HF config.json must sit next to the weights")
    return json.loads(cfg_file.read_text())


__all__ = ["Rule", "Transform", "apply_rules", "conv_t", "convtr_t", "linear_t", "read_hf_config", "read_state_dict"]

"""Converted encoder folders (no torch): the on-disk format of the frozen pretrained ports (T5, Encodec, HuBERT) and
their loading into filled NNX models. Generation and training read encoder weights here; `convert/` only turns
PyTorch checkpoints into these folders.

A converted folder holds `config.json` ({"format": FORMAT, "kind": "t5"|"bert"|"encodec"|"hubert", "config": {...}
model dataclass fields, "source": ...}) and `model.safetensors` whose keys are the NNX parameter paths joined
with "." (e.g. "block.0.attn.q.kernel"), float32, in JAX layouts. A text-encoder folder may instead pin its weights
by reference (`extra.weights_reference`: source + sha256, no model.safetensors; encoders/text.py): pretrained
weights that come from an installed package are not copied into every model folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from musicflow_jax.models.bert import BertConfig, BertEncoder
from musicflow_jax.models.encodec import Encodec, EncodecConfig
from musicflow_jax.models.hubert import Hubert, HubertConfig
from musicflow_jax.models.params import M, WeightsError, build_with_params
from musicflow_jax.models.t5 import T5Config, T5Encoder
from musicflow_jax.utils.atomic_io import save_safetensors, write_text

FORMAT = "musicflow_jax.converted/1"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
T5, BERT, ENCODEC, HUBERT = "t5", "bert", "encodec", "hubert"  # the `kind` of a converted folder


def save_converted(folder: str | Path, kind: str, config: dict[str, Any], flat: dict[str, np.ndarray],
                   source: str = "", extra: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    save_safetensors(folder / WEIGHTS_FILE, {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()})
    meta = {"format": FORMAT, "kind": kind, "config": config, "source": source, "extra": extra or {}}
    write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True, default=list) + "\n")
    return folder


def read_meta(folder: str | Path, kind: str) -> dict[str, Any]:
    """The converted folder's config.json (format, kind, config, source, extra), checked."""
    folder = Path(folder)
    cfg_file, w_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_file.is_file() or not (w_file.is_file() or reference_of(folder)):
        raise WeightsError(f"{folder}: expected converted weights ({CONFIG_FILE} + {WEIGHTS_FILE}); "
                              f"convert a PyTorch checkpoint first: python -m musicflow_jax.convert {kind} SRC DST")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{cfg_file}: not a converted Flax checkpoint (format={meta.get('format')!r}, "
                           f"want {FORMAT!r}); is this an original HF folder? run python -m musicflow_jax.convert "
                           f"{kind}")
    if meta.get("kind") != kind:
        raise WeightsError(f"{cfg_file}: holds a {meta.get('kind')!r} model, expected {kind!r}")
    return meta


def reference_of(folder: str | Path) -> dict[str, str] | None:
    """A weightless text-encoder folder's pin: {"source": ..., "sha256": ...} naming where its weights are read
    from (an installed package or a local HF folder) and their hash; None for a folder that holds its weights."""
    try:
        meta = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    ref = meta.get("extra", {}).get("weights_reference") if isinstance(meta, dict) else None
    return ref if isinstance(ref, dict) and {"source", "sha256"} <= set(ref) else None


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


def load_bert(folder: str | Path) -> tuple[BertConfig, BertEncoder]:
    """Converted BERT folder -> (config, filled BertEncoder)."""
    return load_model(folder, BERT, BertConfig, BertEncoder)


def load_hubert(folder: str | Path) -> tuple[HubertConfig, Hubert]:
    """Converted HuBERT folder -> (config, filled Hubert); its `extra` (do_normalize, source_sha256) via read_meta."""
    return load_model(folder, HUBERT, HubertConfig, Hubert)


def load_encodec(folder: str | Path) -> tuple[EncodecConfig, Encodec]:
    """Converted Encodec folder -> (config, filled Encodec)."""
    return load_model(folder, ENCODEC, EncodecConfig, Encodec)

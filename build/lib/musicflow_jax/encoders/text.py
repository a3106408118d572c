"""The frozen text encoder used by training and generation: Flax T5 + its tokenizer, no torch.

`TextEncoder.load(cfg.text)`: cfg.checkpoint == "" gives the embedded default, a small byte-level T5 v1.1-style
encoder (gated-gelu, d_model = cfg.dim, vocab 384, 2 layers) with deterministic random weights from `seed`, and
the ByteTokenizer. Otherwise cfg.checkpoint is a converted T5 folder (python -m musicflow_jax.convert t5 ...) that must
carry its tokenizer (`spiece.model` or `tokenizer.json`; see tokenizer.load_tokenizer): one without it is refused
unless it is byte-level. `.save(folder)` writes the exact encoder and its tokenizer file(s) so an exported model
ships the text encoder it was trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from musicflow_jax.core.config import ConfigError, TextConfig
from musicflow_jax.encoders.converted import T5, load_t5, read_meta, save_converted
from musicflow_jax.encoders.tokenizer import BYTE_LEVEL_SOURCE, Tokenizer, copy_tokenizer, load_tokenizer
from musicflow_jax.models.params import flat_params
from musicflow_jax.models.t5 import T5Config, T5Encoder

DEFAULT_VOCAB, DEFAULT_LAYERS = 384, 2


def default_t5_config(dim: int) -> T5Config:
    heads = 4 if dim < 256 else dim // 64
    if dim % heads:
        raise ConfigError(f"config key 'text.dim': embedded T5 needs a dim divisible by {heads}, got {dim}")
    return T5Config(vocab_size=DEFAULT_VOCAB, d_model=dim, d_kv=dim // heads, d_ff=2 * dim, num_layers=DEFAULT_LAYERS,
                    num_heads=heads, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    feed_forward_proj="gated-gelu")


class TextEncoder:
    """Tokenizer + frozen T5 encoder. `encode` is jitted; `apply(state, ...)` is the pure form for jit users."""

    def __init__(self, cfg: TextConfig, t5_cfg: T5Config, model: T5Encoder, tokenizer: Tokenizer,
                 tokenizer_dir: Path | None = None):
        if t5_cfg.d_model != cfg.dim:
            raise ConfigError(f"config key 'text.dim' is {cfg.dim} but the T5 checkpoint {cfg.checkpoint!r} has "
                              f"d_model={t5_cfg.d_model}: set text.dim={t5_cfg.d_model}")
        self.cfg, self.t5_cfg, self.tokenizer, self._tokenizer_dir = cfg, t5_cfg, tokenizer, tokenizer_dir
        self.graphdef, self.state = nnx.split(model)
        self._encode = jax.jit(self.apply)

    @classmethod
    def load(cls, cfg: TextConfig, seed: int = 0) -> TextEncoder:
        if not cfg.checkpoint:
            t5_cfg = default_t5_config(cfg.dim)
            return cls(cfg, t5_cfg, T5Encoder(t5_cfg, rngs=nnx.Rngs(seed)), load_tokenizer(None))
        folder = Path(cfg.checkpoint)
        t5_cfg, model = load_t5(folder)
        return cls(cfg, t5_cfg, model, load_tokenizer(folder), folder)

    @property
    def dim(self) -> int:
        return self.t5_cfg.d_model

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids_bl int32, mask_bl bool) with L = cfg.max_len."""
        ids_bl, mask_bl = self.tokenizer(texts, self.cfg.max_len)
        if ids_bl.size and int(ids_bl.max()) >= self.t5_cfg.vocab_size:
            raise ValueError(f"token id {int(ids_bl.max())} >= T5 vocab {self.t5_cfg.vocab_size}: tokenizer and "
                             "checkpoint do not belong together")
        return ids_bl, mask_bl

    def apply(self, state: nnx.State, ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
        return nnx.merge(self.graphdef, state)(ids_bl, mask_bl)

    def encode(self, ids_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
        """(B, L) ids + mask -> (B, L, dim) float32 last hidden state (padding rows are not zeroed)."""
        return self._encode(self.state, ids_bl, mask_bl)

    def __call__(self, texts: Sequence[str]) -> tuple[jax.Array, np.ndarray]:
        ids_bl, mask_bl = self.tokenize(texts)
        return self.encode(ids_bl, mask_bl), mask_bl

    def save(self, folder: str | Path) -> Path:
        """Write a converted T5 folder that `TextEncoder.load(TextConfig(checkpoint=folder, ...))` restores."""
        model = nnx.merge(self.graphdef, self.state)
        source = self.cfg.checkpoint or BYTE_LEVEL_SOURCE
        if self._tokenizer_dir is not None and read_meta(self._tokenizer_dir, T5).get("source") == BYTE_LEVEL_SOURCE:
            source = BYTE_LEVEL_SOURCE  # a re-saved embedded T5 stays recognisably byte-level
        out = save_converted(folder, T5, dataclasses.asdict(self.t5_cfg), flat_params(model), source=source)
        if self._tokenizer_dir is not None:
            copy_tokenizer(self._tokenizer_dir, out)
        return out

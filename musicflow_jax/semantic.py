"""Audio prompt -> semantic features / units in JAX: converted HuBERT at one layer + k-means assignment.

The k-means codebook file format (written by tools/fit_kmeans.py) is defined in musicflow_jax/codebook.py.
Units are nearest centroids in squared Euclidean distance.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.codebook import load_codebook
from musicflow_jax.convert.hubert import KIND, load_hubert
from musicflow_jax.convert.io import read_meta
from musicflow_jax.models._layers import nearest_code
from musicflow_jax.models.hubert import Hubert, HubertConfig

assign_units = nearest_code  # (B, T, C) features, (K, C) centroids -> nearest centroid ids int32 (B, T)


class SemanticEncoder:
    def __init__(self, cfg: HubertConfig, model: Hubert, layer: int, centroids_kc: np.ndarray | None = None,
                 do_normalize: bool = False):
        if not 0 <= layer <= cfg.num_hidden_layers:
            raise ValueError(f"layer {layer}: this HuBERT has hidden states 0..{cfg.num_hidden_layers}")
        if centroids_kc is not None and centroids_kc.shape[1] != cfg.hidden_size:
            raise ValueError(f"codebook dim {centroids_kc.shape[1]} != HuBERT hidden size {cfg.hidden_size}")
        self.cfg, self.layer, self.do_normalize = cfg, layer, do_normalize
        self.centroids = None if centroids_kc is None else jnp.asarray(centroids_kc)
        self.graphdef, self.state = nnx.split(model)
        g = self.graphdef
        self._features = jax.jit(lambda st, x: nnx.merge(g, st)(x, layer))
        self._units = jax.jit(assign_units)

    @classmethod
    def load(cls, hubert_folder: str | Path, kmeans_file: str | Path | None, layer: int) -> SemanticEncoder:
        """Converted HuBERT folder + k-means codebook (None: features only). Checks the codebook's layer and,
        when both are recorded, that it was fitted on the same HuBERT weights."""
        cfg, model = load_hubert(hubert_folder)
        extra = read_meta(hubert_folder, KIND).get("extra", {})
        do_normalize = bool(extra.get("do_normalize", False))
        cents = None
        if kmeans_file is not None:
            cents, meta = load_codebook(kmeans_file)
            if meta.get("layer") not in (None, str(layer)):
                raise ValueError(f"{kmeans_file} was fitted on HuBERT layer {meta['layer']}, not layer {layer}")
            src_sha = extra.get("source_sha256")
            if meta.get("hubert_sha256") and src_sha and meta["hubert_sha256"] != src_sha:
                raise ValueError(f"{kmeans_file} was fitted on a different HuBERT (sha256 {meta['hubert_sha256'][:12]}"
                                 f"...) than {hubert_folder} was converted from ({src_sha[:12]}...)")
        return cls(cfg, model, layer, cents, do_normalize)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sampling_rate

    @property
    def frame_rate(self) -> float:
        return self.cfg.sampling_rate / self.cfg.hop_length

    def features(self, audio_16k_bs: np.ndarray | jax.Array) -> jax.Array:
        """(B, S) float32 audio at 16 kHz -> (B, T, C) hidden states at `layer` (T ~ S / 320 at 50 Hz)."""
        audio = jnp.asarray(audio_16k_bs, jnp.float32)
        if audio.ndim != 2:
            raise ValueError(f"audio must be (B, S) mono at {self.sample_rate} Hz, got shape {tuple(audio.shape)}")
        if self.do_normalize:  # as the HF feature extractor (and tools/precompute_features.py) does per clip
            audio = (audio - audio.mean(-1, keepdims=True)) / jnp.sqrt(audio.var(-1, keepdims=True) + 1e-7)
        return self._features(self.state, audio)

    def _need_codebook(self) -> jax.Array:
        if self.centroids is None:
            raise ValueError("no k-means codebook loaded: pass kmeans_file to SemanticEncoder.load")
        return self.centroids

    def units(self, h_btc: jax.Array) -> jax.Array:
        return self._units(jnp.asarray(h_btc, jnp.float32), self._need_codebook())

    def unit_vectors(self, ids_bt: jax.Array) -> jax.Array:
        """Unit ids -> their centroid vectors (B, T, C)."""
        return jnp.take(self._need_codebook(), jnp.asarray(ids_bt, jnp.int32), axis=0)

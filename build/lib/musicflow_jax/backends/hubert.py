"""The "hubert" semantic part (the paper's): a converted HuBERT read at one `hidden_states` layer (HF convention:
0 = transformer input, L = output of layer L) at 50 Hz, with its feature extractor's per-clip waveform
normalisation (`do_normalize`, carried by the converted folder), and optionally a k-means codebook: then each
frame's unit is its nearest centroid (squared Euclidean) and the stream stage 1 models is the centroid vector of
that unit. Taking the centroid keeps the target continuous (flow matching) while dropping the frame-level detail
the paper's discrete semantic tokens also drop. Without a codebook the raw hidden states are the stream (units -1).

The codebook file format (written by python -m musicflow_jax.fit_kmeans) is defined in musicflow_jax/codebook.py.
Spec: {"kind": "hubert", "folder": converted HuBERT folder, "layer": int, "kmeans": codebook file or null}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.backends.parts import resolve
from musicflow_jax.encoders.codebook import check_codebook, load_codebook
from musicflow_jax.encoders.converted import HUBERT, load_hubert, read_meta
from musicflow_jax.models.hubert import Hubert, HubertConfig
from musicflow_jax.models.port_layers import nearest_code

assign_units = nearest_code  # (B, T, C) features, (K, C) centroids -> nearest centroid ids int32 (B, T)


class HubertSemantic:
    kind = "hubert"

    def __init__(self, cfg: HubertConfig, model: Hubert, layer: int, centroids_kc: np.ndarray | None = None,
                 do_normalize: bool = False, *, folder: Path | None = None, kmeans_file: Path | None = None):
        if not 0 <= layer <= cfg.num_hidden_layers:
            raise ValueError(f"layer {layer}: this HuBERT has hidden states 0..{cfg.num_hidden_layers}")
        if centroids_kc is not None and centroids_kc.shape[1] != cfg.hidden_size:
            raise ValueError(f"codebook dim {centroids_kc.shape[1]} != HuBERT hidden size {cfg.hidden_size}")
        self.cfg, self.layer, self.do_normalize = cfg, layer, do_normalize
        self.folder, self.kmeans_file = folder, kmeans_file
        self.centroids = None if centroids_kc is None else jnp.asarray(centroids_kc)
        self.graphdef, self.state = nnx.split(model)
        g = self.graphdef
        self._features = jax.jit(lambda st, x: nnx.merge(g, st)(x, layer))
        self._units = jax.jit(assign_units)

    @classmethod
    def load(cls, hubert_folder: str | Path, kmeans_file: str | Path | None, layer: int) -> HubertSemantic:
        """Converted HuBERT folder + k-means codebook (None: features only). Checks the codebook's layer and,
        when both are recorded, that it was fitted on the same HuBERT weights."""
        cfg, model = load_hubert(hubert_folder)
        extra = read_meta(hubert_folder, HUBERT).get("extra", {})
        do_normalize = bool(extra.get("do_normalize", False))
        cents = None
        if kmeans_file is not None:
            cents, meta = load_codebook(kmeans_file)
            check_codebook(kmeans_file, meta, layer, extra.get("source_sha256"))
        return cls(cfg, model, layer, cents, do_normalize, folder=Path(hubert_folder),
                   kmeans_file=None if kmeans_file is None else Path(kmeans_file))

    @property
    def sample_rate(self) -> int:
        return self.cfg.sampling_rate

    @property
    def frame_rate(self) -> float:
        return self.cfg.sampling_rate / self.cfg.hop_length

    @property
    def dim(self) -> int:
        return self.cfg.hidden_size

    def encode(self, audio_bs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) at 16 kHz -> (centroid vectors of the units, or the hidden states without a codebook; units)."""
        h = self.features(audio_bs)
        if self.centroids is None:
            return np.asarray(h, np.float32), np.full(h.shape[:2], -1, np.int32)
        units = self.units(h)
        return np.asarray(self.unit_vectors(units), np.float32), np.asarray(units, np.int32)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder), "layer": self.layer,
                "kmeans": None if self.kmeans_file is None else str(self.kmeans_file)}

    def files(self) -> dict[str, Path]:
        out = {"folder": self.folder} if self.folder is not None else {}
        if self.kmeans_file is not None:
            out["kmeans"] = self.kmeans_file
        return out

    def features(self, audio_16k_bs: np.ndarray | jax.Array) -> jax.Array:
        """(B, S) float32 audio at 16 kHz -> (B, T, C) hidden states at `layer` (T ~ S / 320 at 50 Hz)."""
        audio = jnp.asarray(audio_16k_bs, jnp.float32)
        if audio.ndim != 2:
            raise ValueError(f"audio must be (B, S) mono at {self.sample_rate} Hz, got shape {tuple(audio.shape)}")
        if self.do_normalize:  # as the HF feature extractor (and the PyTorch reference, torch_ref.py) does per clip
            audio = (audio - audio.mean(-1, keepdims=True)) / jnp.sqrt(audio.var(-1, keepdims=True) + 1e-7)
        return self._features(self.state, audio)

    def _need_codebook(self) -> jax.Array:
        if self.centroids is None:
            raise ValueError("no k-means codebook loaded: pass kmeans_file to HubertSemantic.load")
        return self.centroids

    def units(self, h_btc: jax.Array) -> jax.Array:
        return self._units(jnp.asarray(h_btc, jnp.float32), self._need_codebook())

    def unit_vectors(self, ids_bt: jax.Array) -> jax.Array:
        """Unit ids -> their centroid vectors (B, T, C)."""
        return jnp.take(self._need_codebook(), jnp.asarray(ids_bt, jnp.int32), axis=0)


def build(spec: dict[str, Any], folder: Path | None) -> HubertSemantic:
    return HubertSemantic.load(resolve(folder, spec["folder"]), resolve(folder, spec.get("kmeans")), int(spec["layer"]))

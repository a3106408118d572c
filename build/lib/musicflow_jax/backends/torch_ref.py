"""PyTorch references of the weight-based parts, for offline use only (precompute --engine torch, k-means fitting,
parity tests): transformers' HubertModel / EncodecModel / T5EncoderModel read from HF `save_pretrained` folders.
torch is imported when one is built, never by the runtime. Same specs as the JAX parts, so an index written by
either engine describes the same backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.backends.parts import BackendError, resolve
from musicflow_jax.encoders.codebook import check_codebook, checkpoint_sha256, load_codebook
from musicflow_jax.encoders.tokenizer import load_tokenizer
from musicflow_jax.models.port_layers import nearest_code


def _torch() -> Any:
    import torch

    return torch


def assign_units(h_btc: np.ndarray, centroids_kc: np.ndarray) -> np.ndarray:
    """Nearest centroid per frame -> int32 (..., T): the runtime's search (port_layers.nearest_code)."""
    h = np.asarray(h_btc, np.float32)
    return np.asarray(nearest_code(h.reshape(-1, *h.shape[-2:]), np.asarray(centroids_kc, np.float32))
                      ).reshape(h.shape[:-1]).astype(np.int32)


class TorchHubertSemantic:
    """transformers' HubertModel at `hidden_states[layer]`, with its feature extractor's per-clip waveform
    normalisation (`do_normalize` in preprocessor_config.json) applied first, as HF's feature extractor does."""
    kind = "hubert"

    def __init__(self, folder: str | Path, layer: int, kmeans_file: str | Path | None = None):
        from transformers import HubertModel

        self.folder, self.layer = Path(folder), int(layer)
        self.kmeans_file = None if kmeans_file is None else Path(kmeans_file)
        self.model = HubertModel.from_pretrained(folder).eval()
        n_layers = self.model.config.num_hidden_layers
        if not 0 <= self.layer <= n_layers:
            raise BackendError(f"--layer {layer}: HuBERT at {folder} has hidden states 0..{n_layers}")
        pre = self.folder / "preprocessor_config.json"
        self.do_normalize = bool(json.loads(pre.read_text()).get("do_normalize", False)) if pre.is_file() else False
        self.centroids = None
        if self.kmeans_file is not None:
            self.centroids, meta = load_codebook(self.kmeans_file)
            check_codebook(self.kmeans_file, meta, self.layer, checkpoint_sha256(folder))

    sample_rate = 16_000

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / int(np.prod(self.model.config.conv_stride))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def features(self, audio_bs: np.ndarray) -> np.ndarray:
        """(B, S) float32 @16 kHz -> (B, T, C) hidden states at `layer`."""
        torch = _torch()
        x = np.asarray(audio_bs, np.float32)
        if self.do_normalize:
            x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-7)
        with torch.no_grad():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x)), output_hidden_states=True)
        return out.hidden_states[self.layer].numpy().astype(np.float32)

    def encode(self, audio_bs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = self.features(audio_bs)
        if self.centroids is None:
            return h, np.full(h.shape[:2], -1, np.int32)
        units = assign_units(h, self.centroids)
        return self.centroids[units], units

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder), "layer": self.layer,
                "kmeans": None if self.kmeans_file is None else str(self.kmeans_file)}

    def files(self) -> dict[str, Path]:
        return {"folder": self.folder, **({"kmeans": self.kmeans_file} if self.kmeans_file is not None else {})}


class TorchEncodecAcoustic:
    """transformers' EncodecModel: `encoder(audio)` is the continuous latent before the RVQ; `decoder` inverts it."""
    kind = "encodec"

    def __init__(self, folder: str | Path):
        from transformers import EncodecModel

        self.folder = Path(folder)
        self.model = EncodecModel.from_pretrained(folder).eval()
        c = self.model.config
        if c.audio_channels != 1 or c.chunk_length_s:
            raise BackendError(f"{folder}: the acoustic part needs a mono, unchunked Encodec (e.g. 24 kHz), got "
                               f"{c.audio_channels} channels, chunk_length_s={c.chunk_length_s}")

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.model.config.upsampling_ratios))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, audio_bs: np.ndarray) -> np.ndarray:
        torch = _torch()
        x = torch.from_numpy(np.ascontiguousarray(audio_bs, np.float32))[:, None]
        if self.model.config.normalize:  # as EncodecModel._encode_frame does before its encoder
            x = x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-8)
        with torch.no_grad():
            z = self.model.encoder(x)
        return z.transpose(1, 2).numpy().astype(np.float32)

    def decode(self, z_btd: np.ndarray) -> np.ndarray:
        torch = _torch()
        with torch.no_grad():
            audio = self.model.decoder(torch.from_numpy(np.ascontiguousarray(z_btd, np.float32)).transpose(1, 2))
        return audio[:, 0].numpy().astype(np.float32)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder)}

    def files(self) -> dict[str, Path]:
        return {"folder": self.folder}


class TorchText:
    """transformers' T5EncoderModel + the project's tokenizer: captions -> (emb (B, L, E), mask (B, L))."""
    def __init__(self, folder: str | Path, max_len: int):
        from transformers import T5EncoderModel


        self.model = T5EncoderModel.from_pretrained(folder).eval()
        self.tokenizer, self.max_len = load_tokenizer(folder), max_len

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        torch = _torch()
        ids, mask = self.tokenizer(list(captions), self.max_len)
        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(ids).long(),
                             attention_mask=torch.from_numpy(mask).long()).last_hidden_state
        return out.numpy().astype(np.float32), mask


def build_hubert(spec: dict[str, Any], folder: Path | None) -> TorchHubertSemantic:
    return TorchHubertSemantic(resolve(folder, spec["folder"]), int(spec["layer"]), resolve(folder, spec.get("kmeans")))


def build_encodec(spec: dict[str, Any], folder: Path | None) -> TorchEncodecAcoustic:
    return TorchEncodecAcoustic(resolve(folder, spec["folder"]))

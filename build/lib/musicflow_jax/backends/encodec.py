"""The "encodec" acoustic part (the paper's): continuous pre-quantisation Encodec latents, decoded by the Flax
Encodec decoder (musicflow_jax/codec.py over a converted folder). Mono codecs only (the 24 kHz Encodec: 75 Hz,
128-d latents). A codec with `normalize` (the 48 kHz one) encodes RMS-normalised audio; its loudness scale is not
part of the stream.

Spec: {"kind": "encodec", "folder": converted Encodec folder}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.backends.parts import BackendError, resolve
from musicflow_jax.encoders.codec import Codec


class EncodecAcoustic:
    kind = "encodec"

    def __init__(self, codec: Codec, folder: Path | None = None):
        if codec.cfg.audio_channels != 1:
            raise BackendError(f"Encodec at {folder} has {codec.cfg.audio_channels} channels: the acoustic part needs "
                               "a mono codec (e.g. the converted 24 kHz Encodec)")
        self.codec, self.folder = codec, folder

    @classmethod
    def load(cls, folder: str | Path) -> EncodecAcoustic:
        return cls(Codec.load(folder), Path(folder))

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.sample_rate / self.codec.hop_length

    @property
    def hop_length(self) -> int:
        return self.codec.hop_length

    @property
    def dim(self) -> int:
        return self.codec.latent_dim

    def encode(self, audio_bs: np.ndarray) -> np.ndarray:
        return np.asarray(self.codec.encode_latents(audio_bs), np.float32)

    def decode(self, z_btd: np.ndarray) -> np.ndarray:
        return np.asarray(self.codec.decode_latents(z_btd), np.float32)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder)}

    def files(self) -> dict[str, Path]:
        return {"folder": self.folder} if self.folder is not None else {}


def build(spec: dict[str, Any], folder: Path | None) -> EncodecAcoustic:
    return EncodecAcoustic.load(resolve(folder, spec["folder"]))

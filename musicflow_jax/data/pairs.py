"""The pairs file: latents a flow stage generated, each with the audio it should decode to (written by
inference/decoder_pairs.py, read by the codec trainer's `data.pairs`). One .npz: latents (N, T, D) float32 raw
(un-normalised) codec latents, audio (N, T * hop) float32 at the codec's rate (frame t covers samples
[t hop, (t + 1) hop)), sample_rate, hop_length."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from musicflow_jax.errors import MusicFlowError
from musicflow_jax.utils import atomic_io


class PairsFileError(MusicFlowError):
    """A pairs file that cannot be read or is inconsistent; the message starts with its path."""


@dataclasses.dataclass(frozen=True)
class Pairs:
    latents: np.ndarray  # (N, T, D)
    audio: np.ndarray  # (N, T * hop_length)
    sample_rate: int
    hop_length: int


def _check(z: np.ndarray, x: np.ndarray, hop: int) -> str | None:
    if z.ndim != 3 or x.ndim != 2 or x.shape != (z.shape[0], z.shape[1] * hop):
        return f"latents {z.shape} (N, T, D) need audio (N, T * {hop}), got {x.shape}"
    return None


def save_pairs(path: str | Path, latents: np.ndarray, audio: np.ndarray, sample_rate: int, hop_length: int) -> Path:
    """Write a pairs file atomically."""
    z, x = np.asarray(latents, np.float32), np.asarray(audio, np.float32)
    if (problem := _check(z, x, hop_length)) is not None:
        raise ValueError(f"pairs: {problem}")
    buf = io.BytesIO()
    np.savez(buf, latents=z, audio=x, sample_rate=np.int64(sample_rate), hop_length=np.int64(hop_length))
    return atomic_io.write_bytes(path, buf.getvalue())


def read_pairs(path: str | Path) -> Pairs:
    try:
        with np.load(path) as f:
            pairs = Pairs(f["latents"].astype(np.float32), f["audio"].astype(np.float32), int(f["sample_rate"]),
                          int(f["hop_length"]))
    except (OSError, KeyError, ValueError) as e:
        raise PairsFileError(f"{path}: not a pairs file ({e}): write one with musicflow_jax.inference.decoder_pairs "
                             "(docs/training.md)") from None
    if (problem := _check(pairs.latents, pairs.audio, pairs.hop_length)) is not None:
        raise PairsFileError(f"{path}: {problem}")
    return pairs

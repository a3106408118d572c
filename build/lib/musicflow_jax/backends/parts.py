"""The two kinds of part a feature backend is made of (protocols), the error they raise, and how a part's settings
name its files. Every part module (chroma, mel, hubert, encodec, torch_ref) builds on this; the registry
(registry.py) maps (stream, kind, engine) to their `build` functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from musicflow_jax.errors import MusicFlowError

STREAMS = ("semantic", "acoustic")
Builder = Callable[[dict[str, Any], Path | None], Any]  # (spec, folder its relative paths start from) -> part


class BackendError(MusicFlowError):
    """A backend description or part that cannot be built or used; the message names the file/key and the fix."""


class SemanticPart(Protocol):
    """Audio -> the semantic stream stage 1 generates (never decoded to audio)."""

    kind: str

    @property
    def sample_rate(self) -> int: ...  # the rate `encode` expects

    @property
    def frame_rate(self) -> float: ...

    @property
    def dim(self) -> int: ...

    def encode(self, audio_bs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) mono at sample_rate -> (features (B, T, dim) float32, units (B, T) int32, -1 = no units)."""
        ...

    def spec(self) -> dict[str, Any]:
        """JSON settings: {"kind": ..., ...}; weight files as paths (see `files`)."""
        ...

    def files(self) -> dict[str, Path]:
        """Spec key -> file or folder this part reads (copied into model folders by FeatureBackend.save)."""
        ...


class AcousticPart(Protocol):
    """Audio <-> the acoustic stream stage 2 generates."""

    kind: str

    @property
    def sample_rate(self) -> int: ...

    @property
    def frame_rate(self) -> float: ...

    @property
    def hop_length(self) -> int: ...  # samples per frame: decode(T frames) gives T * hop_length samples

    @property
    def dim(self) -> int: ...

    def encode(self, audio_bs: np.ndarray) -> np.ndarray:
        """(B, S) mono at sample_rate -> (B, ceil(S / hop), dim) float32."""
        ...

    def decode(self, z_btd: np.ndarray) -> np.ndarray:
        """(B, T, dim) -> (B, T * hop_length) float32 audio at sample_rate."""
        ...

    def spec(self) -> dict[str, Any]: ...

    def files(self) -> dict[str, Path]: ...



def resolve(folder: Path | None, name: str | None) -> Path | None:
    """A part's file setting: absolute as given, else relative to the JSON's folder."""
    if name is None:
        return None
    p = Path(name)
    return p if p.is_absolute() or folder is None else folder / p



"""Fréchet distance on a MusicFlow feature backend's own streams, torch-free: the semantic features (e.g. the Flax
HuBERT port's hidden states, or chroma) and the acoustic latents (e.g. the Flax Encodec port's continuous
pre-quantisation latents, or log-mel) of every frame, of a model folder or any folder holding a features.json
(musicflow_jax.backends).

Conventions: each clip is read mono, resampled to each part's rate and encoded whole (raw features, before the
backend's normalisation); the frames of all clips of a set are pooled, as FAD pools VGGish frames, and one Gaussian
is fitted per set and stream ("fd_semantic", "fd_acoustic"). This measures distance in the model's own feature
space: useful to see which stage drifts, comparable only between runs on the same backend, and blind to whatever
the backend does not represent (see the backend-ceiling row of musicflow_jax.evaluate.model).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from musicflow_jax.backends import BackendError, load_backend
from musicflow_jax.evaluate.embedders.base import EmbedError, Outputs, fd_frames, hash_files

CONVENTIONS_VERSION = "features-1"


class BackendFeatures:
    """Per-frame semantic and acoustic features of a MusicFlow backend folder."""
    name = "features"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.backend = load_backend(self.folder)
        except BackendError as e:
            raise EmbedError(f"--features: {e}") from None

    def fingerprint(self) -> str:
        spec = json.dumps(self.backend.to_json(), sort_keys=True)
        files: list[Path] = []
        for part in (self.backend.semantic, self.backend.acoustic):
            for src in map(Path, part.files().values()):
                files += sorted(f for f in src.rglob("*") if f.is_file()) if src.is_dir() else [src]
        return hash_files(files, f"{CONVENTIONS_VERSION}:{spec}")

    def outputs(self, audio: np.ndarray, sample_rate: int) -> Outputs:
        x = np.asarray(audio, np.float32)[None]
        return {"semantic": np.asarray(self.backend.encode_semantic(x, sample_rate)[0], np.float64),
                "acoustic": np.asarray(self.backend.encode_acoustic(x, sample_rate)[0], np.float64)}

    def metrics(self, gen: Sequence[Outputs], ref: Sequence[Outputs], pairs: Sequence[tuple[int, int]]
                ) -> dict[str, float | int | None]:
        return {"fd_semantic": fd_frames(gen, ref, "semantic"), "fd_acoustic": fd_frames(gen, ref, "acoustic"),
                "frames_generated": int(sum(len(o["acoustic"]) for o in gen)),
                "frames_reference": int(sum(len(o["acoustic"]) for o in ref))}

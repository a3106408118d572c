"""The feature backend: what the two flow stages model, how audio becomes those streams and how audio comes back.

A `FeatureBackend` is data: a semantic part (stage 1's target, e.g. HuBERT k-means centroids at 50 Hz) and an
acoustic part (stage 2's target, e.g. continuous Encodec latents at 75 Hz, with the decoder that makes audio),
plus the per-channel normalisation statistics of both streams in the training data. Its name is
"<semantic kind>+<acoustic kind>" ("hubert+encodec", "chroma+mel", "chroma+encodec", ...): any semantic part pairs
with any acoustic part. Precompute, training samples and generation all build it through `from_json` /
`build_part`, so frame rates, dims and sample rates are defined once, by the parts.

Streams are frame-major float32 (B, T, C). `encode_*` and `decode` work in the encoders' own units ("raw");
`normalize` / `denormalize` map to / from the model space the flow stages are trained in.

`features.json` (in a model folder, and the "backend" entry of a precompute index.json):
    {"format": FORMAT, "name": "hubert+encodec", "semantic": {"kind": "hubert", ...part settings},
     "acoustic": {"kind": "encodec", ...}, "rates": {"semantic": 50.0, "acoustic": 75.0},
     "dims": {"semantic": C, "acoustic": D}, "stats": {"semantic": {"mean": [...], "std": [...]}, "acoustic": ...}}
A part's settings name its weight files relative to the folder that holds the JSON (model folders) or absolutely
(precompute indexes); `save` copies them into a model folder.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.backends.parts import STREAMS, AcousticPart, BackendError, SemanticPart
from musicflow_jax.backends.registry import build_part
from musicflow_jax.core import frames
from musicflow_jax.core.audio import resample
from musicflow_jax.utils.atomic_io import write_text

FORMAT = "musicflow_jax.features/2"
FEATURES_FILE = "features.json"


# ----------------------------------------------------------------------------------------- stats


@dataclasses.dataclass(frozen=True)
class StreamStats:
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StreamStats:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": [float(x) for x in self.mean], "std": [float(x) for x in self.std]}


# ----------------------------------------------------------------------------------------- the backend


class FeatureBackend:
    """A semantic part + an acoustic part + (optionally) the normalisation stats of both streams."""

    def __init__(self, semantic: SemanticPart, acoustic: AcousticPart,
                 stats: dict[str, StreamStats] | None = None):
        self.semantic, self.acoustic, self.stats = semantic, acoustic, stats
        if stats is not None:
            for stream, dim in (("semantic", semantic.dim), ("acoustic", acoustic.dim)):
                if stats[stream].mean.shape != (dim,):
                    raise BackendError(f"{self.name}: {stream} stats have {stats[stream].mean.shape[0]} channels but "
                                       f"the {stream} part makes {dim}; recompute the index with this backend")

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        return f"{self.semantic.kind}+{self.acoustic.kind}"

    @property
    def sample_rate(self) -> int:
        """The audio rate of the backend: prompts are read and generated audio is written at it."""
        return int(self.acoustic.sample_rate)

    @property
    def rates(self) -> dict[str, float]:
        return {"semantic": float(self.semantic.frame_rate), "acoustic": float(self.acoustic.frame_rate)}

    @property
    def dims(self) -> dict[str, int]:
        return {"semantic": int(self.semantic.dim), "acoustic": int(self.acoustic.dim)}

    def with_stats(self, stats: dict[str, StreamStats] | None) -> FeatureBackend:
        return FeatureBackend(self.semantic, self.acoustic, stats)

    # ------------------------------------------------------------------ audio <-> streams (raw units)
    def encode_semantic(self, audio_bs: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """(B, S) mono at `sample_rate` (default: the backend's) -> raw semantic features (B, T_s, C)."""
        return self.encode_semantic_units(audio_bs, sample_rate)[0]

    def encode_semantic_units(self, audio_bs: np.ndarray, sample_rate: int | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
        """Like encode_semantic, also returning the unit ids (B, T_s) int32 (-1 where the part has none)."""
        x = _resample(audio_bs, sample_rate or self.sample_rate, self.semantic.sample_rate)
        h, u = self.semantic.encode(x)
        return np.asarray(h, np.float32), np.asarray(u, np.int32)

    def encode_acoustic(self, audio_bs: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """(B, S) mono at `sample_rate` (default: the backend's) -> raw acoustic latents (B, T_a, D)."""
        x = _resample(audio_bs, sample_rate or self.sample_rate, self.acoustic.sample_rate)
        return np.asarray(self.acoustic.encode(x), np.float32)

    def decode(self, z_btd: np.ndarray) -> np.ndarray:
        """Raw acoustic latents (B, T, D) -> audio (B, T * hop) at sample_rate."""
        z_btd = np.asarray(z_btd, np.float32)
        if z_btd.ndim != 3 or z_btd.shape[-1] != self.acoustic.dim:
            raise BackendError(f"{self.name}: latents must be (B, T, {self.acoustic.dim}), got {z_btd.shape}")
        return np.asarray(self.acoustic.decode(z_btd), np.float32)

    # ------------------------------------------------------------------ model space
    def _stats(self, stream: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.stats is None:
            return None, None
        return self.stats[stream].mean, self.stats[stream].std

    def normalize(self, stream: str, x: np.ndarray) -> np.ndarray:
        """Raw -> model space: (x - mean) / std per channel (identity without stats)."""
        return frames.normalize(np.asarray(x, np.float32), *self._stats(stream))

    def denormalize(self, stream: str, x: np.ndarray) -> np.ndarray:
        """Model space -> raw (inverse of `normalize`)."""
        return frames.denormalize(np.asarray(x, np.float32), *self._stats(stream)).astype(np.float32)

    # ------------------------------------------------------------------ JSON and folders
    def to_json(self, *, relative_to: Path | None = None) -> dict[str, Any]:
        """The features.json dict. With `relative_to`, part files are written as names inside that folder."""
        parts = {"semantic": dict(self.semantic.spec()), "acoustic": dict(self.acoustic.spec())}
        if relative_to is not None:
            for stream, key, _, name in self._files():
                parts[stream][key] = name
        out: dict[str, Any] = {"format": FORMAT, "name": self.name, **parts, "rates": self.rates, "dims": self.dims}
        if self.stats is not None:
            out["stats"] = {k: self.stats[k].to_json() for k in STREAMS}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], folder: Path | None = None, *, engine: str = "jax",
                  where: str = FEATURES_FILE) -> FeatureBackend:
        """Inverse of `to_json`; relative part files start at `folder`. Errors name `where` and the fix."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise BackendError(f"{where}: not a {FORMAT} feature-backend description (format {got!r}); rewrite it "
                               "with python -m musicflow_jax.assemble (model folders) or rerun precompute (indexes)")
        try:
            sem = build_part("semantic", d["semantic"], folder, engine)
            ac = build_part("acoustic", d["acoustic"], folder, engine)
            stats = {k: StreamStats.from_json(d["stats"][k]) for k in STREAMS} if d.get("stats") else None
        except BackendError as e:
            raise BackendError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
            msg = str(e).replace("\n", " ")
            raise BackendError(f"{where}: cannot build the feature backend ({type(e).__name__}: {msg}); rewrite it "
                               "with python -m musicflow_jax.assemble") from None
        backend = cls(sem, ac, stats)
        for key in ("rates", "dims"):
            want = d.get(key)
            if want is not None and {k: float(v) for k, v in want.items()} != {
                    k: float(v) for k, v in getattr(backend, key).items()}:
                raise BackendError(f"{where}: recorded {key} {want} differ from the parts' {getattr(backend, key)}; "
                                   "the files changed since it was written: rebuild it")
        return backend

    def _files(self) -> list[tuple[str, str, Path, str]]:
        """(stream, spec key, source path, name inside a model folder) of every file the parts read."""
        out = []
        for stream, part in (("semantic", self.semantic), ("acoustic", self.acoustic)):
            for key, src in part.files().items():
                src = Path(src)
                out.append((stream, key, src, stream if src.is_dir() else f"{stream}_{key}{src.suffix}"))
        return out

    def save(self, folder: str | Path) -> Path:
        """Write features.json into a model folder and copy the parts' files next to it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for _, _, src, name in self._files():
            if src.resolve() == (folder / name).resolve():
                continue
            if src.is_dir():
                shutil.copytree(src, folder / name, dirs_exist_ok=True)
            else:
                shutil.copy(src, folder / name)
        write_text(folder / FEATURES_FILE, json.dumps(self.to_json(relative_to=folder), indent=1) + "\n")
        return folder


def load_backend(folder: str | Path) -> FeatureBackend:
    """The backend of a model folder (its features.json, part files relative to the folder)."""
    folder = Path(folder)
    spec_file = folder / FEATURES_FILE
    if not spec_file.is_file():
        raise BackendError(f"{folder} has no {FEATURES_FILE}: it is not a MusicFlow model folder (stage1/stage2 "
                           f"safetensors + {FEATURES_FILE} + text_encoder/)")
    try:
        d = json.loads(spec_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BackendError(f"{spec_file}: not valid JSON ({e}); rewrite it with python -m musicflow_jax.assemble"
                           ) from None
    return FeatureBackend.from_json(d, folder, where=str(spec_file))


def _resample(audio_bs: np.ndarray, src: int, dst: int) -> np.ndarray:
    audio_bs = np.asarray(audio_bs, np.float32)
    if audio_bs.ndim != 2:
        raise BackendError(f"audio must be (B, S) mono, got shape {audio_bs.shape}")
    return audio_bs if int(src) == int(dst) else resample(audio_bs, int(src), int(dst), axis=-1)

"""The result of a cascade run (`Generation`) and its files: a whole generation saved to / loaded from a folder, and
the one-clip draft file that `MusicFlow.refine` and `generate --refine` read.

    g.save("out/organ")            # 00.wav ... (float WAV with text/seed/settings in RIFF INFO), streams.npz,
                                   # generation.json
    g = Generation.load("out/organ")
    g.save_draft(0, "organ.draft.npz")   # what refining clip 0 needs: its semantic stream, text, seed, duration
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.core.audio import read_audio, write_wav
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.utils.atomic_io import write_bytes, write_text
from musicflow_jax.utils.plots import spectrogram_png

DRAFT_FORMAT = "musicflow_jax.draft/1"
GENERATION_FORMAT = "musicflow_jax.generation/1"


class GenerationFileError(MusicFlowError):
    """A missing or malformed saved generation / draft file; the message names the file and the fix."""


@dataclasses.dataclass
class Generation:
    audio: np.ndarray  # (B, S) float32 at sample_rate
    sample_rate: int
    semantic: np.ndarray  # (B, T_s, C) normalised stage-1 stream (model space)
    acoustic: np.ndarray  # (B, T_a, D) normalised stage-2 stream (model space)
    texts: list[str]
    seed: int
    mode: str
    nfe: dict[str, int]
    seconds: float  # wall time
    prompt_semantic: np.ndarray | None = None  # (T_s, C) encoded prompt, model space
    prompt_acoustic: np.ndarray | None = None  # (T_a, D)
    settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # stage -> steps/solver/cfg_scale
    model: str = ""  # the model folder
    rows: list[int] = dataclasses.field(default_factory=list)  # noise row id of each clip (sampling.sample)

    @property
    def duration(self) -> float:
        return self.audio.shape[-1] / self.sample_rate

    def metadata(self, i: int) -> dict[str, Any]:
        return {"text": self.texts[i], "seed": self.seed, "mode": self.mode, "nfe": self.nfe,
                "duration": round(self.duration, 4), "settings": self.settings}

    # --------------------------------------------------------------------- whole generation <-> folder
    def save(self, folder: str | Path, *, spectrograms: bool = False) -> list[Path]:
        """Write every clip as `<i>.wav` (32-bit float, metadata in RIFF INFO; with a spectrogram `<i>.png` when
        asked), the streams as `streams.npz` and the rest as `generation.json` (written last: a folder with it is
        complete). Returns the WAV paths."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise GenerationFileError(f"folder {folder} is a file: give a folder path to save the generation in")
        folder.mkdir(parents=True, exist_ok=True)
        wavs = []
        for i in range(len(self.texts)):
            wav = write_wav(folder / f"{i:02d}.wav", self.audio[i], self.sample_rate, self.metadata(i), "FLOAT")
            if spectrograms:
                spectrogram_png(wav.with_suffix(".png"), self.audio[i], self.sample_rate, self.texts[i])
            wavs.append(wav)
        streams = {"semantic": self.semantic, "acoustic": self.acoustic}
        streams.update({k: v for k, v in (("prompt_semantic", self.prompt_semantic),
                                          ("prompt_acoustic", self.prompt_acoustic)) if v is not None})
        write_bytes(folder / "streams.npz", _npz(streams))
        meta = {"format": GENERATION_FORMAT, "texts": self.texts, "seed": self.seed, "mode": self.mode,
                "nfe": self.nfe, "seconds": self.seconds, "sample_rate": self.sample_rate, "settings": self.settings,
                "model": self.model, "rows": self._rows(), "wavs": [w.name for w in wavs]}
        write_text(folder / "generation.json", json.dumps(meta, indent=1))
        return wavs

    @classmethod
    def load(cls, folder: str | Path) -> Generation:
        """A folder written by `save` (the audio as saved, the streams bit-exact)."""
        folder = Path(folder)
        meta = _read_json(folder / "generation.json", GENERATION_FORMAT, "a folder written by Generation.save")
        try:
            with np.load(folder / "streams.npz") as z:
                streams = {k: z[k] for k in z.files}
            audio = np.stack([read_audio(folder / w, mono=True)[0] for w in meta["wavs"]]).astype(np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise GenerationFileError(f"generation folder {folder} is incomplete ({type(e).__name__}: "
                                      f"{str(e)[:80]}): save it again") from None
        return cls(audio=audio, sample_rate=int(meta["sample_rate"]), semantic=streams["semantic"],
                   acoustic=streams["acoustic"], texts=list(meta["texts"]), seed=int(meta["seed"]), mode=meta["mode"],
                   nfe=dict(meta["nfe"]), seconds=float(meta["seconds"]),
                   prompt_semantic=streams.get("prompt_semantic"), prompt_acoustic=streams.get("prompt_acoustic"),
                   settings=dict(meta.get("settings", {})), model=str(meta.get("model", "")),
                   rows=[int(r) for r in meta.get("rows", range(len(meta["texts"])))])

    def _rows(self) -> list[int]:
        return self.rows or list(range(len(self.texts)))

    # --------------------------------------------------------------------- one clip's draft file
    def save_draft(self, i: int, path: str | Path) -> Path:
        """What refining clip `i` needs (its semantic stream bit-exact, text, seed, duration, model) in one .npz."""
        meta = {"format": DRAFT_FORMAT, "text": self.texts[i], "seed": self.seed, "row": self._rows()[i],
                "duration": self.duration,
                "sample_rate": self.sample_rate, "model": self.model, "settings": self.settings, "mode": self.mode}
        return write_bytes(path, _npz({"semantic": self.semantic[i], "meta": np.array(json.dumps(meta))}))


@dataclasses.dataclass(frozen=True)
class Draft:
    """One clip's semantic stream (T_s, C) in model space, with the text, seed and duration it was made with."""

    semantic: np.ndarray
    text: str
    seed: int
    duration: float
    model: str
    row: int = 0  # its noise row id (the clip's index in the draft's batch)


def read_draft(path: str | Path) -> Draft:
    path = Path(path)
    if not path.is_file():
        raise GenerationFileError(f"draft {path} does not exist: give the .draft.npz written by generate --draft")
    try:
        with np.load(path) as z:
            semantic, meta = z["semantic"], json.loads(str(z["meta"]))
        if meta.get("format") != DRAFT_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        return Draft(np.asarray(semantic, np.float32), str(meta["text"]), int(meta["seed"]), float(meta["duration"]),
                     str(meta.get("model", "")), int(meta.get("row", 0)))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise GenerationFileError(f"draft {path} is not a draft file ({type(e).__name__}: {str(e)[:80]}): give the "
                                  ".draft.npz written by generate --draft") from None


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _read_json(path: Path, fmt: str, what: str) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenerationFileError(f"{path} cannot be read ({type(e).__name__}): give {what}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise GenerationFileError(f"{path} is not {fmt}: give {what}")
    return meta

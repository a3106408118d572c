"""Audio manifests: reading, validating and writing the lists of (audio file, caption) the precompute step eats.

Two JSONL forms are accepted, one object per line:
- ours: {"path": str, "caption": str, "duration": float (s, optional), "split": "train"|"valid"|"test" (optional),
  "notes": str (optional: a JSON note list [[onset_s, offset_s, midi_pitch, gm_program], ...] of the notes the clip
  was rendered from, written by python -m musicflow_jax.build_corpus; the evaluation's ground truth),
  "facts": {"composer", "genre", "key", "bpm", "instrument"} (optional: what the clip is, from its score;
  musicflow_jax/data/captions.py words captions from them and the evaluation scores against them)}
- audiocraft-style: {"path", "duration", "sample_rate", ...} without "caption"; the caption is read from the
  sidecar `<audio stem>.json` (audiocraft's MusicInfo: "description", else built from title/artist/genre/
  moods/key/bpm/instrument) or a "description" field on the line itself.
Relative paths are resolved against the manifest's folder. Bad lines do not stop reading: each becomes a
`Problem` naming `file:line` and the reason, for the caller's failures file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from musicflow_jax.data.captions import CaptionError, Facts
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.utils.atomic_io import write_text as atomic_write_text

SPLITS = ("train", "valid", "test")


class ManifestError(MusicFlowError):
    """A manifest that cannot be read; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str  # absolute audio path
    caption: str
    split: str = "train"
    duration: float | None = None  # seconds, if the manifest knows it
    where: str = ""  # "manifest.jsonl:12", for error messages
    notes: str | None = None  # absolute path of the clip's note list (JSON), if the manifest names one
    facts: Facts | None = None  # what the clip is (key, tempo, instrument, ...), if the manifest says


@dataclasses.dataclass(frozen=True)
class Problem:
    where: str  # "manifest.jsonl:12"
    path: str | None  # the audio path, when the line got that far
    reason: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _audiocraft_caption(obj: dict[str, Any], audio: Path) -> str | None:
    info: dict[str, Any] = {}
    sidecar = audio.with_suffix(".json")
    if sidecar.is_file():
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
    info = {**obj, **info} if isinstance(info, dict) else obj
    desc = info.get("description")
    if isinstance(desc, str) and desc.strip():
        return desc.strip()
    parts = []
    for key, fmt in (("genre", "{} music"), ("title", "titled {}"), ("artist", "by {}"), ("instrument", "played on {}"),
                     ("key", "in {}"), ("bpm", "at {} BPM")):
        v = info.get(key)
        if isinstance(v, (str, int, float)) and str(v).strip():
            parts.append(fmt.format(str(v).strip()))
    moods = info.get("moods")
    if isinstance(moods, list) and moods:
        parts.insert(0, ", ".join(str(m) for m in moods))
    return " ".join(parts) if parts else None


def parse_line(line: str, where: str, root: Path, default_split: str = "train") -> Entry | Problem:
    """One manifest line -> Entry, or Problem with the reason."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return Problem(where, None, f"line is not JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        return Problem(where, None, f"line is JSON but not an object: {type(obj).__name__}")
    path = obj.get("path")
    if not isinstance(path, str) or not path:
        return Problem(where, None, "no 'path' string")
    audio = Path(path) if Path(path).is_absolute() else root / path
    if "caption" in obj:
        caption = obj["caption"]
        if not isinstance(caption, str):
            return Problem(where, str(audio), f"caption is not a string: {type(caption).__name__} {caption!r}")
    else:
        caption = _audiocraft_caption(obj, audio)
        if caption is None:
            return Problem(where, str(audio), "no 'caption' and no audiocraft description/metadata sidecar")
    if not caption.strip():
        return Problem(where, str(audio), "empty caption")
    split = obj.get("split", default_split)
    if split not in SPLITS:
        return Problem(where, str(audio), f"split {split!r} is not one of {SPLITS}")
    duration = obj.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))):
        return Problem(where, str(audio), f"duration is not a number: {duration!r}")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        return Problem(where, str(audio), f"duration must be a positive number of seconds, got {duration!r}: fix it "
                                          "or drop the field (the audio file's length is used)")
    notes = obj.get("notes")
    if notes is not None and (not isinstance(notes, str) or not notes):
        return Problem(where, str(audio), f"notes is not a file path string: {notes!r}")
    if notes is not None:
        notes = notes if Path(notes).is_absolute() else str(root / notes)
    facts = None
    if "facts" in obj:
        try:
            facts = Facts.from_json(obj["facts"], "facts")
        except CaptionError as e:
            return Problem(where, str(audio), str(e))
    return Entry(str(audio), caption.strip(), split, None if duration is None else float(duration), where, notes,
                 facts)


def read_manifest(path: str | Path, default_split: str = "train") -> tuple[list[Entry], list[Problem]]:
    """All entries of a JSONL manifest (either form) and the problems of its bad lines; blank lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist (make one with python -m musicflow_jax.build_corpus, or "
                            "write JSONL lines {\"path\": ..., \"caption\": ...})")
    entries: list[Entry] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], str] = {}  # (resolved audio path, caption) -> where it was first listed
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # a caption or path in another encoding: listed, not silently mangled
                problems.append(Problem(f"{path}:{n}", None, f"line is not UTF-8 text (byte {e.start}): re-save the "
                                        "manifest as UTF-8"))
                continue
            if not line.strip():
                continue
            item = parse_line(line, f"{path}:{n}", path.parent, default_split)
            if isinstance(item, Entry):
                first = seen.setdefault((os.path.realpath(item.path), item.caption), item.where)
                if first != item.where:  # the same clip and caption again would count twice in training
                    item = Problem(item.where, item.path, f"duplicate of {first} (same audio and caption): remove "
                                                          "one of the two lines")
            (entries if isinstance(item, Entry) else problems).append(item)
    return entries, problems


def _relative(p: str, folder: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(folder.resolve()))
    except ValueError:  # outside the manifest's folder: keep absolute
        return p


def write_manifest(path: str | Path, entries: Iterable[Entry], relative: bool = True) -> None:
    """Write our JSONL form (paths relative to the manifest's folder when possible), atomically."""
    path = Path(path)
    lines = []
    for e in entries:
        p = Path(e.path)
        if relative:
            with contextlib.suppress(ValueError):  # outside the manifest's folder: keep absolute
                p = p.resolve().relative_to(path.parent.resolve())
        obj: dict[str, Any] = {"path": str(p), "caption": e.caption, "split": e.split}
        if e.duration is not None:
            obj["duration"] = round(e.duration, 4)
        if e.notes is not None:
            obj["notes"] = _relative(e.notes, path.parent) if relative else e.notes
        if e.facts is not None:
            obj["facts"] = e.facts.to_json()
        lines.append(json.dumps(obj))
    atomic_write_text(path, "".join(line + "\n" for line in lines))

"""The versioned on-disk record schema: one ArrayRecord record per clip, no pickle.

Layout of one record (all integers little-endian):

    b"MFJR" | uint32 header_len | header (UTF-8 JSON, padded with spaces to a multiple of 8) | array bytes

The header is `{"schema_version": int, "arrays": {name: {"dtype", "shape", "offset", "nbytes"}}, "meta": {...}}`;
`offset` counts from the start of the array bytes, every array is C-contiguous little-endian and 8-byte aligned.

Schema v1, per clip (`Clip`):
- "semantic" float32 (T_s, C): continuous semantic target at 50 Hz (the k-means centroid of each frame's unit)
- "units"    int32   (T_s,):   the k-means unit id per frame
- "acoustic" float32 (T_a, D): Encodec pre-quantisation latents at 75 Hz
- "t5_emb"   float32 (L, E) and "t5_mask" bool (L,): optional frozen T5 output for the caption
- meta: "caption" (str), "duration" (s), "source" (audio path), "start" (s, segment offset), "clip_id" (str),
  optional "facts" (the manifest's {composer, genre, key, bpm, instrument}: data.captions="varied" words from them)

Shards are `<split>-<i>-of-<n>.array_record`, written atomically (tmp file, then rename) by `ClipShardWriter`
(with a JSON sidecar summary that `merge_index` turns into `index.json`) or, for raw records, `write_shard`;
`ShardSource` is the random-access source grain reads them through, naming the file on any decode error.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from musicflow_jax.data.captions import CaptionError, Facts
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.utils import atomic_io

SCHEMA_VERSION = 1
MAGIC = b"MFJR"
_ALLOWED_DTYPES = ("<f4", "<i4", "|b1", "<f2", "<i8", "<f8")
REQUIRED_ARRAYS = ("semantic", "units", "acoustic")
REQUIRED_META = ("caption", "duration", "source", "start", "clip_id")
_WRITER_OPTIONS = "group_size:1"  # one record per chunk: true random access for grain's global shuffle
_READER_OPTIONS = "readahead_buffer_size:0"


class RecordError(MusicFlowError):
    """A record or shard that cannot be decoded with this schema (names file and expected version)."""


def _expect(where: str) -> str:
    return f"{where}: expected a musicflow_jax record of schema version {SCHEMA_VERSION} (see musicflow_jax/records.py)"


# --------------------------------------------------------------------------- raw encode / decode


def encode_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Serialise named numpy arrays plus JSON-able metadata into one record (current schema version)."""
    specs: dict[str, dict[str, Any]] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
        dt = arr.dtype.str
        if dt not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name!r}: dtype {arr.dtype} not storable; use one of {_ALLOWED_DTYPES}")
        raw = arr.tobytes()
        pad = (-len(raw)) % 8
        specs[name] = {"dtype": dt, "shape": list(arr.shape), "offset": offset, "nbytes": len(raw)}
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    header = json.dumps({"schema_version": SCHEMA_VERSION, "arrays": specs, "meta": meta}).encode("utf-8")
    header += b" " * ((-(len(header) + 8)) % 8)
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)


def decode_arrays(data: bytes, *, where: str = "<record>") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of `encode_arrays`. Raises RecordError naming `where` on a corrupt or other-version record."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise RecordError(f"{_expect(where)}; the record does not start with {MAGIC!r} (corrupt or foreign data)")
    (hlen,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(data[8 : 8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{_expect(where)}; unreadable header: {e}") from None
    version = header.get("schema_version") if isinstance(header, dict) else None
    if version != SCHEMA_VERSION:
        raise RecordError(f"{_expect(where)}, found schema version {version!r}: re-run python -m "
                          "musicflow_jax.precompute")
    body = memoryview(data)[8 + hlen :]
    arrays = {}
    for name, spec in header["arrays"].items():
        start, n = int(spec["offset"]), int(spec["nbytes"])
        if spec["dtype"] not in _ALLOWED_DTYPES or start + n > len(body):
            raise RecordError(f"{_expect(where)}; array {name!r} is truncated or has a bad dtype {spec['dtype']!r}")
        arr = np.frombuffer(body[start : start + n], dtype=np.dtype(spec["dtype"]))
        if arr.size != int(np.prod(spec["shape"], dtype=np.int64)):
            raise RecordError(f"{_expect(where)}; array {name!r} has {arr.size} values for shape {spec['shape']}")
        arrays[name] = arr.reshape(spec["shape"])
    return arrays, header["meta"]


# --------------------------------------------------------------------------- clips


@dataclasses.dataclass
class Clip:
    """One training clip: aligned semantic/acoustic streams of a segment of one audio file, and its caption."""

    semantic: np.ndarray  # float32 (T_s, C) @ 50 Hz
    units: np.ndarray  # int32 (T_s,)
    acoustic: np.ndarray  # float32 (T_a, D) @ 75 Hz
    caption: str
    duration: float  # seconds of audio in this clip
    source: str  # the audio file it came from
    start: float = 0.0  # segment start within the source, seconds
    clip_id: str = ""
    t5_emb: np.ndarray | None = None  # float32 (L, E)
    t5_mask: np.ndarray | None = None  # bool (L,)
    facts: Facts | None = None  # what the clip is, if its manifest row said (musicflow_jax/data/captions.py)


def encode_clip(clip: Clip) -> bytes:
    arrays = {
        "semantic": np.asarray(clip.semantic, np.float32),
        "units": np.asarray(clip.units, np.int32),
        "acoustic": np.asarray(clip.acoustic, np.float32),
    }
    if clip.t5_emb is not None:
        if clip.t5_mask is None:
            raise ValueError(f"clip {clip.clip_id!r}: t5_emb given without t5_mask")
        arrays["t5_emb"] = np.asarray(clip.t5_emb, np.float32)
        arrays["t5_mask"] = np.asarray(clip.t5_mask, bool)
    meta = {"caption": clip.caption, "duration": float(clip.duration), "source": str(clip.source),
            "start": float(clip.start), "clip_id": clip.clip_id}
    if clip.facts is not None:
        meta["facts"] = clip.facts.to_json()
    return encode_arrays(arrays, meta)


def decode_clip(data: bytes, *, where: str = "<record>") -> Clip:
    arrays, meta = decode_arrays(data, where=where)
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays] + [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise RecordError(f"{_expect(where)}; missing fields {missing}")
    return Clip(semantic=arrays["semantic"], units=arrays["units"], acoustic=arrays["acoustic"],
                caption=meta["caption"], duration=meta["duration"], source=meta["source"], start=meta["start"],
                clip_id=meta["clip_id"], t5_emb=arrays.get("t5_emb"), t5_mask=arrays.get("t5_mask"),
                facts=_facts(meta.get("facts"), where))


def _facts(obj: Any, where: str) -> Facts | None:
    if obj is None:
        return None
    try:
        return Facts.from_json(obj, f"{where} facts")
    except CaptionError as e:
        raise RecordError(f"{_expect(where)}; {e}") from None


# --------------------------------------------------------------------------- shards


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def write_shard(path: str | Path, records: Iterable[bytes]) -> int:
    """Write records to `path` atomically: a `.tmp` sibling first, renamed only once complete. Returns the count."""

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), _WRITER_OPTIONS)
    n = 0
    try:
        for rec in records:
            writer.write(rec)
            n += 1
    finally:
        writer.close()
    os.replace(tmp, path)
    return n


def read_shard(path: str | Path) -> list[bytes]:
    """All records of one shard (small shards / tests); errors name the file."""

    try:
        reader = ArrayRecordReader(str(path), _READER_OPTIONS)
        out = list(reader.read_all())
        reader.close()
        return out
    except Exception as e:  # noqa: BLE001 - the C++ reader raises assorted types
        raise RecordError(f"{_expect(str(path))}; not a readable ArrayRecord file: {e}") from None


class ShardSource:
    """Random access over the records of several shard files (a grain `RandomAccessDataSource`).

    Readers open lazily per process, so the source pickles into grain worker processes. Items are decoded
    `Clip`s; a corrupt record or shard raises RecordError naming the file and the expected schema version.
    """

    def __init__(self, paths: Sequence[str | Path]):

        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise RecordError("no shard files given")
        counts = []
        for p in self.paths:
            try:
                reader = ArrayRecordReader(p, _READER_OPTIONS)
                counts.append(reader.num_records())
                reader.close()
            except Exception as e:  # noqa: BLE001 - the C++ reader raises assorted types
                raise RecordError(f"{_expect(p)}; not a readable ArrayRecord file: {e}") from None
        self._starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self._readers: dict[str, Any] = {}  # shard path -> reader

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int]:
        """(shard path, record index within it) of global record `index`."""
        f = bisect.bisect_right(self._starts, index) - 1
        return self.paths[f], index - self._starts[f]

    def read_bytes(self, index: int) -> bytes:

        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range [0, {len(self)})")
        path, local = self.locate(index)
        if path not in self._readers:
            self._readers[path] = ArrayRecordReader(path, _READER_OPTIONS)
        try:
            return self._readers[path].read([local])[0]
        except Exception as e:  # noqa: BLE001
            raise RecordError(f"{_expect(path)}; record {local} unreadable: {e}") from None

    def __getitem__(self, index: int) -> Clip:
        path, local = self.locate(index)
        return decode_clip(self.read_bytes(index), where=f"{path} (record {local})")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": {}}

    def __repr__(self) -> str:
        return f"ShardSource({len(self.paths)} shards, {len(self)} records)"


# --------------------------------------------------------------------------- shard summaries and the index

INDEX_FILE = "index.json"
STREAMS = ("semantic", "acoustic")


def summary_path(shard: str | Path) -> Path:
    """The JSON sidecar of a shard; its presence marks the shard as finished (it is written after the shard)."""
    return Path(str(shard) + ".json")


class ClipShardWriter:
    """Streams clips into one shard (tmp file) and, on `close()`, renames it into place and writes its sidecar
    summary (record count, per-channel sums for the normalisation stats). Both steps are atomic, so a killed run
    leaves either a finished shard + summary or nothing usable; memory stays at one clip."""

    def __init__(self, path: str | Path, extra: dict[str, Any] | None = None):

        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer = ArrayRecordWriter(str(self._tmp), _WRITER_OPTIONS)
        self._sums: dict[str, dict[str, Any]] = {}
        self._extra = extra or {}
        self.count = 0

    def write(self, clip: Clip) -> None:
        for name in STREAMS:
            x = np.asarray(getattr(clip, name), np.float64)
            if x.size == 0:
                continue
            s = self._sums.setdefault(name, {"n": 0, "sum": np.zeros(x.shape[1]), "sumsq": np.zeros(x.shape[1])})
            s["n"] += len(x)
            s["sum"] += x.sum(0)
            s["sumsq"] += (x * x).sum(0)
        self._writer.write(encode_clip(clip))
        self.count += 1

    def close(self) -> dict[str, Any]:
        self._writer.close()
        os.replace(self._tmp, self.path)
        summary = {"schema_version": SCHEMA_VERSION, "shard": self.path.name, "records": self.count,
                   "sums": {k: {"n": v["n"], "sum": v["sum"].tolist(), "sumsq": v["sumsq"].tolist()}
                            for k, v in self._sums.items()},
                   **self._extra}
        atomic_io.write_text(summary_path(self.path), json.dumps(summary))
        return summary


def write_clip_shard(path: str | Path, clips: Iterable[Clip], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write clips to a finished shard + sidecar summary (see ClipShardWriter)."""
    w = ClipShardWriter(path, extra)
    for clip in clips:
        w.write(clip)
    return w.close()


def merge_index(folder: str | Path, info: dict[str, Any] | None = None, stats_split: str = "train",
                pattern: str = "*.array_record.json") -> dict[str, Any]:
    """Merge the shard summaries under `folder` matching `pattern` into `index.json` (atomically) and return it.

    Statistics (per-channel mean/std of each stream) come from `stats_split` (all splits if it has no shards).
    `info` (frame rates, dims, encoder configs, checkpoint hashes...) is stored as is under the top level.
    """
    folder = Path(folder)
    summaries = []
    for p in sorted(folder.glob(pattern)):
        s = json.loads(p.read_text())
        if s.get("schema_version") != SCHEMA_VERSION:
            raise RecordError(f"{p}: shard summary has schema version {s.get('schema_version')!r}, expected "
                              f"{SCHEMA_VERSION}; delete the folder's shards and re-run precompute")
        if not (folder / s["shard"]).is_file():
            raise RecordError(f"{p}: its shard {s['shard']} is missing")
        summaries.append(s)
    if not summaries:
        raise RecordError(f"{folder}: no finished shards (*.array_record + .json summary) to index")
    splits: dict[str, dict[str, Any]] = {}
    for s in summaries:
        split = s["shard"].split("-")[0]
        d = splits.setdefault(split, {"clips": 0, "shards": []})
        d["clips"] += s["records"]
        d["shards"].append(s["shard"])
    use = [s for s in summaries if s["shard"].startswith(stats_split + "-")] or summaries
    stats = {}
    for name in STREAMS:
        parts = [s["sums"][name] for s in use if name in s["sums"]]
        if not parts:
            continue
        n = sum(p["n"] for p in parts)
        mean = np.sum([p["sum"] for p in parts], 0) / n
        var = np.maximum(np.sum([p["sumsq"] for p in parts], 0) / n - mean**2, 0.0)
        stats[name] = {"mean": mean.tolist(), "std": np.sqrt(var).tolist(), "frames": int(n)}
    index = {**(info or {}), "schema_version": SCHEMA_VERSION, "splits": splits, "stats": stats,
             "stats_split": stats_split if any(s["shard"].startswith(stats_split + "-") for s in summaries) else "all"}
    atomic_io.write_text(folder / INDEX_FILE, json.dumps(index, indent=1))
    return index

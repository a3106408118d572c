"""Feature precompute: manifest -> ArrayRecord shards + index.json for the input pipeline (data/loader.py),
through a feature backend (backends/). `python -m musicflow_jax.precompute` is its CLI.

Per audio file: load (downmix) and check (empty / too short / silent), resample to each part's rate, cut into
segments of `segment_seconds` (a multiple of 40 ms so 50 Hz and 75 Hz frames both start on the segment boundary;
with `end_aligned` the last segment ends at the file's end, overlapping the one before, so every segment of a file
longer than one segment has the same length: full training crops, and one compiled encoder for all of them) and
encode each segment with the backend's semantic part (features + k-means units) and acoustic part (latents), and
the caption with an optional T5. Two engines fill the same records:
- "jax": the Flax ports (HubertSemantic, EncodecAcoustic, TextEncoder), jitted, many equal-length segments per
  device call, so precompute runs on TPU/GPU hosts without torch. HF folders are converted on the fly (safetensors
  need no torch); converted folders are used as they are.
- "torch": transformers' PyTorch models (backends/torch_ref.py), the reference.
The weight-free parts (chroma, mel) are the same under both. Audio files are decoded and resampled in a thread
pool ahead of the encoder. Work splits over `num_shards` / `shard_index` with no coordination; a shard is written
atomically and marked done (`_done/shard-i-of-N.json`), so reruns skip it and a crash loses no finished shard. The
process that sees every shard done merges `index.json` (with the backend description, backends/feature_backend.py) and
`failures.jsonl`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from musicflow_jax.backends import FeatureBackend, build_part, parse_name
from musicflow_jax.backends.parts import STREAMS
from musicflow_jax.backends.registry import ENGINES, PartFiles, with_files
from musicflow_jax.backends.torch_ref import TorchText
from musicflow_jax.convert.encodec import convert_encodec
from musicflow_jax.convert.hubert import convert_hubert
from musicflow_jax.convert.t5 import convert_t5
from musicflow_jax.core.audio import read_audio, resample
from musicflow_jax.core.config import TextConfig
from musicflow_jax.data import records
from musicflow_jax.data.manifest import Entry, Problem, read_manifest
from musicflow_jax.encoders import converted
from musicflow_jax.encoders.codebook import checkpoint_sha256, load_codebook
from musicflow_jax.encoders.text import TextEncoder
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.utils import atomic_io
from musicflow_jax.utils.locks import WorkdirLockedError, acquire_file

SEGMENT_QUANTUM_S = 0.04  # 2 semantic frames = 3 acoustic frames
FINGERPRINT_FILE = "precompute.json"
TextFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]  # captions -> (emb (B, L, E), mask (B, L))


class SkipClipError(Exception):
    """An input that is skipped with a reason (it goes to the failures file)."""


class PrecomputeError(MusicFlowError):
    """A run that cannot start as asked (stale output folder, empty manifest, ...): one line with the fix."""


# ----------------------------------------------------------------------------------------- audio


def load_audio(path: str, min_seconds: float = 1.0, silence_rms: float = 1e-4) -> tuple[np.ndarray, int]:
    """Mono float32 audio at its own rate (musicflow_jax.audio.read_audio, as generation reads prompts); raises
    SkipClipError(reason) for missing/unreadable/empty/short/silent."""
    if not Path(path).is_file():
        raise SkipClipError("missing file")
    try:
        x, sr = read_audio(path)
    except Exception as e:  # noqa: BLE001 - libsndfile raises assorted errors
        raise SkipClipError(f"unreadable audio: {type(e).__name__}: {str(e)[:200]}") from None
    if x.size == 0:
        raise SkipClipError("empty audio (0 samples)")
    if not np.isfinite(x).all():
        raise SkipClipError("audio contains NaN/inf samples")
    if len(x) / sr < min_seconds:
        raise SkipClipError(f"too short: {len(x) / sr:.3f} s < {min_seconds} s")
    if float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < silence_rms:
        raise SkipClipError(f"silent (RMS < {silence_rms})")
    return x, int(sr)


@dataclasses.dataclass(frozen=True)
class Segmenting:
    """How files are cut: `seconds` per segment (rounded to SEGMENT_QUANTUM_S), a tail kept if at least
    `min_seconds` long, and `end_aligned` (that tail becomes a full segment ending at the file's end)."""

    seconds: float = 20.0
    min_seconds: float = 1.0
    end_aligned: bool = False


def segments(n_seconds: float, segment_seconds: float, min_seconds: float, end_aligned: bool = False
             ) -> list[tuple[float, float]]:
    """[start, end) seconds of consecutive segments; the last one is kept if at least `min_seconds` long. With
    `end_aligned`, a file longer than one segment ends with a full segment whose start is the latest 40-ms grid
    point that keeps it inside the file (it overlaps the segment before)."""
    seg = max(SEGMENT_QUANTUM_S, round(segment_seconds / SEGMENT_QUANTUM_S) * SEGMENT_QUANTUM_S)
    out, start = [], 0.0
    while start + min_seconds <= n_seconds + 1e-9:
        end = min(start + seg, n_seconds)
        if end_aligned and end - start < seg - 1e-9 and out:
            start = round(float(np.floor((n_seconds - seg) / SEGMENT_QUANTUM_S + 1e-9)) * SEGMENT_QUANTUM_S, 6)
            end = round(start + seg, 6)
        out.append((start, end))
        start = round(start + seg, 6)
    return out


DEFAULT_CUT = Segmenting()
NO_FILES = PartFiles()


# ----------------------------------------------------------------------------------------- encoders


@dataclasses.dataclass
class Encoders:
    """What precompute runs: the backend (no stats yet), the optional caption encoder, and what to record."""

    backend: FeatureBackend
    text: TextFn | None
    text_dim: int | None
    engine: str
    info: dict[str, Any]  # checkpoints and hashes, for the index


def _converted(src: str, kind: str, tmp: Path) -> Path:
    """A converted Flax folder for `src`: itself if it is one, else converted into `tmp` (HF folders)."""
    meta = Path(src) / converted.CONFIG_FILE
    if meta.is_file() and json.loads(meta.read_text()).get("format") == converted.FORMAT:
        return Path(src)
    convert = {"hubert": convert_hubert, "encodec": convert_encodec, "t5": convert_t5}[kind]
    return convert(src, tmp / kind)


def _config_json(folder: str | Path) -> dict[str, Any]:
    f = Path(folder) / "config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _provenance(spec: dict[str, Any]) -> dict[str, Any]:
    """What the index records of a weight-based part's files: paths, hashes, configs."""
    info: dict[str, Any] = {}
    if spec["kind"] == "hubert":
        info["hubert"] = {"path": spec["folder"], "sha256": checkpoint_sha256(spec["folder"]), "layer": spec["layer"],
                          "config": _config_json(spec["folder"])}
        if spec.get("kmeans"):
            cents, kmeta = load_codebook(spec["kmeans"])
            info["kmeans"] = {"path": spec["kmeans"], "sha256": checkpoint_sha256(spec["kmeans"]), "k": int(len(cents)),
                              "metadata": kmeta}
    elif spec["kind"] == "encodec":
        info["encodec"] = {"path": spec["folder"], "sha256": checkpoint_sha256(spec["folder"]),
                           "config": _config_json(spec["folder"])}
    return info


def build_encoders(backend: str = "hubert+encodec", engine: str = "jax", *, files: PartFiles = NO_FILES,
                   t5: str | None = None, text_max_len: int = 64, threads: int = 0) -> Encoders:
    """The backend `backend` ("SEMANTIC+ACOUSTIC") for `engine`, its weight-based parts reading `files`: HF
    `save_pretrained` folders (either engine) or converted Flax folders (jax)."""
    if engine not in ENGINES:
        raise PrecomputeError(f"engine {engine!r}: choose jax or torch")
    specs = {stream: with_files({"kind": kind}, files, f"backend {backend}")
             for stream, kind in zip(STREAMS, parse_name(backend))}
    # HF -> Flax conversions for the jax engine: read into memory while building, removed after
    with tempfile.TemporaryDirectory(prefix="musicflow_convert_") as tmp_dir:
        return _build_encoders(specs, engine, Path(tmp_dir), t5=t5, text_max_len=text_max_len, threads=threads)


def _build_encoders(specs: dict[str, dict[str, Any]], engine: str, tmp: Path, *, t5: str | None, text_max_len: int,
                    threads: int) -> Encoders:
    if engine == "torch" and threads:
        import torch

        torch.set_num_threads(threads)
    info: dict[str, Any] = {}
    parts = {}
    for stream, spec in specs.items():
        info.update(_provenance(spec))
        build_spec = dict(spec)
        if engine == "jax" and spec["kind"] in ("hubert", "encodec"):
            build_spec["folder"] = str(_converted(spec["folder"], spec["kind"], tmp))
        try:
            parts[stream] = build_part(stream, build_spec, None, engine)
        except (ValueError, OSError) as e:  # wrong layer, codebook of another HuBERT/layer, unreadable folders
            raise PrecomputeError(str(e).splitlines()[0]) from None
        if "folder" in spec:  # the index records the folders as given, not temporary copies
            parts[stream].folder = Path(spec["folder"])
    text, text_dim = None, None
    if t5:
        info["t5"] = {"path": str(t5), "sha256": checkpoint_sha256(t5), "max_len": text_max_len,
                      "config": _config_json(t5)}
        if engine == "torch":
            tt = TorchText(t5, text_max_len)
            text, text_dim = tt, tt.dim
        else:
            folder = _converted(t5, "t5", tmp)
            d_model = int(json.loads((folder / "config.json").read_text())["config"]["d_model"])
            te = TextEncoder.load(TextConfig(checkpoint=str(folder), max_len=text_max_len, dim=d_model))

            def text(captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
                emb, mask = te(list(captions))
                return np.asarray(emb, np.float32), np.asarray(mask)

            text_dim = d_model
    return Encoders(FeatureBackend(parts["semantic"], parts["acoustic"]), text, text_dim, engine, info)


# ----------------------------------------------------------------------------------------- per file


@dataclasses.dataclass
class _File:
    entry: Entry
    audio: dict[int, np.ndarray]  # sample rate -> mono audio
    spans: list[tuple[float, float]]  # segment [start, end) seconds


def _prepare(entry: Entry, rates: tuple[int, int], cut: Segmenting) -> _File | SkipClipError:
    """Load, check and resample one file (runs in the decode pool)."""
    try:
        x, sr = load_audio(entry.path, cut.min_seconds)
    except SkipClipError as e:
        return e
    return _File(entry, {r: resample(x, sr, r) for r in set(rates)},
                 segments(len(x) / sr, cut.seconds, cut.min_seconds, cut.end_aligned))


def _cut(audio: np.ndarray, rate: int, span: tuple[float, float]) -> np.ndarray:
    return audio[int(round(span[0] * rate)): int(round(span[1] * rate))]


def _encode_files(files: list[_File], enc: Encoders, batch_size: int) -> list[list[records.Clip]]:
    """Clips of several files; equal-length segments share device calls (batches of at most batch_size)."""
    be = enc.backend
    r_sem, r_ac = be.semantic.sample_rate, be.acoustic.sample_rate
    segs = [(i, k, span) for i, f in enumerate(files) for k, span in enumerate(f.spans)]
    by_len: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    cut = [(_cut(files[i].audio[r_sem], r_sem, sp), _cut(files[i].audio[r_ac], r_ac, sp)) for i, _, sp in segs]
    for j, (a_sem, a_ac) in enumerate(cut):
        by_len[(len(a_sem), len(a_ac))].append(j)
    out: list[Any] = [None] * len(segs)
    for idx in by_len.values():
        for b in range(0, len(idx), batch_size):
            part = idx[b: b + batch_size]
            h, u = be.encode_semantic_units(np.stack([cut[j][0] for j in part]), r_sem)
            z = be.encode_acoustic(np.stack([cut[j][1] for j in part]), r_ac)
            for n, j in enumerate(part):
                out[j] = (h[n], u[n], z[n])
    emb = mask = None
    if enc.text is not None:
        emb, mask = enc.text([f.entry.caption for f in files])
    clips: list[list[records.Clip]] = [[] for _ in files]
    for j, (i, k, (s0, s1)) in enumerate(segs):
        e = files[i].entry
        h, u, z = out[j]
        clips[i].append(records.Clip(semantic=h, units=u, acoustic=z, caption=e.caption, duration=s1 - s0,
                                     source=e.path, start=s0, clip_id=f"{Path(e.path).stem}#{k}",
                                     t5_emb=None if emb is None else emb[i], t5_mask=None if mask is None else mask[i],
                                     facts=e.facts))
    return clips


def _prepared(entries: list[Entry], enc: Encoders, cut: Segmenting, workers: int) -> Iterator[_File | SkipClipError]:
    """Files decoded in a thread pool, in manifest order, at most 2 * workers ahead."""
    rates = (enc.backend.semantic.sample_rate, enc.backend.acoustic.sample_rate)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        it = iter(entries)
        for e in it:
            pending.append(pool.submit(_prepare, e, rates, cut))
            if len(pending) >= 2 * max(1, workers):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ----------------------------------------------------------------------------------------- shards


@dataclasses.dataclass
class Summary:
    files_ok: int = 0
    clips_ok: int = 0
    skipped: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


def done_marker(out: Path, index: int, count: int) -> Path:
    return out / "_done" / f"shard-{index:05d}-of-{count:05d}.json"


def run_shard(entries: list[Entry], problems: list[Problem], out: Path, index: int, count: int, enc: Encoders,
              cut: Segmenting, *, batch_size: int = 8, workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Encode this shard's entries (entries[index::count]) into per-split shard files; returns its summary."""
    mine = entries[index::count]
    failures = [dataclasses.asdict(p) for p in problems] if index == 0 else []
    writers: dict[str, records.ClipShardWriter] = {}  # one streaming shard file per split
    s = Summary(skipped=len(failures))
    t0 = time.perf_counter()
    group: list[_File] = []

    def flush() -> None:
        try:
            results: list[Any] = _encode_files(group, enc, batch_size)
        except Exception:  # noqa: BLE001 - isolate the failing file: encode one file at a time
            results = []
            for f in group:
                try:
                    results.append(_encode_files([f], enc, batch_size)[0])
                except Exception as err:  # noqa: BLE001 - an encoder crash on one file must not stop the run
                    results.append(err)
        for f, clips in zip(group, results):
            e = f.entry
            if isinstance(clips, Exception):
                failures.append({"where": e.where, "path": e.path,
                                 "reason": f"failed: {type(clips).__name__}: {clips}"})
                s.failed += 1
                continue
            s.files_ok += 1
            s.clips_ok += len(clips)
            s.audio_seconds += sum(c.duration for c in clips)
            if e.split not in writers:
                writers[e.split] = records.ClipShardWriter(out / records.shard_name(e.split, index, count))
            for clip in clips:
                writers[e.split].write(clip)
        group.clear()

    with tqdm(total=len(mine), desc=f"shard {index}/{count}", disable=not progress) as bar:
        for e, f in zip(mine, _prepared(mine, enc, cut, workers)):
            bar.update(1)
            if isinstance(f, SkipClipError):
                failures.append({"where": e.where, "path": e.path, "reason": str(f)})
                s.skipped += 1
                continue
            group.append(f)
            if sum(len(g.spans) for g in group) >= batch_size:
                flush()
        if group:
            flush()
    for w in writers.values():
        w.close()
    s.wall_seconds = time.perf_counter() - t0
    summary = {**dataclasses.asdict(s), "failures": failures, "shard": index, "num_shards": count}
    atomic_io.write_text(done_marker(out, index, count), json.dumps(summary))
    return summary


def shard_lock(out: Path, index: int, count: int) -> Any:
    """One process per shard: a second one is refused naming the owner (a dead owner's lock is taken over)."""

    marker = done_marker(out, index, count)
    marker.parent.mkdir(exist_ok=True)
    try:
        return acquire_file(marker.with_suffix(".lock"), f"shard {index} of {count} in {out}", "precompute process",
                            "run another --shard-index")
    except WorkdirLockedError as e:
        raise PrecomputeError(str(e)) from None


def merge(out: Path, count: int, info: dict[str, Any]) -> dict[str, Any] | None:
    """If all `count` shards are done: write index.json and failures.jsonl, return the totals; else None."""
    markers = [done_marker(out, i, count) for i in range(count)]
    if not all(m.is_file() for m in markers):
        return None
    sums = [json.loads(m.read_text()) for m in markers]
    failures = [f for s in sums for f in s["failures"]]
    atomic_io.write_text(out / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
    totals = {k: sum(s[k] for s in sums) for k in ("files_ok", "clips_ok", "skipped", "failed", "audio_seconds")}
    records.merge_index(out, {**info, "totals": totals, "num_shards": count},
                        pattern=f"*-of-{count:05d}.array_record.json")
    reasons: dict[str, int] = {}
    for f in failures:
        key = f["reason"].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    return {**totals, "reasons": reasons}


# ----------------------------------------------------------------------------------------- the output folder


def fingerprint(manifest: Path, enc: Encoders, settings: dict[str, Any]) -> dict[str, Any]:
    """What produced an output folder: the manifest's bytes, the backend (part settings and encoder hashes, not
    where the files lie), the engine and the segmenting/sharding settings; "id" hashes all of it."""
    backend = {s: {k: v for k, v in spec.items() if k not in ("folder", "kmeans")}
               for s, spec in ((s, enc.backend.to_json()[s]) for s in ("semantic", "acoustic"))}
    fp = {"manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(), "backend": backend,
          "encoders": {k: v.get("sha256") for k, v in sorted(enc.info.items())}, "engine": enc.engine, **settings}
    fp["id"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return fp


def _ours(out: Path) -> list[Path]:
    """The files precompute writes into a folder (and nothing else)."""
    names = ("*.array_record", "*.array_record.json", "*.array_record.tmp", ".*.tmp*", records.INDEX_FILE,
             "failures.jsonl", FINGERPRINT_FILE, "_done/*.json")  # not the shard locks: their owners live on
    return sorted({p for n in names for p in out.glob(n)})


def claim_folder(out: Path, fp: dict[str, Any], overwrite: bool) -> None:
    """Make `out` this run's: reuse it when its fingerprint is this one (resume), clear precompute's files from it
    with `overwrite`, else refuse naming what differs."""
    f = out / FINGERPRINT_FILE
    old = json.loads(f.read_text()) if f.is_file() else None
    stale = _ours(out)
    if old is not None and old.get("id") == fp["id"]:
        return
    if stale and not overwrite:
        differ = [k for k in fp if k != "id" and (old or {}).get(k) != fp[k]] if old else ["unknown (no fingerprint)"]
        raise PrecomputeError(f"--out {out} holds features of another precompute (differs in: {', '.join(differ)}); "
                              "choose a new --out, or pass --overwrite to replace them")
    for p in stale:
        p.unlink(missing_ok=True)
    atomic_io.write_text(f, json.dumps(fp, indent=1))


def precompute(manifest: str | Path, out: str | Path, *, backend: str = "hubert+encodec", files: PartFiles = NO_FILES,
               t5: str | None = None, text_max_len: int = 64, engine: str = "jax", cut: Segmenting = DEFAULT_CUT,
               num_shards: int = 1, shard_index: int | None = None, batch_size: int = 8, workers: int = 2,
               threads: int = 0, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the shard(s) this process owns (all if shard_index is None), then merge if everything is done.
    Returns what ran, with audio seconds per wall second. `out` must be new, hold this very precompute (same
    fingerprint: resume) or be replaced with `overwrite`; a shard another live process is writing is refused."""
    out = Path(out)
    entries, problems = read_manifest(manifest)
    if not entries:
        first = f" (first: {problems[0].where}: {problems[0].reason})" if problems else ""
        raise PrecomputeError(f"manifest {manifest} has no usable lines{first}: fix it or pass another --manifest")
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise PrecomputeError(f"--shard-index {shard_index} is not in [0, {num_shards}): pass 0..{num_shards - 1}")
    if batch_size < 1 or workers < 1:
        raise PrecomputeError(f"batch_size {batch_size} and workers {workers} must be >= 1 (--batch-size, --workers)")
    if num_shards < 1:
        raise PrecomputeError(f"--num-shards {num_shards} must be >= 1")
    if not (cut.seconds > 0 and cut.min_seconds > 0):
        raise PrecomputeError(f"--segment-seconds {cut.seconds} and --min-seconds {cut.min_seconds} must be > 0 "
                              "seconds")
    enc = build_encoders(backend, engine, files=files, t5=t5, text_max_len=text_max_len, threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    claim_folder(out, fingerprint(Path(manifest), enc, {
        "segment_seconds": cut.seconds, "min_seconds": cut.min_seconds, "num_shards": num_shards,
        "text_max_len": text_max_len if t5 else None, **({"end_aligned": True} if cut.end_aligned else {})}), overwrite)
    be = enc.backend
    info = {"backend": be.to_json(), "engine": engine, "rates": be.rates, "dims": {**be.dims, "t5": enc.text_dim},
            "encoders": enc.info, "segment_seconds": cut.seconds, "min_seconds": cut.min_seconds,
            "end_aligned": cut.end_aligned,
            "manifest": str(manifest)}
    mine = range(num_shards) if shard_index is None else [shard_index]
    ran = []
    t0 = time.perf_counter()
    for i in mine:
        if done_marker(out, i, num_shards).is_file():
            ran.append({"shard": i, "skipped_rerun": True})
            continue
        with shard_lock(out, i, num_shards):
            if done_marker(out, i, num_shards).is_file():  # another process finished it while we waited
                ran.append({"shard": i, "skipped_rerun": True})
                continue
            ran.append(run_shard(entries, problems, out, i, num_shards, enc, cut, batch_size=batch_size,
                                 workers=workers, progress=progress))
    wall = time.perf_counter() - t0
    audio = sum(r.get("audio_seconds", 0.0) for r in ran)
    result = {"shards_run": [r["shard"] for r in ran if not r.get("skipped_rerun")],
              "shards_skipped": [r["shard"] for r in ran if r.get("skipped_rerun")],
              "clips_ok": sum(r.get("clips_ok", 0) for r in ran), "skipped": sum(r.get("skipped", 0) for r in ran),
              "failed": sum(r.get("failed", 0) for r in ran), "audio_seconds": round(audio, 2),
              "wall_seconds": round(wall, 2), "audio_s_per_wall_s": round(audio / max(wall, 1e-9), 2),
              "engine": engine}
    result["merged"] = merge(out, num_shards, info)
    return result

"""Evaluate a set of generated clips against a reference set with the weight-free metrics (and the CLAP score when
a CLAP folder is given): per-clip analyses cached by content hash, `results.json` and a markdown table.

Clip sets: a folder of WAVs whose metadata carries the caption (musicflow_jax.generate writes it), or a manifest
(musicflow_jax.manifest: path + caption per line). Per clip (`analyze_clip`, cached in `<cache>/<sha256>.json`,
keyed by the file's bytes and ANALYSIS_VERSION): the caption's key, BPM and instrument; the estimated key, tempo,
note presence and onsets per second; the proxy embedding and the instrument features (musicflow_jax.evaluate.proxy).

results.json (format RESULTS_FORMAT): {"format", "generated": SET, "reference": SET, "fd_proxy": FD(generated,
reference) on the proxy embeddings, "fd_proxy_reference_halves": FD(first half, second half) of the reference (the
real-vs-real row; FD grows as sample counts shrink, so compare it with an FD between sets of that half size),
"instrument_accuracy": share of generated clips whose caption instrument the classifier fitted
on the reference (or on separate classifier clips) predicts (clips whose instrument it lacks are left out), "clap":
mean CLAP or null, "embeddings": {model: metrics} of the embedding models given (musicflow_jax.evaluate.embeddings:
"vggish" {"fad"}, "panns" {"fd", "kl_softmax", "kl_sigmoid", "is_mean", ...}, "ast" {"kl_softmax", ...},
"features" {"fd_semantic", "fd_acoustic", ...}),
"cache_hits": analyses read from the cache, "clips": the generated clips' per-clip values (`clip_rows`)} with
SET = {"n", "seconds", "key_exact", "key_mirex", "key_n", "tempo": {class: share}, "tempo_n", "note_presence",
"onsets_per_second"}; shares over the clips whose caption names the quantity (key_n, tempo_n), null when none does.
Runs of musicflow_jax.evaluate.model add "alignment" (continue / infill / ceiling rows of a manifest with note lists:
means over clips of musicflow_jax.evaluate.model.alignment's same-piece scores, each clip's under clips[i]
["alignment"]; else null) and "run": {mode, checkpoint, manifest, spec, nfe, stage settings, clip
counts, generation / evaluation wall seconds}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.core.audio import read_audio, read_wav_metadata
from musicflow_jax.data.manifest import read_manifest
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.evaluate import music
from musicflow_jax.evaluate.embedders import embedding_metrics
from musicflow_jax.evaluate.embedders.base import EmbedError
from musicflow_jax.evaluate.embedders.clap import ClapScorer
from musicflow_jax.evaluate.frechet import frechet_distance
from musicflow_jax.evaluate.proxy import InstrumentClassifier, instrument_features, parse_instrument, proxy_embedding
from musicflow_jax.utils.atomic_io import write_text

RESULTS_FORMAT = "musicflow_jax.evaluate/1"
ANALYSIS_VERSION = 1  # bump when an estimator changes: cached analyses are then recomputed
MIN_SECONDS = 1.0  # shorter clips hold too few beats for the tempo estimate


class EvaluateError(MusicFlowError):
    """Bad evaluation input; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Clip:
    path: str
    caption: str


def read_entries(path: str | Path, flag: str) -> list[Any]:
    """The entries (musicflow_jax.manifest.Entry) of the manifest given as `--flag`; one-line errors naming it."""
    path = Path(path)
    if not path.is_file():
        raise EvaluateError(f"--{flag} {path} does not exist: give a manifest .jsonl of clips with captions")
    entries, problems = read_manifest(path)
    if problems:
        raise EvaluateError(f"--{flag} {path}: {len(problems)} bad line(s), first {problems[0].where}: "
                            f"{problems[0].reason}")
    return entries


def load_clips(source: str | Path, name: str) -> list[Clip]:
    """Clips of a manifest (.jsonl) or of a folder of WAVs carrying their caption in their metadata."""
    source = Path(source)
    if source.is_dir():
        wavs = sorted(source.glob("*.wav"))
        if not wavs:
            raise EvaluateError(f"--{name} {source}: the folder holds no .wav files; point it at generated WAVs or a "
                                "manifest")
        clips = []
        for w in wavs:
            text = read_wav_metadata(w).get("text")
            if not text:
                raise EvaluateError(f"--{name}: {w} carries no caption in its metadata; write it with "
                                    "musicflow_jax.generate or list the clips and captions in a manifest")
            clips.append(Clip(str(w), text))
        return clips
    if not source.is_file():
        raise EvaluateError(f"--{name} {source} does not exist: give a folder of WAVs or a manifest .jsonl")
    entries = read_entries(source, name)
    if not entries:
        raise EvaluateError(f"--{name} {source} lists no clips")
    return [Clip(e.path, e.caption) for e in entries]


def analyze_clip(path: str | Path, caption: str, cache: Path | None = None) -> dict[str, Any]:
    """The per-clip analysis (see the module docstring), from `cache` when it holds this file's bytes."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise EvaluateError(f"clip {path} cannot be read ({e.strerror}): fix its path or remove its row") from None
    digest = hashlib.sha256(data + f"v{ANALYSIS_VERSION}".encode()).hexdigest()
    hit = cache / f"{digest}.json" if cache is not None else None
    if hit is not None and hit.is_file():
        out = json.loads(hit.read_text())
        return {**out, "caption": caption, "path": str(path), "cached": True}
    x, sr = read_audio(path)
    seconds = x.size / sr
    if seconds < MIN_SECONDS:
        raise EvaluateError(f"{path} is {seconds:.2f} s long: the music metrics need clips of >= {MIN_SECONDS} s")
    key = music.estimate_key(x, sr)
    out = {"seconds": seconds, "key": [key.tonic, key.mode], "tempo": music.estimate_tempo(x, sr),
           "note_presence": music.note_presence(x, sr), "onsets_per_second": music.onsets_per_second(x, sr),
           "proxy": proxy_embedding(x, sr).tolist(), "instrument_features": instrument_features(x, sr).tolist()}
    if hit is not None:

        write_text(hit, json.dumps(out))
    return {**out, "caption": caption, "path": str(path), "cached": False}


def set_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Caption-checked music metrics of analysed clips (see SET in the module docstring)."""
    keys, tempo = [], {c: 0 for c in music.TEMPO_CLASSES}
    for r in rows:
        ref_key, ref_bpm = music.parse_key(r["caption"]), music.parse_bpm(r["caption"])
        if ref_key is not None:
            keys.append(music.mirex_key_score(ref_key, music.Key(*r["key"])))
        if ref_bpm is not None:
            tempo[music.tempo_class(r["tempo"], ref_bpm)] += 1
    n_tempo = sum(tempo.values())
    k = np.asarray(keys)
    return {"n": len(rows), "seconds": round(float(sum(r["seconds"] for r in rows)), 3),
            "key_exact": float(np.mean(k == 1.0)) if k.size else None, "key_mirex": float(k.mean()) if k.size else None,
            "key_n": int(k.size), "tempo": {c: v / n_tempo for c, v in tempo.items()} if n_tempo else None,
            "tempo_n": n_tempo, "note_presence": float(np.mean([r["note_presence"] for r in rows])),
            "onsets_per_second": float(np.mean([r["onsets_per_second"] for r in rows]))}


def clip_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-clip values for paired comparisons (musicflow_jax.evaluate.compare): the key's MIREX score and the tempo
    class against the caption (None when it names none), note presence and onsets per second."""
    out = []
    for r in rows:
        ref_key, ref_bpm = music.parse_key(r["caption"]), music.parse_bpm(r["caption"])
        out.append({"path": r["path"], "caption": r["caption"], "seconds": r["seconds"],
                    "key_mirex": None if ref_key is None else music.mirex_key_score(ref_key, music.Key(*r["key"])),
                    "tempo_class": None if ref_bpm is None else music.tempo_class(r["tempo"], ref_bpm),
                    "note_presence": r["note_presence"], "onsets_per_second": r["onsets_per_second"]})
    return out


def instrument_accuracy(generated: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> float | None:
    """Accuracy on generated clips of the instrument classifier fitted on the reference clips (None when the
    reference names fewer than 2 instruments or no generated caption names one of them)."""
    ref = [(r["instrument_features"], parse_instrument(r["caption"])) for r in reference]
    ref = [(f, y) for f, y in ref if y is not None]
    if len({y for _, y in ref}) < 2:
        return None
    clf = InstrumentClassifier().fit(np.asarray([f for f, _ in ref]), [y for _, y in ref])
    gen = [(g["instrument_features"], parse_instrument(g["caption"])) for g in generated]
    gen = [(f, y) for f, y in gen if y in clf.classes]
    if not gen:
        return None
    return clf.accuracy(np.asarray([f for f, _ in gen]), [y for _, y in gen])


def evaluate(generated: Sequence[Clip], reference: Sequence[Clip], cache: Path | None = None,
             clap_folder: str | Path | None = None, progress: bool = True,
             classifier: Sequence[Clip] | None = None, embedders: Sequence[Any] = ()) -> dict[str, Any]:
    """results.json's dict for two clip sets (see the module docstring). The instrument classifier is fitted on
    `classifier` clips when given (clips in neither set: needed when the generated clips are real or derived from
    the reference, as in musicflow_jax.evaluate.model's reference rows), else on the reference. `embedders`
    (musicflow_jax.evaluate.embeddings) add the model-based metrics under "embeddings"."""
    from tqdm import tqdm


    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    gen = [analyze_clip(c.path, c.caption, cache) for c in tqdm(generated, desc="generated", disable=not progress)]
    ref = [analyze_clip(c.path, c.caption, cache) for c in tqdm(reference, desc="reference", disable=not progress)]
    cls = ref if classifier is None else [analyze_clip(c.path, c.caption, cache)
                                          for c in tqdm(classifier, desc="classifier", disable=not progress)]
    proxy_g, proxy_r = np.asarray([g["proxy"] for g in gen]), np.asarray([r["proxy"] for r in ref])
    half = len(ref) // 2
    out: dict[str, Any] = {
        "format": RESULTS_FORMAT, "generated": set_metrics(gen), "reference": set_metrics(ref),
        "fd_proxy": frechet_distance(proxy_g, proxy_r) if len(gen) >= 2 and len(ref) >= 2 else None,
        "fd_proxy_reference_halves": frechet_distance(proxy_r[:half], proxy_r[half:]) if half >= 2 else None,
        "instrument_accuracy": instrument_accuracy(gen, cls), "clap": None,
        "cache_hits": sum(r["cached"] for r in gen + ref), "clips": clip_rows(gen)}
    if clap_folder is not None:

        scorer = ClapScorer(clap_folder)
        audio = [read_audio(c.path, scorer.sample_rate)[0] for c in generated]
        out["clap"] = scorer.score(audio, [c.caption for c in generated], scorer.sample_rate).score
    try:
        out["embeddings"] = embedding_metrics(embedders, generated, reference, cache, progress)
    except EmbedError as e:
        raise EvaluateError(str(e)) from None
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table: one row per set, then the pairwise numbers."""
    cols = ("n", "seconds", "key_exact", "key_mirex", "tempo within 4%", "note_presence", "onsets_per_second")
    lines = ["| set | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in ("generated", "reference"):
        s = results[name]
        t4 = s["tempo"]["within_4pct"] if s["tempo"] else None
        vals = [s["n"], s["seconds"], s["key_exact"], s["key_mirex"], t4, s["note_presence"], s["onsets_per_second"]]
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in vals) + " |")
    lines += ["", "| FD proxy (generated vs reference) | FD proxy (reference halves) | instrument accuracy | CLAP |",
              "|---|---|---|---|",
              f"| {_fmt(results['fd_proxy'])} | {_fmt(results['fd_proxy_reference_halves'])} | "
              f"{_fmt(results['instrument_accuracy'])} | {_fmt(results['clap'])} |"]
    al = results.get("alignment")
    if al:
        keys = [k for k in al if k != "n"]
        lines += ["", f"| alignment (same piece; n = {al['n']}) | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|", "| mean over clips | " + " | ".join(_fmt(al[k]) for k in keys) + " |"]
    s1 = results.get("stage1_stream")
    if s1:
        lines += ["", "| stage-1 stream (chroma) vs caption | key_exact | key_mirex | key_n | tempo within 4% | "
                  "tempo_n |", "|---|---|---|---|---|---|",
                  *(f"| {name} streams | {_fmt(s1[name]['key_exact'])} | {_fmt(s1[name]['key_mirex'])} | "
                    f"{s1[name]['key_n']} | {_fmt(s1[name]['tempo_within_4pct'])} | {s1[name]['tempo_n']} |"
                    for name in ("generated", "real"))]
    for name, m in results.get("embeddings", {}).items():
        lines += ["", f"| {name} | " + " | ".join(m) + " |", "|---" * (len(m) + 1) + "|",
                  "| generated vs reference | " + " | ".join(_fmt(v) for v in m.values()) + " |"]
    run = results.get("run")
    if run:
        lines += ["", f"run: mode {run['mode']}, {run['spec']['n']} clips of {run['audio_seconds_per_clip']:g} s, NFE "
                  f"{run['nfe'] or '-'}, generation {run['generation_seconds']:.1f} s, evaluation "
                  f"{run['evaluation_seconds']:.1f} s, instrument classifier fitted on {run['classifier_clips']} clips"]
    return "\n".join(lines) + "\n"

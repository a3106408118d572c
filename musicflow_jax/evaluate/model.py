"""Generate from a manifest's captions with a MusicFlow model folder and evaluate in one go, plus the reference rows
that belong beside every model row (`python -m musicflow_jax.evaluate --checkpoint MODEL --manifest M --out DIR`).

Clip selection (fixed, by manifest order): the first `n` entries are the evaluated captions and their real clips
(the reference set); entries [n, 2n) are the second half of the "halves" row; the instrument classifier is fitted
on the entries from 2n on (clips in no evaluated set; `classifier` overrides them). Every clip is cut to the same
window of its source so that all sets compare like with like.

Modes (`EvalSpec.mode`), each written as FLOAT WAVs (caption in the metadata) under `<out>/clips/` and evaluated
by musicflow_jax.evaluate.report against the reference set:
- "generate": text-to-music, `duration` s per caption; reference = the real clips' first `duration` s;
- "continue": the real clip's first `prompt_seconds` s is the prompt, `duration` s in total; the evaluated clip is
  the generated part only, [prompt_seconds, duration), against the same window of the real clip;
- "infill": the real clip's first `duration` s is the prompt and [prompt_seconds, prompt_seconds + infill_seconds)
  is regenerated (everything else kept); the evaluated clip is that region, against the same window of the real clip;
- "ceiling": the backend ceiling, real clips through the model's feature backend,
  `backend.decode(backend.encode_acoustic(audio))` at the backend's sample rate (no flow model involved): no model
  on this backend can beat it. `checkpoint` may also be a backend-only folder (features.json + its part files, e.g.
  written by `python -m musicflow_jax.assemble --semantic S --acoustic A`), to measure a backend - a codec trained
  here - before any flow model exists;
- every row of a model whose semantic stream is chroma (the "chroma" part) also scores the key and the tempo of the
  stage-1 stream itself ("stage1_stream": Krumhansl-Schmuckler on its mean chroma against the caption's key; the
  tempo of its onset envelope, the rises of its chroma and band energies, against the caption's; beside the same
  estimators on the real clips' streams), so a key or tempo lost between stage 1 and the audio shows as the gap;
- "halves": real against real - the first n clips against clips [n, 2n) (same sizes as a model row, so the FD is
  comparable with the model rows').
Captions (`EvalSpec.captions`): "as_written" prompts each entry's own caption; "heldout" prompts the entry's facts
(the manifest's "facts", build_corpus writes them) in musicflow_jax/data/captions.py's held-out wordings, which no
training caption uses: the paraphrase row. Either way the clips are scored against the entry's caption (its key,
tempo and instrument); the prompt given is in each WAV's metadata ("prompt").
Seeds: captions are generated in batches of `batch`; batch k uses seed `seed + k`, so (seed, n, batch) fix the
output. `results["run"]` holds the mode, settings, NFE, clip counts and wall times (generation and evaluation).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.backends import FEATURES_FILE, BackendError, load_backend
from musicflow_jax.backends.chroma import ChromaSemantic
from musicflow_jax.core.audio import read_audio, write_wav
from musicflow_jax.data import captions as caption_words
from musicflow_jax.evaluate import music
from musicflow_jax.evaluate.alignment import AlignmentError, clip_alignment, continuation_scores, seam_discontinuity
from musicflow_jax.evaluate.embedders import build
from musicflow_jax.evaluate.embedders.base import EmbedError
from musicflow_jax.evaluate.report import Clip, EvaluateError, evaluate, load_clips, read_entries
from musicflow_jax.inference.cascade import GenerateError, MusicFlow

MODES = ("generate", "continue", "infill", "ceiling", "halves")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    mode: str = "generate"
    n: int = 32
    duration: float = 4.0
    seed: int = 0
    batch: int = 16
    prompt_seconds: float = 2.0  # "continue": the prompt's length; "infill": the region's start
    infill_seconds: float = 2.0  # "infill": the region's length
    steps: tuple[int | None, int | None] = (None, None)  # per stage; None = the stage's own default
    cfg: tuple[float | None, float | None] = (None, None)
    temperature: tuple[float | None, float | None] = (None, None)
    solver: str | None = None
    captions: str = "as_written"  # | "heldout": the facts in held-out wordings (the paraphrase row)
    turbo: bool = False  # the model folder's few-step students (turbo/) as the stages


def _window(spec: EvalSpec) -> tuple[float, float]:
    """(start, end) seconds of each source clip that the evaluated clips cover."""
    if spec.mode == "continue":
        return spec.prompt_seconds, spec.duration
    if spec.mode == "infill":
        return spec.prompt_seconds, spec.prompt_seconds + spec.infill_seconds
    return 0.0, spec.duration


def read_window(path: str, start: float, end: float, sample_rate: int) -> np.ndarray:
    x, _ = read_audio(path, sample_rate=sample_rate, mono=True)
    a, b = int(round(start * sample_rate)), int(round(end * sample_rate))
    if x.size < b:
        raise EvaluateError(f"{path} is {x.size / sample_rate:.2f} s long: this row needs {end:g} s per clip; use "
                            "longer clips or a shorter --duration")
    return np.asarray(x[a:b], np.float32)


def _write(folder: Path, name: str, audio: np.ndarray, sample_rate: int, caption: str, meta: dict[str, Any]) -> Clip:
    path = write_wav(folder / f"{name}.wav", audio, sample_rate, {"text": caption, **meta}, subtype="FLOAT")
    return Clip(str(path), caption)


def real_clips(entries: list[Any], start: float, end: float, sample_rate: int, folder: Path) -> list[Clip]:
    """The entries' real audio, window [start, end) s at `sample_rate`, written under `folder`."""
    return [_write(folder, f"{i:04d}", read_window(e.path, start, end, sample_rate), sample_rate, e.caption,
                   {"source": e.path, "window": [start, end]}) for i, e in enumerate(entries)]


def ceiling_audio(mf: Any, audio: np.ndarray) -> np.ndarray:
    """Mono audio at the backend's rate through the backend: decode(encode_acoustic(audio)), trimmed to its length."""
    be = mf.backend
    return be.decode(be.encode_acoustic(np.asarray(audio, np.float32)[None]))[0, : audio.shape[-1]]


def prompts(entries: Sequence[Any], captions: str) -> list[str]:
    """The text each entry is generated from: its caption, or ("heldout") its facts in the i-th held-out wording."""
    if captions == "as_written":
        return [e.caption for e in entries]
    if captions != "heldout":
        raise EvaluateError(f"--captions {captions!r} is not one of as_written, heldout")
    missing = [e.where or e.path for e in entries if e.facts is None]
    if missing:
        raise EvaluateError(f"--captions heldout needs each evaluated manifest row's \"facts\" but {missing[0]} has "
                            "none: use a manifest written by python -m musicflow_jax.build_corpus")
    return [caption_words.heldout_caption(e.facts, i) for i, e in enumerate(entries)]


def _settings(mf: Any, spec: EvalSpec) -> tuple[Any, Any]:
    out = []
    for st, steps, cfg, temp in zip(mf.stages, spec.steps, spec.cfg, spec.temperature, strict=True):
        out.append(st.settings.overridden(steps=None if steps is None else int(steps), solver=spec.solver or None,
                                          cfg_scale=None if cfg is None else float(cfg),
                                          temperature=None if temp is None else float(temp)))
    return out[0], out[1]


def generated_clips(mf: Any, entries: list[Any], spec: EvalSpec, folder: Path, progress: bool = True
                    ) -> tuple[list[Clip], dict[str, Any], list[np.ndarray]]:
    """Generate (or pass through the backend, "ceiling") one clip per entry; returns the clips, run facts and, for
    continue / infill, each whole output (prompt included, [0, duration) s)."""
    from tqdm import tqdm

    sr = mf.sample_rate
    s1, s2 = _settings(mf, spec) if spec.mode != "ceiling" else (None, None)
    clips: list[Clip] = []
    full: list[np.ndarray] = []  # continue / infill: the whole output, prompt included (for the seams)
    streams: list[np.ndarray] = []  # generate: each clip's stage-1 stream, denormalised
    nfe: dict[str, int] = {}
    t0 = time.perf_counter()
    said = prompts(entries, spec.captions)
    batches = [list(range(i, min(i + spec.batch, len(entries)))) for i in range(0, len(entries), spec.batch)]
    for k, rows in enumerate(tqdm(batches, desc=spec.mode, disable=not progress)):
        batch, texts = [entries[i] for i in rows], [said[i] for i in rows]
        seed = spec.seed + k
        if spec.mode == "ceiling":
            audio = [ceiling_audio(mf, read_window(e.path, 0.0, spec.duration, sr)) for e in batch]
        elif spec.mode == "generate":
            g = mf.generate(texts, spec.duration, seed=seed, stage1=s1, stage2=s2, progress=False)
            audio, nfe = list(g.audio), g.nfe
            streams += list(mf.backend.denormalize("semantic", g.semantic))
        else:  # continue / infill: one prompt per call (the API takes one prompt clip)
            audio = []
            start, end = _window(spec)
            for j, (e, text) in enumerate(zip(batch, texts)):
                if spec.mode == "continue":
                    prompt = read_window(e.path, 0.0, spec.prompt_seconds, sr)
                    g = mf.continue_([text], prompt, spec.duration, seed=seed * 1000 + j, stage1=s1,
                                     stage2=s2, progress=False)
                else:
                    prompt = read_window(e.path, 0.0, spec.duration, sr)
                    g = mf.infill([text], prompt, [(start, end)], seed=seed * 1000 + j, stage1=s1, stage2=s2,
                                  progress=False)
                full.append(np.asarray(g.audio[0, : int(round(spec.duration * sr))], np.float32))
                audio.append(full[-1][int(round(start * sr)): int(round(end * sr))])
                nfe = g.nfe
        for e, text, x in zip(batch, texts, audio):
            clips.append(_write(folder, f"{len(clips):04d}", np.asarray(x, np.float32), sr, e.caption,
                                {"source": e.path, "seed": seed, "mode": spec.mode, "prompt": text}))
    wall = time.perf_counter() - t0
    info = {"generation_seconds": round(wall, 2), "nfe": nfe, "semantic_streams": streams,
            "stage1": dataclasses.asdict(s1) if s1 is not None else None,
            "stage2": dataclasses.asdict(s2) if s2 is not None else None}
    return clips, info, full


def stream_key(semantic_tc: np.ndarray) -> music.Key:
    """The key of a chroma semantic stream (T, 12 chroma + bands): Krumhansl-Schmuckler on its mean chroma."""
    return music.key_of_chroma(np.asarray(semantic_tc, np.float64)[:, :12].mean(0))


def stream_onsets(semantic_tc: np.ndarray) -> np.ndarray:
    """(T,) onset envelope of a chroma stream (T, 12 chroma + bands): the frame-to-frame rises of its band log
    energies (mean over bands) plus those of its chroma (sum over pitch classes), each scaled to unit spread, so a
    new note shows whether it is louder or only another pitch; frame t is the rise into frame t (0 at t = 0)."""
    x = np.asarray(semantic_tc, np.float64)
    rise = np.maximum(0.0, np.diff(x, axis=0))
    bands, chroma = rise[:, 12:].mean(axis=1), rise[:, :12].sum(axis=1)
    env = bands / (bands.std() + 1e-9) + chroma / (chroma.std() + 1e-9)
    return np.concatenate([[0.0], env])


def stream_tempo(semantic_tc: np.ndarray, frame_rate: float) -> float:
    """The tempo in BPM of a chroma stream: music.tempo_from_envelope on its onset envelope (stream_onsets)."""
    return music.tempo_from_envelope(stream_onsets(semantic_tc), frame_rate)


def stage1_stream_scores(mf: Any, entries: Sequence[Any], streams: Sequence[np.ndarray], reference: Sequence[Clip]
                       ) -> dict[str, Any] | None:
    """Key exact / MIREX and tempo within 4 % of the generated stage-1 streams against the captions' keys and tempi,
    and of the real clips' streams (the backend's encoding of the reference audio) with the same estimators; None
    unless the semantic part is chroma and the row generated streams."""
    if not streams or not isinstance(mf.backend.semantic, ChromaSemantic):
        return None
    real = [mf.backend.encode_semantic(read_audio(c.path, sample_rate=mf.sample_rate)[0][None])[0] for c in reference]
    rate = float(mf.backend.semantic.frame_rate)

    def score(stream_list: Sequence[np.ndarray]) -> dict[str, Any]:
        got = [(music.parse_key(e.caption), stream_key(x)) for e, x in zip(entries, stream_list)]
        k = np.array([music.mirex_key_score(ref, est) for ref, est in got if ref is not None])
        bpm = [(music.parse_bpm(e.caption), x) for e, x in zip(entries, stream_list)]
        t = np.array([music.tempo_class(stream_tempo(x, rate), ref) == "within_4pct" for ref, x in bpm
                      if ref is not None and len(x) >= music.min_envelope_frames(rate)])
        return {"key_exact": float(np.mean(k == 1.0)) if k.size else None,
                "key_mirex": float(k.mean()) if k.size else None, "key_n": int(k.size),
                "tempo_within_4pct": float(t.mean()) if t.size else None, "tempo_n": int(t.size)}

    return {"generated": score(streams), "real": score(real)}


def seams(spec: EvalSpec) -> list[float]:
    """Where generated audio meets given audio, seconds: the prompt's end (continue), both region edges (infill)."""
    start, end = _window(spec)
    return [start] if spec.mode == "continue" else [start, end] if spec.mode == "infill" else []


def alignment(entries: list[Any], clips: list[Clip], full: list[np.ndarray], spec: EvalSpec, sample_rate: int,
              progress: bool = True) -> tuple[dict[str, Any] | None, list[dict[str, float] | None]]:
    """Same-piece scores (musicflow_jax.evaluate.alignment) of continue / infill / ceiling clips against the real
    audio of their window and the score's notes (entries whose manifest line names a note list): the evaluated
    window's chroma similarity and onset F-measure (and the real audio's, the ceiling), and for continue / infill
    the seam discontinuity of the whole output at each seam (mean over the seams) beside the real clip's at the same
    points. Returns (means over clips with np.nanmean + "n", per-clip dicts or None); (None, [None...]) for other
    modes or when no entry names notes."""
    from tqdm import tqdm


    if spec.mode not in ("continue", "infill", "ceiling") or not any(e.notes for e in entries):
        return None, [None] * len(clips)
    start, end = _window(spec)
    a, b = int(round(start * sample_rate)), int(round(end * sample_rate))
    reals = [read_window(e.path, 0.0, max(end, spec.duration), sample_rate) for e in entries]
    per_clip: list[dict[str, float] | None] = []
    for k, (e, c) in enumerate(tqdm(list(zip(entries, clips)), desc="alignment", disable=not progress)):
        if not e.notes:
            per_clip.append(None)
            continue
        real = reals[k]
        try:
            evaluated = read_audio(c.path)[0]
            row = clip_alignment(evaluated, real[a:b], sample_rate, e.notes, start, end)
            if full:
                row["seam"] = float(np.mean([seam_discontinuity(full[k], sample_rate, t) for t in seams(spec)]))
                row["real_seam"] = float(np.mean([seam_discontinuity(real, sample_rate, t) for t in seams(spec)]))
            if spec.mode == "continue":  # the next entry's piece stands in for "another piece"
                other = reals[(k + 1) % len(reals)]
                row.update(continuation_scores(real[:a], evaluated, real[a:b], other[a:b], sample_rate))
                row["real_key_matches_prompt"] = continuation_scores(real[:a], real[a:b], real[a:b], other[a:b],
                                                                     sample_rate)["key_matches_prompt"]
        except AlignmentError as err:
            raise EvaluateError(f"{e.path} (notes {e.notes}): {err}") from None
        per_clip.append(row)
    rows = [r for r in per_clip if r is not None]
    means: dict[str, Any] = {"n": len(rows)}
    for key in rows[0]:
        vals = np.asarray([r[key] for r in rows], np.float64)
        means[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
    if spec.mode == "continue":
        means["pc_real_gt_other_p"] = paired_greater_p([r["pc_vs_real"] for r in rows],
                                                       [r["pc_vs_other"] for r in rows])
    return means, per_clip


def paired_greater_p(x: Sequence[float], y: Sequence[float]) -> float | None:
    """One-sided Wilcoxon signed-rank p-value that x exceeds y (paired, NaN pairs dropped); None below 6 pairs."""
    from scipy.stats import wilcoxon

    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    d = d[np.isfinite(d)]
    if d.size < 6 or not d.any():
        return None
    return float(wilcoxon(d, alternative="greater").pvalue)


@dataclasses.dataclass(frozen=True)
class BackendOnly:
    """A feature backend without flow stages (a folder holding only features.json and its part files): enough for
    the rows that need no generation, "ceiling" (the backend's round trip) and "halves"."""
    backend: Any
    folder: Path

    @property
    def sample_rate(self) -> int:
        return int(self.backend.sample_rate)


def _load(checkpoint: str | Path | None, spec: EvalSpec) -> Any:
    """The MusicFlow model folder (None = bundled), or for ceiling / halves rows also a backend-only folder."""
    folder = Path(checkpoint) if checkpoint is not None else None
    if (spec.mode in ("ceiling", "halves") and folder is not None and (folder / FEATURES_FILE).is_file()
            and not (folder / "stage1.safetensors").is_file()):
        try:
            return BackendOnly(load_backend(folder), folder)
        except BackendError as e:
            raise EvaluateError(f"--checkpoint {folder}: {e}") from None
    try:
        return MusicFlow.load(checkpoint, turbo=spec.turbo)
    except GenerateError as e:
        raise EvaluateError(f"--checkpoint: {e}") from None


def evaluate_model(checkpoint: str | Path | None, manifest: str | Path, out: str | Path, spec: EvalSpec,
                   classifier: str | Path | None = None, clap_folder: str | Path | None = None,
                   progress: bool = True, cache: str | Path | None = None,
                   embedders: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Generate / pass through / select the clips of `spec.mode` (see the module docstring) and evaluate them against
    the reference set; results.json's dict with a "run" section. `embedders`: {name: weights} of the embedding
    models (musicflow_jax.evaluate.embeddings.build); "features": "model" means the evaluated model's backend."""
    if spec.mode not in MODES:
        raise EvaluateError(f"--mode {spec.mode!r}: choose one of {', '.join(MODES)}")
    if spec.n < 2 or spec.batch < 1:
        raise EvaluateError(f"--n {spec.n} / --batch {spec.batch}: evaluate at least 2 clips in batches of >= 1")
    for flag, value in (("duration", spec.duration), ("prompt-seconds", spec.prompt_seconds),
                        ("infill-seconds", spec.infill_seconds)):
        if not math.isfinite(value):
            raise EvaluateError(f"--{flag} {value}: give a finite number of seconds, e.g. --{flag} 4")
    start, end = _window(spec)
    if spec.mode == "continue" and not 0 < spec.prompt_seconds < spec.duration:
        raise EvaluateError(f"--prompt-seconds {spec.prompt_seconds:g} must be in (0, --duration {spec.duration:g})")
    if spec.mode == "infill" and not (spec.prompt_seconds > 0 and end < spec.duration):
        raise EvaluateError(f"--prompt-seconds {spec.prompt_seconds:g} + --infill-seconds {spec.infill_seconds:g} must "
                            f"lie inside (0, --duration {spec.duration:g}): the region needs context on both sides")
    if end - start < 1.0:
        raise EvaluateError(f"the evaluated clips would be {end - start:.2f} s long: the music metrics need >= 1 s")
    entries = read_entries(manifest, "manifest")
    need = 2 * spec.n if spec.mode == "halves" else spec.n
    if len(entries) < need:
        raise EvaluateError(f"--manifest {manifest} lists {len(entries)} clips; --mode {spec.mode} with --n {spec.n} "
                            f"needs {need}")
    prompts(entries[: spec.n], spec.captions)  # a wrong --captions or rows without facts: refused before any work
    mf = _load(checkpoint, spec)
    specs = dict(embedders or {})
    if specs.get("features") == "model":
        specs["features"] = str(mf.folder)
    try:
        models = build(specs)
    except EmbedError as e:
        raise EvaluateError(str(e)) from None
    out = Path(out)
    sr = mf.sample_rate
    t0 = time.perf_counter()
    reference = real_clips(entries[: spec.n], start, end, sr, out / "clips" / "reference")
    full: list[np.ndarray] = []
    if spec.mode == "halves":
        generated = reference
        reference = real_clips(entries[spec.n: 2 * spec.n], start, end, sr, out / "clips" / "second_half")
        info: dict[str, Any] = {"generation_seconds": 0.0, "nfe": {}, "stage1": None, "stage2": None}
    else:
        generated, info, full = generated_clips(mf, entries[: spec.n], spec, out / "clips" / spec.mode, progress)
    streams = info.pop("semantic_streams", [])
    if classifier is not None:
        cls_clips = load_clips(classifier, "classifier")
    else:
        rest = entries[2 * spec.n:]
        cls_clips = real_clips(rest, 0.0, end - start, sr, out / "clips" / "classifier") if rest else []
    t1 = time.perf_counter()
    results = evaluate(generated, reference, cache=Path(cache) if cache else out / "cache", clap_folder=clap_folder,
                       progress=progress, classifier=cls_clips, embedders=models)
    results["alignment"], per_clip = alignment(entries[: spec.n], generated, full, spec, sr, progress)
    for row, al in zip(results["clips"], per_clip):
        row["alignment"] = al
    results["stage1_stream"] = stage1_stream_scores(mf, entries[: spec.n], streams, reference)
    results["run"] = {"mode": spec.mode, "checkpoint": str(mf.folder), "manifest": str(manifest),
                      "spec": dataclasses.asdict(spec), "classifier_clips": len(cls_clips),
                      "audio_seconds_per_clip": round(end - start, 4), **info,
                      "evaluation_seconds": round(time.perf_counter() - t1, 2),
                      "total_seconds": round(time.perf_counter() - t0, 2)}
    return results

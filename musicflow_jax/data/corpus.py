"""Render music21's bundled scores to a captioned 24 kHz mono WAV corpus (no download needed).

Each score gets seeded General MIDI instrument(s) and a tempo (the score's own metronome mark, else a seeded
one), is written to MIDI by music21, rendered by the fluidsynth CLI with a GM soundfont, downmixed to mono,
trimmed, and listed in `manifest.jsonl` ({path, caption, duration, split, notes}) with a caption built from what was
actually used, e.g. "A Bach chorale in G minor at 84 BPM played on a church organ". `notes` names the clip's
ground truth, `notes/<stem>.json`: every note the clip was rendered from, [onset_s, offset_s, midi_pitch,
gm_program], read back from the MIDI file (its tempo map applied) and cut to the rendered length. Scores that fail
are skipped and listed with the reason in `failures.jsonl`. Reruns reuse WAVs already rendered.

    python -m musicflow_jax.build_corpus --out data/corpus --composers bach --limit 200 --seed 0

`--skip N` leaves out the first N scores of the seeded order: `--seed 0 --skip 160` renders only scores that
`--seed 0 --limit 160` (the bundled model's training corpus) did not use - a held-out evaluation corpus.

`--transpositions K` also renders each score transposed by K distinct seeded shifts in -5..+6 semitones (stems
`<stem>_t+3`, ...), each with its own seeded instruments and tempo and the caption of the transposed score's key,
in the original's split: key-balanced training data, since the scores cluster in a few keys. `--jobs J` renders J
scores at a time (fluidsynth and music21 are single-threaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.data.captions import Facts, template_caption
from musicflow_jax.data.manifest import Entry, write_manifest
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.utils.atomic_io import write_text

SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2",
              "/usr/share/sounds/sf2/default-GM.sf2")
# caption name -> GM program (0-based); solo instruments play every part
SOLO = {"a church organ": 19, "a piano": 0, "a harpsichord": 6, "a string ensemble": 48, "a choir": 52,
        "a nylon-string guitar": 24, "a marimba": 12, "an accordion": 21, "a brass section": 61}
# instruments only `--instrument` plays (never drawn, so corpora built before them stay the same): new timbres and
# caption words for fine-tuning subsets
EXTRA_SOLO = {"a kalimba": 108, "a steel drum": 114, "a music box": 10}
# ensembles: one instrument per part, from the top voice down (repeats the last for extra parts)
ENSEMBLES = {
    "a string quartet": (("violin", 40), ("violin", 40), ("viola", 41), ("cello", 42)),
    "a woodwind quartet": (("flute", 73), ("oboe", 68), ("clarinet", 71), ("bassoon", 70)),
    "a brass quartet": (("trumpet", 56), ("trumpet", 56), ("french horn", 60), ("trombone", 57)),
}
GENRE = {"bach": "chorale", "monteverdi": "madrigal", "palestrina": "motet", "beethoven": "string quartet movement",
         "mozart": "classical piece", "haydn": "classical piece", "handel": "baroque piece", "joplin": "ragtime"}


@dataclasses.dataclass(frozen=True)
class Piece:
    score: str  # music21 corpus path
    composer: str
    key: str  # "G minor"
    bpm: int
    instruments: tuple[tuple[str, int], ...]  # (name, GM program) per part, top voice first
    ensemble: str  # caption phrase, e.g. "a church organ" or "a string quartet"
    score_seconds: float  # notated length at bpm
    caption: str
    split: str


class CorpusInputError(MusicFlowError):
    """Bad input (composer, limit, soundfont...), with a one-line message naming it and the fix."""


def _rng_for(seed: int, score: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{score}".encode()).digest()[:8], "little"))


def list_scores(composers: list[str], limit: int | None, seed: int) -> list[tuple[str, str]]:
    """(corpus path, composer) pairs, seeded order, at most `limit`."""
    from music21 import corpus

    if limit is not None and limit < 0:
        raise CorpusInputError(f"--limit must be >= 0 (0 = all scores), got {limit}")
    items = []
    for c in composers:
        found = [(str(p), c) for p in sorted(corpus.getComposer(c)) if str(p).endswith((".mxl", ".xml", ".krn"))]
        if not found:
            raise CorpusInputError(f"--composers: music21's corpus has no scores for composer {c!r}: use names such "
                                   f"as {', '.join(sorted(GENRE))}")
        items += found
    random.Random(seed).shuffle(items)
    return items[:limit] if limit else items


TRANSPOSE_RANGE = tuple(k for k in range(-5, 7) if k)  # semitones: every pitch class once


def transpositions(seed: int, score: str, count: int) -> list[int]:
    """The first `count` of a seeded order of TRANSPOSE_RANGE for this score (0 = none)."""
    if not 0 <= count <= len(TRANSPOSE_RANGE):
        raise CorpusInputError(f"--transpositions must be in 0..{len(TRANSPOSE_RANGE)}, got {count}")
    shifts = list(TRANSPOSE_RANGE)
    _rng_for(seed, f"{Path(score).name}:transpose").shuffle(shifts)
    return shifts[:count]


def prepare(score_path: str, composer: str, seed: int, valid_frac: float, test_frac: float, midi_out: Path,
            transpose: int = 0, split: str | None = None, instrument_name: str | None = None) -> Piece:
    """Parse, choose instruments/tempo, write MIDI; return the piece description (raises on bad scores). A
    transposed copy (`transpose` semitones) draws its instruments and tempo from its own seed and takes `split`
    (its original's). `instrument_name` (a SOLO or ENSEMBLES caption name) replaces the seeded instrument draw (the
    draw still happens, so tempo and split stay those of the unrestricted corpus)."""
    from music21 import converter, instrument, stream, tempo
    from music21 import key as key_module

    s = converter.parse(score_path)
    if not isinstance(s, stream.Score) or not s.parts:
        raise ValueError(f"not a single multi-part score ({type(s).__name__})")
    if transpose:
        s = s.transpose(transpose)
        # a transposed key signature can need 8 sharps (G# major), which MIDI readers refuse; playback needs none
        for ks in list(s.recurse().getElementsByClass(key_module.KeySignature)):
            ks.activeSite.remove(ks)
    name = Path(score_path).name
    rng = _rng_for(seed, f"{name}:t{transpose:+d}" if transpose else name)
    marks = list(s.recurse().getElementsByClass(tempo.MetronomeMark))
    qpm = next((m.getQuarterBPM() for m in marks if m.getQuarterBPM()), None)
    bpm = int(round(qpm)) if qpm else rng.randrange(60, 121)
    for m in marks:
        m.activeSite.remove(m)
    s.parts[0].insert(0, tempo.MetronomeMark(number=bpm))
    if rng.random() < 0.6:
        ensemble = rng.choice(sorted(SOLO))
        name = ensemble.split(" ", 1)[1]
        chosen = tuple((name, SOLO[ensemble]) for _ in s.parts)
    else:
        ensemble = rng.choice(sorted(ENSEMBLES))
        voices = ENSEMBLES[ensemble]
        chosen = tuple(voices[min(i, len(voices) - 1)] for i in range(len(s.parts)))
    if instrument_name:
        ensemble = instrument_name
        program = {**SOLO, **EXTRA_SOLO}.get(instrument_name)
        voices = ENSEMBLES.get(instrument_name) or ((instrument_name.split(" ", 1)[1], program),)
        chosen = tuple(voices[min(i, len(voices) - 1)] for i in range(len(s.parts)))
    for part, (_, program) in zip(s.parts, chosen):
        for inst in list(part.recurse().getElementsByClass(instrument.Instrument)):
            inst.activeSite.remove(inst)
        part.insert(0, instrument.instrumentFromMidiProgram(program))
    key = s.analyze("key")
    key_name = f"{key.tonic.name.replace('-', ' flat').replace('#', ' sharp')} {key.mode}"
    try:  # music21's MIDI export plays repeats, so the heard length is that of the expanded score
        played = float(s.expandRepeats().highestTime)
    except Exception:  # noqa: BLE001 - inconsistent repeat marks: exported as written
        played = float(s.highestTime)
    score_seconds = played * 60.0 / bpm
    s.write("midi", fp=str(midi_out))
    genre = GENRE.get(composer, "piece")
    caption = template_caption(Facts(composer, genre, key_name, bpm, ensemble))
    u = rng.random()
    if split is None:
        split = "test" if u < test_frac else "valid" if u < test_frac + valid_frac else "train"
    return Piece(score_path, composer, key_name, bpm, chosen, ensemble, score_seconds, caption, split)


RENDER_SLACK_S = 30.0  # release tails and reverb past the MIDI's last note-off
RENDER_TIMEOUT_S = 600.0


def render(midi: Path, wav_out: Path, soundfont: str, sample_rate: int = 24_000, gain: float = 0.6,
           max_seconds: float = 0.0, tail_seconds: float = 0.5) -> float:
    """fluidsynth MIDI -> mono float WAV at `sample_rate`, trailing silence cut to `tail_seconds`. Returns seconds."""
    import pretty_midi
    import soundfile as sf

    # fluidsynth can keep writing long after the score ends (a voice that never releases: bwv299 wrote GBs);
    # stop it once its output outgrows the score + RENDER_SLACK_S as 32-bit stereo, or after RENDER_TIMEOUT_S
    limit = int((pretty_midi.PrettyMIDI(str(midi)).get_end_time() + RENDER_SLACK_S) * sample_rate * 2 * 4) + (1 << 20)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        log = Path(tmp) / "stderr.txt"
        with open(log, "w") as err_f:
            proc = subprocess.Popen(["fluidsynth", "-ni", "-g", str(gain), "-r", str(sample_rate), "-F", str(raw),
                                     soundfont, str(midi)], stdout=subprocess.DEVNULL, stderr=err_f)
        t0 = time.monotonic()
        while proc.poll() is None:
            size = raw.stat().st_size if raw.is_file() else 0
            if size > limit or time.monotonic() - t0 > RENDER_TIMEOUT_S:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"fluidsynth was still writing after {size >> 20} MiB / "
                                   f"{time.monotonic() - t0:.0f} s, far past the score's end: stopped")
            time.sleep(0.1)
        err = log.read_text(errors="replace")
        if proc.returncode != 0 or not raw.is_file():
            raise RuntimeError(f"fluidsynth failed ({proc.returncode}): {err.strip()[-300:]}")
        x, sr = sf.read(str(raw), dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise RuntimeError(f"fluidsynth wrote {sr} Hz, asked for {sample_rate}")
    x = x.mean(1)
    loud = np.flatnonzero(np.abs(x) > 1e-3)
    if not len(loud):
        raise RuntimeError("rendered audio is silent")
    x = x[: min(len(x), loud[-1] + 1 + int(tail_seconds * sample_rate))]
    if max_seconds > 0:
        x = x[: int(max_seconds * sample_rate)]
    peak = float(np.abs(x).max())
    x = x * (0.89 / peak) if peak > 0.89 else x  # keep clear of clipping, never amplify noise
    tmp_out = wav_out.with_name(wav_out.name + ".tmp.wav")
    sf.write(str(tmp_out), x, sample_rate, subtype="PCM_16")
    tmp_out.replace(wav_out)
    return len(x) / sample_rate


def midi_notes(midi: Path, seconds: float) -> list[list[float | int]]:
    """[onset_s, offset_s, midi_pitch, gm_program] of every pitched note of a MIDI file (times through its tempo map,
    by pretty_midi), sorted by onset, pitch, program; notes starting less than 1 ms before `seconds` (the rendered
    clip's length; MIDI ticks round a note on the cut to just before it) are left out and offsets are cut to it."""
    import pretty_midi

    out: list[list[float | int]] = []
    for inst in pretty_midi.PrettyMIDI(str(midi)).instruments:
        if inst.is_drum:
            continue
        for n in inst.notes:
            if n.start < seconds - 1e-3:
                out.append([round(float(n.start), 6), round(float(min(n.end, seconds)), 6), int(n.pitch),
                            int(inst.program)])
    return sorted(out, key=lambda r: (r[0], r[2], r[3]))


def _find_soundfont(soundfont: str | None) -> str:
    """The given soundfont (which must exist: no silent fallback), else the first installed default."""
    if soundfont is not None:
        if not Path(soundfont).is_file():
            raise CorpusInputError(f"--soundfont {soundfont!r} is not a file: pass a General MIDI .sf2 file, or omit "
                                   f"--soundfont to use the first of {', '.join(SOUNDFONTS)}")
        with open(soundfont, "rb") as f:
            head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"sfbk":  # fluidsynth would fall back to its default silently
            raise CorpusInputError(f"--soundfont {soundfont!r} is not a SoundFont 2 file (no RIFF/sfbk header): pass "
                                   "a General MIDI .sf2 file")
        return soundfont
    for sf2 in SOUNDFONTS:
        if Path(sf2).is_file():
            return sf2
    raise CorpusInputError(f"no General MIDI soundfont at {SOUNDFONTS}: apt-get install timgm6mb-soundfont "
                            "(see .ci/setup_env.sh) or pass --soundfont")


def render_score(out: Path, score: str, composer: str, seed: int, sf2: str, sample_rate: int, max_seconds: float,
                 valid_frac: float, test_frac: float, n_transpositions: int, instrument_name: str | None = None
                 ) -> list[dict[str, Any]]:
    """Render one score and its transposed copies into `out`; one dict per rendering: {"entry", "piece"} or
    {"failure"}. A failed original takes its copies with it (they need its split)."""
    import soundfile as sf

    results: list[dict[str, Any]] = []
    split = None
    for shift in [0, *transpositions(seed, score, n_transpositions)]:
        stem = f"{composer}_{Path(score).stem}".replace(" ", "_") + (f"_t{shift:+d}" if shift else "")
        wav, mid = out / "audio" / f"{stem}.wav", out / "midi" / f"{stem}.mid"
        notes = out / "notes" / f"{stem}.json"
        try:
            piece = prepare(score, composer, seed, valid_frac, test_frac, mid, transpose=shift, split=split,
                            instrument_name=instrument_name)
            if wav.is_file():  # rerun: same seed gives the same MIDI, keep the audio
                seconds = sf.info(str(wav)).duration
            else:
                seconds = render(mid, wav, sf2, sample_rate, max_seconds=max_seconds)
            write_text(notes, json.dumps(midi_notes(mid, seconds)) + "\n")
        except Exception as e:  # noqa: BLE001 - any score/export/render problem skips that score
            label = score if not shift else f"{score} (transposed {shift:+d})"
            results.append({"failure": {"score": label, "reason": f"{type(e).__name__}: {e}"[:500]}})
            if not shift:
                break
            continue
        split = piece.split
        facts = Facts(piece.composer, GENRE.get(piece.composer, "piece"), piece.key, piece.bpm, piece.ensemble)
        results.append({"entry": Entry(str(wav), piece.caption, piece.split, seconds, notes=str(notes), facts=facts),
                        "piece": {**dataclasses.asdict(piece), "transpose": shift, "wav": str(wav.relative_to(out)),
                                  "seconds": seconds, "notes": str(notes.relative_to(out))}})
    return results


def check_settings(*, composers: Sequence[str], limit: int | None, skip: int, transpositions_per_score: int,
                   jobs: int, sample_rate: int, max_seconds: float, valid_frac: float, test_frac: float,
                   instrument: str | None) -> None:
    """Every setting of `build_corpus` in range, before any work (messages name the command-line flags)."""
    if not composers:
        raise CorpusInputError("--composers names no composer: pass e.g. --composers bach,handel")
    if limit is not None and limit < 0:
        raise CorpusInputError(f"--limit must be >= 0 (0 = all scores), got {limit}")
    if skip < 0:
        raise CorpusInputError(f"--skip must be >= 0, got {skip}")
    if not 0 <= transpositions_per_score <= len(TRANSPOSE_RANGE):
        raise CorpusInputError(f"--transpositions must be in 0..{len(TRANSPOSE_RANGE)}, got {transpositions_per_score}")
    if jobs < 1:
        raise CorpusInputError(f"--jobs must be >= 1, got {jobs}")
    if sample_rate <= 0:
        raise CorpusInputError(f"--sample-rate must be > 0 Hz, got {sample_rate}")
    if not max_seconds >= 0:
        raise CorpusInputError(f"--max-seconds must be >= 0 (0 = no cut), got {max_seconds}")
    for flag, frac in (("--valid-frac", valid_frac), ("--test-frac", test_frac)):
        if not 0.0 <= frac < 1.0:
            raise CorpusInputError(f"{flag} must be in [0, 1), got {frac}")
    if valid_frac + test_frac >= 1.0:
        raise CorpusInputError(f"--valid-frac + --test-frac must be < 1 to leave training data, got "
                               f"{valid_frac} + {test_frac}")
    check_instrument(instrument)


def build_corpus(out: str | Path, *, composers: str | Sequence[str] = ("bach",), limit: int | None = None,
                 seed: int = 0, sample_rate: int = 24_000, soundfont: str | None = None, max_seconds: float = 0.0,
                 valid_frac: float = 0.05, test_frac: float = 0.05, skip: int = 0, transpositions_per_score: int = 0,
                 jobs: int = 1, progress: bool = True, instrument: str | None = None) -> dict[str, Any]:
    """Render scores (and `transpositions_per_score` transposed copies of each) into `out`/audio (notes/ beside it),
    `jobs` scores at a time; write `out`/manifest.jsonl, pieces.jsonl and failures.jsonl in the seeded score order;
    return a summary. `instrument`: every score played on this one (a caption name of SOLO or ENSEMBLES), e.g. a
    fine-tuning subset."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    if shutil.which("fluidsynth") is None:
        raise CorpusInputError("fluidsynth CLI not found: apt-get install fluidsynth (see .ci/setup_env.sh)")
    given = composers
    composers = tuple(c.strip() for c in composers.split(",") if c.strip()) if isinstance(composers, str) else \
        tuple(composers)
    if not composers:
        raise CorpusInputError(f"--composers {given!r} names no composer: pass e.g. --composers bach,handel")
    check_settings(composers=composers, limit=limit, skip=skip, transpositions_per_score=transpositions_per_score,
                   jobs=jobs, sample_rate=sample_rate, max_seconds=max_seconds, valid_frac=valid_frac,
                   test_frac=test_frac, instrument=instrument)
    sf2 = _find_soundfont(soundfont)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CorpusInputError(f"--out {out} is a file, not a folder: give a folder for the corpus")
    # an unknown composer is refused before anything is written; `skip` drops the head of the seeded order
    scores = list_scores(list(composers), limit + skip if limit else None, seed)[skip:]
    try:
        for sub in ("audio", "midi", "notes"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusInputError(f"--out {out} cannot be written ({e.strerror}): pick a writable folder") from None
    args = [(out, score, composer, seed, sf2, sample_rate, max_seconds, valid_frac, test_frac,
             transpositions_per_score, instrument) for score, composer in scores]
    t0 = time.perf_counter()
    bar = tqdm(total=len(scores), desc="render", disable=not progress)
    if jobs == 1:
        per_score = []
        for a in args:
            per_score.append(render_score(*a))
            bar.update(1)
    else:
        import multiprocessing

        # spawned, not forked: the caller may hold JAX / BLAS threads that a fork would copy mid-flight
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(render_score, *a) for a in args]
            for f in futures:
                f.exception()
                bar.update(1)
            per_score = [f.result() for f in futures]
    bar.close()
    results = [r for rs in per_score for r in rs]
    entries = [r["entry"] for r in results if "entry" in r]
    pieces = [r["piece"] for r in results if "piece" in r]
    failures = [r["failure"] for r in results if "failure" in r]
    audio_s = sum(p["seconds"] for p in pieces)
    wall = time.perf_counter() - t0
    write_manifest(out / "manifest.jsonl", entries)
    (out / "pieces.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pieces))
    (out / "failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in failures))
    summary = {"ok": len(entries), "skipped": len(failures), "audio_seconds": round(audio_s, 2),
               "wall_seconds": round(wall, 2), "audio_s_per_wall_s": round(audio_s / max(wall, 1e-9), 2),
               "soundfont": sf2, "manifest": str(out / "manifest.jsonl")}
    return summary


def check_instrument(name: str | None) -> None:
    known = sorted(SOLO) + sorted(ENSEMBLES) + sorted(EXTRA_SOLO)
    if name and name not in known:
        raise CorpusInputError(f"--instrument {name!r} is not one of the corpus instruments: pass one of "
                               f"{', '.join(repr(n) for n in known)}")

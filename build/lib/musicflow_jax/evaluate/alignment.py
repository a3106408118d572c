"""Alignment metrics for continuation, infilling and codec round trips: the evaluated audio is the same piece as a
reference, a window [start_s, end_s) of a rendered score, and is judged against the real audio of that window AND
the score's ground-truth notes (musicflow_jax/data/corpus.py's `notes/<stem>.json`: [[onset_s, offset_s, midi_pitch,
gm_program], ...], `musicflow_jax.data.manifest.Entry.notes`).

Conventions shared by every function:
- times: `start_s`, `end_s` (and `seam_s`) are in the note list's time base (seconds from the start of the real
  clip); the audio passed in is the audio of the window, its sample 0 at `start_s`. Audio must cover the window:
  more than WINDOW_SLACK_S short is an error, a shortfall within it is zero-padded, a surplus is cut off;
- mono or (channels, samples) audio, any sample rate (the front ends resample or scale with the rate);
- chroma frames are `music.chroma`'s (the ChromaSemantic part with 110 Hz - 1 kHz: 16 kHz, n_fft 2048, hop 320 ->
  CHROMA_RATE = 50 frames/s, frame t centred on [t / 50, (t + 1) / 50) s of the window, ceil(seconds * 50) frames,
  each frame's 12 pitch-class energies summing to ~1);
- a score quantity that does not exist in the window (no note sounding, no onset) gives NaN, not 0: average with
  np.nanmean;
- bad input raises `AlignmentError` (a ValueError) with a one-line message naming the input and the fix.

Metrics (measured on rendered Bach chorales in tests/test_evaluate_alignment.py):
- `note_chroma`: the score's chroma, each frame the pitch classes of the notes sounding in it weighted by the share
  of the frame they sound ("count": octave doublings add up; "binary": presence), normalised to sum 1;
- `chroma_similarity`: mean over the reference's content frames of the frame-wise cosine between the audio's
  chroma and the reference chroma (a `note_chroma`, or real audio's chroma). No time-lag search: a shifted or
  transposed rendition scores lower by design. Audio frames quieter than SILENCE_DB count as zero chroma (cosine
  0), so silence where the reference sounds is penalised; reference frames quieter than SILENCE_DB (audio) or with
  no note (notes) are left out. Rendered chorales against their own notes: 0.73-0.89 (release tails, overtones and
  the 128-ms analysis window keep it below 1); notes transposed a semitone ~0.22, shifted by 1 s ~0.44;
- `onset_f_vs_notes`: F-measure, precision, recall of `music.detect_onsets` against the score's distinct onset
  times in the window (onsets closer than ONSET_MERGE_S merged into the first), +-`window` s, one-to-one matching
  as mir_eval.onset.f_measure. Onsets within `edge_s` (default `window`) of either end of the window are dropped
  on both sides: audio cut mid-note starts and ends with a detected "onset" that no score onset explains. Rendered
  chorales: F 0.65-1.0 (legato woodwind / brass lowest, recall-limited); notes shifted off the beat grid ~0;
- `seam_discontinuity`: novelty at the seam against novelty elsewhere. Novelty at a frame boundary b = the RMS over
  the 64 bands of the difference between the mean spectral envelopes (`envelope_db`: `proxy.log_mel_db`, 100
  frames/s, floored 80 dB below the clip's peak, smoothed to its first 13 cepstral coefficients) of the
  `context_s` (0.25 s) after and the `context_s` before b, in dB. Score = (novelty at the seam + floor_db) / (median
  novelty at the boundaries at least `context_s` away from the seam + floor_db), floor_db 0.5 dB: ~1 for a cut as
  smooth as the rest of the clip (a real clip cut anywhere: median 1.0, 90th percentile 1.6-1.8 on rendered
  chorales; a stationary tone, where both novelties are ~0 and the floor makes the ratio 1), clearly above 1 when
  level, timbre or register jump at the seam (two different pieces spliced: median 3.4-3.9, 10th percentile
  2.0-2.3). Context means of the envelope, not frame-to-frame flux of the full spectrum: a seam on a note onset or
  chord change of the same piece is ordinary music, not a discontinuity. One real cut onto a rest or fermata can
  still score as high as a splice: compare means over clips, and against `real_seam` (the real audio cut at the
  same point);
- `pitch_class_profile` / `profile_similarity`: a window's pitch-class distribution (mean chroma over its sounding
  frames, unit norm) and the cosine of two of them - harmony and key without timing, what a continuation should
  carry on from its prompt (`continuation_scores`: the continuation's profile against the true continuation's and
  against another piece's, and whether its key (`music.key_scores` on the profile) is the prompt's);
- `clip_alignment`: all of these for one clip, a flat dict of floats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from musicflow_jax.backends.stft import frames
from musicflow_jax.core.audio import resample
from musicflow_jax.evaluate import music
from musicflow_jax.evaluate.proxy import log_mel_db

CHROMA_RATE = 50.0  # music.chroma frames per second (16 kHz / hop 320)
ONSET_MERGE_S = 0.03  # score onsets closer than this are one onset
WINDOW_SLACK_S = 0.01  # audio may fall this much short of the window (zero-padded)
SILENCE_DB = music.SILENCE_DB  # chroma frames quieter than this (mean square over the frame's window) hold nothing
SEAM_CONTEXT_S = 0.25
SEAM_CEPSTRA = 13
SEAM_FLOOR_DB = 0.5
WEIGHTINGS = ("count", "binary")

Notes = str | Path | Sequence[Sequence[float]] | np.ndarray  # a note list JSON path, or its rows


class AlignmentError(music.MusicMetricError):
    """Input an alignment metric cannot use; the message names the input and the fix."""


# ----------------------------------------------------------------------------------------- inputs


def parse_notes(notes: Notes) -> np.ndarray:
    """(N, 4) float64 [onset_s, offset_s, midi_pitch, gm_program] rows of a note list: a JSON file path (as
    build_corpus writes them) or the rows themselves. An empty list is valid (N = 0)."""
    where = "notes"
    if isinstance(notes, (str, Path)):
        where = f"notes file {notes}"
        try:
            notes = json.loads(Path(notes).read_text())
        except OSError as e:
            raise AlignmentError(f"{where} cannot be read ({type(e).__name__}): give the path of a note list JSON "
                                 "(python -m musicflow_jax.build_corpus notes/<stem>.json)") from None
        except json.JSONDecodeError as e:
            raise AlignmentError(f"{where} is not JSON ({e.msg} at line {e.lineno}): write it as "
                                 "[[onset_s, offset_s, midi_pitch, gm_program], ...]") from None
    try:
        a = np.asarray(notes, np.float64)
    except (TypeError, ValueError):
        raise AlignmentError(f"{where}: rows are not all numbers of the same length; give "
                             "[[onset_s, offset_s, midi_pitch, gm_program], ...]") from None
    if a.size == 0:
        return np.zeros((0, 4))
    if a.ndim != 2 or a.shape[1] != 4:
        raise AlignmentError(f"{where}: expected rows [onset_s, offset_s, midi_pitch, gm_program], got an array of "
                             f"shape {a.shape}")
    bad = ~np.isfinite(a).all(1) | (a[:, 0] < 0) | (a[:, 1] < a[:, 0]) | (a[:, 2] < 0) | (a[:, 2] > 127) \
        | (a[:, 2] != np.round(a[:, 2]))
    if bad.any():
        i = int(np.argmax(bad))
        raise AlignmentError(f"{where}: row {i} {a[i].tolist()} is not a note (need 0 <= onset <= offset, finite, "
                             "an integer MIDI pitch 0-127); fix or drop it")
    return a


def _window_seconds(start_s: float, end_s: float) -> float:
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0 or end_s <= start_s:
        raise AlignmentError(f"window [{start_s}, {end_s}) s is empty or invalid: give 0 <= start_s < end_s")
    return float(end_s - start_s)


def _window_audio(audio: np.ndarray, sample_rate: int, seconds: float, name: str = "audio") -> np.ndarray:
    """The audio's first `seconds` (mono float32), zero-padded by at most WINDOW_SLACK_S."""
    if sample_rate <= 0:
        raise AlignmentError(f"{name}: sample rate must be > 0 Hz, got {sample_rate}")
    x = music._mono(audio, name)
    n = int(round(seconds * sample_rate))
    if x.size < n - WINDOW_SLACK_S * sample_rate:
        raise AlignmentError(f"{name} is {x.size / sample_rate:.3f} s long, shorter than the {seconds:.3f} s window: "
                             "pass audio covering the whole window (sample 0 at start_s) or shorten the window")
    return np.pad(x[:n], (0, max(0, n - x.size)))


def _n_frames(seconds: float, rate: float) -> int:
    return max(1, int(math.ceil(seconds * rate - 1e-6)))


# ----------------------------------------------------------------------------------------- chroma


def note_chroma(notes: Notes, start_s: float, end_s: float, frame_rate: float = CHROMA_RATE,
                weighting: str = "count", normalize: bool = True) -> np.ndarray:
    """(ceil((end_s - start_s) * frame_rate), 12) ground-truth chroma of the window: frame t covers
    [start_s + t / frame_rate, start_s + (t + 1) / frame_rate); each note adds the share of the frame it sounds
    (0..1, [onset, offset) clipped to the frame) to its pitch class (MIDI pitch mod 12, 0 = C). weighting "count"
    sums the notes (a doubled pitch class weighs more), "binary" takes the largest share. normalize: each frame
    with a note is scaled to sum 1 (as `music.chroma`); frames with no note stay all zero."""
    seconds = _window_seconds(start_s, end_s)
    if weighting not in WEIGHTINGS:
        raise AlignmentError(f"weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
    if not frame_rate > 0:
        raise AlignmentError(f"frame_rate must be > 0 frames/s, got {frame_rate}")
    a = parse_notes(notes)
    T = _n_frames(seconds, frame_rate)
    out = np.zeros((T, 12))
    edges = np.arange(T + 1) / frame_rate
    for on, off, pitch, _ in a:
        on, off = on - start_s, min(off, end_s) - start_s
        if off <= 0 or on >= seconds or off <= on:
            continue
        lo, hi = max(0, int(np.floor(on * frame_rate))), min(T, int(np.ceil(off * frame_rate)))
        share = (np.minimum(off, edges[lo + 1: hi + 1]) - np.maximum(on, edges[lo:hi])) * frame_rate
        col = out[lo:hi, int(pitch) % 12]
        out[lo:hi, int(pitch) % 12] = col + share if weighting == "count" else np.maximum(col, share)
    if normalize:
        s = out.sum(1, keepdims=True)
        out = np.where(s > 0, out / np.where(s > 0, s, 1.0), 0.0)
    return out


def frame_level_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(T,) level in dB re full scale (mean square under the frame's Hann window) of `music.chroma`'s frames, same
    grid: 16 kHz, n_fft 2048, hop 320, frame t's window starting at t * 320 - 864 samples (zero padding)."""
    cfg = music.KEY_CHROMA
    x = resample(music._mono(audio, "audio"), sample_rate, cfg.sample_rate).astype(np.float64)
    w = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)) ** 2
    ms = frames(x**2, cfg.n_fft, cfg.hop_length) @ (w / w.sum())
    return 10.0 * np.log10(np.maximum(ms, 1e-20))


def audio_chroma(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """((T, 12) `music.chroma`, (T,) bool: the frame is louder than SILENCE_DB) at CHROMA_RATE frames/s."""
    x = music._mono(audio, "audio")
    c = music.chroma(x, sample_rate)
    level = frame_level_db(x, sample_rate)
    n = min(len(c), len(level))
    return c[:n], level[:n] > SILENCE_DB


def pitch_class_profile(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(12,) mean `music.chroma` over the sounding frames (louder than SILENCE_DB), unit L2 norm; zeros when no
    frame sounds."""
    c, sounding = audio_chroma(audio, sample_rate)
    if not sounding.any():
        return np.zeros(12)
    p = c[sounding].astype(np.float64).mean(axis=0)
    return p / max(float(np.linalg.norm(p)), 1e-12)


def profile_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two pitch-class profiles (1 = same distribution); NaN when either is all zero."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else float("nan")


def profile_key(profile: np.ndarray) -> music.Key:
    """The key whose profile (music.DEFAULT_PROFILE) correlates best with a pitch-class profile."""
    i = int(np.argmax(music.key_scores(np.asarray(profile, np.float64))))
    return music.Key(i % 12, music.MODES[i // 12])


def continuation_scores(prompt: np.ndarray, continuation: np.ndarray, true_continuation: np.ndarray,
                        other_piece: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Does a continuation carry on its prompt's piece? key_matches_prompt: 1.0 when the key estimated on the
    continuation is the one estimated on the prompt; pc_vs_real / pc_vs_other: `profile_similarity` of the
    continuation's pitch-class profile with the true continuation's / another piece's (same window)."""
    p, c = pitch_class_profile(prompt, sample_rate), pitch_class_profile(continuation, sample_rate)
    return {"key_matches_prompt": float(profile_key(p) == profile_key(c)) if p.any() and c.any() else float("nan"),
            "pc_vs_real": profile_similarity(c, pitch_class_profile(true_continuation, sample_rate)),
            "pc_vs_other": profile_similarity(c, pitch_class_profile(other_piece, sample_rate))}


def chroma_similarity(audio: np.ndarray, sample_rate: int, reference: np.ndarray,
                      reference_sample_rate: int | None = None) -> float:
    """Mean frame-wise cosine between the audio's chroma and the reference's, over the reference's content frames.

    reference: with `reference_sample_rate` None, a (T, 12) chroma at CHROMA_RATE frames/s, frame 0 at the audio's
    start (`note_chroma`); content frames are those with a nonzero row. Otherwise reference audio at that rate,
    same start as `audio`; content frames are those louder than SILENCE_DB. The audio must cover the reference's T
    frames (within WINDOW_SLACK_S; longer audio is cut). Audio frames quieter than SILENCE_DB count as zero chroma
    (cosine 0). Range [0, 1]: 1 = same pitch-class distribution in every content frame; NaN when the reference has
    no content frame."""
    if reference_sample_rate is None:
        ref = np.asarray(reference, np.float64)
        if ref.ndim != 2 or ref.shape[1] != 12 or ref.shape[0] == 0 or not np.isfinite(ref).all():
            raise AlignmentError(f"reference chroma: expected a finite (frames, 12) array, got shape {ref.shape}; "
                                 "pass reference_sample_rate when the reference is audio")
        if (ref < 0).any():
            raise AlignmentError("reference chroma has negative entries: give pitch-class energies (note_chroma)")
        content = ref.sum(1) > 0
    else:
        ref_x = music._mono(reference, "reference audio")
        ref, content = audio_chroma(ref_x, reference_sample_rate)
        ref = ref.astype(np.float64)
    T = ref.shape[0]
    x = _window_audio(audio, sample_rate, T / CHROMA_RATE if reference_sample_rate is None
                      else ref_x.size / reference_sample_rate)
    a, sounding = audio_chroma(x, sample_rate)
    a = np.where(sounding[:, None], a.astype(np.float64), 0.0)
    n = min(T, a.shape[0])
    a, ref, content = a[:n], ref[:n], content[:n]
    if not content.any():
        return float("nan")
    na, nr = np.linalg.norm(a, axis=1), np.linalg.norm(ref, axis=1)
    cos = np.where(na > 0, (a * ref).sum(1) / np.maximum(na * nr, 1e-30), 0.0)
    return float(cos[content].mean())


# ----------------------------------------------------------------------------------------- onsets


def score_onsets(notes: Notes, start_s: float, end_s: float, merge_s: float = ONSET_MERGE_S) -> np.ndarray:
    """Sorted distinct onset times (s, relative to start_s) of the notes starting in [start_s, end_s); an onset
    within `merge_s` after the first onset of its group joins that group (chords rolled by MIDI rounding, voices a
    few ms apart) and the group keeps its first time."""
    _window_seconds(start_s, end_s)
    a = parse_notes(notes)
    on = np.unique(a[(a[:, 0] >= start_s) & (a[:, 0] < end_s), 0]) - start_s
    out: list[float] = []
    for t in on:
        if not out or t - out[-1] > merge_s:
            out.append(float(t))
    return np.asarray(out)


def onset_f_vs_notes(audio: np.ndarray, sample_rate: int, notes: Notes, start_s: float, end_s: float,
                     window: float = 0.05, merge_s: float = ONSET_MERGE_S,
                     edge_s: float | None = None) -> tuple[float, float, float]:
    """(F, precision, recall) of `music.detect_onsets` on the window's audio against `score_onsets` (+-`window` s,
    each score onset matched to at most one detection, mir_eval.onset.f_measure's rule). Onsets within `edge_s`
    (default `window`) of either end of the window are dropped on both sides: audio cut mid-note starts and ends
    with a detected "onset" that no score onset explains. NaN x 3 when the score has no onset in the rest of the
    window."""
    seconds = _window_seconds(start_s, end_s)
    if not window > 0:
        raise AlignmentError(f"onset window must be > 0 s, got {window}")
    x = _window_audio(audio, sample_rate, seconds)
    edge = window if edge_s is None else edge_s
    ref = score_onsets(notes, start_s, end_s, merge_s)
    ref = ref[(ref >= edge) & (ref <= seconds - edge)]
    if ref.size == 0:
        return float("nan"), float("nan"), float("nan")
    est = music.detect_onsets(x, sample_rate)
    est = est[(est >= edge) & (est <= seconds - edge)]
    return music.onset_f_measure(ref, est, window)


# ----------------------------------------------------------------------------------------- seams


def envelope_db(audio: np.ndarray, sample_rate: int, n_cepstra: int = SEAM_CEPSTRA) -> np.ndarray:
    """(T, 64) spectral envelope in dB at 100 frames/s: `proxy.log_mel_db` (64 HTK bands 30 Hz - 8 kHz, floored 80
    dB below the clip's peak) smoothed along frequency by keeping its first `n_cepstra` cepstral coefficients
    (orthonormal DCT-II, i.e. MFCC 0..n_cepstra - 1, and back): level, brightness and timbre, not the pitches."""
    from scipy.fft import dct, idct


    c = dct(log_mel_db(music._mono(audio, "audio"), sample_rate), type=2, norm="ortho", axis=1)
    c[:, n_cepstra:] = 0.0
    return idct(c, type=2, norm="ortho", axis=1)


def novelty(audio: np.ndarray, sample_rate: int, context_s: float = SEAM_CONTEXT_S) -> np.ndarray:
    """(T + 1,) novelty at every frame boundary b (between envelope frames b - 1 and b, i.e. at b / 100 s): RMS over
    the 64 bands of mean(`envelope_db` frames [b, b + c)) - mean(frames [b - c, b)), c = round(context_s * 100),
    in dB; NaN where either side would leave the clip."""
    db = envelope_db(audio, sample_rate)
    c = int(round(context_s * music.ONSET_RATE))
    if c < 1:
        raise AlignmentError(f"context_s must be >= {1 / music.ONSET_RATE} s, got {context_s}")
    T = db.shape[0]
    cs = np.concatenate([np.zeros((1, db.shape[1])), np.cumsum(db, axis=0)])
    out = np.full(T + 1, np.nan)
    b = np.arange(c, T - c + 1)
    if b.size:
        diff = (cs[b + c] - cs[b]) / c - (cs[b] - cs[b - c]) / c
        out[b] = np.sqrt(np.mean(diff**2, axis=1))
    return out


def seam_discontinuity(audio: np.ndarray, sample_rate: int, seam_s: float, context_s: float = SEAM_CONTEXT_S,
                       floor_db: float = SEAM_FLOOR_DB) -> float:
    """How audible a seam at `seam_s` (s from the audio's start) is: (novelty at the seam + floor_db) / (median
    novelty at the boundaries >= context_s away from it + floor_db) (see the module docstring). ~1: as smooth as
    the rest of the clip; a real clip cut anywhere scores ~1, two different pieces spliced several times that.
    The audio needs `context_s` on both sides of the seam and at least as much again elsewhere."""
    x = music._mono(audio, "audio")
    seconds = x.size / sample_rate
    nov = novelty(x, sample_rate, context_s)
    c = int(round(context_s * music.ONSET_RATE))
    b = int(round(seam_s * music.ONSET_RATE))
    if not (math.isfinite(seam_s) and 0 <= b < nov.size and np.isfinite(nov[b])):
        raise AlignmentError(f"seam at {seam_s} s needs {context_s} s of audio on both sides, the audio is "
                             f"{seconds:.3f} s long: move the seam or pass a longer clip")
    idx = np.arange(nov.size)
    rest = nov[(np.abs(idx - b) >= c) & np.isfinite(nov)]
    if rest.size < c:
        raise AlignmentError(f"seam at {seam_s} s: the {seconds:.3f} s audio leaves too little clip away from the "
                             f"seam to compare with (need ~{4 * context_s:.2f} s + the seam's context); pass a "
                             "longer clip or a shorter context_s")
    return float((nov[b] + floor_db) / (np.median(rest) + floor_db))


# ----------------------------------------------------------------------------------------- per clip


def clip_alignment(evaluated: np.ndarray, real: np.ndarray, sample_rate: int, notes: Notes, start_s: float,
                   end_s: float, seam_s: float | None = None, real_sample_rate: int | None = None,
                   onset_window: float = 0.05) -> dict[str, float]:
    """Alignment metrics of one evaluated clip against the real audio of the same window and the score's notes.

    evaluated, real: audio of the window [start_s, end_s) (sample 0 at start_s; real at `real_sample_rate`,
    default `sample_rate`). seam_s: where the evaluated audio joins given material (the prompt's end in a
    continuation, a gap edge in infilling), in the notes' time base, inside the window. Returns floats (NaN where
    the score has nothing to compare in the window):
    chroma_vs_notes, chroma_vs_real (`chroma_similarity`); onset_f, onset_precision, onset_recall
    (`onset_f_vs_notes`); the real audio's own scores as the ceiling: real_chroma_vs_notes, real_onset_f,
    real_onset_precision, real_onset_recall; with seam_s: seam (`seam_discontinuity` of the evaluated audio) and
    real_seam (the real audio cut at the same point)."""
    seconds = _window_seconds(start_s, end_s)
    if seam_s is not None and not start_s < seam_s < end_s:
        raise AlignmentError(f"seam_s {seam_s} is outside the window [{start_s}, {end_s}): give the seam in the "
                             "notes' time base")
    rsr = sample_rate if real_sample_rate is None else real_sample_rate
    x = _window_audio(evaluated, sample_rate, seconds, "evaluated audio")
    r = _window_audio(real, rsr, seconds, "real audio")
    notes = parse_notes(notes)  # once: a path is read here
    ref = note_chroma(notes, start_s, end_s)
    out: dict[str, float] = {"chroma_vs_notes": chroma_similarity(x, sample_rate, ref),
                             "chroma_vs_real": chroma_similarity(x, sample_rate, r, rsr),
                             "real_chroma_vs_notes": chroma_similarity(r, rsr, ref)}
    for prefix, y, sr in (("", x, sample_rate), ("real_", r, rsr)):
        f, p, rc = onset_f_vs_notes(y, sr, notes, start_s, end_s, onset_window)
        out.update({f"{prefix}onset_f": f, f"{prefix}onset_precision": p, f"{prefix}onset_recall": rc})
    if seam_s is not None:
        out["seam"] = seam_discontinuity(x, sample_rate, seam_s - start_s)
        out["real_seam"] = seam_discontinuity(r, rsr, seam_s - start_s)
    return out

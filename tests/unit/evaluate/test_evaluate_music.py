"""Weight-free music estimators (musicflow_jax.evaluate.music / proxy) on synthesised audio with known answers, the
MIREX key score against mir_eval, and the caption parsers against what musicflow_jax/data/corpus.py writes."""

from __future__ import annotations

import mir_eval
import numpy as np
import pytest

from musicflow_jax.evaluate import music as M
from musicflow_jax.evaluate.proxy import (
    PROXY_DIM,
    InstrumentClassifier,
    instrument_features,
    parse_instrument,
    proxy_embedding,
)

SR = 24_000


def tone(midi: int, dur: float, harmonics: int = 6, decay: float = 3.0, square: bool = False) -> np.ndarray:
    """A harmonic tone (partials 1/k, or odd partials only for square) with a 5-ms attack and exponential decay."""
    t = np.arange(int(dur * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    ks = range(1, 2 * harmonics, 2) if square else range(1, harmonics + 1)
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in ks if k * f0 < SR / 2)
    return x * np.exp(-decay * t) * np.minimum(1.0, t / 0.005)


def sequence(events: list[tuple[float, float, list[int]]], total: float, **kw) -> np.ndarray:
    out = np.zeros(int(total * SR))
    for onset, dur, pitches in events:
        s = int(onset * SR)
        for p in pitches:
            y = tone(p, dur, **kw)[: out.size - s]
            out[s: s + y.size] += y
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def scale_and_cadence(tonic: int, minor: bool, beat: float = 0.5) -> tuple[np.ndarray, list[float]]:
    """Ascending scale (harmonic minor) in quarter notes, then I - IV (iv) - V - I with the bass doubled below.
    Returns (audio, onset times)."""
    steps = [0, 2, 3, 5, 7, 8, 11, 12] if minor else [0, 2, 4, 5, 7, 9, 11, 12]
    events = [(i * beat, beat, [tonic + s]) for i, s in enumerate(steps)]
    third, sixth = (3, 8) if minor else (4, 9)
    t0 = len(steps) * beat
    for i, chord in enumerate([[0, third, 7], [5, sixth, 12], [7, 11, 14], [0, third, 7]]):
        events.append((t0 + 2 * i * beat, 2 * beat, [tonic - 12 + c for c in chord] + [tonic - 24 + chord[0]]))
    return sequence(events, t0 + 8 * beat + 0.5), [e[0] for e in events]


def click_track(bpm: float, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(int(seconds * SR), np.float32)
    n = np.arange(240)
    for b in np.arange(0.0, seconds - 0.02, 60.0 / bpm):
        s = int(b * SR)
        x[s: s + 240] += (0.5 * rng.normal(size=240) * np.exp(-n / 40)).astype(np.float32)
    return x


def test_key_finder_on_synthesised_cadences() -> None:
    for profile in M.PROFILES:
        assert M.estimate_key(scale_and_cadence(60, False)[0], SR, profile) == M.Key(0, "major"), profile
        assert M.estimate_key(scale_and_cadence(57, True)[0], SR, profile) == M.Key(9, "minor"), profile
        assert M.estimate_key(scale_and_cadence(62, False)[0], SR, profile) == M.Key(2, "major"), profile
        assert M.estimate_key(scale_and_cadence(58, True)[0], SR, profile) == M.Key(10, "minor"), profile


def test_key_scores_are_profile_correlations() -> None:
    """A pitch-class distribution equal to the C major profile correlates 1 with C major; rotating it by 7 moves
    the maximum to G major."""
    major = np.asarray(M.PROFILES["krumhansl"][0])
    s = M.key_scores(major, "krumhansl")
    assert s[0] == pytest.approx(1.0) and np.argmax(s) == 0
    assert np.argmax(M.key_scores(np.roll(major, 7), "krumhansl")) == 7
    minor = np.asarray(M.PROFILES["krumhansl"][1])
    assert np.argmax(M.key_scores(np.roll(minor, 9), "krumhansl")) == 12 + 9  # A minor
    with pytest.raises(M.MusicMetricError, match="choose one of krumhansl, aarden, temperley"):
        M.key_scores(major, "bach")


def test_mirex_score_hand_checked_and_equal_to_mir_eval() -> None:
    C, Am, G, Cm, Em = M.Key(0, "major"), M.Key(9, "minor"), M.Key(7, "major"), M.Key(0, "minor"), M.Key(4, "minor")
    assert M.mirex_key_score(C, C) == 1.0
    assert M.mirex_key_score(C, G) == 0.5  # a fifth above
    assert M.mirex_key_score(G, C) == 0.0  # a fifth below earns nothing
    assert M.mirex_key_score(C, Am) == 0.3 and M.mirex_key_score(Am, C) == 0.3  # relative
    assert M.mirex_key_score(C, Cm) == 0.2 and M.mirex_key_score(Cm, C) == 0.2  # parallel
    assert M.mirex_key_score(Am, Em) == 0.5 and M.mirex_key_score(C, Em) == 0.0
    keys = [M.Key(t, m) for m in M.MODES for t in range(12)]
    for ref in keys:
        for est in keys:
            want = mir_eval.key.weighted_score(ref.mir_eval_name(), est.mir_eval_name())
            assert M.mirex_key_score(ref, est) == want, (ref, est)


def test_caption_parsers() -> None:
    cap = "A Bach chorale in B flat major at 84 BPM played on a church organ"
    assert M.parse_key(cap) == M.Key(10, "major") and M.parse_bpm(cap) == 84.0
    assert parse_instrument(cap) == "a church organ"
    assert M.parse_key("A Bach chorale in F sharp minor at 60 BPM") == M.Key(6, "minor")
    assert M.parse_key("in C flat major") == M.Key(11, "major") and M.parse_key("in E sharp minor") == M.Key(5, "minor")
    assert M.parse_key("in G minor") == M.Key(7, "minor") and str(M.Key(10, "minor")) == "B flat minor"
    assert M.parse_key("An upbeat jazz tune") is None and M.parse_bpm("no tempo") is None
    assert parse_instrument("A chorale") is None


def test_tempo_of_click_tracks() -> None:
    assert M.estimate_tempo(click_track(120, 10), SR) == pytest.approx(120, rel=0.04)
    for bpm in (60, 84, 100, 140):
        assert M.tempo_class(M.estimate_tempo(click_track(bpm, 12, seed=bpm), SR), bpm) == "within_4pct", bpm
    # the synthesised scale + cadence moves in quarter notes of 0.5 s
    assert M.estimate_tempo(scale_and_cadence(60, False)[0], SR) == pytest.approx(120, rel=0.04)


def test_tempo_classes() -> None:
    assert M.tempo_class(123.0, 120) == "within_4pct" and M.tempo_class(128.0, 120) == "within_8pct"
    assert M.tempo_class(241.0, 120) == "double" and M.tempo_class(59.0, 120) == "half"
    assert M.tempo_class(90.0, 120) == "other"
    with pytest.raises(M.MusicMetricError, match="must be > 0"):
        M.tempo_class(0.0, 120)
    with pytest.raises(M.MusicMetricError, match="at least 0.8 s"):
        M.estimate_tempo(np.zeros(SR // 10, np.float32), SR)
    # silence has no tempo (a generated clip can be silent; it was a ZeroDivisionError): NaN, counted as "other"
    silent = M.estimate_tempo(np.zeros(4 * SR, np.float32), SR)
    assert np.isnan(silent) and M.tempo_class(silent, 120) == "other"


def test_note_presence_and_onsets_separate_notes_from_noise() -> None:
    noise = (0.1 * np.random.default_rng(0).normal(size=5 * SR)).astype(np.float32)
    melody, onsets = scale_and_cadence(60, False)
    assert M.note_presence(noise, SR) < 0.02
    assert M.note_presence(melody, SR) > 0.9
    assert M.note_presence(np.zeros(SR, np.float32), SR) == 0.0  # silence holds no notes
    assert M.onsets_per_second(noise, SR) == 0.0
    f, p, r = M.onset_f_measure(np.asarray(onsets), M.detect_onsets(melody, SR))
    assert f >= 0.95, (f, p, r)
    assert M.onsets_per_second(melody, SR) == pytest.approx(len(onsets) / (melody.size / SR), rel=0.1)


def test_onset_f_measure_equals_mir_eval() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        ref = np.sort(rng.uniform(0, 10, rng.integers(1, 40)))
        est = np.sort(np.concatenate([ref[rng.random(ref.size) < 0.7] + rng.normal(0, 0.04, size=None),
                                      rng.uniform(0, 10, rng.integers(0, 10))]))
        ours = M.onset_f_measure(ref, est)
        theirs = mir_eval.onset.f_measure(ref, est, window=0.05)
        np.testing.assert_allclose(ours, theirs, atol=1e-12)
    assert M.onset_f_measure(np.array([1.0]), np.array([])) == (0.0, 0.0, 0.0)


def test_proxy_embedding_and_instrument_classifier() -> None:
    melody, _ = scale_and_cadence(60, False)
    e = proxy_embedding(melody, SR)
    assert e.shape == (PROXY_DIM,) and np.isfinite(e).all()
    # its onset block holds this clip's onset rate and note presence
    assert e[194] == pytest.approx(M.onsets_per_second(melody, SR)) and e[196] == M.note_presence(melody, SR)
    # two synthetic timbres (all harmonics vs odd harmonics = square-ish) over random melodies: held-out clips of
    # each are told apart by the classifier fitted on other clips
    rng = np.random.default_rng(0)

    def clip(square: bool) -> np.ndarray:
        pitches = rng.integers(55, 72, 8)
        return sequence([(0.25 * i, 0.3, [int(p)]) for i, p in enumerate(pitches)], 2.5, square=square, harmonics=8)

    feats = np.stack([instrument_features(clip(sq), SR) for sq in [False, True] * 12])
    labels = np.asarray(["full", "odd"] * 12)
    clf = InstrumentClassifier().fit(feats[:16], labels[:16])
    assert clf.classes == ["full", "odd"] and clf.accuracy(feats[16:], labels[16:]) == 1.0
    with pytest.raises(ValueError, match="at least 2 instruments"):
        InstrumentClassifier().fit(feats[:4:2], labels[:4:2])


def test_instrument_classifier_equals_the_sklearn_pipeline() -> None:
    """InstrumentClassifier (what tests/e2e/test_bundled.py classifies generated audio with) makes scikit-learn's
    StandardScaler + LogisticRegression(C=0.1) predictions on the bundled corpus features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from musicflow_jax.inference.model_folder import BUNDLED

    pair = ("a string quartet", "a harpsichord")
    d = np.load(BUNDLED / "corpus_features.npz")
    x, y = d["mean_acoustic"], d["instrument"]
    m = np.isin(y, pair)
    ours = InstrumentClassifier().fit(x[m], y[m])
    theirs = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1)).fit(x[m], y[m])
    np.testing.assert_array_equal(ours.predict(x), theirs.predict(x))
    assert ours.accuracy(x[m], y[m]) == float(theirs.score(x[m], y[m])) > 0.95

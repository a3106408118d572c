"""The rendered music21 corpus (fluidsynth) and manifest reading (ours + audiocraft-style)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.cli import build_corpus as build_corpus_cli
from musicflow_jax.data import corpus as bc
from musicflow_jax.data import manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    assert shutil.which("fluidsynth") and any(Path(p).is_file() for p in bc.SOUNDFONTS), \
        "fluidsynth + a GM soundfont are needed: run .ci/setup_env.sh (apt-get install fluidsynth timgm6mb-soundfont)"
    out = tmp_path_factory.mktemp("corpus")
    real = bc.list_scores(["bach"], 3, seed=1)
    orig = bc.list_scores
    bc.list_scores = lambda composers, limit, seed: real + [("/nonexistent/score.mxl", "bach")]
    try:
        summary = bc.build_corpus(out, seed=1, max_seconds=0, progress=False)
    finally:
        bc.list_scores = orig
    return out, summary


def test_render_matches_scores_and_captions(corpus):
    import pretty_midi
    import soundfile as sf
    from music21 import converter

    out, summary = corpus
    assert summary["ok"] == 3 and summary["skipped"] == 1
    fails = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert fails[0]["score"] == "/nonexistent/score.mxl" and fails[0]["reason"]
    entries, problems = manifest.read_manifest(out / "manifest.jsonl")
    pieces = [json.loads(x) for x in (out / "pieces.jsonl").read_text().splitlines()]
    assert not problems and len(entries) == len(pieces) == 3
    for e, p in zip(entries, pieces):
        info = sf.info(e.path)
        assert (info.samplerate, info.channels) == (24_000, 1)
        x, _ = sf.read(e.path)
        assert np.sqrt(np.mean(x**2)) > 1e-3  # not silent
        # duration = notated length (repeats played) at the captioned tempo, + the release and a 0.5 s tail
        assert p["score_seconds"] - 1.0 < info.duration < p["score_seconds"] + 2.0, (info.duration, p)
        assert abs(e.duration - info.duration) < 1e-3
        # caption names the key music21 finds in the original score, the tempo and the instruments actually used
        key = converter.parse(p["score"]).analyze("key")
        assert f"in {key.tonic.name.replace('-', ' flat').replace('#', ' sharp')} {key.mode}" in e.caption
        assert f"at {p['bpm']} BPM" in e.caption and e.caption.endswith(p["ensemble"])
        midi = pretty_midi.PrettyMIDI(str(out / "midi" / (Path(e.path).stem + ".mid")))
        programs = [i.program for i in midi.instruments if i.notes]
        assert programs == [prog for _, prog in p["instruments"]]
        want = bc.SOLO.get(p["ensemble"])
        if want is not None:
            assert set(programs) == {want}
        else:
            assert programs == [bc.ENSEMBLES[p["ensemble"]][min(i, 3)][1] for i in range(len(programs))]
        assert abs(midi.get_end_time() - p["score_seconds"]) < 0.05
        tempi = midi.get_tempo_changes()[1]
        np.testing.assert_allclose(tempi, p["bpm"], rtol=1e-3)
    assert summary["audio_s_per_wall_s"] > 0


def test_rerun_is_deterministic_and_reuses_audio(corpus, tmp_path):
    out, _ = corpus
    before = (out / "manifest.jsonl").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "audio").glob("*.wav")}
    real = bc.list_scores(["bach"], 3, seed=1)
    orig = bc.list_scores
    bc.list_scores = lambda composers, limit, seed: real
    try:
        summary = bc.build_corpus(out, seed=1, progress=False)
    finally:
        bc.list_scores = orig
    assert summary["ok"] == 3 and summary["skipped"] == 0
    assert (out / "manifest.jsonl").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in (out / "audio").glob("*.wav")} == mtimes


def test_manifest_forms_and_bad_lines(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "b.wav").write_bytes(b"")
    (tmp_path / "b.json").write_text(json.dumps({"description": "Upbeat jazz with a walking bass", "bpm": 120}))
    (tmp_path / "c.json").write_text(json.dumps({"genre": "rock", "key": "E minor", "bpm": 140, "moods": ["angry"]}))
    lines = [
        json.dumps({"path": "a.wav", "caption": " A chorale ", "duration": 3.5, "split": "valid"}),
        json.dumps({"path": "b.wav", "duration": 10.0, "sample_rate": 32000, "amplitude": None}),  # audiocraft
        json.dumps({"path": str(tmp_path / "c.wav"), "duration": 1.0, "sample_rate": 44100}),
        "{not json",
        json.dumps({"path": "d.wav", "caption": 42}),
        json.dumps({"path": "e.wav", "duration": 1.0}),  # audiocraft-style, no sidecar
        json.dumps(["path"]),
        json.dumps({"caption": "no path"}),
        json.dumps({"path": "f.wav", "caption": "x", "split": "dev"}),
        "",
        json.dumps({"path": "g.wav", "caption": "x", "duration": -3.0}),  # issue 26: were accepted silently
        json.dumps({"path": "g.wav", "caption": "x", "duration": 0}),
        json.dumps({"path": "./a.wav", "caption": "A chorale", "split": "train"}),  # line 1's clip and caption again
        json.dumps({"path": "a.wav", "caption": "another caption of a.wav"}),  # the same audio, another caption: kept
    ]
    mf = tmp_path / "m.jsonl"
    mf.write_text("\n".join(lines) + "\n")
    entries, problems = manifest.read_manifest(mf)
    assert [(Path(e.path).name, e.caption, e.split, e.duration) for e in entries] == [
        ("a.wav", "A chorale", "valid", 3.5),
        ("b.wav", "Upbeat jazz with a walking bass", "train", 10.0),
        ("c.wav", "angry rock music in E minor at 140 BPM", "train", 1.0),
        ("a.wav", "another caption of a.wav", "train", None),
    ]
    assert entries[0].path == str(tmp_path / "a.wav") and entries[0].where == f"{mf}:1"
    got = {p.where.rsplit(":", 1)[1]: p.reason for p in problems}
    assert got.keys() == {"4", "5", "6", "7", "8", "9", "11", "12", "13"}
    assert "duration must be a positive number of seconds, got -3.0" in got["11"] and "got 0" in got["12"]
    assert got["13"] == f"duplicate of {mf}:1 (same audio and caption): remove one of the two lines"
    assert "not JSON" in got["4"] and "caption is not a string" in got["5"] and "no audiocraft" in got["6"]
    assert "not an object" in got["7"] and "no 'path'" in got["8"] and "split 'dev'" in got["9"]
    manifest.write_manifest(tmp_path / "out.jsonl", entries)
    again, none = manifest.read_manifest(tmp_path / "out.jsonl")
    assert not none and [(e.path, e.caption, e.split, e.duration) for e in again] == [
        (e.path, e.caption, e.split, e.duration) for e in entries]


def test_skip_leaves_out_the_head_of_the_seeded_order(tmp_path, monkeypatch):
    """--skip N renders the scores after the first N of the seeded order (a held-out set: --seed 0 --skip 160 is
    disjoint from the bundled model's --seed 0 --limit 160 corpus)."""
    import soundfile as sf

    def fake_render(midi, wav_out, soundfont, sample_rate=24_000, **kw):
        sf.write(str(wav_out), np.full(sample_rate, 0.1, np.float32), sample_rate, subtype="PCM_16")
        return 1.0

    monkeypatch.setattr(bc, "render", fake_render)
    order = bc.list_scores(["bach"], 5, seed=4)
    summary = bc.build_corpus(tmp_path / "c", seed=4, limit=2, skip=3, progress=False)
    pieces = [json.loads(x) for x in (tmp_path / "c" / "pieces.jsonl").read_text().splitlines()]
    assert summary["ok"] + summary["skipped"] == 2
    done = [p["score"] for p in pieces] + [json.loads(x)["score"] for x in
                                           (tmp_path / "c" / "failures.jsonl").read_text().splitlines()]
    assert sorted(done) == sorted(s for s, _ in order[3:5])
    assert build_corpus_cli.main(["--out", str(tmp_path / "d"), "--skip", "-1"]) == 2


def test_render_stops_fluidsynth_writing_past_the_score(corpus, tmp_path, monkeypatch):
    """A runaway render (fluidsynth kept writing GBs for bwv299) is stopped once its output outgrows the score's
    length + RENDER_SLACK_S: here the slack is set so that the limit is 1 MiB, which a real render of these scores
    exceeds within the first second."""
    import pretty_midi

    out, _ = corpus
    midi = sorted((out / "midi").glob("*.mid"))[0]
    end = pretty_midi.PrettyMIDI(str(midi)).get_end_time()
    monkeypatch.setattr(bc, "RENDER_SLACK_S", -end)
    soundfont = next(p for p in bc.SOUNDFONTS if Path(p).is_file())
    with pytest.raises(RuntimeError, match="still writing after"):
        bc.render(midi, tmp_path / "x.wav", soundfont)
    assert not (tmp_path / "x.wav").exists()


def test_transposed_copies_follow_the_shift_and_jobs_change_nothing(tmp_path):
    """--transpositions K: each score is also rendered K times, shifted by distinct seeded semitones; the notes are
    the original's shifted by exactly that many semitones, the caption names music21's key of the transposed score,
    every copy keeps the original's split. bwv248.28 shifted by +6 (G# major: 8 sharps, which MIDI readers refuse)
    renders. Two render jobs write the same manifest and notes as one."""
    from music21 import converter

    score = next(p for p, _ in bc.list_scores(["bach"], None, seed=0) if p.endswith("bwv248.28.mxl"))
    shifts = bc.transpositions(0, score, 3)
    assert len(set(shifts)) == 3 and 0 not in shifts and all(-5 <= k <= 6 for k in shifts)
    assert 6 in bc.transpositions(0, score, 2)  # the 8-sharp case is among the rendered ones
    orig = bc.list_scores
    bc.list_scores = lambda composers, limit, seed: [(score, "bach"), *[
        (p, "bach") for p, _ in orig(["bach"], 2, seed=0)]]
    try:
        one = bc.build_corpus(tmp_path / "one", seed=0, max_seconds=3.0, transpositions_per_score=2, progress=False)
        two = bc.build_corpus(tmp_path / "two", seed=0, max_seconds=3.0, transpositions_per_score=2, jobs=2,
                              progress=False)
    finally:
        bc.list_scores = orig
    assert one["ok"] == two["ok"] == 9 and one["skipped"] == two["skipped"] == 0
    pieces = [json.loads(x) for x in (tmp_path / "one" / "pieces.jsonl").read_text().splitlines()]
    base = pieces[0]
    assert [p["transpose"] for p in pieces[:3]] == [0, *bc.transpositions(0, score, 2)]
    for p in pieces[1:3]:
        assert p["split"] == base["split"] and p["wav"].endswith(f"_t{p['transpose']:+d}.wav")
        key = converter.parse(score).transpose(p["transpose"]).analyze("key")
        assert p["key"] == f"{key.tonic.name.replace('-', ' flat').replace('#', ' sharp')} {key.mode}"
        assert f" in {p['key']} at " in p["caption"]
        orig_notes = json.loads((tmp_path / "one" / base["notes"]).read_text())
        notes = json.loads((tmp_path / "one" / p["notes"]).read_text())
        # the same notes, shifted (the copy's tempo may differ, so the 3-s cuts hold different counts: compare the
        # pitch sequences in time order over the shorter one)
        n = min(len(notes), len(orig_notes))
        assert n > 5 and [x[2] for x in notes[:n]] == [x[2] + p["transpose"] for x in orig_notes[:n]]
    for name in ("manifest.jsonl", "pieces.jsonl"):
        a = (tmp_path / "one" / name).read_text().replace(str(tmp_path / "one"), "X")
        b = (tmp_path / "two" / name).read_text().replace(str(tmp_path / "two"), "X")
        assert a == b, name


def test_beats_sit_on_the_grid_from_the_audio_start(corpus):
    """What model.beat's training grid assumes (core/beat.py): the rendered beats fall at multiples of 60 / bpm
    seconds from the audio's first sample - the notes' onsets are on the half-beat grid (most on the beat), and the
    audio starts sounding when the first note does (nothing is trimmed from or added before the score)."""
    import soundfile as sf

    out, _ = corpus
    entries, _ = manifest.read_manifest(out / "manifest.jsonl")
    pieces = [json.loads(x) for x in (out / "pieces.jsonl").read_text().splitlines()]
    for e, p in zip(entries, pieces):
        onsets = np.unique([n[0] for n in json.loads(Path(e.notes).read_text())])
        b = onsets * p["bpm"] / 60.0
        off_half = np.abs(2 * b - np.round(2 * b)) / 2  # beats from the nearest half beat
        assert (off_half < 0.01).mean() > 0.95 and (np.abs(b - np.round(b)) < 0.01).mean() > 0.5, p["score"]
        x, sr = sf.read(e.path)
        first_sound = np.argmax(np.abs(x) > 1e-3 * np.abs(x).max()) / sr
        assert abs(first_sound - onsets[0]) < 0.03, (p["score"], first_sound, onsets[0])

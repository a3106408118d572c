"""`python -m musicflow_jax.evaluate` end to end on a handful of rendered corpus clips: results.json schema and
values against the estimators called directly, FD proxy of a set with itself = 0, cache hits on re-run, WAV-folder
input with captions in the metadata, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.cli.evaluate import main
from musicflow_jax.core.audio import read_audio, write_wav
from musicflow_jax.data import manifest
from musicflow_jax.evaluate import music
from musicflow_jax.evaluate import report as R
from musicflow_jax.evaluate.proxy import InstrumentClassifier, instrument_features, parse_instrument

SET_KEYS = {"n", "seconds", "key_exact", "key_mirex", "key_n", "tempo", "tempo_n", "note_presence",
            "onsets_per_second"}


@pytest.fixture(scope="module")
def corpus(rendered_corpus) -> Path:
    return rendered_corpus(limit=6, seed=3, max_seconds=8.0) / "manifest.jsonl"  # shared: tests/conftest.py


def test_cli_end_to_end_and_cache(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "eval"
    assert main(["--generated", str(corpus), "--reference", str(corpus), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["format"] == R.RESULTS_FORMAT
    assert set(res) == {"format", "generated", "reference", "fd_proxy", "fd_proxy_reference_halves",
                        "instrument_accuracy", "clap", "cache_hits", "clips", "embeddings"}
    assert res["embeddings"] == {}  # no embedding model given
    assert len(res["clips"]) == 6 and set(res["clips"][0]) == {"path", "caption", "seconds", "key_mirex",
                                                                "tempo_class", "note_presence", "onsets_per_second"}
    assert set(res["generated"]) == SET_KEYS and res["generated"] == res["reference"]
    assert res["cache_hits"] == 6  # the reference set is the same files: analysed once
    assert abs(res["fd_proxy"]) < 1e-6 and res["fd_proxy_reference_halves"] > 0 and res["clap"] is None
    # the numbers are the estimators' on these clips
    entries, _ = manifest.read_manifest(corpus)
    keys, feats, labels, tempo4 = [], [], [], 0
    for e in entries:
        x, sr = read_audio(e.path)
        keys.append(music.mirex_key_score(music.parse_key(e.caption), music.estimate_key(x, sr)))
        tempo4 += music.tempo_class(music.estimate_tempo(x, sr), music.parse_bpm(e.caption)) == "within_4pct"
        feats.append(instrument_features(x, sr))
        labels.append(parse_instrument(e.caption))
    g = res["generated"]
    assert g["n"] == g["key_n"] == g["tempo_n"] == 6
    assert g["key_mirex"] == pytest.approx(np.mean(keys))
    assert g["key_exact"] == pytest.approx(np.mean(np.equal(keys, 1)))
    assert g["tempo"]["within_4pct"] == pytest.approx(tempo4 / 6)
    clf = InstrumentClassifier().fit(np.stack(feats), labels)
    assert res["instrument_accuracy"] == pytest.approx(clf.accuracy(np.stack(feats), labels))
    table = (out / "results.md").read_text()
    assert table.startswith("| set | n | seconds |") and f"| {g['key_mirex']:.3f} |" in table
    # re-run: every analysis comes from the cache (the estimators are not called again), same results
    monkeypatch.setattr(R, "proxy_embedding", lambda *a: (_ for _ in ()).throw(AssertionError("not cached")))
    assert main(["--generated", str(corpus), "--reference", str(corpus), "--out", str(out), "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["cache_hits"] == 12 and {**again, "cache_hits": 6} == res


def test_wav_folder_input_and_errors(corpus: Path, tmp_path: Path, capsys) -> None:
    entries, _ = manifest.read_manifest(corpus)
    gen = tmp_path / "gen"
    for i, e in enumerate(entries[:3]):
        x, sr = read_audio(e.path)
        write_wav(gen / f"g{i}.wav", x, sr, {"text": e.caption, "seed": i})
    out = tmp_path / "eval"
    assert main(["--generated", str(gen), "--reference", str(corpus), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["generated"]["n"] == 3 and res["generated"]["key_n"] == 3 and res["cache_hits"] == 0
    capsys.readouterr()

    def err(args: list[str]) -> str:
        assert main(args + ["--out", str(tmp_path / "e"), "--quiet"]) == 2
        msg = capsys.readouterr().err
        assert msg.startswith("error: ") and msg.count("\n") == 1, msg
        return msg

    write_wav(gen / "nocap.wav", np.zeros(24_000, np.float32), 24_000)
    assert "carries no caption" in err(["--generated", str(gen), "--reference", str(corpus)])
    (gen / "nocap.wav").unlink()
    short = tmp_path / "short"
    write_wav(short / "s.wav", 0.1 * np.ones(6_000, np.float32), 24_000, {"text": "in C major at 90 BPM"})
    assert "0.25 s long" in err(["--generated", str(short), "--reference", str(corpus)])
    assert "holds no .wav" in err(["--generated", str(tmp_path / "e"), "--reference", str(corpus)])
    assert "does not exist" in err(["--generated", str(tmp_path / "nope.jsonl"), "--reference", str(corpus)])
    ref = tmp_path / "ref.jsonl"  # a reference row whose file is gone; one whose ".wav" is not audio
    (tmp_path / "fake.wav").write_text("not audio")
    for path, needle in ((tmp_path / "gone.wav", "cannot be read (No such file or directory)"),
                         (tmp_path / "fake.wav", "cannot decode audio file")):
        ref.write_text(json.dumps({"path": str(path), "caption": "in C major at 90 BPM", "split": "test"}) + "\n")
        assert needle in err(["--generated", str(gen), "--reference", str(ref)])

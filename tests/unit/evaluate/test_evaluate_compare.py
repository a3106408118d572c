"""Paired comparison of two evaluation runs (musicflow_jax.evaluate.compare): bootstrap intervals against the
normal-theory closed form, hand-computed per-clip means, caption pairing, and the --compare CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.cli.evaluate import main
from musicflow_jax.evaluate.compare import CompareError, compare, paired_bootstrap
from musicflow_jax.evaluate.report import RESULTS_FORMAT


def test_bootstrap_degenerate_and_closed_form() -> None:
    a = np.random.default_rng(0).normal(size=50)
    same = paired_bootstrap(a, a)
    assert (same.diff, same.lo, same.hi) == (0.0, 0.0, 0.0)
    shifted = paired_bootstrap(a, a + 0.1)  # a constant paired shift has no spread
    assert shifted.diff == pytest.approx(0.1) and shifted.lo == pytest.approx(0.1) and shifted.hi == pytest.approx(0.1)
    # many iid differences: the percentile interval ~ mean +- 1.96 sd / sqrt(n)
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000)
    y = x + rng.normal(0.3, 1.0, size=2000)
    p = paired_bootstrap(x, y, n_boot=4000)
    d = y - x
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert p.diff == pytest.approx(d.mean()) and p.n == 2000
    assert p.lo == pytest.approx(d.mean() - half, abs=0.1 * half) and p.hi == pytest.approx(d.mean() + half,
                                                                                           abs=0.1 * half)


def _results(keys: list[float | None], tempi: list[str | None], presence: list[float], captions: list[str]) -> dict:
    clips = [{"path": f"{i}.wav", "caption": c, "seconds": 4.0, "key_mirex": k, "tempo_class": t, "note_presence": p,
              "onsets_per_second": 2.0 * p} for i, (k, t, p, c) in enumerate(zip(keys, tempi, presence, captions))]
    return {"format": RESULTS_FORMAT, "clips": clips, "fd_proxy": 1.5, "instrument_accuracy": 0.5, "clap": None}


CAPS = ["x in C major at 90 BPM", "y in A minor at 60 BPM", "z"]


def test_compare_hand_computed() -> None:
    a = _results([1.0, 0.5, None], ["within_4pct", "double", None], [0.9, 0.5, 0.1], CAPS)
    b = _results([1.0, 1.0, None], ["within_4pct", "within_4pct", None], [1.0, 0.9, 0.2], CAPS)
    c = compare(a, b, n_boot=500)
    assert c["key_mirex"]["n"] == 2 and (c["key_mirex"]["mean_a"], c["key_mirex"]["mean_b"]) == (0.75, 1.0)
    assert (c["key_exact"]["mean_a"], c["key_exact"]["mean_b"], c["key_exact"]["diff"]) == (0.5, 1.0, 0.5)
    assert (c["tempo_within_4pct"]["mean_a"], c["tempo_within_4pct"]["mean_b"]) == (0.5, 1.0)
    assert c["note_presence"]["n"] == 3 and c["note_presence"]["diff"] == pytest.approx(0.2)
    assert c["onsets_per_second"]["diff"] == pytest.approx(0.4)
    assert c["fd_proxy"] == {"a": 1.5, "b": 1.5}
    with pytest.raises(CompareError, match="clip 1: captions differ"):
        compare(a, _results([1.0] * 3, [None] * 3, [0.5] * 3, [CAPS[0], "other", CAPS[2]]))
    with pytest.raises(CompareError, match="3 and 2 clips"):
        compare(a, _results([1.0] * 2, [None] * 2, [0.5] * 2, CAPS[:2]))


def test_compare_cli(tmp_path: Path, capsys) -> None:
    a = _results([1.0, 0.5, None], ["within_4pct", "double", None], [0.9, 0.5, 0.1], CAPS)
    b = _results([1.0, 1.0, None], ["within_4pct", "within_4pct", None], [1.0, 0.9, 0.2], CAPS)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| key_mirex | 2 | 0.750 | 1.000 | +0.250 [" in out and "| fd_proxy | | 1.500 | 1.500 | |" in out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --compare") and "re-run" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["--generated", "x"])
    assert e.value.code == 2 and "--reference, --out required" in capsys.readouterr().err


def test_compare_pools_seeds_per_clip() -> None:
    """A side of several runs (seeds) of the same prompts: each clip's value is its mean over the runs that have one,
    the set-level numbers the runs' mean; one run compares as before."""
    a0 = _results([1.0, 0.5, None], ["within_4pct", "double", None], [0.9, 0.5, 0.1], CAPS)
    a1 = _results([0.5, 0.5, 1.0], [None, "within_4pct", None], [0.7, 0.3, 0.3], CAPS)
    a1["fd_proxy"] = 2.5
    b = _results([1.0, 1.0, None], ["within_4pct", "within_4pct", None], [1.0, 0.9, 0.2], CAPS)
    c = compare([a0, a1], b, n_boot=500)
    assert c["runs"] == {"a": 2, "b": 1}
    # clip means of A: key MIREX (0.75, 0.5, 1.0), exact (0.5, 0, 1); B has keys on clips 0-1 only
    assert c["key_mirex"]["n"] == 2 and c["key_mirex"]["mean_a"] == pytest.approx(0.625)
    assert c["key_exact"]["mean_a"] == pytest.approx(0.25) and c["key_exact"]["diff"] == pytest.approx(0.75)
    # tempo of A: clip 0 only run 0 has it (1), clip 1 (0 + 1) / 2
    assert c["tempo_within_4pct"]["mean_a"] == pytest.approx(0.75)
    assert c["note_presence"]["mean_a"] == pytest.approx(np.mean([0.8, 0.4, 0.2]))
    assert c["fd_proxy"] == {"a": 2.0, "b": 1.5}
    assert compare([a0, a0], [b], n_boot=500)["key_mirex"] == compare(a0, b, n_boot=500)["key_mirex"]
    with pytest.raises(CompareError, match="B run 2, clip 1: captions differ"):
        compare(a0, [b, _results([1.0] * 3, [None] * 3, [0.5] * 3, [CAPS[0], "other", CAPS[2]])])


def test_compare_cli_several_seeds(tmp_path: Path, capsys) -> None:
    a0 = _results([1.0, 0.5, None], ["within_4pct", "double", None], [0.9, 0.5, 0.1], CAPS)
    a1 = _results([0.5, 0.5, 1.0], [None, "within_4pct", None], [0.7, 0.3, 0.3], CAPS)
    b = _results([1.0, 1.0, None], ["within_4pct", "within_4pct", None], [1.0, 0.9, 0.2], CAPS)
    for name, r in (("a0", a0), ("a1", a1), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    pair = f"{tmp_path / 'a0.json'},{tmp_path / 'a1.json'}"
    assert main(["--compare", pair, str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| key_mirex | 2 | 0.625 | 1.000 | +0.375 [" in out and "A: 2 run(s), B: 1 run(s)" in out
    assert main(["--compare", f"{tmp_path / 'a0.json'},{tmp_path / 'a0.json'}", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "listed twice" in err and err.count("\n") == 1

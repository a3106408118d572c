"""Side-by-side comparison of two results.json files of the same prompts, with paired bootstrap 95% intervals
over clips (Efron & Tibshirani 1993, percentile interval).

Clips are paired by position; their captions must match (same prompts, same order). For a per-clip metric m
(key MIREX score, key exact = MIREX score 1, tempo within 4%, note presence, onsets per second) over the clips
where both runs have a value, the difference mean(m_b) - mean(m_a) is recomputed on `n_boot` resamples of the
clip indices (the same indices for both runs: paired), and the 2.5th / 97.5th percentiles of those differences
are the interval. Set-level numbers (FD proxy, instrument accuracy, CLAP) are shown without intervals.

Each side may be several runs of the same prompts at different seeds: a clip's value on that side is then its mean
over the runs that have one, so the interval is over prompts with the sampling noise of one seed averaged out (the
key of one 8-s sample moves by about 3 clips in 32 between seeds); set-level numbers are the runs' mean.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.errors import MusicFlowError
from musicflow_jax.evaluate.report import RESULTS_FORMAT

N_BOOT = 2000
METRICS = ("key_exact", "key_mirex", "tempo_within_4pct", "note_presence", "onsets_per_second")


class CompareError(MusicFlowError):
    """Results that cannot be compared; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Paired:
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    lo: float  # 95% percentile interval of the difference
    hi: float


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> Paired:
    """Mean difference b - a of paired per-clip values with its paired-bootstrap 95% percentile interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise CompareError(f"paired values must be two non-empty vectors of one length, got {a.shape} and {b.shape}")
    d = b - a
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Paired(int(d.size), float(a.mean()), float(b.mean()), float(d.mean()), float(lo), float(hi))


def _value(clip: dict[str, Any], metric: str) -> float | None:
    if metric in ("key_exact", "key_mirex"):
        v = clip["key_mirex"]
        return None if v is None else float(v == 1.0) if metric == "key_exact" else float(v)
    if metric == "tempo_within_4pct":
        return None if clip["tempo_class"] is None else float(clip["tempo_class"] == "within_4pct")
    return float(clip[metric])


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CompareError(f"--compare {path}: cannot read results.json ({type(e).__name__}); give the results.json "
                           "written by python -m musicflow_jax.evaluate") from None
    if not isinstance(res, dict) or res.get("format") != RESULTS_FORMAT or "clips" not in res:
        raise CompareError(f"--compare {path}: not a {RESULTS_FORMAT} results.json with per-clip values; re-run "
                           "python -m musicflow_jax.evaluate")
    return res


Runs = dict[str, Any] | Sequence[dict[str, Any]]


def compare(a: Runs, b: Runs, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """{metric: Paired as a dict} for the per-clip metrics, plus the set-level numbers of both sides. A side is one
    results dict or several of the same prompts (seeds): per-clip values are then averaged over its runs."""
    runs_a, runs_b = ([r] if isinstance(r, dict) else list(r) for r in (a, b))
    if not runs_a or not runs_b:
        raise CompareError("each side needs at least one results.json")
    first = runs_a[0]["clips"]
    for side, runs in (("A", runs_a), ("B", runs_b)):
        for j, run in enumerate(runs):
            clips = run["clips"]
            if len(clips) != len(first):
                raise CompareError(f"the runs have {len(first)} and {len(clips)} clips: compare runs of the same "
                                   "prompts")
            for i, (x, y) in enumerate(zip(first, clips)):
                if x["caption"] != y["caption"]:
                    raise CompareError(f"{side} run {j + 1}, clip {i}: captions differ ({x['caption'][:60]!r} vs "
                                       f"{y['caption'][:60]!r}): compare runs of the same prompts in the same order")
    out: dict[str, Any] = {"runs": {"a": len(runs_a), "b": len(runs_b)}}
    for m in METRICS:
        pairs = [(_clip_mean(runs_a, i, m), _clip_mean(runs_b, i, m)) for i in range(len(first))]
        pairs = [(u, v) for u, v in pairs if u is not None and v is not None]
        out[m] = dataclasses.asdict(paired_bootstrap(*np.asarray(pairs).T, n_boot, seed)) if pairs else None
    for k in ("fd_proxy", "instrument_accuracy", "clap"):
        out[k] = {"a": _run_mean(runs_a, k), "b": _run_mean(runs_b, k)}
    return out


def _clip_mean(runs: Sequence[dict[str, Any]], i: int, metric: str) -> float | None:
    """Clip i's value of `metric` averaged over the runs that have one (None if none has)."""
    vals = [v for v in (_value(r["clips"][i], metric) for r in runs) if v is not None]
    return float(np.mean(vals)) if vals else None


def _run_mean(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    vals = [r.get(key) for r in runs]
    return None if any(v is None for v in vals) else float(np.mean(vals))


def markdown(cmp: dict[str, Any], name_a: str = "a", name_b: str = "b") -> str:
    lines = [f"| metric | n | {name_a} | {name_b} | {name_b} - {name_a} [95% CI] |", "|---|---|---|---|---|"]
    for m in METRICS:
        p = cmp[m]
        if p is None:
            lines.append(f"| {m} | 0 | - | - | - |")
        else:
            lines.append(f"| {m} | {p['n']} | {p['mean_a']:.3f} | {p['mean_b']:.3f} | {p['diff']:+.3f} "
                         f"[{p['lo']:+.3f}, {p['hi']:+.3f}] |")
    for k in ("fd_proxy", "instrument_accuracy", "clap"):
        va, vb = (("-" if v is None else f"{v:.3f}") for v in (cmp[k]["a"], cmp[k]["b"]))
        lines.append(f"| {k} | | {va} | {vb} | |")
    runs = cmp.get("runs", {"a": 1, "b": 1})
    if runs["a"] > 1 or runs["b"] > 1:
        lines.append(f"\n{name_a}: {runs['a']} run(s), {name_b}: {runs['b']} run(s) of the same prompts; per-clip "
                     "values are means over a side's runs, set-level numbers the runs' mean")
    return "\n".join(lines) + "\n"

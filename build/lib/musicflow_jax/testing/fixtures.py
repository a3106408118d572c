"""pytest fixtures shared by the test suite (the suite's conftest.py registers this module as a plugin): small
rendered corpora, the tiny random two-stage model folder and its loaded cascade."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from musicflow_jax.data.corpus import SOUNDFONTS, build_corpus
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.testing.model_folders import make_model_folder


@pytest.fixture(scope="session")
def rendered_corpus(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int, float], Path]:
    """Factory of small rendered corpora (data/corpus.py: Bach chorales, music21 -> fluidsynth, 24 kHz, note lists in
    notes/): `rendered_corpus(limit, seed, max_seconds)` -> the corpus folder (manifest.jsonl, pieces.jsonl, audio/,
    notes/). Built once per session and arguments, so test modules asking for the same corpus share it."""
    built: dict[tuple[int, int, float], Path] = {}

    def make(limit: int, seed: int, max_seconds: float) -> Path:
        key = (limit, seed, float(max_seconds))
        if key not in built:
            assert shutil.which("fluidsynth") and any(Path(p).is_file() for p in SOUNDFONTS), \
                "fluidsynth + a GM soundfont are needed: run .ci/setup_env.sh"
            out = tmp_path_factory.mktemp(f"corpus_{limit}_{seed}_{max_seconds:g}s")
            summary = build_corpus(out, composers=("bach",), limit=limit, seed=seed, max_seconds=max_seconds,
                                   valid_frac=0.0, test_frac=0.0, progress=False)
            assert summary["ok"] == limit, summary
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised two-stage model folder (model_folders.make_model_folder: mel backend, 1-s
    windows), one per test module."""
    return make_model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def tiny_mf(tiny_folder: Path) -> MusicFlow:
    """`tiny_folder` loaded."""
    return MusicFlow.load(tiny_folder)

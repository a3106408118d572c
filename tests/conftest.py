"""Test-session set-up: 8 virtual CPU devices for sharding tests, CPU-only JAX, repo on sys.path; the shared
rendered-corpus fixture and the tiny random two-stage model of the generation tests."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# One persistent XLA compilation cache per test session (fresh in CI: nothing carried between runs), shared by the
# xdist workers and the subprocesses tests start: the same tiny train/generate steps compile once per session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="musicflow_jax_test_xla_")
    os.environ["MUSICFLOW_JAX_TEST_CACHE_OWNER"] = str(os.getpid())

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)


def pytest_unconfigure(config):
    """The process that created the session's compilation cache removes it at the end."""
    if os.environ.get("MUSICFLOW_JAX_TEST_CACHE_OWNER") == str(os.getpid()):
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def rendered_corpus(tmp_path_factory):
    """Factory of small rendered corpora (tools/build_corpus.py: Bach chorales, music21 -> fluidsynth, 24 kHz, note
    lists in notes/): `rendered_corpus(limit, seed, max_seconds)` -> the corpus folder (manifest.jsonl,
    pieces.jsonl, audio/, notes/). Built once per session and arguments, so test modules asking for the same corpus
    share it."""
    import shutil

    from tools import build_corpus as bc

    built: dict[tuple[int, int, float], Path] = {}

    def make(limit: int, seed: int, max_seconds: float) -> Path:
        key = (limit, seed, float(max_seconds))
        if key not in built:
            assert shutil.which("fluidsynth") and any(Path(p).is_file() for p in bc.SOUNDFONTS), \
                "fluidsynth + a GM soundfont are needed: run .ci/setup_env.sh"
            out = tmp_path_factory.mktemp(f"corpus_{limit}_{seed}_{max_seconds:g}s")
            summary = bc.build_corpus(out, composers=("bach",), limit=limit, seed=seed, max_seconds=max_seconds,
                                      valid_frac=0.0, test_frac=0.0, progress=False)
            assert summary["ok"] == limit, summary
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny randomly initialised two-stage model folder (gen_fixtures.make_model_folder: mel backend, 1-s
    windows), one per test module."""
    from gen_fixtures import make_model_folder

    return make_model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def tiny_mf(tiny_folder):
    """`tiny_folder` loaded (pipeline.MusicFlow)."""
    from musicflow_jax.pipeline import MusicFlow

    return MusicFlow.load(tiny_folder)

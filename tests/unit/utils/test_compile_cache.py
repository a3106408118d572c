"""The CLIs' persistent XLA compilation cache (musicflow_jax/compile_cache.py): a first generation run writes its
executables to the cache folder, a second identical run finds every one there (no new entry), and
MUSICFLOW_JAX_COMPILE_CACHE=off writes nothing. The runs show the default progress bar (per window and stage: no
host callback in the stages' executables, which JAX would not cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _generate(folder: Path, out: Path, cache: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    # every compilation cached (not only those over 1 s, which depends on the machine's load)
    # one device; the suite's other XLA flags (conftest.py's -O0) kept
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env.update(MUSICFLOW_JAX_COMPILE_CACHE=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu",
               XLA_FLAGS=flags, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "musicflow_jax.generate", "--checkpoint", str(folder), "--text",
                           "a calm piano piece", "--duration", "1.5", "--out", str(out),
                           "--no-spectrogram"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_second_cli_run_compiles_nothing_new(tmp_path):
    from musicflow_jax.testing.model_folders import make_model_folder

    folder = make_model_folder(tmp_path / "model")
    cache = tmp_path / "xla"
    _generate(folder, tmp_path / "a.wav", str(cache))
    first = sorted(p.name for p in cache.iterdir())
    assert first, "the first run wrote no cache entry"
    _generate(folder, tmp_path / "b.wav", str(cache))
    assert sorted(p.name for p in cache.iterdir()) == first  # every executable came from the cache
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    _generate(folder, tmp_path / "c.wav", "off")
    assert sorted(p.name for p in cache.iterdir()) == first

"""Test children at XLA's default compile settings. The suite compiles its many small programs with flags that
trade run time for compile time (tests/conftest.py, which lists them in $MUSICFLOW_TEST_XLA_FLAGS: LLVM -O0, the new
CPU fusion emitters off); the few runtime-bound runs (the bundled model's generations, its fine-tune) run in a child
process without them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def default_xla_env(root: Path) -> dict[str, str]:
    """This process' environment without the suite's compile-time XLA flags, with `root` importable."""
    suite_only = {f.split("=")[0] for f in os.environ.get("MUSICFLOW_TEST_XLA_FLAGS", "").split()}
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] not in suite_only]
    return {**os.environ, "XLA_FLAGS": " ".join(flags), "PYTHONPATH": str(root)}


def run_script(script: str | Path, args: list[str], root: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python script *args` at XLA's default compile settings, output captured."""
    return subprocess.run([sys.executable, str(script), *args], cwd=root, env=default_xla_env(root),
                          capture_output=True, text=True, timeout=timeout)

"""Running a command line's `main` in the test's own process (what `python -m musicflow_jax.<name>` runs, without
paying a new interpreter and JAX start per case), and the one-line error contract every CLI keeps."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import pytest


@dataclasses.dataclass
class Done:
    returncode: int
    stderr: str
    stdout: str = ""


def run_main(main: Callable[[list[str]], int], args: Sequence[str], capsys: pytest.CaptureFixture) -> Done:
    """`main(args)` with stdout/stderr captured; argparse's own errors (SystemExit) give their exit code."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return Done(code, out.err, out.out)


def one_error_line(done: Done, *fragments: str) -> str:
    """The run ended with exit code 2 and exactly one stderr line, `error: ...`, holding every fragment."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr[-3000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]

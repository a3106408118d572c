"""What every command line shares: an argparse parser whose usage errors are one line (exit 2) and which has --debug,
and `run`, which turns a `MusicFlowError` (the one user-facing error type, musicflow_jax/errors.py) into `error:
<one line>` on stderr with its exit code (2 bad input, 1 a run that could not go on, 75 a training run stopped early
that the same command resumes) and Ctrl-C into exit 130; anything else is a bug and keeps its traceback. --debug
shows the traceback of input errors too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import NoReturn

from musicflow_jax.errors import EXIT_BAD_INPUT, MusicFlowError
from musicflow_jax.utils import compile_cache

EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line + exit 2 (argparse prints the full usage)
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def parser(name: str, doc: str | None) -> Parser:
    """The parser of `python -m musicflow_jax.<name>`: its description is the docstring's first paragraph."""
    ap = Parser(prog=f"python -m musicflow_jax.{name}", description=(doc or "").split("\n\n")[0])
    ap.add_argument("--debug", action="store_true", help="show the traceback of input errors too")
    return ap


def run(body: Callable[[], int | None], *, debug: bool = False, flags: Mapping[str, str] | None = None) -> int:
    """Run a command's body; its return value (None = 0) is the exit code. `flags` maps API parameters to the flags
    that set them, for the messages."""
    try:
        return int(body() or 0)
    except MusicFlowError as e:
        if debug:
            raise
        print(f"error: {e.one_line(flags)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def enable_compile_cache() -> None:
    """A second run starts with its executables compiled (utils/compile_cache.py)."""
    compile_cache.enable()

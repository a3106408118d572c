"""The one base class of user-facing errors.

Every problem a user can fix (a bad flag or argument, a config key, a file that is missing, malformed or of the wrong
kind, a locked workdir, a diverged run) raises a subclass of `MusicFlowError` whose message is one line naming the
input and the fix. The CLIs catch this one type and print `error: <message>` with `exit_code` (2: bad input; 1: the
run could not go on - locked workdir, divergence; 75, EX_TEMPFAIL: a training run stopped early by SIGTERM or Ctrl-C,
its step saved - rerun to resume, and a scheduler's retry policy can match the code); anything else is a bug and keeps
its traceback. The web app shows the message in the page.

`param` names the API parameter the message is about (e.g. "duration"), so a front end can name its own control
instead (the generate CLI says "--duration"). It subclasses ValueError so existing `except ValueError` callers keep
working.
"""

from __future__ import annotations

from collections.abc import Mapping

EXIT_BAD_INPUT = 2
EXIT_RUN_STOPPED = 1
EXIT_RUN_UNFINISHED = 75  # sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry"


class MusicFlowError(ValueError):
    """A problem the user can fix; the message is one line naming the input and the fix."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param

    def one_line(self, names: Mapping[str, str] | None = None) -> str:
        """The message on one line (whitespace runs, newlines included, become one space); when it starts with its
        API parameter and `names` maps that parameter to a front end's name for it (a CLI flag, a page control),
        that name replaces it."""
        msg = " ".join(str(self).split()) or type(self).__name__
        name = (names or {}).get(self.param or "")
        return name + msg[len(self.param):] if name and self.param and msg.startswith(self.param) else msg


class RunStoppedError(MusicFlowError):
    """A run that could not go on (its workdir is in use, it diverged): exit code 1, nothing finished is lost."""

    exit_code = EXIT_RUN_STOPPED


class RunUnfinishedError(RunStoppedError):
    """A training run that stopped before its last step (SIGTERM, Ctrl-C) with that step saved: exit code 75, so a
    scheduler sees a run to retry, not one that succeeded (a Kubernetes Job would complete on exit 0); the same command
    resumes it."""

    exit_code = EXIT_RUN_UNFINISHED

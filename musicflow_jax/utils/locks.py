"""Owner locks: one training run per workdir (`workdir/train.lock`, taken by process 0) and one precompute process
per shard (`out/_done/shard-i-of-N.lock`). A lock file is created atomically (O_CREAT | O_EXCL) and holds
{"pid", "host", "started"}. A second owner is refused with the first one's pid and host; a lock left by a dead
process on this host (pid no longer alive) is taken over with a warning. A lock from another host cannot be checked
and is never taken over: delete the file once that owner is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from musicflow_jax.errors import MusicFlowError, RunStoppedError

LOCK_FILE = "train.lock"


class WorkdirLockedError(RunStoppedError):
    """The workdir is in use by another (live or unverifiable) training run."""


class WorkdirUnusableError(MusicFlowError):
    """The workdir names a file, or no file can be created in it (read-only file system, permissions)."""


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is a running (not zombie) process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


class WorkdirLock:
    """A held lock; `release()` removes the file if it is still ours (idempotent)."""

    def __init__(self, path: Path, owner: dict[str, Any]):
        self.path, self.owner = path, owner

    def release(self) -> None:
        if _read_owner(self.path) == self.owner:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {owner.get('started', '?')}"


def acquire(workdir: str | Path) -> WorkdirLock:
    """Take the lock of `workdir` (created if needed) or raise WorkdirLockedError naming the owner and the fix."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirUnusableError(f"workdir {workdir} is a file, not a folder: pick a folder path for --workdir")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise WorkdirUnusableError(f"workdir {workdir} cannot be written ({e.strerror}): pick a writable folder for "
                                   "--workdir") from None
    return acquire_file(workdir / LOCK_FILE, f"workdir {workdir}", "training run", "pick another --workdir")


def acquire_file(path: Path, what: str, user: str, alternative: str) -> WorkdirLock:
    """Take the owner lock file `path` guarding `what` (e.g. "workdir runs/x", used by one `user` at a time) or raise
    WorkdirLockedError naming the owner and the fix (stop it, or `alternative`)."""
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_owner(path)
            if owner is None:
                raise WorkdirLockedError(
                    f"{what} has an unreadable lock file {path} (another {user} may be starting): if no {user} uses "
                    f"it, delete {path}; otherwise {alternative}") from None
            if owner.get("host") == host and not _pid_alive(owner["pid"]):
                print(f"warning: taking over the lock of {what} left by a dead process ({_describe(owner)})",
                      file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            raise WorkdirLockedError(
                f"{what} is in use by another {user} ({_describe(owner)}; lock file {path}): stop it or "
                f"{alternative}; if it is no longer running, delete {path}") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        return WorkdirLock(path, me)
    raise WorkdirLockedError(f"{what}: could not take the lock {path} (others keep taking it over): make sure only "
                             f"one {user} uses it")

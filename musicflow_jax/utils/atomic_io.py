"""Atomic file writes: write to a temporary sibling (same folder, same suffix so writers that infer the format from
the name still work), then `os.replace` it over the target. A failed write (full disk, exception, Ctrl-C) leaves
the target as it was (absent, or the previous file) and removes the temporary file.

    with atomic_path("out.wav") as tmp:
        soundfile.write(tmp, audio, sr)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from musicflow_jax.errors import MusicFlowError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` (created empty, umask permissions); on a clean exit it replaces
    `path`, on an exception it is deleted and the exception propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """`Path(path).write_bytes(data)`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def savefig(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """`fig.savefig(path, **kwargs)` (matplotlib), atomically; the format comes from `path`'s suffix."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """`Path(path).write_text(text)` (UTF-8), atomically: readers see the old file or the new one."""
    return write_bytes(path, text.encode("utf-8"))


def save_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """safetensors.numpy.save_file, atomically and with umask permissions (safetensors itself creates 0600)."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode & 0o777
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.chmod(mode)
    return Path(path)


class UnwritableOutputError(MusicFlowError):
    """An output's folder cannot hold new files: read-only file system, permissions, /proc, a file on its path."""


def check_can_create(path: str | Path, flag: str) -> None:
    """Raise UnwritableOutputError (naming `flag`, e.g. "--out") unless a file can be created where `path` will be
    written: in its nearest existing ancestor folder, tried with a temporary file (os.access cannot tell a read-only
    file system)."""
    import tempfile

    path = Path(path)
    probe = next((q for q in path.absolute().parents if q.exists()), Path("/"))
    if not probe.is_dir():
        raise UnwritableOutputError(f"{flag} {path}: {probe} is a file, not a folder; choose a path in a folder")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise UnwritableOutputError(f"{flag} {path}: cannot create files under {probe} ({e.strerror}); choose a "
                                    "writable folder") from None

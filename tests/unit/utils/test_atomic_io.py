"""Atomic WAV/PNG writes: a write that fails part-way (full disk) leaves nothing at a new path, leaves an existing
file unchanged, and leaves no temporary file behind; a good write replaces the file."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.core.audio import read_audio, read_wav_metadata, write_wav
from musicflow_jax.utils import atomic_io

SR = 8_000


def _tone(seconds: float = 0.1) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


def _disk_full_after_half(self: Path, data: bytes) -> int:
    """Path.write_bytes on a disk that fills up half-way: a partial file, then ENOSPC."""
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(self))


def test_wav_write_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_bytes", _disk_full_after_half)
    with pytest.raises(OSError) as err:
        write_wav(tmp_path / "out.wav", _tone(), SR, {"text": "a tone"})
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # no truncated out.wav, no temporary file


def test_wav_write_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_wav(tmp_path / "out.wav", _tone(), SR, {"text": "the old one"})
    before = path.read_bytes()
    monkeypatch.setattr(Path, "write_bytes", _disk_full_after_half)
    with pytest.raises(OSError):
        write_wav(path, _tone(0.3), SR, {"text": "the new one"})
    monkeypatch.undo()
    assert path.read_bytes() == before and read_wav_metadata(path) == {"text": "the old one"}
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_wav_write_replaces_atomically(tmp_path):
    path = write_wav(tmp_path / "sub" / "out.wav", _tone(), SR, {"text": "one"})
    path2 = write_wav(path, _tone(0.2), SR, {"text": "two"})
    assert path2 == path and read_wav_metadata(path) == {"text": "two"}
    assert read_audio(path)[0].shape == (int(SR * 0.2),)
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]
    assert (path.stat().st_mode & 0o777) != 0o600  # normal (umask) permissions, not mkstemp's private ones


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([0, 1, 0])
    return fig, plt


def test_png_savefig_failing_midway_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    fig, plt = _figure()
    try:
        good = atomic_io.savefig(fig, tmp_path / "spec.png")
        before = good.read_bytes()
        assert before[:8] == b"\x89PNG\r\n\x1a\n"

        def partial_savefig(fname, **kwargs):
            Path(fname).write_bytes(before[:100])  # the PNG header and a bit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(fname))

        monkeypatch.setattr(fig, "savefig", partial_savefig)
        with pytest.raises(OSError):
            atomic_io.savefig(fig, tmp_path / "spec.png")
        with pytest.raises(OSError):
            atomic_io.savefig(fig, tmp_path / "new.png")
    finally:
        plt.close(fig)
    assert (tmp_path / "spec.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["spec.png"]


def test_atomic_path_keeps_the_suffix_and_cleans_up_on_any_exception(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_io.atomic_path(tmp_path / "x.npy") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.exists()
        np.save(tmp, np.arange(3))  # np.save keeps a name ending in .npy as it is
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_io.atomic_path(tmp_path / "x.npy") as tmp:
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]

"""Spectrogram pictures (matplotlib, Agg backend, imported lazily): what generation writes beside each WAV and what
the docs' figures show. Written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from musicflow_jax.utils.atomic_io import savefig


def spectrogram_png(path: Path, audio_s: np.ndarray, sample_rate: int, title: str) -> Path:
    """Log-magnitude spectrogram (matplotlib, Agg) of mono audio."""
    return spectrogram_panels_png(path, [(title, audio_s)], sample_rate)


def spectrogram_panels_png(path: Path, panels: Sequence[tuple[str, np.ndarray]], sample_rate: int,
                           fmax: float | None = None) -> Path:
    """Log-magnitude spectrograms of mono clips stacked top to bottom on a shared time axis, each titled, each
    shown over 80 dB below its own maximum (up to `fmax` Hz); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.signal import stft

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), dpi=100, sharex=True, squeeze=False)
    for ax, (title, audio_s) in zip(axes[:, 0], panels, strict=True):
        f, t, z = stft(audio_s, fs=sample_rate, nperseg=1024, noverlap=768)
        keep = f <= (fmax or f[-1])
        db = 20 * np.log10(np.abs(z[keep]) + 1e-9)
        top = float(db.max()) if db.size else 0.0
        ax.pcolormesh(t, f[keep], db, shading="auto", vmin=top - 80.0, vmax=top, cmap="magma")
        ax.set_ylabel("Hz")
        ax.set_title(title[:110], fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    savefig(fig, path)  # atomic: a failed write leaves no truncated PNG
    plt.close(fig)
    return path

"""Shared plumbing of the PyTorch embedding models of the evaluation suite (`vggish`, `panns`): loading a released
state-dict file with a strict key/shape check, turning input clips into validated mono 16-kHz float32 arrays, and
the audio preprocessing of AudioLDM's evaluation toolkit (`audioldm_eval_waveform`).

Torch is imported here at module level: these modules are offline evaluation code (requirements-torch.txt).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from musicflow_jax.core.audio import resample
from musicflow_jax.evaluate.embedders.base import EmbedError, hash_files

AUDIOLDM_EVAL_RATE = 16_000  # audioldm_eval's WaveDataset rate for FAD (metrics/fad.py) and the 16-kHz CNN14
AUDIOLDM_EVAL_MIN_SAMPLES = 32_000  # datasets/load_mel.py pad_short_audio(min_samples=32000): 2 s at 16 kHz


class EmbeddingModelError(EmbedError):
    """An embedding-model file or input clip that cannot be used; the message names it and the fix."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_state_dict_file(path: str | Path, module: torch.nn.Module, what: str, error: type[EmbeddingModelError],
                         nested_key: str | None = None) -> None:
    """Load `path` (torch.load, weights_only=True) into `module` (which may live on the meta device: the file's
    tensors are assigned, not copied) after a strict check: the file must hold exactly the module's keys with the
    module's shapes (the first offending key is named); floating tensors are cast to the module's dtype.
    `nested_key`: the state dict is `obj[nested_key]` when the file holds a dict with that key (e.g. PANNs'
    {"model": state_dict, ...}); a bare state dict is accepted too."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} weights file {path} does not exist: pass the path of the released state-dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / weights_only errors of all kinds, reported in one line
        raise error(f"{what} weights file {path} cannot be read by torch.load(weights_only=True) "
                    f"({_first_line(e)}); pass the released state-dict file") from None
    if nested_key is not None and isinstance(obj, dict) and isinstance(obj.get(nested_key), dict):
        obj = obj[nested_key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise error(f"{what} weights file {path} does not hold a state dict of tensors"
                    f"{f' (nor one under {nested_key!r})' if nested_key else ''}; pass the released file")
    own = module.state_dict()
    missing = [k for k in own if k not in obj]
    if missing:
        raise error(f"{what} weights file {path} lacks key {missing[0]!r} ({len(missing)} missing); pass the "
                    "released file, unmodified")
    unexpected = [k for k in obj if k not in own]
    if unexpected:
        raise error(f"{what} weights file {path} has unexpected key {unexpected[0]!r} ({len(unexpected)} "
                    "unexpected); pass the released file, unmodified")
    for k, v in own.items():
        if tuple(obj[k].shape) != tuple(v.shape):
            raise error(f"{what} weights file {path}: {k!r} has shape {tuple(obj[k].shape)}, expected "
                        f"{tuple(v.shape)}; pass the released file of this model variant")
    state = {k: (obj[k].to(own[k].dtype) if obj[k].is_floating_point() else obj[k]).contiguous() for k in own}
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v.sum()):  # NaN/inf propagate (or absurd weights overflow)
            raise error(f"{what} weights file {path}: {k!r} contains NaN/inf; pass an intact copy of the file")
    module.load_state_dict(state, strict=True, assign=True)


def clip_name(i: int, names: Sequence[str] | None) -> str:
    return f"clip {i}" if names is None else f"clip {i} ({names[i]})"


def mono_16k(audio: Sequence[np.ndarray], sample_rate: int, error: type[EmbeddingModelError],
             names: Sequence[str] | None = None, rate: int = AUDIOLDM_EVAL_RATE) -> list[np.ndarray]:
    """Validated mono float32 clips at `rate`: each input is (samples,) or (channels, samples) (channels averaged)
    at `sample_rate`, finite, non-empty; resampled with `musicflow_jax.audio.resample` (scipy polyphase)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise error(f"sample_rate {sample_rate!r}: pass the clips' sample rate in Hz as a positive integer")
    if names is not None and len(names) != len(audio):
        raise error(f"{len(names)} names for {len(audio)} clips: pass one name per clip")
    out = []
    for i, x in enumerate(audio):
        x = np.asarray(x)
        if x.ndim == 2:
            x = x.mean(0)
        if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.number):
            raise error(f"{clip_name(i, names)}: expected a non-empty numeric (samples,) or (channels, samples) "
                        f"array, got shape {x.shape} dtype {x.dtype}")
        if not np.isfinite(x).all():
            raise error(f"{clip_name(i, names)}: audio contains NaN/inf ({int((~np.isfinite(x)).sum())} samples); "
                        "fix or drop the clip")
        out.append(resample(x.astype(np.float32), int(sample_rate), rate))
    return out


def audioldm_eval_waveform(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A clip as audioldm_eval's `WaveDataset.read_from_file` (datasets/load_mel.py) hands it to VGGish (FAD) and
    to the 16-kHz CNN14 (FD / KL / IS): the first channel only (of (channels, samples); (samples,) is taken as
    mono), minus its mean, resampled to 16 kHz, then zero-padded at the end to at least 32000 samples (2 s).
    The resampling here is scipy's polyphase filter (`musicflow_jax.audio.resample`); audioldm_eval uses
    `torchaudio.functional.resample` (windowed sinc), a slightly different filter. Returns (samples,) float32."""
    x = np.asarray(audio, np.float32)
    if x.ndim == 2:
        x = x[0]
    if x.ndim != 1 or x.size == 0:
        raise EmbeddingModelError(f"audio: expected a non-empty (samples,) or (channels, samples) array, got shape "
                                  f"{x.shape}")
    if not np.isfinite(x).all():
        raise EmbeddingModelError("audio contains NaN/inf; fix or drop the clip")
    x = resample(x - x.mean(), int(sample_rate), AUDIOLDM_EVAL_RATE)
    if x.size < AUDIOLDM_EVAL_MIN_SAMPLES:
        x = np.pad(x, (0, AUDIOLDM_EVAL_MIN_SAMPLES - x.size))
    return x.astype(np.float32, copy=False)


class WeightFileEmbedder:
    """Common part of the embedders (musicflow_jax.evaluate.embeddings) whose model is one weight file: the
    fingerprint hashes the file's bytes with the embedder's name and conventions version."""
    name: str
    conventions = "audioldm_eval-1"  # bump when the preprocessing changes: cached outputs are then recomputed

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def fingerprint(self) -> str:
        return hash_files([self.path], f"{self.name}:{self.conventions}")

"""The k-means codebook file and the checkpoint hash that ties it to its HuBERT: one definition, no jax/torch.

Shared by the offline steps (data/kmeans.py writes, data/precompute.py reads) and the runtime (backends/hubert.py
reads), so training targets and prompt-time units come from the same file.

File format: a safetensors file with one tensor "centroids" float32 (K, C), C = HuBERT hidden size, and
string metadata {"layer": str(int) (the `hidden_states` index it was fitted on: 0 = transformer input,
L = output of layer L), "hubert_sha256": `checkpoint_sha256` of the source HuBERT, "k", plus free extras}.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors import safe_open

from musicflow_jax.errors import MusicFlowError
from musicflow_jax.utils.atomic_io import save_safetensors


class CodebookError(MusicFlowError):
    """A codebook file that is missing, malformed or fitted on another HuBERT / layer, or a checkpoint without
    weights; the message names the file and the fix."""


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint: its weights file bytes (model.safetensors, else pytorch_model.bin), or the file."""
    p = Path(path)
    if p.is_dir():
        found = next((p / n for n in WEIGHT_FILES if (p / n).is_file()), None)
        if found is None:
            raise CodebookError(f"{path}: no {' or '.join(WEIGHT_FILES)} (a save_pretrained folder?)")
        p = found
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_codebook(path: str | Path, centroids_kc: np.ndarray, *, layer: int, hubert_sha256: str,
                  extra: dict[str, str] | None = None) -> None:
    """Write atomically (tmp file, then rename)."""
    meta = {"layer": str(int(layer)), "hubert_sha256": hubert_sha256, "k": str(len(centroids_kc)), **(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, {"centroids": np.ascontiguousarray(centroids_kc, np.float32)}, meta)


def check_codebook(path: str | Path, meta: dict[str, str], layer: int, hubert_sha256: str | None) -> None:
    """Raise CodebookError unless the codebook at `path` (its metadata `meta`) was fitted on HuBERT layer `layer` and,
    when both hashes are known, on the HuBERT weights whose `checkpoint_sha256` is `hubert_sha256`."""
    if meta.get("layer") not in (None, str(layer)):
        raise CodebookError(f"{path} was fitted on HuBERT layer {meta['layer']}, not layer {layer}")
    if meta.get("hubert_sha256") and hubert_sha256 and meta["hubert_sha256"] != hubert_sha256:
        raise CodebookError(f"{path} was fitted on a different HuBERT (sha256 {meta['hubert_sha256'][:12]}...) than "
                            f"the one used here ({hubert_sha256[:12]}...); fit it on this HuBERT with python -m "
                            "musicflow_jax.fit_kmeans")


def load_codebook(path: str | Path) -> tuple[np.ndarray, dict[str, str]]:
    """(centroids (K, C) float32, metadata) of a codebook file, with clear errors for a wrong file."""
    path = Path(path)
    if not path.is_file():
        raise CodebookError(f"k-means codebook {path} does not exist (fit one with python -m musicflow_jax.fit_kmeans)")
    with safe_open(str(path), framework="numpy") as f:
        if "centroids" not in f.keys():  # noqa: SIM118
            raise CodebookError(f"{path}: no 'centroids' tensor; keys are {list(f.keys())}")
        cents = f.get_tensor("centroids").astype(np.float32)
        meta = dict(f.metadata() or {})
    if cents.ndim != 2:
        raise CodebookError(f"{path}: 'centroids' must be (K, C), got shape {cents.shape}")
    return cents, meta

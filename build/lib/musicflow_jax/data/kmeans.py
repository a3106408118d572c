"""Fit the k-means codebook of the semantic units on HuBERT features of a sample of the corpus (PyTorch, offline).

Output: a safetensors file with "centroids" float32 (K, C) and metadata {"layer": str(int), "hubert_sha256": str,
"k": str, "frames": str, "seed": str} (the format of musicflow_jax/encoders/codebook.py). Seeded and deterministic:
files are sampled with the seed, frames are subsampled to `--max-frames`, MiniBatchKMeans uses the seed.

    python -m musicflow_jax.fit_kmeans --manifest data/corpus/manifest.jsonl --hubert ckpt/hubert --layer 6 --k 500 \
        --out ckpt/kmeans.safetensors
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicflow_jax.backends.torch_ref import TorchHubertSemantic
from musicflow_jax.core.audio import resample
from musicflow_jax.data.manifest import read_manifest
from musicflow_jax.data.precompute import SkipClipError, load_audio
from musicflow_jax.encoders.codebook import checkpoint_sha256, save_codebook
from musicflow_jax.errors import MusicFlowError


class KMeansError(MusicFlowError):
    """Inputs of the codebook fit that cannot be used, with the fix."""


def check_inputs(manifest: str | Path, hubert: str | Path, layer: int, k: int, max_files: int, max_frames: int,
                 out: str | Path) -> None:
    """Everything checkable before loading anything (messages name the command-line flags)."""
    if not Path(manifest).is_file():
        raise KMeansError(f"--manifest {manifest} does not exist: make one with python -m musicflow_jax.build_corpus")
    if not Path(hubert).is_dir():
        raise KMeansError(f"--hubert {hubert} is not a folder: pass an HF save_pretrained HubertModel folder")
    for flag, value, low in (("--layer", layer, 0), ("--k", k, 1), ("--max-files", max_files, 1),
                             ("--max-frames", max_frames, 1)):
        if value < low:
            raise KMeansError(f"{flag} must be >= {low}, got {value}")
    if Path(out).is_dir():
        raise KMeansError(f"--out {out} is a folder: pass a file path such as ckpt/kmeans.safetensors")


def fit_codebook(manifest: str | Path, hubert: str | Path, layer: int, out: str | Path, *, k: int = 500,
                 max_files: int = 200, max_frames: int = 200_000, seed: int = 0) -> dict[str, int | str]:
    """Sample HuBERT features of the manifest's train files, fit k-means and write the codebook file `out`."""
    check_inputs(manifest, hubert, layer, k, max_files, max_frames, out)
    feats = hubert_sample(manifest, str(hubert), layer, max_files=max_files, max_frames=max_frames, seed=seed)
    cents = fit_kmeans(feats, k, seed)
    save_codebook(out, cents, layer=layer, hubert_sha256=checkpoint_sha256(hubert),
                  extra={"frames": str(len(feats)), "seed": str(seed)})
    return {"out": str(out), "k": len(cents), "dim": int(cents.shape[1]), "frames": len(feats)}


def hubert_sample(manifest: str | Path, hubert: str, layer: int, *, max_files: int = 200, max_frames: int = 200_000,
                  seed: int = 0, max_seconds: float = 30.0, progress: bool = True) -> np.ndarray:
    """(N, C) float32 HuBERT layer features from up to `max_files` seeded train files (first `max_seconds` each)."""
    from tqdm import tqdm

    entries, _ = read_manifest(manifest)
    train = [e for e in entries if e.split == "train"] or entries
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))[:max_files]
    model = TorchHubertSemantic(hubert, layer)
    feats = []
    for i in tqdm(order, desc="hubert", disable=not progress):
        try:
            x, sr = load_audio(train[i].path)
        except SkipClipError:
            continue
        feats.append(model.features(resample(x[: int(max_seconds * sr)], sr, model.sample_rate)[None])[0])
    if not feats:
        raise KMeansError(f"{manifest}: no readable audio to fit k-means on: check the manifest's paths")
    allf = np.concatenate(feats)
    if len(allf) > max_frames:
        allf = allf[np.sort(rng.choice(len(allf), max_frames, replace=False))]
    return allf


def fit_kmeans(features_nc: np.ndarray, k: int, seed: int = 0, batch_size: int = 4096) -> np.ndarray:
    """MiniBatchKMeans centroids (K, C) float32; K is capped at the number of frames."""
    from sklearn.cluster import MiniBatchKMeans

    k = min(k, len(features_nc))
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch_size, n_init=3, max_iter=100)
    km.fit(features_nc.astype(np.float64))
    return km.cluster_centers_.astype(np.float32)

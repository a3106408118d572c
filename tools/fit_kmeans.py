"""Fit the k-means codebook of the semantic units on HuBERT features of a sample of the corpus (PyTorch, offline).

Output: a safetensors file with "centroids" float32 (K, C) and metadata {"layer": str(int), "hubert_sha256": str,
"k": str, "frames": str, "seed": str} (the format musicflow_jax/semantic.py reads). Seeded and deterministic:
files are sampled with the seed, frames are subsampled to `--max-frames`, MiniBatchKMeans uses the seed.

    python tools/fit_kmeans.py --manifest data/corpus/manifest.jsonl --hubert ckpt/hubert --layer 6 --k 500 \
        --out ckpt/kmeans.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musicflow_jax.audio import resample  # noqa: E402
from musicflow_jax.backends.torch_ref import TorchHubertSemantic  # noqa: E402
from musicflow_jax.codebook import checkpoint_sha256, save_codebook  # noqa: E402
from musicflow_jax.manifest import read_manifest  # noqa: E402
from musicflow_jax.precompute import SkipClipError, load_audio  # noqa: E402


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
        raise ValueError(f"{manifest}: no readable audio to fit k-means on")
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


def check_args(a: argparse.Namespace) -> None:
    """Validate the command line before loading anything; raises ValueError/FileNotFoundError with one line."""
    if not Path(a.manifest).is_file():
        raise FileNotFoundError(f"--manifest {a.manifest} does not exist: make one with tools/build_corpus.py")
    if not Path(a.hubert).is_dir():
        raise FileNotFoundError(f"--hubert {a.hubert} is not a folder: pass an HF save_pretrained HubertModel folder")
    for flag, value, low in (("--layer", a.layer, 0), ("--k", a.k, 1), ("--max-files", a.max_files, 1),
                             ("--max-frames", a.max_frames, 1)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if Path(a.out).is_dir():
        raise ValueError(f"--out {a.out} is a folder: pass a file path such as ckpt/kmeans.safetensors")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--hubert", required=True, help="HF save_pretrained folder of a HubertModel")
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--max-files", type=int, default=200)
    ap.add_argument("--max-frames", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        check_args(a)
        feats = hubert_sample(a.manifest, a.hubert, a.layer, max_files=a.max_files, max_frames=a.max_frames,
                              seed=a.seed)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line naming it (layer range, no audio, ...)
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    cents = fit_kmeans(feats, a.k, a.seed)
    save_codebook(a.out, cents, layer=a.layer, hubert_sha256=checkpoint_sha256(a.hubert),
                  extra={"frames": str(len(feats)), "seed": str(a.seed)})
    print(json.dumps({"out": a.out, "k": len(cents), "dim": int(cents.shape[1]), "frames": len(feats)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Feature backends: what the two flow stages model and how audio is recovered from it (feature_backend.py).

Semantic parts (stage 1's stream, 50 Hz): "hubert" (the paper's: HuBERT layer + k-means centroids, hubert.py) and
"chroma" (weight-free: chroma + band energies, chroma.py). Acoustic parts (stage 2's stream, 75 Hz): "encodec"
(the paper's: continuous Encodec latents + the Flax decoder, encodec.py) and "mel" (weight-free: log-mel +
Griffin-Lim, mel.py). torch_ref.py holds the PyTorch references of the weight-based parts for offline precompute;
parts.py their protocols, registry.py the (stream, kind, engine) -> builder table.
"""

from musicflow_jax.backends.feature_backend import FEATURES_FILE, FeatureBackend, StreamStats, load_backend
from musicflow_jax.backends.parts import BackendError
from musicflow_jax.backends.registry import build_part, kinds, parse_name

__all__ = ["FEATURES_FILE", "BackendError", "FeatureBackend", "StreamStats", "build_part", "kinds", "load_backend",
           "parse_name"]

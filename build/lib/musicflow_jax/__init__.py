"""musicflow_jax: MusicFlow (cascaded flow matching for text-guided music generation, arXiv 2410.20478) in
JAX / Flax NNX.

    from musicflow_jax import MusicFlow
    g = MusicFlow.load().generate(["a Bach chorale played on a church organ"], duration=10.0, seed=0)

The package's folders are its lifecycle (docs/architecture.md): data/ (corpus, records, precompute, the input
pipeline), training/ (the loop, both trainers, checkpoints, export), inference/ (the cascade and its API),
evaluate/ (the metrics), cli/ and app/ (the front ends) over models/, backends/, encoders/, convert/ and the
foundations core/ and utils/. `MusicFlowError` is the base of every error a user can fix.
"""

from __future__ import annotations

from typing import Any

from musicflow_jax.errors import MusicFlowError

__version__ = "0.2.0"
__all__ = ["Generation", "MusicFlow", "MusicFlowError", "StageSettings", "__version__"]


def __getattr__(name: str) -> Any:  # the API loads JAX and the models: only when it is asked for
    if name in ("MusicFlow", "StageSettings"):
        from musicflow_jax.inference import cascade

        return getattr(cascade, name)
    if name == "Generation":
        from musicflow_jax.inference.generation import Generation

        return Generation
    raise AttributeError(f"module 'musicflow_jax' has no attribute {name!r}")

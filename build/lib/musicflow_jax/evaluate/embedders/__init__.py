"""The embedding / classifier models of the evaluation suite, each in its own module, and the factory that builds
them by name (`build`) and computes their set metrics (`embedding_metrics`):

- "vggish" (vggish.py): FAD = Fréchet distance over the 0.96-s frame embeddings of all clips pooled (AudioLDM's
  audioldm_eval / the frechet_audio_distance package);
- "panns" (panns.py): FD on PANNs CNN14's 2048-d clip embeddings, KL (softmax and sigmoid forms) and IS on its 527
  AudioSet logits (audioldm_eval);
- "ast" (ast_tagger.py): KL in both directions and IS on an AudioSet classifier's logits per 10-s segment
  (audiocraft's PaSST KL, with transformers' AST standing in for PaSST);
- "features" (backend_features.py): FD over the frames of a MusicFlow feature backend's own streams.
base.py holds their common interface, per-clip cache and metric helpers; clap.py the CLAP score (text-audio, not an
embedder of one set); torch_common.py / local_models.py the loading plumbing of the PyTorch / transformers models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from musicflow_jax.evaluate.embedders.base import Embedder, EmbedError, Outputs, clip_outputs, pair_by_caption

EmbedderFactory = Callable[[str], Embedder]


# The model modules import torch / transformers (the `eval` and `torch` extras) when they load: each factory imports
# its module only when that model is asked for, so the weight-free metrics need neither.
def _vggish(path: str) -> Embedder:
    from musicflow_jax.evaluate.embedders.vggish import VGGishEmbedder

    return VGGishEmbedder(path)


def _panns(path: str) -> Embedder:
    from musicflow_jax.evaluate.embedders.panns import PannsEmbedder

    return PannsEmbedder(path)


def _ast(path: str) -> Embedder:
    from musicflow_jax.evaluate.embedders.ast_tagger import AstTagger

    return AstTagger(path)


def _features(path: str) -> Embedder:
    from musicflow_jax.evaluate.embedders.backend_features import BackendFeatures

    return BackendFeatures(path)


FACTORIES: dict[str, EmbedderFactory] = {"vggish": _vggish, "panns": _panns, "ast": _ast, "features": _features}


def embedding_metrics(embedders: Sequence[Embedder], generated: Sequence[Any], reference: Sequence[Any],
                      cache: Path | None, progress: bool = True) -> dict[str, dict[str, float | int | None]]:
    """{embedder name: its metrics} for clip sets with `.path` and `.caption` (musicflow_jax.evaluate.report.Clip)."""
    pairs = pair_by_caption([c.caption for c in generated], [c.caption for c in reference])
    out = {}
    for emb in embedders:
        fp = emb.fingerprint()

        def run(clips: Sequence[Any], what: str, emb: Embedder = emb, fp: str = fp) -> list[Outputs]:
            return [clip_outputs(emb, c.path, cache, fp)
                    for c in tqdm(clips, desc=f"{emb.name} {what}", disable=not progress)]

        out[emb.name] = emb.metrics(run(generated, "generated"), run(reference, "reference"), pairs)
    return out


def build(specs: dict[str, str | None]) -> list[Embedder]:
    """Embedders for the given {name: weight path or folder} (None = not requested), in FACTORIES order."""
    unknown = sorted(set(specs) - set(FACTORIES))
    if unknown:
        raise EmbedError(f"unknown embedding model(s) {unknown}: choose from {sorted(FACTORIES)}")
    return [FACTORIES[name](str(p)) for name, p in ((n, specs.get(n)) for n in FACTORIES) if p]

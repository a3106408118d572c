"""Model-based metrics of a generated set against a reference set: one `Embedder` per embedding/classifier model,
its per-clip outputs cached by content hash and model fingerprint, and the set metrics the model's reference
toolkit defines on them.

Embedders (each module documents its model's conventions):
- "vggish" (musicflow_jax.evaluate.vggish): FAD = Fréchet distance over the 0.96-s frame embeddings of all clips
  pooled (AudioLDM's audioldm_eval / the frechet_audio_distance package);
- "panns" (musicflow_jax.evaluate.panns): FD on PANNs CNN14's 2048-d clip embeddings, KL (softmax and sigmoid
  forms) and IS on its 527 AudioSet logits (audioldm_eval);
- "ast" (musicflow_jax.evaluate.ast_tagger): KL in both directions and IS on an AudioSet classifier's logits per
  10-s segment (audiocraft's PaSST KL, with transformers' AST standing in for PaSST);
- "features" (musicflow_jax.evaluate.backend_features): FD over the frames of a MusicFlow feature backend's
  semantic and acoustic streams (the project's Flax HuBERT/Encodec or weight-free parts; torch-free).

Pairing (KL): generated clip i is compared with the reference clip it was made for. `pair_by_caption` pairs each
generated clip with the first unused reference clip of the same caption (manifest order), which is the generation
order of `musicflow_jax.evaluate.model`; audioldm_eval pairs by file name instead. Unpaired clips are left out of
KL and counted.

Cache: `<cache>/embed/<name>-<fingerprint[:16]>/<sha256 of the file's bytes>.npz`; the fingerprint hashes the
model's weight files and its conventions version, so new weights or new preprocessing never reuse old outputs.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from musicflow_jax.core.audio import read_audio
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.evaluate import distributions
from musicflow_jax.evaluate.frechet import frechet_distance
from musicflow_jax.utils.atomic_io import write_bytes

Outputs = dict[str, np.ndarray]


class EmbedError(MusicFlowError):
    """An embedding model or clip that cannot be used; the message names it and the fix."""


class Embedder(Protocol):
    name: str  # the results.json key ("vggish", "panns", "ast", "features")

    def fingerprint(self) -> str: ...  # hex digest of the weights and the conventions version

    def outputs(self, audio: np.ndarray, sample_rate: int) -> Outputs: ...  # one mono clip -> named arrays

    def metrics(self, gen: Sequence[Outputs], ref: Sequence[Outputs], pairs: Sequence[tuple[int, int]]
                ) -> dict[str, float | int | None]: ...


def hash_files(paths: Sequence[Path], extra: str = "") -> str:
    """sha256 over the files' bytes (in order) and `extra`."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def clip_outputs(embedder: Embedder, path: str | Path, cache: Path | None, fingerprint: str) -> Outputs:
    """The embedder's outputs for one audio file (mono, native rate), from the cache when it holds them."""
    data = Path(path).read_bytes()
    hit = None
    if cache is not None:
        hit = cache / "embed" / f"{embedder.name}-{fingerprint[:16]}" / f"{hashlib.sha256(data).hexdigest()}.npz"
        if hit.is_file():
            with np.load(hit) as z:
                return {k: z[k] for k in z.files}
    x, sr = read_audio(path)
    if not np.isfinite(x).all():
        raise EmbedError(f"{path}: audio contains NaN/inf; regenerate or drop the clip")
    out = embedder.outputs(x, sr)
    if hit is not None:
        buf = io.BytesIO()
        np.savez(buf, **out)
        write_bytes(hit, buf.getvalue())
    return out


def pair_by_caption(gen_captions: Sequence[str], ref_captions: Sequence[str]) -> list[tuple[int, int]]:
    """(generated index, reference index) pairs: each generated clip with the first unused reference clip of the
    same caption."""
    free: dict[str, list[int]] = {}
    for j, c in enumerate(ref_captions):
        free.setdefault(c, []).append(j)
    pairs = []
    for i, c in enumerate(gen_captions):
        if free.get(c):
            pairs.append((i, free[c].pop(0)))
    return pairs


def fd_frames(gen: Sequence[Outputs], ref: Sequence[Outputs], key: str) -> float | None:
    """FD between the frames of all generated clips and of all reference clips (`key`: (frames, d) per clip)."""
    g, r = np.concatenate([o[key] for o in gen]), np.concatenate([o[key] for o in ref])
    return frechet_distance(g, r) if len(g) >= 2 and len(r) >= 2 else None


def fd_clips(gen: Sequence[Outputs], ref: Sequence[Outputs], key: str) -> float | None:
    """FD between per-clip embeddings (`key`: (d,) per clip)."""
    if len(gen) < 2 or len(ref) < 2:
        return None
    return frechet_distance(np.stack([o[key] for o in gen]), np.stack([o[key] for o in ref]))


def paired_rows(gen: Sequence[Outputs], ref: Sequence[Outputs], pairs: Sequence[tuple[int, int]], key: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row-paired (N, C) logits of paired clips; `key` holds (C,) or (segments, C) per clip. Clips of different
    lengths contribute their common leading segments (audiocraft splits both clips of a pair the same way)."""
    gs, rs = [], []
    for i, j in pairs:
        g, r = np.atleast_2d(gen[i][key]), np.atleast_2d(ref[j][key])
        n = min(len(g), len(r))
        gs.append(g[:n])
        rs.append(r[:n])
    return np.concatenate(gs), np.concatenate(rs)


def kl_and_is(gen: Sequence[Outputs], ref: Sequence[Outputs], pairs: Sequence[tuple[int, int]], key: str,
              activations: Sequence[str] = ("softmax",), reverse: bool = False) -> dict[str, float | int | None]:
    """KL(reference || generated) per activation ("kl_softmax", ...; `reverse` adds "kl_softmax_qp" =
    KL(generated || reference)), "kl_pairs", and the IS of the generated logits ("is_mean", "is_std"; 10 splits as
    audioldm_eval, fewer when there are fewer than 10 rows)."""
    out: dict[str, float | int | None] = {"kl_pairs": len(pairs)}
    if pairs:
        g, r = paired_rows(gen, ref, pairs, key)
        for act in activations:
            out[f"kl_{act}"] = distributions.kl_divergence(g, r, act)
            if reverse:
                out[f"kl_{act}_qp"] = distributions.kl_divergence(r, g, act)
    else:
        for act in activations:
            out[f"kl_{act}"] = None
    logits = np.concatenate([np.atleast_2d(o[key]) for o in gen])
    mean, std = distributions.inception_score(logits, splits=min(distributions.IS_SPLITS, len(logits)))
    out.update(is_mean=mean, is_std=std)
    return out

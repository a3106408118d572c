"""Training data for the codec's decoder from what stage 2 generates: each real clip's own semantic stream goes
through stage 2 (its default sampling, the clip's caption), and the generated latents are paired with the clip's
audio. A decoder-only codec run (training/codec_trainer.py, `data.pairs`) then also learns to decode the latents
the flow actually produces, not only the encoder's, as TTS vocoders are fine-tuned on predicted spectrograms (its
measured trade-off on the bundled model: docs/training.md). The latents are frame-aligned with the clip (stage 2
follows the stream frame by frame), not sample-exact, so that run scores them by magnitudes only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from musicflow_jax.core.audio import AudioError, read_audio
from musicflow_jax.data.manifest import read_manifest
from musicflow_jax.data.pairs import save_pairs
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.inference.generation import Generation


class PairsError(MusicFlowError):
    """The manifest gives no clip long enough for the pairs asked for, with the fix."""


def write_pairs(mf: MusicFlow, manifest: str | Path, out: str | Path, *, clips: int, seconds: float = 8.0,
                split: str = "train", seed: int = 0, batch: int = 8, progress: bool = True) -> Path:
    """`clips` crops of `seconds` (whole codec frames) from the manifest's `split`, clips drawn without replacement and
    one uniform crop each from `seed`; stage 2 of `mf` on each crop's encoded semantic stream with its caption (noise
    seed `seed` + batch index); the raw generated latents and the crops written to `out` (data/pairs.py's format)."""
    be = mf.backend
    codec = be.acoustic.codec
    hop, rate = codec.hop_length, mf.sample_rate
    frames = int(round(seconds * codec.frame_rate))
    n_samples = frames * hop
    entries = [e for e in read_manifest(manifest)[0] if e.split == split]
    rng = np.random.default_rng(seed)
    texts, audio = [], []
    for i in rng.permutation(len(entries)):
        if len(texts) == clips:
            break
        try:
            x = read_audio(entries[i].path, rate)[0]
        except AudioError:
            continue
        if len(x) < n_samples:
            continue
        off = int(rng.integers(0, len(x) - n_samples + 1))
        texts.append(entries[i].caption)
        audio.append(x[off: off + n_samples])
    if len(texts) < clips:
        raise PairsError(f"{manifest}: only {len(texts)} readable clips of split {split!r} are >= {seconds:g} s, "
                         f"{clips} asked: lower clips or seconds")
    latents = []
    for k in tqdm(range(0, clips, batch), desc="decoder pairs", disable=not progress):
        xs = audio[k: k + batch]
        sem = be.normalize("semantic", be.encode_semantic(np.stack(xs)))  # the stream alone: no acoustic encode
        draft = Generation(audio=np.stack(xs), sample_rate=rate, semantic=sem, acoustic=np.zeros((len(xs), 0, 0)),
                           texts=texts[k: k + batch], seed=seed + k // batch, mode="generate", nfe={}, seconds=0.0)
        g = mf.refine(draft, progress=False)
        z = be.denormalize("acoustic", g.acoustic)
        latents.append(np.asarray(z[:, :frames], np.float32))
    return save_pairs(out, np.concatenate(latents), np.stack(audio), rate, hop)

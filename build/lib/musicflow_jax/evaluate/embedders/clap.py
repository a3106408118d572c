"""CLAP score: the mean cosine similarity between a caption's CLAP text embedding and the CLAP audio embedding of
the audio generated from it (audiocraft's `CLAPTextConsistencyMetric`, audiocraft/metrics/clap_consistency.py; the
"CLAP score" of Make-An-Audio, arXiv 2301.12661):

    CLAP = (1 / N) sum_i cos(e_text(c_i), e_audio(x_i)),  cos(a, b) = a.b / max(|a| |b|, 1e-8)

Models are transformers' `ClapModel` + `ClapProcessor` loaded from a local `save_pretrained` folder only (no hub
access), e.g. a copy of laion/clap-htsat-unfused or of the LAION music checkpoint audiocraft uses
(music_audioset_epoch_15_esc_90.14) converted to transformers. Conventions, as audiocraft's:
- audio is downmixed to mono and resampled to the feature extractor's rate (48 kHz) - here with scipy's polyphase
  filter (`musicflow_jax.audio.resample`; audiocraft uses julius' sinc resampler, a slightly different filter);
- the processor's own preprocessing: its feature extractor's log-mel front end, and for clips longer than its
  `max_length_s` (10 s) its truncation mode ("rand_trunc": one random 10-s crop, as laion_clap does for unfused
  models, "fusion" for fused ones); shorter clips are filled by its padding mode ("repeatpad"). The random crop
  is drawn from numpy's global generator, which `ClapScorer` seeds with `seed` for each call and restores after,
  so scores repeat;
- text is tokenised like laion_clap's RoBERTa tokenizer: padding to max_length 77 with truncation;
- embeddings are the projected (and L2-normalised) outputs of `get_text_features` / `get_audio_features`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from musicflow_jax.core.audio import resample
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.evaluate.embedders.local_models import load_local

TEXT_MAX_LEN = 77  # laion_clap / audiocraft tokenizer settings
COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps, as audiocraft calls it


class ClapError(MusicFlowError):
    """A CLAP folder or input that cannot be used; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class ClapResult:
    score: float  # mean cosine over clips
    per_clip: np.ndarray  # (N,) cosines


def cosine(a: np.ndarray, b: np.ndarray, eps: float = COS_EPS) -> np.ndarray:
    """Row-wise cosine similarity of (N, D) arrays (torch's cosine_similarity: a.b / max(|a| |b|, eps))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, eps)


def _pooled(out):  # transformers >= 5 returns a ModelOutput whose pooler_output is the projected embedding
    return out if hasattr(out, "detach") else out.pooler_output


class ClapScorer:
    """CLAP text/audio embeddings and the CLAP score from a local transformers CLAP folder."""
    def __init__(self, folder: str | Path, device: str = "cpu", batch_size: int = 8, seed: int = 0):
        import torch
        from transformers import ClapModel, ClapProcessor


        self.processor, model = load_local(folder, "CLAP", (ClapProcessor.from_pretrained, ClapModel.from_pretrained),
                                           ClapError)
        self.model = model.to(device).eval()
        self.torch, self.device, self.batch_size, self.seed = torch, device, batch_size, seed

    @property
    def sample_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(N, P) projected text embeddings."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.processor(text=list(texts[i:i + self.batch_size]), padding="max_length",
                                 max_length=TEXT_MAX_LEN, truncation=True, return_tensors="pt")
            with self.torch.no_grad():
                out.append(_pooled(self.model.get_text_features(**enc.to(self.device))).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def audio_embeddings(self, audio: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """(N, P) projected audio embeddings of mono clips (each (S,), or (channels, S): downmixed) at
        `sample_rate`, resampled to the model's rate."""
        clips = []
        for i, x in enumerate(audio):
            x = np.asarray(x, np.float32)
            if x.ndim == 2:
                x = x.mean(0)
            if x.ndim != 1 or x.size == 0:
                raise ClapError(f"audio clip {i}: expected a non-empty (samples,) or (channels, samples) array, got "
                                f"shape {x.shape}")
            clips.append(resample(x, sample_rate, self.sample_rate))
        state = np.random.get_state()
        np.random.seed(self.seed)  # the feature extractor's random crop of clips longer than max_length_s
        try:
            out = []
            for i in range(0, len(clips), self.batch_size):
                enc = self.processor(audio=clips[i:i + self.batch_size], sampling_rate=self.sample_rate,
                                     return_tensors="pt")
                with self.torch.no_grad():
                    out.append(_pooled(self.model.get_audio_features(**enc.to(self.device))).cpu().numpy())
        finally:
            np.random.set_state(state)
        return np.concatenate(out).astype(np.float64)

    def score(self, audio: Sequence[np.ndarray], texts: Sequence[str], sample_rate: int) -> ClapResult:
        """Mean over clips of cos(text embedding of texts[i], audio embedding of audio[i])."""
        if len(audio) != len(texts) or not texts:
            raise ClapError(f"CLAP score pairs each clip with its caption: got {len(audio)} clips and {len(texts)} "
                            "captions; pass one caption per clip")
        per_clip = cosine(self.audio_embeddings(audio, sample_rate), self.text_embeddings(texts))
        return ClapResult(float(per_clip.mean()), per_clip)

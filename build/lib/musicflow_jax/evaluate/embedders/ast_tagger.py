"""An AudioSet classifier through transformers' Audio Spectrogram Transformer (AST), standing in for PaSST in
audiocraft's KL (audiocraft/metrics/kld.py, `PasstKLDivergenceMetric`): PaSST (hear21passt) is not on PyPI and its
weights cannot be fetched here; AST is the closest AudioSet tagger transformers ships (e.g. a local copy of
MIT/ast-finetuned-audioset-10-10-0.4593, 527 classes, saved with save_pretrained). Numbers from it are NOT
PaSST's: compare them only with runs of the same AST checkpoint.

audiocraft's conventions, kept:
- audio downmixed to mono and resampled to the model's rate (AST: 16 kHz; PaSST: 32 kHz) - here with scipy's
  polyphase filter (`musicflow_jax.audio.resample`; audiocraft uses julius' sinc resampler);
- no padding of the clip: it is split into consecutive segments of `segment_seconds` (10 s, PaSST's training
  length); segments of <= 0.15 s are dropped; each segment is one row of label probabilities
  (softmax over the classes), and the rows of a generated clip and of its reference clip are paired in order;
- KL "kld_pq" = KL(reference || generated) with eps 1e-6 inside the generated log, "kld_qp" the reverse, each the
  mean over paired rows (musicflow_jax.evaluate.distributions).
Differences, as AST needs them: each segment goes through the model's own feature extractor (Kaldi-style 128-band
log-mel fbank, normalised with the extractor's AudioSet mean/std), which pads or cuts it to its `max_length`
frames (1024 = 10.24 s), since AST's position embeddings fix the input length; transformers computes that fbank
with torchaudio when it imports, else with its numpy implementation (here: numpy). The IS over the generated rows
is reported too (audioldm_eval's definition).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from musicflow_jax.core.audio import resample
from musicflow_jax.evaluate.embedders.base import EmbedError, Outputs, hash_files, kl_and_is
from musicflow_jax.evaluate.embedders.local_models import load_local

CONVENTIONS_VERSION = "ast-1"
SEGMENT_SECONDS = 10.0  # PaSST's training length, audiocraft's split
MIN_SECONDS = 0.15  # audiocraft drops shorter segments


class AstTagger:
    """AudioSet label logits per 10-s segment from a local transformers AST classification folder."""
    name = "ast"

    def __init__(self, folder: str | Path, device: str = "cpu", segment_seconds: float = SEGMENT_SECONDS,
                 batch_size: int = 8):
        from transformers import ASTFeatureExtractor, ASTForAudioClassification


        folder = Path(folder)
        self.extractor, model = load_local(
            folder, "--ast AST", (ASTFeatureExtractor.from_pretrained, ASTForAudioClassification.from_pretrained),
            EmbedError, ("config.json", "preprocessor_config.json"))
        self.model = model.to(device).eval()
        self.folder, self.device, self.batch_size = folder, device, batch_size
        self.segment_seconds = float(segment_seconds)

    @property
    def sample_rate(self) -> int:
        return int(self.extractor.sampling_rate)

    def fingerprint(self) -> str:
        files = sorted(p for p in self.folder.iterdir() if p.is_file())
        return hash_files(files, f"{CONVENTIONS_VERSION}:{self.segment_seconds}")

    def segments(self, audio: np.ndarray, sample_rate: int) -> list[np.ndarray]:
        """The mono clip at the model's rate, cut into `segment_seconds` pieces (no padding, > 0.15 s kept)."""
        x = np.asarray(audio, np.float32)
        if x.ndim == 2:
            x = x.mean(0)
        x = resample(x, sample_rate, self.sample_rate)
        step = int(round(self.segment_seconds * self.sample_rate))
        keep = [x[i: i + step] for i in range(0, x.size, step)]
        keep = [s for s in keep if s.size > int(MIN_SECONDS * self.sample_rate)]
        if not keep:
            raise EmbedError(f"a clip of {x.size / self.sample_rate:.3f} s is too short for the AST KL: clips need "
                             f"> {MIN_SECONDS} s")
        return keep

    def segment_logits(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(segments, classes) float64 logits of one clip."""
        import torch

        segs = self.segments(audio, sample_rate)
        out = []
        for i in range(0, len(segs), self.batch_size):
            feats = self.extractor(segs[i: i + self.batch_size], sampling_rate=self.sample_rate, return_tensors="pt")
            with torch.no_grad():
                out.append(self.model(**feats.to(self.device)).logits.double().cpu().numpy())
        return np.concatenate(out)

    def outputs(self, audio: np.ndarray, sample_rate: int) -> Outputs:
        return {"logits": self.segment_logits(audio, sample_rate)}

    def metrics(self, gen: Sequence[Outputs], ref: Sequence[Outputs], pairs: Sequence[tuple[int, int]]
                ) -> dict[str, float | int | None]:
        """"kl_softmax" (audiocraft's kld_pq), "kl_softmax_qp" (kld_qp), "kl_pairs", "is_mean", "is_std"."""
        return kl_and_is(gen, ref, pairs, "logits", ("softmax",), reverse=True)

"""A learnable synthetic data source in the form of decoded records: what `data.source=synthetic` trains on (tests,
benchmarks, CI), with no audio, no encoders and no files."""

from __future__ import annotations

import numpy as np

from musicflow_jax.core import frames
from musicflow_jax.core.config import Config
from musicflow_jax.data.records import Clip

SYNTHETIC_CAPTIONS = (
    "A slow Bach chorale in G minor played on a church organ",
    "A fast piano sonata in C major",
    "A gentle string quartet in D major at 72 BPM",
    "A lively flute and harp duet in A minor",
    "A solemn brass choir in E flat major",
    "A playful clarinet melody in F major at 120 BPM",
    "A dark cello solo in B minor",
    "A bright marimba pattern in G major",
)
SYNTHETIC_SIZES = {"train": 4096, "valid": 64, "test": 64}


class SyntheticSource:
    """Learnable fake clips, deterministic in (seed, index), in the same form as decoded records.

    The caption k (one of SYNTHETIC_CAPTIONS) fixes per-channel frequencies and phases of smooth sinusoids;
    each clip adds a random time shift and a small noise, so text predicts the pattern and context predicts
    the shift. The acoustic stream is a fixed seeded nonlinear map of the (75 Hz upsampled) semantic stream,
    so stage 2 is learnable from `cond`. Clip lengths vary (some shorter than a crop) to exercise padding.
    """

    def __init__(self, cfg: Config, split: str, seed: int = 0):
        stage2 = cfg.model.stage == "acoustic"
        self.sem_dim = cfg.model.cond_dim if stage2 else cfg.model.feature_dim
        self.ac_dim = cfg.model.feature_dim if stage2 else 0
        self.rates = (cfg.data.semantic_rate, cfg.data.acoustic_rate)
        self.frames = cfg.data.frames
        self.size = SYNTHETIC_SIZES.get(split, 64)
        self.seed = seed + {"train": 0, "valid": 1, "test": 2}.get(split, 3) * 1_000_003
        crng = np.random.default_rng(1234)  # shared by all splits: the "music" itself
        k = len(SYNTHETIC_CAPTIONS)
        self.freq_kc = crng.uniform(0.2, 3.0, size=(k, self.sem_dim))  # Hz
        self.phase_kc = crng.uniform(0, 2 * np.pi, size=(k, self.sem_dim))
        self.w_cd = crng.normal(size=(max(self.sem_dim, 1), max(self.ac_dim, 1))) / np.sqrt(max(self.sem_dim, 1))
        self.text_dim, self.text_len = cfg.text.dim, cfg.text.max_len
        self.text_kle = crng.normal(size=(k, self.text_len, self.text_dim)).astype(np.float32)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Clip:
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(len(SYNTHETIC_CAPTIONS)))
        sem_rate, ac_rate = self.rates
        ac_over_sem = ac_rate / sem_rate
        # semantic frames so that the acoustic stream (if any) spans ~[0.5, 2] crops
        crop_sem = self.frames / ac_over_sem if self.ac_dim else self.frames
        n_sem = int(rng.integers(max(2, int(crop_sem // 2)), int(2 * crop_sem) + 2))
        t = np.arange(n_sem) / sem_rate + rng.uniform(0.0, 0.5)  # small random shift: context helps, text decides
        sem = np.sin(2 * np.pi * self.freq_kc[k] * t[:, None] + self.phase_kc[k]) * np.sqrt(2)
        sem = (sem + 0.05 * rng.normal(size=sem.shape)).astype(np.float32)
        if self.ac_dim:
            n_ac = frames.frames_at(n_sem / sem_rate, ac_rate)
            up = frames.upsample_nearest(sem, n_ac, sem_rate, ac_rate)
            ac = (np.tanh(up @ self.w_cd) * 1.5).astype(np.float32)
        else:
            ac = np.zeros((0, 0), np.float32)
        mask = np.zeros(self.text_len, bool)
        mask[: min(self.text_len, len(SYNTHETIC_CAPTIONS[k]) + 1)] = True
        return Clip(semantic=sem, units=np.zeros(n_sem, np.int32), acoustic=ac, caption=SYNTHETIC_CAPTIONS[k],
                    duration=n_sem / sem_rate, source=f"synthetic:{index}", clip_id=f"syn-{index}",
                    t5_emb=self.text_kle[k] * mask[:, None], t5_mask=mask)

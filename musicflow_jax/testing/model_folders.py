"""A tiny randomly initialised two-stage MusicFlow model folder (mel backend) for generation tests.

Windows are 1 s (50 semantic / 75 acoustic frames), so anything longer than 1 s exercises long-form windowing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from musicflow_jax.backends import FeatureBackend, StreamStats
from musicflow_jax.backends.chroma import ChromaSemantic
from musicflow_jax.backends.mel import MelAcoustic, MelConfig
from musicflow_jax.core.config import Config, DataConfig, ModelConfig, SampleConfig, TextConfig
from musicflow_jax.encoders.text import TextEncoder
from musicflow_jax.models.stage_file import save_stage
from musicflow_jax.models.transformer import FlowTransformer

MEL = MelConfig(n_mels=32, griffin_lim_iters=8)


def tiny_configs(window_s: float = 1.0, text: TextConfig | None = None, beat: bool = False) -> tuple[Config, Config]:
    sem_dim = ChromaSemantic().dim
    text = text or TextConfig(checkpoint="", max_len=48, dim=32)
    model = ModelConfig(stage="semantic", feature_dim=sem_dim, cond_dim=0, dim=32, depth=2, heads=2, mlp_dim=64,
                        time_dim=16, dtype="float32")
    sample = SampleConfig(solver="euler", steps=4, cfg_scale=2.0)
    c1 = Config(name="test_stage1", text=text, model=dataclasses.replace(model, beat=beat),
                data=DataConfig(frames=int(50 * window_s), batch_size=2),
                sample=sample)
    c2 = Config(name="test_stage2", text=text,
                model=dataclasses.replace(model, stage="acoustic", feature_dim=MEL.n_mels, cond_dim=sem_dim),
                data=DataConfig(frames=int(75 * window_s), batch_size=2), sample=sample)
    return c1, c2


def make_model_folder(folder: Path, seed: int = 0, window_s: float = 1.0, text: TextConfig | None = None,
                      beat: bool = False) -> Path:
    """stage1/stage2 safetensors (random weights), features.json (mel backend, stats from noise), text_encoder/
    (`text`: the text encoder's config; default the embedded byte-level T5 of dim 32); `beat`: stage 1 reads the
    captions' beat grid (model.beat)."""
    folder = Path(folder)
    c1, c2 = tiny_configs(window_s, text, beat)
    save_stage(folder / "stage1.safetensors", c1, FlowTransformer(c1, rngs=nnx.Rngs(seed)))
    save_stage(folder / "stage2.safetensors", c2, FlowTransformer(c2, rngs=nnx.Rngs(seed + 1)))
    TextEncoder.load(c1.text, seed).save(folder / "text_encoder")
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(1, 24_000)).astype(np.float32) * 0.1
    z = MelAcoustic(MEL).encode(noise)[0]
    sem_dim = ChromaSemantic().dim
    stats = {"semantic": StreamStats(np.zeros(sem_dim, np.float32), np.ones(sem_dim, np.float32)),
             "acoustic": StreamStats(z.mean(0), z.std(0) + 0.5)}
    FeatureBackend(ChromaSemantic(), MelAcoustic(MEL), stats).save(folder)
    return folder


def tone(seconds: float, sr: int = 24_000, freqs: tuple[float, ...] = (220.0, 330.0, 440.0)) -> np.ndarray:
    """A deterministic chord with a slow amplitude envelope (a prompt clip)."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    return (0.5 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)

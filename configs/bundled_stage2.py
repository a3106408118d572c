"""Stage 2 of the bundled model: chroma (16-d, upsampled to 75 Hz) + text -> 64-band log-mel frames (75 Hz),
derived from bundled_stage1."""

import dataclasses

from configs.bundled_stage1 import WINDOW_SECONDS
from configs.bundled_stage1 import get_config as stage1_config
from musicflow_jax.backends.mel import MelAcoustic
from musicflow_jax.config import Config


def get_config() -> Config:
    s1 = stage1_config()
    return dataclasses.replace(
        s1,
        name="bundled_stage2",
        model=dataclasses.replace(s1.model, stage="acoustic", feature_dim=MelAcoustic().dim,
                                  cond_dim=s1.model.feature_dim),
        data=dataclasses.replace(s1.data, frames=int(75 * WINDOW_SECONDS)),
        train=dataclasses.replace(s1.train, steps=700),
    )

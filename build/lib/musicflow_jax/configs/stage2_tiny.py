"""CPU-sized stage 2, derived from stage2_base (Encodec latent 16-d from the tiny random codec,
semantic condition 32-d, T5 d_model 32)."""

import dataclasses

from musicflow_jax.core.config import Config

from .stage1_tiny import get_config as tiny1_config
from .stage2_base import get_config as base_config


def get_config() -> Config:
    base, tiny1 = base_config(), tiny1_config()
    return dataclasses.replace(
        tiny1,
        name="stage2_tiny",
        model=dataclasses.replace(tiny1.model, stage="acoustic", feature_dim=16, cond_dim=tiny1.model.feature_dim),
        data=dataclasses.replace(tiny1.data, frames=96),
        mesh=base.mesh,
    )

"""The bundled model's few-step stage 2: a MeanFlow student of bundled_stage2 (unguided, as its teacher samples) in 2
average-velocity jumps per window; see bundled_turbo1. 700 steps: its loss still fell at 300, and 1,000 lowered the
FD proxy 6 % at the same key (docs/training.md; the student of the first-pass stage 2); the student of the third-pass
stage 2 trains 700, which keeps the recipe near 150 min, and beat the 1,000-step student of the first pass in every
row (MODEL_CARD.md, "Stage 2, a third pass": text key exact 0.656 -> 0.906, FD proxy 8734 -> 7260, seed 0)."""

from musicflow_jax.core.config import Config

from .bundled_stage2 import get_config as teacher_config
from .bundled_turbo1 import student_of


def get_config() -> Config:
    return student_of(teacher_config(), "bundled_turbo2", steps=700)

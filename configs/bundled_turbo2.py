"""The bundled model's few-step stage 2: a MeanFlow student of bundled_stage2 (unguided, as its teacher samples) in 2
average-velocity jumps per window; see bundled_turbo1. 700 steps. The first-pass stage 2's student still lowered its
loss at 300 steps, and 1,000 lowered its FD proxy 6 % at the same key (docs/training.md); the third-pass stage 2's
student trains 700, which keeps the recipe within ~150 min, and beat the first pass's 1,000-step student in every row
(MODEL_CARD.md, "Stage 2, a third pass": text key exact 0.656 -> 0.906, FD proxy 8734 -> 7260, seed 0)."""

from musicflow_jax.core.config import Config

from .bundled_stage2 import get_config as teacher_config
from .bundled_turbo1 import student_of


def get_config() -> Config:
    return student_of(teacher_config(), "bundled_turbo2", steps=700)

"""The bundled model's few-step stage 2: a MeanFlow student of bundled_stage2 (unguided, as its teacher samples) in 2
average-velocity jumps per window; see bundled_turbo1. 300 steps (6.1 min alone), which keep the recipe within ~150
min with the codec decoder's second pass. Measured on the third-pass stage 2 with the two-pass decoder (MODEL_CARD.md,
"The codec's decoder, a second pass"), seed 0, against 700 steps: text key exact 0.875 (0.875), held-out wordings
0.688 (0.750), continuation 0.750 (0.781); FD proxy 7416 / 6991 / 8137 (6924 / 6518 / 7661), 7 % higher."""

from musicflow_jax.core.config import Config

from .bundled_stage2 import get_config as teacher_config
from .bundled_turbo1 import student_of


def get_config() -> Config:
    return student_of(teacher_config(), "bundled_turbo2", steps=300)

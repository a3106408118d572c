"""The bundled model's few-step stage 1: a MeanFlow student of bundled_stage1 that samples in 2 average-velocity jumps
per window with the teacher's CFG 5 built into its weights (no doubled batch). tools/train_bundled.py's `turbo` step
(`--only turbo --turbo-data FEATURES`: on any features) sets data.path, data.stats (the teacher's: the student reads
the teacher's normalised streams) and distill.teacher. Method and settings chosen by measurement (docs/training.md)."""

import dataclasses

from musicflow_jax.core.config import Config, DistillConfig

from .bundled_stage1 import get_config as teacher_config

STEPS = 300


def student_of(teacher: Config, name: str, steps: int = STEPS) -> Config:
    """`teacher`'s config as a MeanFlow student at the teacher's own guidance scale, trained `steps` steps."""
    return dataclasses.replace(
        teacher,
        name=name,
        model=dataclasses.replace(teacher.model, interval=True),
        optim=dataclasses.replace(teacher.optim, lr=3e-4, warmup_steps=20),
        # the student starts from its teacher (distill.teacher), not from what the teacher started from
        train=dataclasses.replace(teacher.train, steps=steps, ckpt_every=100, init_from="", init_partial=False),
        distill=DistillConfig(method="meanflow", cfg_scale=teacher.sample.cfg_scale),
        # from unit noise (temperature 1), the noise it was distilled on, whatever its teacher's sampling temperature
        # (measured on the held-out text row, seed 0: the bundled stage-2 student at 0.6 gave FD proxy 13248, at 1 8550)
        sample=dataclasses.replace(teacher.sample, solver="average", steps=2, cfg_scale=1.0, temperature=1.0),
    )


def get_config() -> Config:
    return student_of(teacher_config(), "bundled_turbo1")

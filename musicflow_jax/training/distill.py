"""A few-step student's teacher in the trainer (distill.teacher, flow.distill_loss): the guided flow stage it learns
from, read from an exported stage or a run's checkpoint (its EMA), checked strictly against the student's model
without the interval input, and placed on the mesh inside jit with the student's shardings (no full copy on one
device). The student starts from the same weights (`load_teacher`'s flat weights as the trainer's base: every
parameter but the zero-initialised interval embedding, so step 0's student is the teacher). A resumed run refuses a
changed teacher (training/flow_trainer.py fingerprints it as it does train.init_from).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from musicflow_jax.core.config import Config
from musicflow_jax.training import finetune, runs
from musicflow_jax.training.flow_step import TeacherSpec, build_model, teacher_spec


def load_teacher(cfg: Config, mesh: Mesh) -> tuple[TeacherSpec, Any, dict[str, np.ndarray]]:
    """(spec, weights (params, rest) on the mesh, flat weights) of distill.teacher, read once: the flat weights are
    also the student's starting point (create_state's `base`; the student's interval parameters are not in them and
    keep their zero-output init)."""
    spec = teacher_spec(cfg, mesh)
    assert spec is not None, "load_teacher needs distill.teacher"
    flat, source = runs.load_init(cfg.distill.teacher, "distill.teacher")
    finetune.check_init(runs.param_shapes(spec.cfg), flat, f"distill.teacher {source}", partial=False)

    def make(values: dict[str, Any]) -> tuple[Any, Any]:
        with nnx.use_eager_sharding(False):
            _, params, rest = nnx.split(build_model(spec.cfg, 0), nnx.Param, ...)
        return finetune.load_values(params, values), rest

    return spec, jax.jit(make, out_shardings=spec.shardings)(flat), flat

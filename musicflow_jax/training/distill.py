"""A few-step student's teacher in the trainer (distill.teacher, flow.distill_loss): the guided flow stage it learns
from, read from an exported stage or a run's checkpoint (its EMA), checked strictly against the student's model
without the interval input, and placed on the mesh inside jit with the student's shardings (no full copy on one
device). The student starts from the same weights (`student_base`: every parameter but the zero-initialised interval
embedding, so step 0's student is the teacher). A resumed run refuses a changed teacher (training/flow_trainer.py
fingerprints it as it does train.init_from).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from musicflow_jax.core.config import Config
from musicflow_jax.models.lora import FineTuneError
from musicflow_jax.training import finetune, runs
from musicflow_jax.training.flow_step import TeacherSpec, build_model, teacher_config, teacher_spec

INTERVAL_PREFIX = "interval_"  # the student's own parameters (models/transformer.py): absent from its teacher


def _teacher_flat(cfg: Config) -> tuple[dict[str, np.ndarray], str]:
    flat, source = runs.load_init(cfg.distill.teacher)
    finetune.check_init(runs.param_shapes(teacher_config(cfg)), flat, f"distill.teacher {source}", partial=False)
    return flat, source


def load_teacher(cfg: Config, mesh: Mesh) -> tuple[TeacherSpec, Any, str]:
    """(spec, weights (params, rest) on the mesh, description) of distill.teacher."""
    spec = teacher_spec(cfg, mesh)
    assert spec is not None, "load_teacher needs distill.teacher"
    flat, source = _teacher_flat(cfg)

    def make(values: dict[str, Any]) -> tuple[Any, Any]:
        with nnx.use_eager_sharding(False):
            _, params, rest = nnx.split(build_model(spec.cfg, 0), nnx.Param, ...)
        return finetune.load_values(params, values), rest

    weights = jax.jit(make, out_shardings=spec.shardings)(flat)
    return spec, weights, source


def student_base(cfg: Config) -> dict[str, Any]:
    """The student's starting weights: the teacher's, for every parameter but the interval embedding (which starts at
    a zero output, so the student's velocity is the teacher's until it trains)."""
    flat, _ = _teacher_flat(cfg)
    extra = sorted(k for k in runs.param_shapes(cfg) if k not in flat)
    bad = [k for k in extra if not k.startswith(INTERVAL_PREFIX)]
    if bad:  # unreachable while the student is the teacher + the interval embedding (check_init above is strict)
        raise FineTuneError(f"distill.teacher lacks student parameters {bad[:3]}")
    return flat

"""A training run's folder read back: its config, its checkpoint restored onto one local device whatever mesh wrote
it, the EMA model; and `train.init_from`, which starts a run from an exported stage or from another run's checkpoint
(the two read each other: a fine-tune of a fine-tune restores its base run, whose frozen base is its own init_from).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from musicflow_jax.core import config as config_lib
from musicflow_jax.core import sharding
from musicflow_jax.core.config import Config
from musicflow_jax.models import stage_file
from musicflow_jax.models.lora import FineTuneError, is_adapter
from musicflow_jax.models.params import flat_params
from musicflow_jax.models.params import param_shapes as model_param_shapes
from musicflow_jax.models.transformer import stack_unrolled
from musicflow_jax.training import checkpoint, finetune
from musicflow_jax.training.flow_step import build_model, create_state, make_setup
from musicflow_jax.training.state import merge_model


def read_config(workdir: str | Path, step: int | None = None) -> Config:
    """The resolved config stored with a run's checkpoint (latest step unless `step`)."""
    root = Path(workdir) / "checkpoints"
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    if not steps:
        raise checkpoint.CheckpointError(f"no checkpoint steps under {root}: is {workdir} a training run "
                                         "folder?")
    if step is not None and step not in steps:
        raise checkpoint.CheckpointError(f"no checkpoint step {step} in {root}; available steps: "
                                         f"{', '.join(map(str, steps))}: pass one of them")
    step = steps[-1] if step is None else step
    return config_lib.from_json((root / str(step) / "config" / "metadata").read_text())


def load_state(workdir: str | Path, step: int | None = None) -> tuple[Config, Any, Any, int]:
    """(saved config, graphdef, TrainState with the frozen base of a fine-tune, step) of a run's checkpoint,
    restored onto one local device whatever mesh wrote it."""
    cfg = read_config(workdir, step)
    one = config_lib.apply_overrides(cfg, ["mesh.shape=(1,1,1)"])
    setup = make_setup(one, sharding.make_mesh(one.mesh, jax.local_devices()[:1]))
    manager = checkpoint.make_manager(workdir, one, async_save=False)
    try:
        step, state, _ = checkpoint.restore(manager, setup.abstract_state, step=step)
    finally:
        manager.close()
    if setup.abstract_state.frozen is not None:  # fine-tune: the frozen base is train.init_from's
        base = init_weights(one, verbose=False)
        state = state.replace(frozen=create_state(one, setup, base=base).frozen)
    return cfg, setup.graphdef, state, step


def load_model(workdir: str | Path, step: int | None = None, *, ema: bool = True) -> tuple[Config, Any, int]:
    """(saved config, FlowTransformer with the EMA (or raw) weights, adapters merged, step) from a run's
    checkpoint."""
    cfg, graphdef, state, step = load_state(workdir, step)
    return cfg, merge_model(graphdef, state.ema if ema else state.params, state.frozen, state.rest), step


def param_shapes(cfg: Config, build: Callable[[Config, int], nnx.Module] = build_model) -> dict[str, tuple]:
    """Flat parameter path -> shape of the base model `cfg` builds, adapters left out (no allocation)."""
    with nnx.use_eager_sharding(False):
        return {k: v for k, v in model_param_shapes(nnx.eval_shape(lambda: build(cfg, 0))).items() if not is_adapter(k)}


def init_weights(cfg: Config, verbose: bool = True) -> dict[str, Any] | None:
    """train.init_from's weights checked against this config's model (see finetune.check_init), or None."""
    if not cfg.train.init_from:
        return None
    flat, source = load_init(cfg.train.init_from)
    shapes = param_shapes(cfg)
    report = finetune.check_init(shapes, flat, source, cfg.train.init_partial)
    flat.update({k: finetune.grow(flat[k], shapes[k][0]) for k in report["grown"]})
    if verbose and jax.process_index() == 0:
        n = sum(int(np.prod(flat[k].shape)) for k in report["loaded"])
        print(f"init_from {source}: loaded {len(report['loaded'])} parameters ({n:,} values), missing "
              f"{len(report['missing'])}{' ' + str(report['missing'][:3]) if report['missing'] else ''}, grown "
              f"{len(report['grown'])}{' ' + str(report['grown']) if report['grown'] else ''}, unexpected "
              f"{len(report['unexpected'])}{' ' + str(report['unexpected'][:3]) if report['unexpected'] else ''}",
              file=sys.stderr)
    return {k: flat[k] for k in report["loaded"]}


def load_init(path: str | Path, key: str = "train.init_from") -> tuple[dict[str, np.ndarray], str]:
    """(flat float32 weights, description) of train.init_from (or the config `key` naming another such source, e.g.
    distill.teacher): an exported stage (file or folder) or a run's workdir (its latest checkpoint's EMA weights,
    adapters merged)."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        _, model, step = load_model(path)
        return flat_params(model), f"run {path} step {step} (EMA)"
    if not path.exists():
        raise FineTuneError(f"{key} {path} does not exist: pass an exported stage (.safetensors or folder "
                            "from python -m musicflow_jax.export) or a training run's workdir")
    try:
        saved_cfg, flat = stage_file.read_stage(path)
    except stage_file.StageError as e:
        raise FineTuneError(f"{key}: {e}") from None
    flat = stack_unrolled(flat, saved_cfg.model.depth)
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}, f"exported {saved_cfg.model.stage} stage {path}"



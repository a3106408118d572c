"""Export a training run for inference: the resolved config and the EMA (or raw) weights of one of its checkpoints,
restored onto one local device whatever mesh wrote it, written as one stage file (stage_io.py format) that
`MusicFlow` and `stage_io.load_stage` read. tools/export.py is the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from musicflow_jax import checkpoint, stage_io
from musicflow_jax import config as config_lib
from musicflow_jax.config import Config


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


def load_model(workdir: str | Path, step: int | None = None, *, ema: bool = True) -> tuple[Config, Any, int]:
    """(saved config, FlowTransformer with the EMA (or raw) weights, step) from a run's checkpoint, restored
    onto one local device whatever mesh wrote it."""
    from flax import nnx

    from musicflow_jax import sharding, train_state

    cfg = read_config(workdir, step)
    one = config_lib.apply_overrides(cfg, ["mesh.shape=(1,1,1)"])
    setup = train_state.make_setup(one, sharding.make_mesh(one.mesh, jax.local_devices()[:1]))
    manager = checkpoint.make_manager(workdir, one, async_save=False)
    try:
        step, state, _ = checkpoint.restore(manager, setup.abstract_state, step=step)
    finally:
        manager.close()
    model = nnx.merge(setup.graphdef, state.ema if ema else state.params, state.rest)
    return cfg, model, step


def export(workdir: str | Path, out: str | Path, step: int | None = None, *, ema: bool = True) -> Path:
    """Write `workdir`'s checkpoint (latest unless `step`) as a stage file at `out` (atomically)."""
    cfg, model, step = load_model(workdir, step, ema=ema)
    return stage_io.save_stage(out, cfg, model, extra={"step": step, "weights": "ema" if ema else "raw",
                                                       "workdir": str(workdir)})

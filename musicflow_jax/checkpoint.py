"""Orbax checkpoints of a training run: async, keep the latest N plus every K-th step, auto-resume.

One checkpoint (workdir/checkpoints/<step>/) is a composite of
  "state":  the TrainState pytree (params, optimizer, EMA, counters), saved sharded;
  "data":   the grain iterator state, one JSON file per process (each host reads its own shard);
  "config": the resolved Config as JSON.
Restoring takes the abstract state of the *current* mesh (ShapeDtypeStructs with shardings), so a
checkpoint written on one mesh shape restores onto any other.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from musicflow_jax import config as config_lib
from musicflow_jax.config import Config

ITEMS = ("state", "data", "config")


class DataStateHandler:
    """Orbax handler for the data iterator position: one JSON file per process. Unlike grain's own handler it
    takes a snapshot (`DataStateSave(iterator.get_state())`) when the save starts, so an async save cannot
    record batches the loop consumed after the checkpoint's step."""

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        (directory / _state_file()).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> Any:
        path = directory / _state_file()
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: the checkpoint was written with a different process count")
        return json.loads(path.read_text())

    def structure(self, directory: epath.Path) -> Any:
        return None

    def metadata(self, directory: epath.Path) -> Any:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass

    @classmethod
    def typestr(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"


def _state_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


def make_manager(workdir: str | Path, cfg: Config, *, async_save: bool = True) -> ocp.CheckpointManager:
    """CheckpointManager in workdir/checkpoints keeping train.keep latest and every train.keep_every-th step."""
    policies: list[Any] = [ocm.LatestN(n=max(cfg.train.keep, 1))]
    if cfg.train.keep_every > 0:
        policies.append(ocm.EveryNSteps(interval_steps=cfg.train.keep_every))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=True,
    )
    path = Path(workdir).resolve() / "checkpoints"
    return ocp.CheckpointManager(path, item_names=ITEMS, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any, cfg: Config,
         *, force: bool = False) -> bool:
    """Start saving (async); returns whether a save was started. Call `manager.wait_until_finished()`
    before relying on it (the train loop does so before exit)."""
    args = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config_lib.to_dict(cfg))}
    if data_iter is not None:
        args["data"] = DataStateSave(data_iter.get_state())
    return manager.save(step, args=ocp.args.Composite(**args), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any = None,
            step: int | None = None) -> tuple[int, Any, Config]:
    """Restore (step, state, saved config) onto the shardings in `abstract_state`; `data_iter`, when given,
    is set to its saved position in place."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    args = {"state": ocp.args.StandardRestore(abstract_state), "config": ocp.args.JsonRestore()}
    if data_iter is not None:
        args["data"] = DataStateRestore()
    out = manager.restore(step, args=ocp.args.Composite(**args))
    if data_iter is not None:
        data_iter.set_state(out["data"])
    return step, out["state"], config_lib.from_dict(out["config"])


def read_config(workdir: str | Path, step: int | None = None) -> Config:
    """The resolved config stored with a run's checkpoint (latest step unless `step`)."""
    root = Path(workdir) / "checkpoints"
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"no checkpoint steps under {root}: is {workdir} a training run folder?")
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
    manager = make_manager(workdir, one, async_save=False)
    try:
        step, state, _ = restore(manager, setup.abstract_state, step=step)
    finally:
        manager.close()
    model = nnx.merge(setup.graphdef, state.ema if ema else state.params, state.rest)
    return cfg, model, step

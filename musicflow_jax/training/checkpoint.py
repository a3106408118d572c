"""Orbax checkpoints of a training run: async, keep the latest N plus every K-th step, auto-resume.

One checkpoint (workdir/checkpoints/<step>/) is a composite of
  "state":  the TrainState pytree (params, optimizer, EMA, counters), saved sharded by every process;
  "config": the resolved Config as JSON.
There is no per-process data state: the data position is the step (data/loader.py builds global batch k for step k on
any number of hosts), so a checkpoint written by N processes resumes on M. Restoring takes the abstract state of
the *current* mesh (ShapeDtypeStructs with shardings), so a checkpoint written on one mesh shape restores onto any
other. (Checkpoints from before, which also hold a "data" item, restore too: that item is not read.)
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from musicflow_jax.core import config as config_lib
from musicflow_jax.core.config import Config
from musicflow_jax.errors import MusicFlowError

ITEMS = ("state", "config")
# Replicated arrays are written cooperatively by their replicas (orbax's replica-parallel save) only when each
# replica's slice is at least this big: below it the slicing costs more than it saves (one dispatch, and on the first
# save of a process one XLA compile, per array: ~5 s per save for a tiny model on 8 CPU devices).
MIN_REPLICA_PARALLEL_SLICE_BYTES = 1 << 20


def _register_array_handler() -> None:
    """Once per process (orbax logs a warning on each override, which would break the CLIs' one-line errors)."""
    current = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(current, "_min_slice_bytes_for_replica_parallel", None) == MIN_REPLICA_PARALLEL_SLICE_BYTES:
        return
    handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_SLICE_BYTES)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # the override warning
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)


def make_manager(workdir: str | Path, cfg: Config, *, async_save: bool = True) -> ocp.CheckpointManager:
    """CheckpointManager in workdir/checkpoints keeping train.keep latest and every train.keep_every-th step."""
    _register_array_handler()
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


def save(manager: ocp.CheckpointManager, step: int, state: Any, cfg: Any, *, force: bool = False) -> bool:
    """Start saving (async) on every process; returns whether a save was started. Call
    `manager.wait_until_finished()` before relying on it (the train loop does so before exit)."""
    item = state.checkpointed() if hasattr(state, "checkpointed") else state  # e.g. TrainState: no frozen base
    args = {"state": ocp.args.StandardSave(item), "config": ocp.args.JsonSave(dataclasses.asdict(cfg))}
    return manager.save(step, args=ocp.args.Composite(**args), force=force)


class CheckpointError(MusicFlowError):
    """A checkpoint that cannot be used (missing step, none restorable, incompatible shapes), with a one-line
    message naming the checkpoint and the fix."""


class _UnrestorableError(Exception):
    """This step cannot be restored (corrupt, truncated, non-finite); an older one may still be."""


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _first_line(e: BaseException, limit: int = 200) -> str:
    """`Type: first line` of the innermost cause of `e` (orbax wraps the informative tensorstore error)."""
    seen = {id(e)}
    while (e.__cause__ or e.__context__) is not None and id(e.__cause__ or e.__context__) not in seen:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
        seen.add(id(e))
    text = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_shapes(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
    """Raise CheckpointError naming the first array whose saved shape differs from the model's; a checkpoint whose
    metadata cannot be read is _UnrestorableError."""
    handler = ocp.StandardCheckpointHandler()
    try:
        tree = handler.metadata(epath.Path(manager.directory) / str(step) / "state")
        saved = {_dotted(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]
                 if getattr(m, "shape", None) is not None}
    except Exception as e:  # noqa: BLE001 - any unreadable metadata: this step is not usable
        raise _UnrestorableError(_first_line(e)) from e
    finally:
        handler.close()
    fix = "resume with the config the run was trained with (see its config.json) or use a new --workdir"
    for path, want in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
        name = _dotted(path)
        if name not in saved:
            raise CheckpointError(f"checkpoint step {step} in {manager.directory} does not fit this model: "
                                  f"'{name}' (shape {tuple(want.shape)}) is not in the checkpoint: {fix}")
        if saved[name] != tuple(want.shape):
            raise CheckpointError(f"checkpoint step {step} in {manager.directory} does not fit this model: "
                                  f"'{name}' has shape {saved[name]} in the checkpoint but {tuple(want.shape)} in "
                                  f"the model (was a model size such as model.dim changed?): {fix}")


def _first_non_finite(state: Any) -> str | None:
    """Dotted path of the first floating array of `state` holding NaN/Inf, or None."""
    leaves = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
    finite = jax.device_get(jax.jit(lambda xs: [jnp.all(jnp.isfinite(x)) for x in xs])([x for _, x in leaves]))
    return next((_dotted(p) for (p, _), ok in zip(leaves, finite) if not bool(ok)), None)


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> dict[str, Any]:
    _check_shapes(manager, step, abstract_state)
    args = {"state": ocp.args.StandardRestore(abstract_state), "config": ocp.args.JsonRestore()}
    try:
        out = manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files surface as many exception types
        raise _UnrestorableError(_first_line(e)) from e
    bad = _first_non_finite(out["state"])
    if bad is not None:
        raise _UnrestorableError(f"non-finite values (NaN/Inf) in '{bad}'")
    return out


def available_steps(manager: ocp.CheckpointManager) -> list[int]:
    return sorted(manager.all_steps())


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None, *,
            set_aside_broken: bool = False,
            config_from_dict: Callable[[dict[str, Any]], Any] = config_lib.from_dict) -> tuple[int, Any, Config]:
    """Restore (step, state, saved config) onto the shardings in `abstract_state` (a state with `checkpointed()` /
    `from_checkpoint()`, like TrainState, is saved and restored as what `checkpointed()` returns).

    Without `step`, the newest checkpoint that restores (readable, finite) is used: skipped ones are named in a
    warning on stderr, and with `set_aside_broken` renamed to `<step>.unrestorable` (so a resumed run can save those
    steps again). A shape mismatch with the model, a missing `step` or no restorable checkpoint raise CheckpointError.
    `config_from_dict` turns the saved config back into its dataclass (another run type's config class, e.g. the
    codec trainer's).
    """
    target = abstract_state.checkpointed() if hasattr(abstract_state, "checkpointed") else abstract_state
    steps = available_steps(manager)
    if not steps:
        raise CheckpointError(f"no checkpoint in {manager.directory}: train first, or point to the run's workdir")
    if step is not None and step not in steps:
        raise CheckpointError(f"no checkpoint step {step} in {manager.directory}; available steps: "
                              f"{', '.join(map(str, steps))}: pass one of them")
    candidates = [step] if step is not None else steps[::-1]
    skipped: list[tuple[int, str]] = []
    for s in candidates:
        try:
            out = _restore_step(manager, s, target)
        except _UnrestorableError as e:
            skipped.append((s, str(e)))
            continue
        for bad, reason in skipped:
            print(f"warning: checkpoint step {bad} in {manager.directory} cannot be restored ({reason}); "
                  f"falling back to step {s}", file=sys.stderr)
        if set_aside_broken and skipped:
            _set_aside(manager, [bad for bad, _ in skipped])
        state = abstract_state.from_checkpoint(out["state"]) if hasattr(abstract_state, "from_checkpoint") \
            else out["state"]
        return s, state, config_from_dict(out["config"])
    reasons = "; ".join(f"step {s}: {reason}" for s, reason in skipped)
    fix = ("pass another --step" if step is not None else
           "delete the broken step folders to resume from scratch, or use a new --workdir")
    raise CheckpointError(f"no restorable checkpoint in {manager.directory} ({reasons}): {fix}")


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Rename broken step folders to `<step>.unrestorable` (process 0; shared storage) and reload the manager."""
    root = Path(str(manager.directory))
    if jax.process_index() == 0:
        for s in steps:
            src = root / str(s)
            if src.is_dir():
                src.rename(root / f"{s}.unrestorable.{int(time.time())}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("musicflow_checkpoint_set_aside")
    manager.reload()

"""The one training loop both trainers run (the flow stages: flow_trainer.py; the codec: codec_trainer.py).

`run(trainer, workdir)` is linear: take the workdir lock (hosts.py) -> checkpoint manager -> the trainer's fresh
state, or its newest restorable checkpoint onto this run's mesh -> config.json -> per step: the trainer's batch for
that step (the data position is the step), its jitted step (dispatched, not awaited), the per-step metrics kept on
the devices -> at log steps they are fetched once (the only host sync besides eval, samples and checkpoints) and
logged; at checkpoint steps the state is saved unless the last step was non-finite -> eval every
`train.eval_every` steps (and at step 0) -> the trainer's periodic work (samples) -> final checkpoint.

Stops: SIGTERM (preemption) or SIGINT (Ctrl-C) on any host stops every host after the same step, saves it and
returns (hosts.StopSignal); `stop_at` does the same after that step (tests interrupt runs with it). A caller that
builds on the run (an export, a next pass) checks `require_finished` first, and the training CLIs end with it (exit
75 after a stop, so a scheduler retries rather than completes the job).
`train.max_nan_in_row` non-finite steps in a row raise `TrainingDivergedError` without saving (the last good
checkpoint stays). Outputs in workdir: config.json, metrics.jsonl, tb/, checkpoints/, train.lock while running.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from musicflow_jax.core import config_io
from musicflow_jax.errors import RunStoppedError, RunUnfinishedError
from musicflow_jax.training import checkpoint, hosts
from musicflow_jax.training.logger import MetricsWriter
from musicflow_jax.utils import atomic_io


class TrainingDivergedError(RunStoppedError):
    """Raised after train.max_nan_in_row consecutive non-finite steps."""


class Trainer(abc.ABC):
    """What a trainer gives the loop. `cfg` is its run config: `.name` and a `.train` section with steps, log_every,
    eval_every, ckpt_every, keep, keep_every and max_nan_in_row. Step metrics are dicts of device arrays holding at
    least "loss", "nan_in_row" (int) and "lr"."""

    cfg: Any
    abstract_state: Any  # ShapeDtypeStructs with this run's shardings: the restore target

    def begin(self, workdir: Path, resuming: bool) -> None:
        """Called once the workdir is locked, before the state is created or restored."""
        return None

    @abc.abstractmethod
    def fresh_state(self) -> Any: ...

    def restored(self, state: Any) -> Any:
        """The state as restored from a checkpoint (e.g. with a fine-tune's frozen base put back)."""
        return state

    @abc.abstractmethod
    def batches(self, start: int) -> Iterator[Any]:
        """This host's batch of each step from `start` on (a function of the step: resume == uninterrupted)."""

    def compile(self, state: Any, batch: Any) -> None:
        """Called before the first step: compile (the loop's step timer starts after it)."""
        return None

    @abc.abstractmethod
    def step(self, state: Any, batch: Any) -> tuple[Any, dict[str, jax.Array]]:
        """One train step, dispatched: (new state, metrics on the devices)."""

    @abc.abstractmethod
    def log_scalars(self, rows: list[dict[str, Any]], seconds: float, batch: Any) -> dict[str, float]:
        """The scalars of one log window from its fetched per-step metrics, its wall time and its last batch."""

    def evaluate(self, state: Any) -> dict[str, float]:
        """Validation scalars (called every train.eval_every steps and at step 0 when that is > 0)."""
        return {}

    def periodic(self, state: Any, done: int, workdir: Path, writer: MetricsWriter) -> bool:
        """Extra work after step `done` (samples); True when it ran (its time is not step time)."""
        return False

    def close(self) -> None:
        """Called when the loop ends, however it ends."""
        return None


def run(trainer: Trainer, workdir: str | Path, *, async_ckpt: bool = True, stop_at: int | None = None) -> Any:
    """Train (or resume) in `workdir` up to trainer.cfg.train.steps; returns the final state. The workdir is locked
    for the whole run: a second run on it raises WorkdirLockedError."""
    workdir = Path(workdir)
    lock = hosts.lock_workdir(workdir)
    try:
        return _run(trainer, workdir, async_ckpt, stop_at)
    finally:
        trainer.close()
        if lock is not None:
            lock.release()


def require_finished(state: Any, steps: int, workdir: str | Path) -> None:
    """For a caller that builds on a run (exports it, starts the next pass from it) and for the training CLIs: `run`
    returns normally after a stop (SIGTERM, Ctrl-C: it saved its step), so raise RunUnfinishedError (exit 75) when the
    run's state is short of `steps`; the same command resumes it."""
    done = int(np.asarray(state.step))
    if done < steps:
        raise RunUnfinishedError(f"{workdir} stopped after step {done} of {steps}: rerun the same command to resume")


def _restore_or_start(trainer: Trainer, manager: Any, is_main: bool) -> tuple[int, Any]:
    cfg = trainer.cfg
    if manager.latest_step() is None:
        return 0, trainer.fresh_state()
    start, state, saved_cfg = checkpoint.restore(manager, trainer.abstract_state, set_aside_broken=True,
                                                 config_from_dict=functools.partial(config_io.from_dict, type(cfg)))
    if is_main and config_io.config_hash(saved_cfg) != config_io.config_hash(cfg):
        tqdm.write(f"resuming step {start} from {manager.directory} with a changed config "
                   f"(saved {config_io.config_hash(saved_cfg)}, now {config_io.config_hash(cfg)})")
    return start, trainer.restored(state)


def _run(trainer: Trainer, workdir: Path, async_ckpt: bool, stop_at: int | None) -> Any:
    cfg, t = trainer.cfg, trainer.cfg.train
    is_main = jax.process_index() == 0
    manager = checkpoint.make_manager(workdir, cfg, async_save=async_ckpt)
    trainer.begin(workdir, resuming=manager.latest_step() is not None)
    start, state = _restore_or_start(trainer, manager, is_main)
    if is_main:
        atomic_io.write_text(workdir / "config.json", config_io.to_json(cfg))
    writer = MetricsWriter(workdir, enabled=is_main)
    batches = trainer.batches(start)
    bar = tqdm(total=t.steps, initial=start, disable=not is_main, desc=cfg.name, dynamic_ncols=True)
    window: list[dict[str, jax.Array]] = []  # this log window's per-step metrics, still on the devices
    try:
        with hosts.StopSignal() as stop_signal:
            if start == 0 and t.eval_every:  # the step-0 reference of the validation curve
                writer.scalars(0, trainer.evaluate(state), prefix="valid")
            t_window = time.perf_counter()
            for step in range(start, t.steps):
                batch = next(batches)  # host work for step k overlaps the devices' step k - 1 (nothing blocks)
                if step == start:
                    trainer.compile(state, batch)
                    t_window = time.perf_counter()
                state, m = trainer.step(state, batch)
                window.append(m)
                bar.update(1)
                done = step + 1
                stop = stop_signal.reached(done) or done == stop_at
                log_due = done % t.log_every == 0 or done == t.steps
                ckpt_due = done % t.ckpt_every == 0 or done == t.steps or stop
                if log_due or ckpt_due:
                    rows = jax.device_get(window)
                    if log_due:
                        scalars = trainer.log_scalars(rows, time.perf_counter() - t_window, batch)
                        writer.scalars(done, scalars)
                        bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{float(rows[-1]['lr']):.2e}",
                                        refresh=False)
                        window, t_window = [], time.perf_counter()
                    nan_in_row = int(np.asarray(rows[-1]["nan_in_row"]))
                    if nan_in_row >= t.max_nan_in_row:
                        raise TrainingDivergedError(
                            f"step {done}: {nan_in_row} non-finite steps in a row (train.max_nan_in_row="
                            f"{t.max_nan_in_row}); stopped without saving. Last good checkpoint: step "
                            f"{manager.latest_step()} in {manager.directory}. Lower optim.lr or check the data.")
                    if ckpt_due and nan_in_row == 0:
                        checkpoint.save(manager, done, state, cfg, force=True)
                if t.eval_every and done % t.eval_every == 0:
                    writer.scalars(done, trainer.evaluate(state), prefix="valid")
                    t_window = time.perf_counter()  # eval time is not step time
                if trainer.periodic(state, done, workdir, writer):
                    t_window = time.perf_counter()
                if stop:
                    why = stop_signal.reason or f"stop_at={stop_at}"
                    tqdm.write(f"{'preemption' if 'SIGTERM' in why else 'interrupted'} ({why}): stopping after step "
                               f"{done}; latest checkpoint: {manager.latest_step()}; rerun the same command to "
                               "resume")
                    break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # ends data worker processes
        manager.wait_until_finished()
        manager.close()
        writer.close()
        bar.close()
    return state

"""What the hosts of a run agree on: joining a multi-host run (`maybe_initialize_distributed`), the workdir lock
(taken by process 0; every process learns whether it failed), and the stop signal: SIGTERM (preemption) or SIGINT
(Ctrl-C) on any host stops every host after the same step, which is then checkpointed.

Several processes: JAX's preemption service (jax.distributed starts it; its notifier catches SIGTERM on any one host
and the coordination service makes every host agree on the step to stop after, as MaxText and orbax use it); SIGINT
is turned into a SIGTERM to this process so the service sees it too. One process: the handlers set a flag. A second
Ctrl-C while the first is being honoured interrupts at once (KeyboardInterrupt), saving nothing more.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

import jax
import numpy as np
from jax.experimental import multihost_utils

from musicflow_jax.utils import locks


def _multihost_env() -> bool:
    env = os.environ
    return bool(env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
                or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def maybe_initialize_distributed(flag: bool) -> None:
    """jax.distributed.initialize(): auto-detects TPU pods, SLURM and Open MPI; elsewhere set
    JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process."""
    if flag or _multihost_env():
        env = os.environ
        jax.distributed.initialize(
            num_processes=int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None,
            process_id=int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)


def lock_workdir(workdir: Path) -> locks.WorkdirLock | None:
    """Process 0 takes the workdir lock; every process raises when it failed (WorkdirUnusableError: a file or an
    unwritable folder; WorkdirLockedError: in use, or on the other processes)."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = locks.acquire(workdir)
        except (locks.WorkdirLockedError, locks.WorkdirUnusableError) as e:
            error = e
    if jax.process_count() > 1:  # the other hosts must not go on alone (they would hang in a collective)
        failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if failed and error is None:
            error = locks.WorkdirLockedError(f"workdir {workdir} could not be locked: see process 0's error")
    if error is not None:
        raise error
    return lock


class StopSignal:
    """`reached(step)` is True on every process at the same step once SIGTERM or SIGINT arrived on any of them;
    `reason` names the signal (this process's view). Use as a context manager: handlers are restored on exit."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._multi = jax.process_count() > 1
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            return self
        if not self._multi:  # with several processes JAX's preemption notifier owns SIGTERM
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.reason == "SIGINT":  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.reason = self.reason or signal.Signals(signum).name
        if self._multi and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells the other hosts

    def reached(self, step: int) -> bool:
        if self._multi:
            stop = bool(multihost_utils.reached_preemption_sync_point(step))
            if stop and self.reason is None:
                self.reason = "SIGTERM, agreed by all hosts"
            return stop
        return self.reason is not None

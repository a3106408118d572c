"""Multi-process training on this machine: real subprocesses joined by jax.distributed on 127.0.0.1 with CPU
collectives (gloo), each with several virtual devices, on one global 8-device mesh, checked against one process with
the 8 devices (this test's own process, the same code: musicflow_jax/testing/multiprocess_driver.py).

Three real multi-process runs cover every case:
- SIGTERM to one of 2 processes after their step-12 checkpoint: both stop after the same step S, save it and exit 0;
  steps 1..S have the one-process run's losses (rtol 1e-5) and global batches (the hosts' rows are disjoint and
  together the one process's batch); the eval after S is identical on every host and equal to the one-process eval;
  its step-9 checkpoint resumed by one process (shrink 2 -> 1) has the same later steps;
- SIGKILL of both processes of a run after its step-6 checkpoint, then a one-process resume (shrink 2 -> 1): the
  later steps have the uninterrupted run's losses (1e-5) and batches;
- a one-process run's step-6 checkpoint resumed by 2 processes (grow 1 -> 2): the same.
The data position is the step (global batch k feeds step k on any host count), so checkpoints carry no data state.
The learning rate is constant after its warmup, so runs of different lengths take the same steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.testing.multiprocess_driver import train_and_report
from musicflow_jax.training.logger import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_DEVICES = 8
STEPS = 12
KILL_AT = 6  # the killed / grown runs resume from this checkpoint (the preempted one from KILL_AT + 3)
OVERRIDES = ["data.batch_size=16", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=3",
             "train.eval_batches=2", "train.keep=10", "mesh.shape=(-1,1,1)", "data.prefetch=1",
             "optim.schedule=constant", "optim.warmup_steps=3"]

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(n: int, i: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "XLA_")) or k == "JAX_COMPILATION_CACHE_DIR"}
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)  # conftest's
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={GLOBAL_DEVICES // n}",
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if n > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    return env


def start(n: int, workdir: Path, tag: str, overrides: list[str]) -> list[subprocess.Popen]:
    """n processes of one run (the driver); logs in workdir/<tag>.<i>.log, reports in workdir/<tag>.<i>.json."""
    port = _port()
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "musicflow_jax.testing.multiprocess_driver", str(workdir),
               str(workdir / f"{tag}.{i}.json"), json.dumps(overrides)]
        log = open(workdir / f"{tag}.{i}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(n, i, port), stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait(procs: list[subprocess.Popen], workdir: Path, tag: str, timeout: float = 300.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    for i, p in enumerate(procs):
        try:
            code = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"process {i} of {tag} did not finish: "
                                 f"{(workdir / f'{tag}.{i}.log').read_text()[-3000:]}") from None
        assert code == 0, (workdir / f"{tag}.{i}.log").read_text()[-3000:]
    return [json.loads((workdir / f"{tag}.{i}.json").read_text()) for i in range(len(procs))]


def wait_for_checkpoint(procs: list[subprocess.Popen], workdir: Path, tag: str, step: int) -> None:
    """Until checkpoint `step` is on disk (orbax renames a finished checkpoint into place: the folder means
    complete)."""
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / str(step)).is_dir():
        assert time.monotonic() < deadline, "timed out waiting for the checkpoint"
        assert all(p.poll() is None for p in procs), (workdir / f"{tag}.0.log").read_text()[-3000:]
        time.sleep(0.05)


def losses(workdir: Path) -> dict[int, float]:
    """step -> loss of the last logged occurrence (a resumed run logs the resumed steps again)."""
    return {r["step"]: r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")}


def global_rows(reports: list[dict]) -> dict[int, list[int]]:
    """step -> CRCs of the global batch's rows, the hosts' rows concatenated in process order (hook steps are
    0-based: step k + 1 fed batch k)."""
    by_proc = sorted(reports, key=lambda r: r["process_index"])
    steps = set(by_proc[0]["crcs"])
    assert all(set(r["crcs"]) == steps for r in by_proc)
    return {int(s): [c for r in by_proc for c in r["crcs"][s]] for s in steps}


def only_checkpoint(workdir: Path, step: int) -> None:
    """Leave only checkpoint `step` (a later one that made it would be resumed instead)."""
    assert (workdir / "checkpoints" / str(step)).is_dir()
    for p in (workdir / "checkpoints").iterdir():
        if p.name != str(step):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def check_steps(ref: tuple[Path, dict], run: tuple[Path, list[dict]], steps: range, rtol: float) -> None:
    """Steps `steps` of `run` have the reference run's losses and global batches."""
    (ref_dir, ref_report), (run_dir, reports) = ref, run
    want, got = losses(ref_dir), losses(run_dir)
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=rtol)
    ref_rows, rows = global_rows([ref_report]), global_rows(reports)
    assert all(rows[s - 1] == ref_rows[s - 1] for s in steps)


@pytest.fixture(scope="module")
def preempted(tmp_path_factory) -> tuple[Path, list[dict], int]:
    """2 processes trained until SIGTERM reaches one of them after checkpoint 12: (workdir, reports, stop step)."""
    workdir = tmp_path_factory.mktemp("mp") / "sigterm"
    procs = start(2, workdir, "run", [*OVERRIDES, "train.steps=5000"])
    wait_for_checkpoint(procs, workdir, "run", STEPS)
    procs[1].send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    reports = wait(procs, workdir, "run", timeout=120)
    assert time.monotonic() - t0 < 60
    stopped = []
    for i in range(2):
        line = next(x for x in (workdir / f"run.{i}.log").read_text().splitlines() if "stopping after step" in x)
        stopped.append(int(line.split("stopping after step")[1].split(";")[0]))
    assert stopped[0] == stopped[1] == reports[0]["step"] == reports[1]["step"] and STEPS <= stopped[0] < 5000
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == stopped[0]
    return workdir, reports, stopped[0]


@pytest.fixture(scope="module")
def reference(preempted, tmp_path_factory) -> tuple[Path, dict]:
    """One process with the 8 devices (this one), uninterrupted, the preempted run's S steps."""
    workdir = tmp_path_factory.mktemp("mp") / "one"
    return workdir, train_and_report(workdir, [*OVERRIDES, f"train.steps={preempted[2]}"])


def test_sigterm_stops_every_host_at_one_step_and_hosts_train_the_one_process_batches(preempted, reference):
    workdir, reports, stop = preempted
    assert sorted(r["process_index"] for r in reports) == [0, 1]
    assert all(r["process_count"] == 2 and r["local_devices"] == GLOBAL_DEVICES // 2 for r in reports)
    one = reference[1]  # the one-process run of the same S steps: same losses, same global batches, same eval
    check_steps(reference, (workdir, reports), range(1, stop + 1), rtol=1e-5)
    for s in global_rows(reports):  # disjoint: a host's rows are not another's
        per_host = [set(r["crcs"][str(s)]) for r in reports]
        assert sum(len(h) for h in per_host) == len(set().union(*per_host)) == 16
    assert reports[0]["eval"] == reports[1]["eval"]  # identical on every host
    np.testing.assert_allclose(reports[0]["eval"]["loss"], one["eval"]["loss"], rtol=1e-5)


def test_sigkill_of_every_process_then_one_process_resumes(reference, tmp_path):
    """Shrink 2 -> 1 after a crash: the killed run's step-6 checkpoint resumed by one process."""
    workdir = tmp_path / "killed"
    procs = start(2, workdir, "killed", [*OVERRIDES, f"train.steps={STEPS}"])
    wait_for_checkpoint(procs, workdir, "killed", KILL_AT)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    only_checkpoint(workdir, KILL_AT)
    resumed = train_and_report(workdir, [*OVERRIDES, f"train.steps={STEPS}"])
    check_steps(reference, (workdir, [resumed]), range(KILL_AT + 1, STEPS + 1), rtol=1e-5)
    assert sorted(int(s) for s in resumed["crcs"]) == list(range(KILL_AT, STEPS))


def test_one_process_checkpoint_resumed_by_two_processes(reference, tmp_path):
    """Grow 1 -> 2: the reference run's step-6 checkpoint resumed by two processes."""
    workdir = tmp_path / "grown"
    shutil.copytree(reference[0] / "checkpoints", workdir / "checkpoints")
    only_checkpoint(workdir, KILL_AT)
    reports = wait(start(2, workdir, "grown", [*OVERRIDES, f"train.steps={STEPS}"]), workdir, "grown")
    check_steps(reference, (workdir, reports), range(KILL_AT + 1, STEPS + 1), rtol=1e-5)


def test_the_preempted_runs_checkpoint_resumes_on_one_process(preempted, reference, tmp_path):
    """Shrink 2 -> 1 after a clean preemption: the SIGTERM run's step-9 checkpoint resumed by one process."""
    workdir = tmp_path / "resumed"
    shutil.copytree(preempted[0] / "checkpoints", workdir / "checkpoints")
    only_checkpoint(workdir, KILL_AT + 3)
    resumed = train_and_report(workdir, [*OVERRIDES, f"train.steps={STEPS}"])
    check_steps(reference, (workdir, [resumed]), range(KILL_AT + 4, STEPS + 1), rtol=1e-5)

"""Multi-process training on this machine: real subprocesses joined by jax.distributed on 127.0.0.1 with CPU
collectives (gloo), each with 2 virtual devices, on one global 4-device mesh, checked against one process with the 4
devices (this test's own process, the same code: musicflow_jax/testing/multiprocess_driver.py).

Two real multi-process runs cover every case, against one uninterrupted one-process run of 20 steps (the reference):
- SIGKILL of both processes of a run after its step-6 checkpoint (steps 1-6 are the reference's), then a one-process
  resume of that checkpoint (shrink 2 -> 1): steps 7-12 have the reference's losses (rtol 1e-5) and batches;
- the reference's step-6 checkpoint resumed by 2 processes (grow 1 -> 2), then SIGTERM to one of them after their
  step-12 checkpoint: both stop after the same step S, save it and exit 0; steps 7..S have the reference's losses and
  global batches (the hosts' rows are disjoint and together the one process's batch); the eval after S is identical
  on every host and equal to one process's eval of that step-S checkpoint.
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

import jax
import numpy as np
import pytest

from musicflow_jax.testing.multiprocess_driver import train_and_report
from musicflow_jax.training.logger import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_DEVICES = 4  # 2 per process: several devices per host, few enough for 2 cores
REF_STEPS = 20
KILL_AT = 6  # the killed run is killed after this checkpoint; the grown run starts from the reference's
STOP_AT = 12  # the killed run's resume runs to here; SIGTERM reaches the grown run after this checkpoint
OVERRIDES = ["data.batch_size=16", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=3",
             "train.eval_batches=2", "train.keep=30", "mesh.shape=(-1,1,1)", "data.prefetch=1",
             "optim.schedule=constant", "optim.warmup_steps=3", "model.depth=2"]

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one() -> list[jax.Device]:
    """This process's devices for its one-process runs: as many as the multi-process runs have together."""
    return jax.devices()[:GLOBAL_DEVICES]


def _env(n: int, i: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "XLA_")) or k == "JAX_COMPILATION_CACHE_DIR"}
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)  # conftest's
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={GLOBAL_DEVICES // n}",
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if n > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    return env


def start(n: int, workdir: Path, tag: str, overrides: list[str], slow_from: int | None = None
          ) -> list[subprocess.Popen]:
    """n processes of one run (the driver); logs in workdir/<tag>.<i>.log, reports in workdir/<tag>.<i>.json."""
    port = _port()
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "musicflow_jax.testing.multiprocess_driver", str(workdir),
               str(workdir / f"{tag}.{i}.json"), json.dumps(overrides), *([str(slow_from)] if slow_from else [])]
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
    deadline = time.monotonic() + 600
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


def with_only_checkpoint(src: Path, dst: Path, step: int) -> Path:
    """dst/checkpoints holding only `src`'s checkpoint `step` (a later one would be resumed instead)."""
    assert (src / "checkpoints" / str(step)).is_dir()
    shutil.copytree(src / "checkpoints" / str(step), dst / "checkpoints" / str(step))
    return dst


def check_steps(ref: tuple[Path, dict], run: tuple[Path, list[dict]], steps: range, rtol: float = 1e-5) -> None:
    """Steps `steps` of `run` have the reference run's losses and global batches."""
    (ref_dir, ref_report), (run_dir, reports) = ref, run
    want, got = losses(ref_dir), losses(run_dir)
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=rtol)
    ref_rows, rows = global_rows([ref_report]), global_rows(reports)
    assert all(rows[s - 1] == ref_rows[s - 1] for s in steps)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """One process with the 4 devices (this one), uninterrupted, 20 steps, a checkpoint every 3."""
    workdir = tmp_path_factory.mktemp("mp") / "one"
    return workdir, train_and_report(workdir, [*OVERRIDES, f"train.steps={REF_STEPS}"], _one())


def test_sigkill_of_every_process_then_one_process_resumes(reference, tmp_path):
    """A crash of every host, resumed on one process (shrink 2 -> 1) from the checkpoint the 2 processes wrote."""
    workdir = tmp_path / "killed"
    procs = start(2, workdir, "killed", [*OVERRIDES, f"train.steps={REF_STEPS}"], slow_from=KILL_AT)
    wait_for_checkpoint(procs, workdir, "killed", KILL_AT)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    np.testing.assert_allclose([losses(workdir)[s] for s in range(1, KILL_AT + 1)],
                               [losses(reference[0])[s] for s in range(1, KILL_AT + 1)], rtol=1e-5)
    resumed_dir = with_only_checkpoint(workdir, tmp_path / "resumed", KILL_AT)
    resumed = train_and_report(resumed_dir, [*OVERRIDES, f"train.steps={STOP_AT}"], _one())
    check_steps(reference, (resumed_dir, [resumed]), range(KILL_AT + 1, STOP_AT + 1))
    assert sorted(int(s) for s in resumed["crcs"]) == list(range(KILL_AT, STOP_AT))


def test_grown_run_stops_every_host_at_one_step_on_sigterm(reference, tmp_path):
    """Grow 1 -> 2 from the reference's step-6 checkpoint; SIGTERM to one host after step 12: both stop at S."""
    workdir = with_only_checkpoint(reference[0], tmp_path / "grown", KILL_AT)
    procs = start(2, workdir, "run", [*OVERRIDES, f"train.steps={REF_STEPS}"], slow_from=STOP_AT)
    wait_for_checkpoint(procs, workdir, "run", STOP_AT)
    procs[1].send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    reports = wait(procs, workdir, "run", timeout=120)
    assert time.monotonic() - t0 < 60
    stopped = []
    for i in range(2):
        line = next(x for x in (workdir / f"run.{i}.log").read_text().splitlines() if "stopping after step" in x)
        stopped.append(int(line.split("stopping after step")[1].split(";")[0]))
    stop = stopped[0]
    assert stopped[1] == stop == reports[0]["step"] == reports[1]["step"] and STOP_AT <= stop < REF_STEPS
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == stop
    assert sorted(r["process_index"] for r in reports) == [0, 1]
    assert all(r["process_count"] == 2 and r["local_devices"] == GLOBAL_DEVICES // 2 for r in reports)
    check_steps(reference, (workdir, reports), range(KILL_AT + 1, stop + 1))
    for s in global_rows(reports):  # disjoint: a host's rows are not another's
        per_host = [set(r["crcs"][str(s)]) for r in reports]
        assert sum(len(h) for h in per_host) == len(set().union(*per_host)) == 16
    assert reports[0]["eval"] == reports[1]["eval"]  # identical on every host
    # the one-process eval of the same weights: its step-S checkpoint resumed at S (nothing left to train)
    at_stop = with_only_checkpoint(workdir, tmp_path / "one_at_stop", stop)
    one = train_and_report(at_stop, [*OVERRIDES, f"train.steps={stop}"], _one())
    assert one["step"] == stop and not one["crcs"]
    np.testing.assert_allclose(reports[0]["eval"]["loss"], one["eval"]["loss"], rtol=1e-5)

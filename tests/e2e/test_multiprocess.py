"""Multi-process training on this machine: real subprocesses joined by jax.distributed on 127.0.0.1 with CPU
collectives (gloo), each with several virtual devices, on one global 8-device mesh.

- 1 and 2 processes train the same 12 steps with the same losses (rtol 1e-5); the hosts' rows of every global
  batch are disjoint and together are the single process's batch; eval is identical on every host (4 processes:
  the 2 -> 4 resume below, against the same uninterrupted losses);
- SIGKILL of every process, then a rerun: resume == uninterrupted (losses 1e-6, identical batches);
- SIGTERM to one process: every process stops after the same step, saves it, and exits 0 within a bounded time
  (JAX's preemption service, through `python -m musicflow_jax.train`);
- a checkpoint written by N processes resumes on M (2 -> 1, 2 -> 4) with the data position carried (the
  position is the step: global batch k feeds step k on any host count).
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

from musicflow_jax.training.logger import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "mp_driver.py"
GLOBAL_DEVICES = 8
STEPS = 12
KILL_AT = 6  # the killed runs checkpoint every 3 steps and die after this one
OVERRIDES = ["data.batch_size=16", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=6",
             "train.eval_batches=2", "train.keep=5", "mesh.shape=(-1,1,1)", "data.prefetch=1"]

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(n: int, i: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "XLA_")) or k == "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={GLOBAL_DEVICES // n}",
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if n > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    return env


def start(n: int, workdir: Path, tag: str, overrides: list[str], cli: bool = False) -> list[subprocess.Popen]:
    """n processes of one run (tests/mp_driver.py, or the training CLI with `cli`); logs in workdir/<tag>.<i>.log."""
    port = _port()
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        if cli:
            cmd = [sys.executable, "-m", "musicflow_jax.train", "--config", "stage1_tiny", "--workdir",
                   str(workdir), *[a for o in overrides for a in ("--set", o)]]
        else:
            cmd = [sys.executable, str(DRIVER), str(workdir), str(workdir / f"{tag}.{i}.json"), json.dumps(overrides)]
        log = open(workdir / f"{tag}.{i}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(n, i, port), stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait(procs: list[subprocess.Popen], workdir: Path, tag: str, timeout: float = 300.0) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for i, p in enumerate(procs):
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            log = (workdir / f"{tag}.{i}.log").read_text()[-3000:]
            raise AssertionError(f"process {i} of {tag} did not finish: {log}") from None
    return codes


def run(n: int, workdir: Path, tag: str, steps: int = STEPS) -> list[dict]:
    procs = start(n, workdir, tag, [*OVERRIDES, f"train.steps={steps}"])
    codes = wait(procs, workdir, tag)
    for i, c in enumerate(codes):
        assert c == 0, (workdir / f"{tag}.{i}.log").read_text()[-3000:]
    return [json.loads((workdir / f"{tag}.{i}.json").read_text()) for i in range(n)]


def losses(workdir: Path) -> dict[int, float]:
    """step -> loss of the last logged occurrence (a resumed run logs the resumed steps again)."""
    return {r["step"]: r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if r.get("split") == "train"}


def global_rows(reports: list[dict]) -> dict[int, list[int]]:
    """step -> CRCs of the global batch's rows, the hosts' rows concatenated in process order."""
    by_proc = sorted(reports, key=lambda r: r["process_index"])
    steps = set(by_proc[0]["crcs"])
    assert all(set(r["crcs"]) == steps for r in by_proc)
    return {int(s): [c for r in by_proc for c in r["crcs"][s]] for s in steps}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, tuple[Path, list[dict]]]:
    """Uninterrupted 12-step runs with 1 and 2 processes (8 and 4 devices each)."""
    root = tmp_path_factory.mktemp("mp")
    return {n: (root / f"p{n}", run(n, root / f"p{n}", "run")) for n in (1, 2)}


def test_process_counts_train_the_same_global_batches(reference):
    one_dir, one = reference[1]
    ref_losses, ref_rows = losses(one_dir), global_rows(one)
    assert sorted(ref_losses) == list(range(1, STEPS + 1))
    for n in (2,):
        workdir, reports = reference[n]
        assert sorted(r["process_index"] for r in reports) == list(range(n))
        assert all(r["process_count"] == n and r["local_devices"] == GLOBAL_DEVICES // n for r in reports)
        got = losses(workdir)
        np.testing.assert_allclose([got[s] for s in sorted(ref_losses)], [ref_losses[s] for s in sorted(ref_losses)],
                                   rtol=1e-5)
        rows = global_rows(reports)
        assert rows == ref_rows  # each host's rows are its slice of the same global batch
        for s in rows:  # disjoint: a host's rows are not another's
            per_host = [set(r["crcs"][str(s)]) for r in reports]
            assert sum(len(h) for h in per_host) == len(set().union(*per_host)) == 16
        evals = [r["eval"] for r in reports]
        assert all(e == evals[0] for e in evals), evals  # identical on every host
        np.testing.assert_allclose(evals[0]["loss"], one[0]["eval"]["loss"], rtol=1e-5)


def kill_after_checkpoint(n: int, workdir: Path, step: int) -> None:
    """Start an n-process run of STEPS steps (checkpoints every 3) and SIGKILL every process once checkpoint
    `step` is on disk (orbax renames a finished checkpoint into place, so the folder means complete); a later
    checkpoint that made it is removed, so the rerun resumes from `step`."""
    procs = start(n, workdir, "killed", [*OVERRIDES, f"train.steps={STEPS}", "train.ckpt_every=3"])
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / str(step)).is_dir() and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (workdir / "checkpoints" / str(step)).is_dir(), (workdir / "killed.0.log").read_text()[-3000:]
    for later in (workdir / "checkpoints").iterdir():
        if later.name != str(step):
            shutil.rmtree(later) if later.is_dir() else later.unlink()


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict[int, Path]:
    """A run of 2 processes SIGKILLed after checkpoint KILL_AT (each resume below works on a copy)."""
    root = tmp_path_factory.mktemp("killed")
    kill_after_checkpoint(2, root / "p2", KILL_AT)
    return {2: root / "p2"}


def resume_copy(killed: Path, workdir: Path, n: int) -> list[dict]:
    """Copy a killed run's workdir and rerun its command with n processes (it resumes from checkpoint KILL_AT)."""
    shutil.copytree(killed, workdir)
    return run(n, workdir, "second")


def check_resumed(ref: tuple[Path, list[dict]], workdir: Path, resumed: list[dict], rtol: float) -> None:
    """Steps KILL_AT+1..STEPS of the resumed run have the losses and global batches of the uninterrupted run."""
    ref_dir, ref_reports = ref
    ref_losses, got = losses(ref_dir), losses(workdir)
    after = range(KILL_AT + 1, STEPS + 1)
    np.testing.assert_allclose([got[s] for s in after], [ref_losses[s] for s in after], rtol=rtol)
    ref_rows, rows = global_rows(ref_reports), global_rows(resumed)
    assert sorted(rows) == list(range(KILL_AT, STEPS))  # batch_hook steps are 0-based: step k + 1 fed batch k
    assert all(rows[s] == ref_rows[s] for s in rows)


def test_sigkill_all_then_resume_equals_uninterrupted(reference, killed, tmp_path):
    workdir = tmp_path / "resumed"
    resumed = resume_copy(killed[2], workdir, 2)  # same command again: resumes from the newest checkpoint
    check_resumed(reference[2], workdir, resumed, rtol=1e-6)
    got, ref = losses(workdir), losses(reference[2][0])
    before = range(1, KILL_AT + 1)
    np.testing.assert_allclose([got[s] for s in before], [ref[s] for s in before], rtol=1e-6)


def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path):
    workdir = tmp_path / "preempted"
    procs = start(2, workdir, "cli", [*OVERRIDES, "train.steps=5000", "train.ckpt_every=10", "train.log_every=10"],
                  cli=True)
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / "10").is_dir() and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), (workdir / "cli.0.log").read_text()[-3000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    codes = wait(procs, workdir, "cli", timeout=120)
    assert codes == [0, 0], [(workdir / f"cli.{i}.log").read_text()[-2000:] for i in range(2)]
    assert time.monotonic() - t0 < 60
    stopped = []
    for i in range(2):
        text = (workdir / f"cli.{i}.log").read_text()
        line = next(x for x in text.splitlines() if "stopping after step" in x)
        stopped.append(int(line.split("stopping after step")[1].split(";")[0]))
    assert stopped[0] == stopped[1] and stopped[0] < 5000
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == stopped[0]


@pytest.mark.parametrize("first,second", [(2, 1), (2, 4)])  # fewer hosts, more hosts
def test_restore_onto_another_process_count(reference, killed, tmp_path, first, second):
    """`first` processes were killed after checkpoint KILL_AT; `second` processes resume it: the later steps have the
    losses and global batches of the uninterrupted run (the data position is the step, whatever the host count)."""
    workdir = tmp_path / f"p{first}to{second}"
    check_resumed(reference[first], workdir, resume_copy(killed[first], workdir, second), rtol=1e-5)

"""Exact resume and preemption, through real processes: a run killed with SIGKILL after its step-15 checkpoint
and resumed with the CLI reproduces the uninterrupted run's losses and batches for steps 16-30; SIGTERM saves a
checkpoint at the current step and exits 75 (not finished: rerun to resume), and so does Ctrl-C (SIGINT, here; SIGTERM
on every host in test_multiprocess.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.core import config
from musicflow_jax.training import checkpoint, runs
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.training import logger as metrics

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["train.steps=30", "train.log_every=1", "train.ckpt_every=15", "train.eval_every=0",
             "optim.warmup_steps=5", "model.depth=2"]
# `python -m musicflow_jax.train` whose steps from `slow_from` on take `delay` s (so a test can act mid-run); data
# untouched.
SLOW_RUN = """
import functools, sys, time
from musicflow_jax.cli import train as train_cli
from musicflow_jax.training import flow_trainer
slow_from, delay = int(sys.argv[2]), 0.5
flow_trainer.train = functools.partial(
    flow_trainer.train, batch_hook=lambda step, b: (time.sleep(delay) if step >= slow_from else None) or b)
sys.exit(train_cli.main(["--config", "stage1_tiny", "--workdir", sys.argv[1],
                         *[a for o in sys.argv[3:] for a in ("--set", o)]]))
"""


def _popen(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early (rc {proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.05)


def _rows(workdir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in metrics.read_jsonl(workdir / "metrics.jsonl")}  # last write of a step wins


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _popen(["-c", SLOW_RUN, str(killed), "15", *OVERRIDES])
    train.train(config.load("stage1_tiny", OVERRIDES), straight)  # meanwhile, in this process
    _wait_for(lambda: (killed / "checkpoints" / "15" / "commit_success.txt").exists(), proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_rows(killed)) < 30  # really interrupted
    resumed = _popen(["-m", "musicflow_jax.train", "--config", "stage1_tiny", "--workdir", str(killed),
                      *[a for o in OVERRIDES for a in ("--set", o)]])
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    a, b = _rows(straight), _rows(killed)
    assert sorted(a) == list(range(1, 31)) and sorted(b) == list(range(1, 31))
    for s in range(16, 31):
        assert b[s]["batch_crc"] == a[s]["batch_crc"], s  # identical data after the resume
        np.testing.assert_allclose(b[s]["loss"], a[s]["loss"], rtol=1e-6, err_msg=f"step {s}")
    assert a[30]["loss"] < a[1]["loss"]


@pytest.mark.slow
def test_ctrl_c_saves_and_exits(tmp_path):
    """Ctrl-C (SIGINT) saves the current step and the CLI exits 75 with one line (not finished: a scheduler retries,
    it does not complete the job); preemption (SIGTERM) takes the same path, checked on every host of a multi-process
    run (tests/e2e/test_multiprocess.py)."""
    sig = signal.SIGINT
    proc = _popen(["-c", SLOW_RUN, str(tmp_path), "4", *OVERRIDES])
    _wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and max(_rows(tmp_path), default=0) >= 6, proc)
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 75, out[-3000:]
    last = max(_rows(tmp_path))
    assert 6 <= last < 15 and f"({sig.name}): stopping after step {last};" in out and "Traceback" not in out
    assert f"error: {tmp_path} stopped after step {last} of 30: rerun the same command to resume" in out.splitlines()
    mgr = checkpoint.make_manager(tmp_path, config.load("stage1_tiny", OVERRIDES))
    assert mgr.all_steps() == [last]
    mgr.close()
    assert runs.read_config(tmp_path).train.steps == 30

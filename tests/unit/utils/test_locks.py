"""One training run per workdir: a live run's lock refuses a second `python -m musicflow_jax.train` (exit 1, one
line naming the owner); a dead process's lock is taken over with a warning; train() releases it, also on errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from musicflow_jax.core import config
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.utils import locks as workdir_lock

ROOT = Path(__file__).resolve().parents[3]
HOLD = """
import sys, time
from musicflow_jax.utils import locks as workdir_lock
lock = workdir_lock.acquire(sys.argv[1])
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_run_on_a_live_workdir_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "300"], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        owner = json.loads((tmp_path / "train.lock").read_text())
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        proc = subprocess.run([sys.executable, "-m", "musicflow_jax.train", "--config", "stage1_tiny",
                               "--workdir", str(tmp_path), "--set", "train.steps=2"], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith(f"error: workdir {tmp_path} is in use by another training run (pid {holder.pid} "
                                   f"on host '{socket.gethostname()}'")
        assert "pick another --workdir" in lines[0] and str(tmp_path / "train.lock") in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["train.lock"]  # nothing resumed or written
        assert json.loads((tmp_path / "train.lock").read_text()) == owner  # the owner keeps its lock
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_exclusive_in_process_and_released(tmp_path):
    lock = workdir_lock.acquire(tmp_path)
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {os.getpid()} on host"):
        workdir_lock.acquire(tmp_path)
    lock.release()
    assert not (tmp_path / "train.lock").exists()
    with workdir_lock.acquire(tmp_path) as again:
        assert json.loads(again.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "train.lock").exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / "train.lock").write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere-node-7",
                                                     "started": "2026-01-01T00:00:00"}))
    with pytest.raises(workdir_lock.WorkdirLockedError, match="on host 'elsewhere-node-7'.*delete"):
        workdir_lock.acquire(tmp_path)


def test_unreadable_lock_is_refused_with_the_fix(tmp_path):
    (tmp_path / "train.lock").write_text("")
    with pytest.raises(workdir_lock.WorkdirLockedError, match=r"unreadable lock file .*train.lock.*delete"):
        workdir_lock.acquire(tmp_path)


def test_stale_lock_is_taken_over_and_train_releases_on_error(tmp_path, capsys):
    dead = _dead_pid()
    (tmp_path / "train.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(),
                                                     "started": "2026-01-01T00:00:00"}))
    cfg = config.load("stage1_tiny", ["train.steps=2", "train.eval_every=0", "model.depth=2"])
    seen = {}

    def hook(step: int, batch: dict) -> dict:
        seen["owner"] = json.loads((tmp_path / "train.lock").read_text())
        raise RuntimeError("boom in step 0")

    with pytest.raises(RuntimeError, match="boom in step 0"):
        train.train(cfg, tmp_path, batch_hook=hook, async_ckpt=False)
    assert seen["owner"]["pid"] == os.getpid() and seen["owner"]["host"] == socket.gethostname()
    err = capsys.readouterr().err
    assert f"warning: taking over the lock of workdir {tmp_path} left by a dead process (pid {dead} on host" in err
    assert not (tmp_path / "train.lock").exists()  # released although train() raised

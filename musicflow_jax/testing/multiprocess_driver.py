"""One process of a multi-process training run on this machine (tests/e2e/test_multiprocess.py starts N of them).

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i JAX_PLATFORMS=cpu \\
    XLA_FLAGS=--xla_force_host_platform_device_count=D \\
    python -m musicflow_jax.testing.multiprocess_driver WORKDIR OUT_JSON OVERRIDES_JSON [SLOW_FROM]

Initialises jax.distributed from those variables (as `python -m musicflow_jax.train` does), trains
configs/stage1_tiny.py with the overrides in WORKDIR (resuming it), and writes OUT_JSON for this process: the CRC of
each row of each local batch it fed (step -> [crc per row]), its process index / count and local devices, the step it
stopped after, and the validation losses it computed after training (every host computes them on its rows of the
same global batches). With SLOW_FROM, each step from that one on waits SLOW_S first (so a test can signal a run
mid-way). `train_and_report` is the same without the process set-up (a one-process run in a test).
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from musicflow_jax.core import config, sharding
from musicflow_jax.training import flow_step, flow_trainer, hosts

SLOW_S = 0.5


def train_and_report(workdir: str | Path, overrides: list[str], devices: list[jax.Device] | None = None,
                     slow_from: int | None = None) -> dict[str, Any]:
    """Train configs/stage1_tiny.py with `overrides` in `workdir` (resuming it) on `devices` (default: every
    device of every process); this process's report."""
    cfg = config.load("stage1_tiny", overrides)
    crcs: dict[int, list[int]] = {}

    def hook(step: int, local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crcs[step] = [zlib.crc32(np.ascontiguousarray(row).tobytes()) for row in local["x1"]]
        if slow_from is not None and step >= slow_from:
            time.sleep(SLOW_S)
        return local

    state = flow_trainer.train(cfg, workdir, batch_hook=hook, devices=devices, async_ckpt=False)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    setup = flow_step.make_setup(cfg, mesh)
    encode, text_params = flow_trainer.load_text_encoder(cfg, mesh)
    ev = flow_trainer.evaluate(cfg, flow_trainer.make_eval_fn(cfg, setup, encode), state, text_params, setup)
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "crcs": crcs, "eval": ev, "step": int(state.step)}


def main() -> None:
    workdir, out, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    slow_from = int(sys.argv[4]) if len(sys.argv) > 4 else None
    hosts.maybe_initialize_distributed(False)  # initialises when JAX_COORDINATOR_ADDRESS is set (n > 1)
    out.write_text(json.dumps(train_and_report(workdir, overrides, slow_from=slow_from)))


if __name__ == "__main__":
    main()

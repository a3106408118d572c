"""`python -m musicflow_jax.train --config configs/stage1_tiny.py --workdir runs/x [--set optim.lr=3e-4 ...]
[--multihost]`: train a MusicFlow stage (a flow `Config`) or the codec (a `CodecTrainConfig`, as
`python -m musicflow_jax.train_codec` does) in WORKDIR, resuming the checkpoint found there.

The config is a file (configs/<name>.py) or a name (stage1_tiny). Both trainers run the one training loop
(musicflow_jax/training/loop.py): SIGTERM (preemption) or Ctrl-C saves a checkpoint after the current step and
exits 75 (EX_TEMPFAIL: not finished - a scheduler retries, it does not complete the job); rerunning the same command
resumes exactly. Several processes (TPU pods, SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID set) join one run with jax.distributed, and every one of them exits so.
Bad input: one `error:` line, exit 2; divergence or a locked workdir: exit 1; finished: exit 0.
"""

from __future__ import annotations

import sys

from musicflow_jax.cli import _common
from musicflow_jax.core import config_io
from musicflow_jax.core.config import Config
from musicflow_jax.training import codec_trainer, flow_trainer, hosts, loop
from musicflow_jax.training.codec_config import CodecTrainConfig


def add_run_flags(ap: _common.Parser, config_help: str) -> None:
    ap.add_argument("--config", required=True, help=config_help)
    ap.add_argument("--workdir", required=True, help="run folder; an existing checkpoint there is resumed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("train", __doc__)
    add_run_flags(ap, "configs/<name>.py with get_config(), or its name (e.g. stage1_tiny)")
    ap.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() (auto if the "
                    "environment shows several processes)")
    args = ap.parse_args(argv)
    _common.enable_compile_cache()
    hosts.maybe_initialize_distributed(args.multihost)

    def body() -> None:
        cfg = config_io.load(args.config, args.set, (Config, CodecTrainConfig))
        if isinstance(cfg, CodecTrainConfig):
            state = codec_trainer.train_codec(cfg, args.workdir)
        else:
            state = flow_trainer.train(cfg, args.workdir)
        loop.require_finished(state, cfg.train.steps, args.workdir)  # stopped early: exit 75, the command resumes

    return _common.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

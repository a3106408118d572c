"""Export a training run for inference: the resolved config and the EMA (or raw) weights of one of its checkpoints,
restored onto one local device whatever mesh wrote it, written as one stage file (stage_io.py format) that
`MusicFlow` and `stage_io.load_stage` read. A LoRA fine-tune exports its adapters alone (plus any base parameters
it trained; finetune.py's adapter file, applied at generation with `--lora`), or with `merge_lora` the base with the
adapters folded in as a plain stage file. tools/export.py is the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from musicflow_jax import checkpoint, stage_io
from musicflow_jax import config as config_lib
from musicflow_jax.config import Config


def read_config(workdir: str | Path, step: int | None = None) -> Config:
    """The resolved config stored with a run's checkpoint (latest step unless `step`)."""
    root = Path(workdir) / "checkpoints"
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    if not steps:
        raise checkpoint.CheckpointError(f"no checkpoint steps under {root}: is {workdir} a training run "
                                         "folder?")
    if step is not None and step not in steps:
        raise checkpoint.CheckpointError(f"no checkpoint step {step} in {root}; available steps: "
                                         f"{', '.join(map(str, steps))}: pass one of them")
    step = steps[-1] if step is None else step
    return config_lib.from_json((root / str(step) / "config" / "metadata").read_text())


def load_state(workdir: str | Path, step: int | None = None) -> tuple[Config, Any, Any, int]:
    """(saved config, graphdef, TrainState with the frozen base of a fine-tune, step) of a run's checkpoint,
    restored onto one local device whatever mesh wrote it."""
    from musicflow_jax import sharding, train_state

    cfg = read_config(workdir, step)
    one = config_lib.apply_overrides(cfg, ["mesh.shape=(1,1,1)"])
    setup = train_state.make_setup(one, sharding.make_mesh(one.mesh, jax.local_devices()[:1]))
    manager = checkpoint.make_manager(workdir, one, async_save=False)
    try:
        step, state, _ = checkpoint.restore(manager, setup.abstract_state, step=step)
    finally:
        manager.close()
    if setup.abstract_state.frozen is not None:  # fine-tune: the frozen base is train.init_from's
        base = train_state.init_weights(one, verbose=False)
        state = state.replace(frozen=train_state.create_state(one, setup, base=base).frozen)
    return cfg, setup.graphdef, state, step


def load_model(workdir: str | Path, step: int | None = None, *, ema: bool = True) -> tuple[Config, Any, int]:
    """(saved config, FlowTransformer with the EMA (or raw) weights, adapters merged, step) from a run's
    checkpoint."""
    from musicflow_jax import train_state

    cfg, graphdef, state, step = load_state(workdir, step)
    return cfg, train_state.merge_model(graphdef, state.ema if ema else state.params, state.frozen, state.rest), step


def plain_config(cfg: Config) -> Config:
    """A fine-tune's config as the plain model its merged weights are (no adapters, nothing frozen)."""
    return config_lib.apply_overrides(cfg, ["model.lora_rank=0", "train.trainable="])


def export(workdir: str | Path, out: str | Path, step: int | None = None, *, ema: bool = True,
           merge_lora: bool = False) -> Path:
    """Write `workdir`'s checkpoint (latest unless `step`) at `out` (atomically): a stage file, or for a LoRA run
    without `merge_lora` its adapter file (finetune.save_adapters)."""
    from flax import nnx

    from musicflow_jax import finetune

    extra = {"step": None, "weights": "ema" if ema else "raw", "workdir": str(workdir)}
    if read_config(workdir, step).model.lora_rank > 0 and not merge_lora:
        cfg, _, state, step = load_state(workdir, step)
        tree = state.ema if ema else state.params
        trained = {finetune.key_of(p): jax.device_get(v[...]) for p, v in nnx.to_flat_state(tree)}
        return finetune.save_adapters(out, cfg, trained, extra | {"step": step, "init_from": cfg.train.init_from})
    cfg, model, step = load_model(workdir, step, ema=ema)
    if finetune.is_active(cfg):  # a plain stage: adapters folded into the base weights
        from musicflow_jax.models.transformer import FlowTransformer
        from musicflow_jax.weights import build_with_params, flat_params

        extra["fine_tuned_from"] = cfg.train.init_from
        flat = finetune.merge_flat(flat_params(model), finetune.lora_factor(cfg))
        cfg = plain_config(cfg)
        model = build_with_params(lambda: FlowTransformer(cfg, rngs=nnx.Rngs(0)), flat, str(workdir))
    return stage_io.save_stage(out, cfg, model, extra=extra | {"step": step})


"""Export a training run for inference. A flow run: the resolved config and the EMA (or raw) weights of one of its
checkpoints, restored onto one local device whatever mesh wrote it, written as one stage file
(models/stage_file.py) that `MusicFlow` and `stage_file.load_stage` read; a LoRA fine-tune exports its adapters alone
(plus any base parameters it trained; models/lora.py's adapter file, applied at generation with `--lora`), or with
`merge_lora` the base with the adapters folded in as a plain stage file. A codec run: a converted Encodec folder
(training/codec_trainer.py's `export_codec`). CLI: `python -m musicflow_jax.export`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx

from musicflow_jax.core import config as config_lib
from musicflow_jax.core.config import Config, SampleConfig
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.models import lora, stage_file
from musicflow_jax.models.params import build_with_params, flat_params, key_of
from musicflow_jax.models.transformer import FlowTransformer
from musicflow_jax.training import finetune
from musicflow_jax.training.runs import load_model, load_state, read_config
from musicflow_jax.utils import atomic_io


class ExportError(MusicFlowError):
    """An export that cannot be written as asked, with the fix."""


def plain_config(cfg: Config) -> Config:
    """A fine-tune's config as the plain model its merged weights are (no adapters, nothing frozen)."""
    return config_lib.apply_overrides(cfg, ["model.lora_rank=0", "train.trainable="])


def export(workdir: str | Path, out: str | Path, step: int | None = None, *, ema: bool = True,
           merge_lora: bool = False, sample: SampleConfig | None = None, store_dtype: str = "float32") -> Path:
    """Write `workdir`'s checkpoint (latest unless `step`) at `out` (atomically): a stage file, or for a LoRA run
    without `merge_lora` its adapter file (lora.save_adapters). `sample`: the default sampling settings the stage
    file carries instead of the run's (settings chosen by evaluation after training; training never reads them);
    `store_dtype`: the stage file's tensors (stage_file.STORE_DTYPES; float16 halves a shipped asset)."""
    if Path(out).is_dir():
        raise ExportError(f"--out {out} is a folder: give the stage file to write, e.g. "
                          f"{Path(out) / 'stage.safetensors'}")
    atomic_io.check_can_create(out, "--out")
    extra = {"step": None, "weights": "ema" if ema else "raw", "workdir": str(workdir)}
    lora_rank = read_config(workdir, step).model.lora_rank
    if merge_lora and lora_rank == 0:
        raise ExportError(f"--merge-lora: the run in {workdir} has no LoRA adapters (model.lora_rank=0); drop "
                          "--merge-lora to export its stage")
    if lora_rank > 0 and not merge_lora:
        cfg, _, state, step = load_state(workdir, step)
        tree = state.ema if ema else state.params
        trained = {key_of(p): jax.device_get(v[...]) for p, v in nnx.to_flat_state(tree)}
        return lora.save_adapters(out, cfg, trained, extra | {"step": step, "init_from": cfg.train.init_from})
    cfg, model, step = load_model(workdir, step, ema=ema)
    if sample is not None:
        cfg = dataclasses.replace(cfg, sample=sample)
    if finetune.is_active(cfg):  # a plain stage: adapters folded into the base weights
        extra["fine_tuned_from"] = cfg.train.init_from
        flat = lora.merge_flat(flat_params(model), lora.lora_factor(cfg))
        cfg = plain_config(cfg)
        model = build_with_params(lambda: FlowTransformer(cfg, rngs=nnx.Rngs(0)), flat, str(workdir))
    return stage_file.save_stage(out, cfg, model, extra=extra | {"step": step}, store_dtype=store_dtype)

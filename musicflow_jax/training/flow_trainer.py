"""The flow stage's trainer for the training loop (loop.py): a `Config` run on a mesh over this run's devices, the
frozen text encoder, the grain data iterator at the step's position (data/loader.py), the jitted sharded step
(flow_step.py), validation loss of the params and the EMA, periodic samples of fixed prompts, and the log scalars
(loss by t-bin, steps/s, MFU). `train(cfg, workdir)` runs it; `python -m musicflow_jax.train` is its CLI.
Outputs in workdir besides the loop's: samples/, init_from.json (fine-tunes).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from musicflow_jax.backends import BackendError, build_part
from musicflow_jax.core import frames, sharding
from musicflow_jax.core.audio import write_wav
from musicflow_jax.core.config import Config
from musicflow_jax.core.sampling import sample
from musicflow_jax.data.loader import index_stats, load_index, make_dataset, make_eval_dataset, stats_file
from musicflow_jax.encoders import meta
from musicflow_jax.encoders.text import TextEncoder, text_tokenizer
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.models.params import WeightsError
from musicflow_jax.training import distill, finetune, flow_step, logger, loop, runs
from musicflow_jax.training.logger import MetricsWriter
from musicflow_jax.training.state import TrainState, merge_model
from musicflow_jax.utils import atomic_io

BatchHook = Callable[[int, dict[str, np.ndarray]], dict[str, np.ndarray]]
SAMPLE_PROMPTS = ("a calm solo piano piece in C major", "an upbeat pop song with drums and bass",
                  "a slow string quartet in a minor key")
INIT_RECORD = "init_from.json"


class TrainInputError(MusicFlowError):
    """Bad input found before training starts (data folder, data/config mismatch), one line with the fix."""


def check_data(cfg: Config) -> None:
    """For data.source=arrayrecord: data.path exists, holds index.json, and its feature dims match the model's."""
    if cfg.data.source != "arrayrecord":
        return
    if cfg.data.stats:
        stats_file(cfg.data.stats)  # readable before any compilation
    elif cfg.train.init_from and cfg.data.normalize and jax.process_index() == 0:
        tqdm.write("warning: fine-tuning with train.init_from normalises features with this data's own statistics; "
                   "set data.stats=<the base model folder>/features.json to use the base model's")

    path = Path(cfg.data.path)
    if not path.is_dir():
        raise TrainInputError(f"data.path {path} is not a folder: point --set data.path=... at the output folder of "
                              "python -m musicflow_jax.precompute")
    index = load_index(path)
    dims = dict(index.get("dims") or {})
    for stream, stats in index.get("stats", {}).items():
        dims.setdefault(stream, len(stats["mean"]))
    m = cfg.model
    want = [("acoustic", "model.feature_dim", m.feature_dim), ("semantic", "model.cond_dim", m.cond_dim)] \
        if m.stage == "acoustic" else [("semantic", "model.feature_dim", m.feature_dim)]
    for stream, key, value in want:
        if stream in dims and int(dims[stream]) != value:
            raise TrainInputError(f"config {key}={value} but the data index {path / 'index.json'} has {stream} "
                                  f"features of dim {dims[stream]}: set --set {key}={dims[stream]} or point "
                                  f"data.path at data precomputed for this model")


def load_text_encoder(cfg: Config, mesh: jax.sharding.Mesh | None = None
                      ) -> tuple[flow_step.TextEncodeFn | None, Any]:
    """(encode(params, ids_bl, mask_bl) -> emb_bld, params) of the frozen T5, or (None, None) if precomputed.
    With `mesh`, the params are placed replicated on it (as the train step expects them)."""
    if cfg.text.precomputed:
        return None, None
    enc = TextEncoder.load(cfg.text, cfg.train.seed)
    return enc.apply, (enc.state if mesh is None else jax.device_put(enc.state, sharding.replicated(mesh)))


def make_eval_fn(cfg: Config, setup: flow_step.Setup, encode: Any, teacher: flow_step.TeacherSpec | None = None
                 ) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Jitted (loss of the params, of the EMA) on one batch, with a fixed key per eval batch index: the flow loss, or
    a student's distillation loss (`teacher`: the step's objective; its weights are the last argument)."""
    loss_of = flow_step.objective(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0)),
                                  setup.graphdef, teacher)

    def eval_loss(state: TrainState, batch: dict[str, jax.Array], text_params: Any,
                  i: jax.Array, teacher_weights: Any = None) -> tuple[jax.Array, jax.Array]:
        batch = flow_step.with_text_emb(batch, encode, text_params)
        key = jax.random.fold_in(jax.random.key(cfg.train.seed + 1), i)

        def loss(params: Any) -> jax.Array:
            return loss_of(params, state.frozen, state.rest, key, batch, teacher_weights)[0]

        with sharding.activation_mesh(setup.mesh):
            return loss(state.params), loss(state.ema)

    return jax.jit(eval_loss)


def evaluate(cfg: Config, eval_fn: Any, state: TrainState, text_params: Any,
             setup: flow_step.Setup, *teacher_weights: Any) -> dict[str, float]:
    """Mean validation flow loss of the params ("loss") and the EMA ("loss_ema") over train.eval_batches batches
    of the "valid" split, in one pass over the data."""
    it = iter(make_eval_dataset(cfg, "valid"))
    try:
        local_batches = list(itertools.islice(it, cfg.train.eval_batches))
    finally:
        it.close()  # worker processes (data.num_workers > 0) end here, not at garbage collection
    losses = []  # every host has the same number of batches: its rows of the same global batches (data/loader.py)
    for i, local in enumerate(local_batches):
        batch = sharding.global_batch(local, setup.mesh, setup.rules, cfg.data.batch_size)
        losses.append(jax.device_get(eval_fn(state, batch, text_params, jnp.int32(i), *teacher_weights)))
    mean = np.mean(losses, axis=0) if losses else (float("nan"), float("nan"))
    return {"loss": float(mean[0]), "loss_ema": float(mean[1])}


def write_samples(cfg: Config, setup: flow_step.Setup, state: TrainState, encode: Any,
                  text_params: Any, step: int, workdir: Path, writer: MetricsWriter,
                  cond: np.ndarray | None) -> None:
    """Sample the fixed prompts with the EMA weights: stage 1 -> features (.npy + image), stage 2 -> latents,
    and WAV files when train.sample_codec names an Encodec folder."""
    ids, mask = text_tokenizer(cfg.text.checkpoint)(list(SAMPLE_PROMPTS), cfg.text.max_len)
    text_emb = jax.jit(encode)(text_params, ids, mask) if encode else jnp.zeros((len(ids), cfg.text.max_len,
                                                                                     cfg.text.dim))
    if cfg.text.meta:
        text_emb, mask = meta.append(text_emb, mask, *meta.parse(SAMPLE_PROMPTS))
    model = merge_model(setup.graphdef, *jax.device_get((state.ema, state.frozen, state.rest)))
    n = len(SAMPLE_PROMPTS) if cond is None else min(len(SAMPLE_PROMPTS), cond.shape[0])
    x1, _ = sample(model, jax.random.key(cfg.train.seed + 2), text_emb=text_emb[:n], text_mask=mask[:n],
                   frames=cfg.data.frames, feature_dim=cfg.model.feature_dim,
                   cond=None if cond is None else jnp.asarray(cond[:n]), solver=cfg.sample.solver,
                   steps=cfg.sample.steps, cfg_scale=cfg.sample.cfg_scale, sigma_min=cfg.flow.sigma_min,
                   temperature=cfg.sample.temperature,
                   beat=meta.beat_grid(SAMPLE_PROMPTS[:n], cfg.data.frames, cfg.frame_rate) if cfg.model.beat else None)
    x1 = np.asarray(x1)
    out = workdir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_io.atomic_path(out / f"step{step:08d}.npy") as tmp:
        np.save(tmp, x1)
    for i in range(n):
        writer.image(step, f"samples/{i}", x1[i].T)
    if cfg.model.stage == "acoustic":
        decoder = sample_decoder(cfg)
        if decoder is not None:
            decode, sample_rate = decoder
            audio = decode(x1)
            for i in range(n):
                write_wav(out / f"step{step:08d}_{i}.wav", audio[i].reshape(-1), sample_rate)
                writer.audio(step, f"audio/{i}", audio[i], sample_rate)


def sample_decoder(cfg: Config) -> tuple[Callable[[np.ndarray], np.ndarray], int] | None:
    """(model-space acoustic samples (B, T, D) -> audio (B, S), sample rate) for stage-2 samples: the acoustic part
    `train.sample_codec` names (a converted Encodec folder), else the data's own acoustic part (its index's backend)
    when it can be built here (weight-free parts, converted folders); None when neither can."""
    index = load_index(cfg.data.path) if cfg.data.source == "arrayrecord" else None
    if cfg.train.sample_codec:
        spec = {"kind": "encodec", "folder": cfg.train.sample_codec}
    elif index is not None and "backend" in index:
        spec = index["backend"]["acoustic"]
    else:
        return None
    try:
        part = build_part("acoustic", spec)
    except (BackendError, WeightsError, FileNotFoundError) as e:
        if cfg.train.sample_codec:
            raise
        tqdm.write(f"samples stay latents: the data's acoustic part cannot be built here ({e}); set "
                   "train.sample_codec to a converted Encodec folder for audio")
        return None
    stats = index_stats(index if cfg.data.normalize and index is not None else None, "acoustic")
    return (lambda x: part.decode(frames.denormalize(np.asarray(x, np.float32), *stats))), part.sample_rate


def check_init_source(cfg: Config, workdir: Path, resuming: bool) -> None:
    """Record the fingerprints of train.init_from and distill.teacher when a run starts; on resume, a changed file is
    an error (neither a frozen base nor a teacher is in the checkpoints: they must be the ones the run started
    from)."""
    # (config key, its name in the record, its fingerprint's name in the record, path)
    sources = [src for src in (("train.init_from", "init_from", "fingerprint", cfg.train.init_from),
                               ("distill.teacher", "teacher", "teacher_fingerprint", cfg.distill.teacher)) if src[3]]
    if not sources:
        return
    record = workdir / INIT_RECORD
    now: dict[str, str] = {"fingerprints": "content"}  # .safetensors by content (records before 2026-12-05: bytes)
    for _, name, fp, path in sources:
        now[name], now[fp] = path, finetune.fingerprint(path)
    if resuming and record.is_file():
        was = json.loads(record.read_text())
        by_bytes = was.get("fingerprints") != "content"
        for key, name, fp, path in sources:
            if was.get(fp) == now[fp] or (by_bytes and was.get(fp) == finetune.fingerprint(path, by_content=False)):
                continue
            hint = (f" (the record predates content fingerprints: if the file is a re-export of the same weights, "
                    f"delete {record} to accept it)") if by_bytes else ""
            raise TrainInputError(f"{key} {path} differs from the weights this run started from "
                                  f"({was.get(name)}, fingerprint {was.get(fp)} vs {now[fp]}): "
                                  f"restore that file, or start a new --workdir{hint}")
        if by_bytes and jax.process_index() == 0:  # an old record, matched: from now on by content
            atomic_io.write_text(record, json.dumps({**was, **now}, indent=2) + "\n")
    elif jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_io.write_text(record, json.dumps(now, indent=2) + "\n")


def log_scalars(cfg: Config, rows: list[dict[str, Any]], seconds: float, flops_per_step: float, peak: float,
                n_dev: int, batch_crc: float) -> dict[str, float]:
    """The scalars of one log window (per-step metric dicts fetched from the devices): means over the window's
    finite losses, loss by t-bin, steps/s from the window's wall time, MFU, NaN counters, the last batch's CRC."""
    loss = np.array([float(r["loss"]) for r in rows])
    out = {k: float(np.mean([float(r[k]) for r in rows])) for k in ("grad_norm", "param_norm", "lr")}
    out["loss"] = float(loss[np.isfinite(loss)].mean()) if np.isfinite(loss).any() else float("nan")
    loss_b = np.concatenate([np.asarray(r["loss_per_example"]) for r in rows])
    t_b = np.concatenate([np.asarray(r["t"]) for r in rows])
    out.update(logger.loss_by_t_bin(loss_b[np.isfinite(loss_b)], t_b[np.isfinite(loss_b)]))
    sps = len(rows) / max(seconds, 1e-9)
    out.update(steps_per_s=sps, frames_per_s=sps * cfg.data.batch_size * cfg.data.frames,
               mfu=logger.mfu(flops_per_step, sps, peak, n_dev), nan_skipped_total=float(rows[-1]["nan_total"]),
               batch_crc=batch_crc)
    return out


class FlowTrainer(loop.Trainer):
    """One flow stage (`cfg`) on a mesh over `devices` (default: every device of every process). `batch_hook(step,
    local_batch) -> local_batch` can alter batches (tests inject NaNs with it)."""

    def __init__(self, cfg: Config, *, batch_hook: BatchHook | None = None,
                 devices: list[jax.Device] | None = None):
        check_data(cfg)  # before any compilation
        self.cfg, self.batch_hook = cfg, batch_hook
        self.mesh = sharding.make_mesh(cfg.mesh, devices)
        self.setup = flow_step.make_setup(cfg, self.mesh)
        self.abstract_state = self.setup.abstract_state
        self.encode, self.text_params = load_text_encoder(cfg, self.mesh)
        self.teacher: flow_step.TeacherSpec | None = None
        self.teacher_weights: tuple[Any, ...] = ()  # the step's last argument when distilling (distill.teacher)
        teacher_flat = None
        if cfg.distill.teacher:
            self.teacher, weights, teacher_flat = distill.load_teacher(cfg, self.mesh)
            self.teacher_weights = (weights,)
        # train.init_from (fine-tuning), checked against this model; else a student starts as its teacher
        self.base = runs.init_weights(cfg) if cfg.train.init_from else teacher_flat
        self.step_fn = flow_step.make_train_step(cfg, self.setup, self.encode, self.teacher)
        self.eval_fn = make_eval_fn(cfg, self.setup, self.encode, self.teacher)
        self.compiled: Any = None
        self.flops_per_step, self.peak = 0.0, cfg.train.peak_tflops * 1e12
        self.sample_cond: np.ndarray | None = None
        self._data: Any = None

    def begin(self, workdir: Path, resuming: bool) -> None:
        check_init_source(self.cfg, workdir, resuming)

    def fresh_state(self) -> TrainState:
        return flow_step.create_state(self.cfg, self.setup, base=self.base)

    def restored(self, state: TrainState) -> TrainState:
        if self.abstract_state.frozen is not None:  # a fine-tune's frozen base is init_from's, not checkpointed
            state = state.replace(frozen=flow_step.create_state(self.cfg, self.setup, base=self.base).frozen)
        return state

    def batches(self, start: int) -> Iterator[dict[str, np.ndarray]]:
        # the data position is the step: global batch k feeds step k, whatever the process count (data/loader.py)
        self._data = iter(make_dataset(self.cfg, process_index=jax.process_index(),
                                       process_count=jax.process_count(), start_batch=start))
        return _Hooked(self._data, self.batch_hook, start)

    def _global(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return sharding.global_batch(local, self.mesh, self.setup.rules, self.cfg.data.batch_size)

    def compile(self, state: TrainState, local: dict[str, np.ndarray]) -> None:
        """Compile once; FLOPs of the global step from XLA's cost analysis; the matmul peak unless configured."""
        batch = self._global(local)
        self.compiled = self.step_fn.lower(state, batch, self.text_params, *self.teacher_weights).compile()
        self.flops_per_step, _ = flow_step.step_flops(self.cfg, self.mesh, self.encode, state, batch,
                                                      self.text_params, *self.teacher_weights)
        self.peak = self.peak or logger.measure_matmul_peak(
            1024 if self.mesh.devices.flat[0].platform == "cpu" else 8192,
            jnp.bfloat16 if self.cfg.model.dtype == "bfloat16" else jnp.float32)

    def step(self, state: TrainState, local: dict[str, np.ndarray]) -> tuple[TrainState, dict[str, jax.Array]]:
        if self.sample_cond is None and "cond" in local:
            self.sample_cond = np.asarray(local["cond"][: len(SAMPLE_PROMPTS)])
        state, m = self.compiled(state, self._global(local), self.text_params, *self.teacher_weights)  # async
        if self.cfg.train.block_every_step:  # opt-in: exact per-step timing, or XLA CPU collectives that need it
            jax.block_until_ready(m)
        return state, m

    def log_scalars(self, rows: list[dict[str, Any]], seconds: float, local: dict[str, np.ndarray]
                    ) -> dict[str, float]:
        crc = float(zlib.crc32(np.ascontiguousarray(local["x1"]).tobytes()))
        return log_scalars(self.cfg, rows, seconds, self.flops_per_step, self.peak, self.mesh.size, crc)

    def evaluate(self, state: TrainState) -> dict[str, float]:
        return evaluate(self.cfg, self.eval_fn, state, self.text_params, self.setup, *self.teacher_weights)

    def periodic(self, state: TrainState, done: int, workdir: Path, writer: MetricsWriter) -> bool:
        every = self.cfg.train.sample_every
        if not every or done % every:
            return False
        write_samples(self.cfg, self.setup, state, self.encode, self.text_params, done, workdir, writer,
                      self.sample_cond)
        return True


class _Hooked:
    """The data iterator with the batch hook applied (step numbers from `start`); `close` ends worker processes."""

    def __init__(self, it: Any, hook: BatchHook | None, start: int):
        self.it, self.hook, self.step = it, hook, start

    def __iter__(self) -> _Hooked:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        local = next(self.it)
        if self.hook is not None:
            local = self.hook(self.step, local)
        self.step += 1
        return local

    def close(self) -> None:
        self.it.close()


def train(cfg: Config, workdir: str | Path, *, batch_hook: BatchHook | None = None,
          devices: list[jax.Device] | None = None, async_ckpt: bool = True,
          stop_at: int | None = None) -> TrainState:
    """Train (or resume) `cfg` in `workdir` up to cfg.train.steps; returns the final state (loop.run)."""
    return loop.run(FlowTrainer(cfg, batch_hook=batch_hook, devices=devices), workdir, async_ckpt=async_ckpt,
                    stop_at=stop_at)

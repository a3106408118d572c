"""Train one MusicFlow stage: `python -m musicflow_jax.train --config configs/stage1_tiny.py --workdir runs/x
[--set optim.lr=3e-4 ...] [--multihost]`.

`train()` is one linear loop: config -> (multi-host init) -> mesh -> sharded state (fresh or auto-resumed from
workdir/checkpoints, onto whatever mesh this run has) -> data iterator (restored to its saved position) -> per
step: global batch, jitted step (frozen text encoder inside, NaN/Inf skip), logging, eval, periodic samples,
checkpoints -> final checkpoint. SIGTERM (e.g. TPU preemption) saves a checkpoint and returns cleanly; N
non-finite steps in a row raise `TrainingDivergedError` without writing a checkpoint (the last good one stays).
Outputs in workdir: config.json, metrics.jsonl, tb/ (TensorBoard), checkpoints/, samples/, and train.lock while
running (one run per workdir). CLI: bad input -> one `error:` line, exit 2; divergence or a locked workdir -> exit 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from musicflow_jax import atomic_io, checkpoint, compile_cache, flow, metrics, sharding, train_state, workdir_lock
from musicflow_jax import config as config_lib
from musicflow_jax.config import Config

BatchHook = Callable[[int, dict[str, np.ndarray]], dict[str, np.ndarray]]
SAMPLE_PROMPTS = ("a calm solo piano piece in C major", "an upbeat pop song with drums and bass",
                  "a slow string quartet in a minor key")


class TrainingDivergedError(RuntimeError):
    """Raised after train.max_nan_in_row consecutive non-finite steps."""


class TrainInputError(ValueError):
    """Bad input found before training starts (data folder, data/config mismatch), one line with the fix."""


def check_data(cfg: Config) -> None:
    """For data.source=arrayrecord: data.path exists, holds index.json, and its feature dims match the model's."""
    if cfg.data.source != "arrayrecord":
        return
    from musicflow_jax.data import load_index, stats_file

    if cfg.data.stats:
        stats_file(cfg.data.stats)  # readable before any compilation
    elif cfg.train.init_from and cfg.data.normalize and jax.process_index() == 0:
        tqdm.write("warning: fine-tuning with train.init_from normalises features with this data's own statistics; "
                   "set data.stats=<the base model folder>/features.json to use the base model's")

    path = Path(cfg.data.path)
    if not path.is_dir():
        raise TrainInputError(f"data.path {path} is not a folder: point --set data.path=... at the output folder of "
                              "tools/precompute_features.py")
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


# --------------------------------------------------------------------------- multi-host


def _multihost_env() -> bool:
    env = os.environ
    return bool(env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
                or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def maybe_initialize_distributed(flag: bool) -> None:
    """jax.distributed.initialize(): auto-detects TPU pods, SLURM and Open MPI; elsewhere set
    JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process."""
    if flag or _multihost_env():
        env = os.environ
        jax.distributed.initialize(
            num_processes=int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None,
            process_id=int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)


# --------------------------------------------------------------------------- frozen text encoder


def load_text_encoder(cfg: Config, mesh: jax.sharding.Mesh | None = None
                      ) -> tuple[train_state.TextEncodeFn | None, Any]:
    """(encode(params, ids_bl, mask_bl) -> emb_bld, params) of the frozen T5, or (None, None) if precomputed.
    With `mesh`, the params are placed replicated on it (as the train step expects them)."""
    if cfg.text.precomputed:
        return None, None
    from musicflow_jax.text_encoder import TextEncoder

    enc = TextEncoder.load(cfg.text, cfg.train.seed)
    return enc.apply, (enc.state if mesh is None else jax.device_put(enc.state, sharding.replicated(mesh)))


# --------------------------------------------------------------------------- eval and samples


def make_eval_fn(cfg: Config, setup: train_state.Setup, encode: Any) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Jitted (flow loss of the params, of the EMA) on one batch, with a fixed key per eval batch index."""

    def eval_loss(state: train_state.TrainState, batch: dict[str, jax.Array], text_params: Any,
                  i: jax.Array) -> tuple[jax.Array, jax.Array]:
        batch = train_state.with_text_emb(batch, encode, text_params)
        key = jax.random.fold_in(jax.random.key(cfg.train.seed + 1), i)

        def loss(params: Any) -> jax.Array:
            model = train_state.merge_model(setup.graphdef, params, state.frozen, state.rest)
            return flow.flow_loss(lambda inp: model(inp, deterministic=True), key, batch, cfg.flow)[0]

        with sharding.activation_mesh(setup.mesh):
            return loss(state.params), loss(state.ema)

    return jax.jit(eval_loss)


def evaluate(cfg: Config, eval_fn: Any, state: train_state.TrainState, text_params: Any,
             setup: train_state.Setup) -> dict[str, float]:
    """Mean validation flow loss of the params ("loss") and the EMA ("loss_ema") over train.eval_batches batches
    of the "valid" split, in one pass over the data."""
    from musicflow_jax.data import make_eval_dataset

    it = iter(make_eval_dataset(cfg, "valid"))
    try:
        local_batches = list(itertools.islice(it, cfg.train.eval_batches))
    finally:
        it.close()  # worker processes (data.num_workers > 0) end here, not at garbage collection
    losses = []  # every host has the same number of batches: its rows of the same global batches (data.py)
    for i, local in enumerate(local_batches):
        batch = sharding.global_batch(local, setup.mesh, setup.rules, cfg.data.batch_size)
        losses.append(jax.device_get(eval_fn(state, batch, text_params, jnp.int32(i))))
    mean = np.mean(losses, axis=0) if losses else (float("nan"), float("nan"))
    return {"loss": float(mean[0]), "loss_ema": float(mean[1])}


def write_samples(cfg: Config, setup: train_state.Setup, state: train_state.TrainState, encode: Any,
                  text_params: Any, step: int, workdir: Path, writer: metrics.MetricsWriter,
                  cond: np.ndarray | None) -> None:
    """Sample the fixed prompts with the EMA weights: stage 1 -> features (.npy + image), stage 2 -> latents,
    and WAV files when train.sample_codec names an Encodec folder."""
    from musicflow_jax.sampling import sample
    from musicflow_jax.tokenizer import load_tokenizer

    ids, mask = load_tokenizer(cfg.text.checkpoint or None)(list(SAMPLE_PROMPTS), cfg.text.max_len)
    text_emb = jax.jit(encode)(text_params, ids, mask) if encode else jnp.zeros((len(ids), cfg.text.max_len,
                                                                                     cfg.text.dim))
    model = train_state.merge_model(setup.graphdef, *jax.device_get((state.ema, state.frozen, state.rest)))
    n = len(SAMPLE_PROMPTS) if cond is None else min(len(SAMPLE_PROMPTS), cond.shape[0])
    x1, _ = sample(model, jax.random.key(cfg.train.seed + 2), text_emb=text_emb[:n], text_mask=mask[:n],
                   frames=cfg.data.frames, feature_dim=cfg.model.feature_dim,
                   cond=None if cond is None else jnp.asarray(cond[:n]), solver=cfg.sample.solver,
                   steps=cfg.sample.steps, cfg_scale=cfg.sample.cfg_scale, sigma_min=cfg.flow.sigma_min)
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
            from musicflow_jax.audio import write_wav

            decode, sample_rate = decoder
            audio = decode(x1)
            for i in range(n):
                write_wav(out / f"step{step:08d}_{i}.wav", audio[i].reshape(-1), sample_rate)
                writer.audio(step, f"audio/{i}", audio[i], sample_rate)


def sample_decoder(cfg: Config) -> tuple[Callable[[np.ndarray], np.ndarray], int] | None:
    """(model-space acoustic samples (B, T, D) -> audio (B, S), sample rate) for stage-2 samples: the acoustic part
    `train.sample_codec` names (a converted Encodec folder), else the data's own acoustic part (its index's backend)
    when it can be built here (weight-free parts, converted folders); None when neither can."""
    from musicflow_jax import features
    from musicflow_jax.backends import BackendError, build_part
    from musicflow_jax.data import index_stats, load_index
    from musicflow_jax.weights import WeightsError

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
    return (lambda x: part.decode(features.denormalize(np.asarray(x, np.float32), *stats))), part.sample_rate


# --------------------------------------------------------------------------- the loop


INIT_RECORD = "init_from.json"


def check_init_source(cfg: Config, workdir: Path, resuming: bool) -> None:
    """Record train.init_from's fingerprint when a run starts; on resume, a changed file is an error (the frozen base
    is not in the checkpoints: it must be the one the run started from)."""
    if not cfg.train.init_from:
        return
    from musicflow_jax import finetune

    record = workdir / INIT_RECORD
    now = {"init_from": cfg.train.init_from, "fingerprint": finetune.fingerprint(cfg.train.init_from)}
    if resuming and record.is_file():
        was = json.loads(record.read_text())
        if was.get("fingerprint") != now["fingerprint"]:
            raise TrainInputError(f"train.init_from {cfg.train.init_from} differs from the weights this run started "
                                  f"from ({was.get('init_from')}, fingerprint {was.get('fingerprint')} vs "
                                  f"{now['fingerprint']}): restore that file, or start a new --workdir")
    elif jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_io.write_text(record, json.dumps(now, indent=2) + "\n")


def lock_workdir(workdir: Path) -> workdir_lock.WorkdirLock | None:
    """Process 0 takes the workdir lock; every process raises WorkdirLockedError when it failed."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = workdir_lock.acquire(workdir)
        except workdir_lock.WorkdirLockedError as e:
            error = e
    if jax.process_count() > 1:  # the other hosts must not go on alone (they would hang in a collective)
        failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if failed and error is None:
            error = workdir_lock.WorkdirLockedError(f"workdir {workdir} is locked by another run (see process 0)")
    if error is not None:
        raise error
    return lock


def train(cfg: Config, workdir: str | Path, *, batch_hook: BatchHook | None = None,
          devices: list[jax.Device] | None = None, async_ckpt: bool = True) -> train_state.TrainState:
    """Train (or resume) `cfg` in `workdir` up to cfg.train.steps; returns the final state.

    batch_hook(step, local_batch) -> local_batch can alter batches (tests use it to inject NaNs).
    The workdir is locked for the whole run (see workdir_lock): a second run on it raises WorkdirLockedError.
    """
    workdir = Path(workdir)
    lock = lock_workdir(workdir)
    try:
        return _train(cfg, workdir, batch_hook=batch_hook, devices=devices, async_ckpt=async_ckpt)
    finally:
        if lock is not None:
            lock.release()


def preemption_check() -> Callable[[int], bool]:
    """`reached(step) -> bool`, True on every process at the same step once preemption was signalled.

    Several processes: JAX's preemption service (jax.distributed starts it; its notifier catches SIGTERM on any one
    host and the coordination service makes every host agree on the step to stop after, as MaxText and orbax use
    it). One process: a SIGTERM handler's flag. Call `restore()` of the returned function's `.restore` when done."""
    if jax.process_count() > 1:
        def reached(step: int) -> bool:
            return bool(multihost_utils.reached_preemption_sync_point(step))

        reached.restore = lambda: None  # type: ignore[attr-defined]
        return reached
    flag = {"sigterm": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.update(sigterm=True))

    def reached_local(step: int) -> bool:
        return flag["sigterm"]

    reached_local.restore = lambda: signal.signal(signal.SIGTERM, previous)  # type: ignore[attr-defined]
    return reached_local


def _train(cfg: Config, workdir: Path, *, batch_hook: BatchHook | None, devices: list[jax.Device] | None,
           async_ckpt: bool) -> train_state.TrainState:
    from musicflow_jax.data import make_dataset

    check_data(cfg)  # before any compilation
    is_main = jax.process_index() == 0
    t_cfg = cfg.train

    # Mesh, shardings, state: fresh or restored (onto this run's mesh, whatever the saved one was).
    mesh = sharding.make_mesh(cfg.mesh, devices)
    setup = train_state.make_setup(cfg, mesh)
    encode, text_params = load_text_encoder(cfg, mesh)
    manager = checkpoint.make_manager(workdir, cfg, async_save=async_ckpt)
    base = train_state.init_weights(cfg)  # train.init_from (fine-tuning), checked against this model
    check_init_source(cfg, workdir, resuming=manager.latest_step() is not None)
    if manager.latest_step() is not None:
        start, state, saved_cfg = checkpoint.restore(manager, setup.abstract_state, set_aside_broken=True)
        if setup.abstract_state.frozen is not None:  # a fine-tune's frozen base is init_from's, not checkpointed
            state = state.replace(frozen=train_state.create_state(cfg, setup, base=base).frozen)
        if is_main and config_lib.config_hash(saved_cfg) != config_lib.config_hash(cfg):
            tqdm.write(f"resuming step {start} from {manager.directory} with a changed config "
                       f"(saved {config_lib.config_hash(saved_cfg)}, now {config_lib.config_hash(cfg)})")
    else:
        start, state = 0, train_state.create_state(cfg, setup, base=base)
    # the data position is the step: global batch k feeds step k, whatever the process count (data.py)
    data_iter = iter(make_dataset(cfg, process_index=jax.process_index(), process_count=jax.process_count(),
                                  start_batch=start))
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_io.write_text(workdir / "config.json", config_lib.to_json(cfg))
    writer = metrics.MetricsWriter(workdir, enabled=is_main)
    step_fn = train_state.make_train_step(cfg, setup, encode)
    eval_fn = make_eval_fn(cfg, setup, encode)
    preempted = preemption_check()

    flops_per_step, peak, n_dev, compiled = 0.0, t_cfg.peak_tflops * 1e12, mesh.size, None
    window: list[dict[str, jax.Array]] = []  # this log window's per-step metrics, still on the devices
    t_window, sample_cond, last_crc = time.perf_counter(), None, 0.0
    if start == 0 and t_cfg.eval_every:  # the step-0 reference for the validation curve
        writer.scalars(0, evaluate(cfg, eval_fn, state, text_params, setup), prefix="valid")
    bar = tqdm(total=t_cfg.steps, initial=start, disable=not is_main, desc=cfg.name, dynamic_ncols=True)
    try:
        for step in range(start, t_cfg.steps):
            local = next(data_iter)  # host work for step k overlaps the devices' step k - 1 (nothing blocks)
            if batch_hook is not None:
                local = batch_hook(step, local)
            batch = sharding.global_batch(local, mesh, setup.rules, cfg.data.batch_size)
            if compiled is None:  # compile once; FLOPs of the global step from XLA's cost analysis
                compiled = step_fn.lower(state, batch, text_params).compile()
                flops_per_step, _ = train_state.step_flops(cfg, mesh, encode, state, batch, text_params)
                peak = peak or metrics.measure_matmul_peak(
                    1024 if mesh.devices.flat[0].platform == "cpu" else 8192,
                    jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32)
                t_window = time.perf_counter()
            if sample_cond is None and "cond" in local:
                sample_cond = np.asarray(local["cond"][: len(SAMPLE_PROMPTS)])
            state, m = compiled(state, batch, text_params)  # dispatched, not awaited
            window.append(m)
            if t_cfg.block_every_step:  # opt-in: exact per-step timing, or XLA CPU collectives that need it
                jax.block_until_ready(m)
            bar.update(1)
            done = step + 1
            stop = preempted(done)
            ckpt_due = done % t_cfg.ckpt_every == 0 or done == t_cfg.steps or stop
            if done % t_cfg.log_every == 0 or done == t_cfg.steps or ckpt_due:
                rows = jax.device_get(window)  # the only host sync of the loop (besides eval/samples/checkpoints)
                last = rows[-1]
                if done % t_cfg.log_every == 0 or done == t_cfg.steps:
                    last_crc = float(zlib.crc32(np.ascontiguousarray(local["x1"]).tobytes()))
                    writer.scalars(done, log_scalars(cfg, rows, time.perf_counter() - t_window, flops_per_step,
                                                     peak, n_dev, last_crc))
                    bar.set_postfix(loss=f"{float(np.mean([r['loss'] for r in rows])):.4f}",
                                    lr=f"{float(last['lr']):.2e}", refresh=False)
                    window, t_window = [], time.perf_counter()
                if int(last["nan_in_row"]) >= t_cfg.max_nan_in_row:
                    raise TrainingDivergedError(
                        f"step {done}: {int(last['nan_in_row'])} non-finite steps in a row (train.max_nan_in_row="
                        f"{t_cfg.max_nan_in_row}); stopped without saving. Last good checkpoint: step "
                        f"{manager.latest_step()} in {manager.directory}. Lower optim.lr or check the data.")
                if ckpt_due and int(last["nan_in_row"]) == 0:
                    checkpoint.save(manager, done, state, cfg, force=True)
            if t_cfg.eval_every and done % t_cfg.eval_every == 0:
                writer.scalars(done, evaluate(cfg, eval_fn, state, text_params, setup), prefix="valid")
                t_window = time.perf_counter()  # eval time is not step time
            if t_cfg.sample_every and done % t_cfg.sample_every == 0:
                write_samples(cfg, setup, state, encode, text_params, done, workdir, writer, sample_cond)
                t_window = time.perf_counter()
            if stop:
                tqdm.write(f"preemption (SIGTERM): stopping after step {done}; latest checkpoint: "
                           f"{manager.latest_step()}")
                break
    finally:
        data_iter.close()  # ends data worker processes
        manager.wait_until_finished()
        manager.close()
        writer.close()
        bar.close()
        preempted.restore()  # type: ignore[attr-defined]
    return state


def log_scalars(cfg: Config, rows: list[dict[str, Any]], seconds: float, flops_per_step: float, peak: float,
                n_dev: int, batch_crc: float) -> dict[str, float]:
    """The scalars of one log window (per-step metric dicts fetched from the devices): means over the window's
    finite losses, loss by t-bin, steps/s from the window's wall time, MFU, NaN counters, the last batch's CRC."""
    loss = np.array([float(r["loss"]) for r in rows])
    out = {k: float(np.mean([float(r[k]) for r in rows])) for k in ("grad_norm", "param_norm", "lr")}
    out["loss"] = float(loss[np.isfinite(loss)].mean()) if np.isfinite(loss).any() else float("nan")
    loss_b = np.concatenate([np.asarray(r["loss_per_example"]) for r in rows])
    t_b = np.concatenate([np.asarray(r["t"]) for r in rows])
    out.update(metrics.loss_by_t_bin(loss_b[np.isfinite(loss_b)], t_b[np.isfinite(loss_b)]))
    sps = len(rows) / max(seconds, 1e-9)
    out.update(steps_per_s=sps, frames_per_s=sps * cfg.data.batch_size * cfg.data.frames,
               mfu=metrics.mfu(flops_per_step, sps, peak, n_dev), nan_skipped_total=float(rows[-1]["nan_total"]),
               batch_crc=batch_crc)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="configs/<name>.py with get_config()")
    ap.add_argument("--workdir", required=True, help="run folder; an existing checkpoint there is resumed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() (auto if the "
                    "environment shows several processes)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of input errors too")
    args = ap.parse_args(argv)
    compile_cache.enable()  # a second run starts with its executables compiled (~/.cache/musicflow_jax/xla)
    maybe_initialize_distributed(args.multihost)
    try:
        cfg = config_lib.load(args.config, args.set)
        train(cfg, args.workdir)
    except (TrainingDivergedError, workdir_lock.WorkdirLockedError) as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except input_errors() as e:  # bad input: one line naming it and the fix; real bugs keep their traceback
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (config, data, checkpoints, converted folders), not a bug."""
    from musicflow_jax.finetune import FineTuneError
    from musicflow_jax.records import RecordError
    from musicflow_jax.tokenizer import TokenizerError
    from musicflow_jax.weights import WeightsError

    return (config_lib.ConfigError, TrainInputError, checkpoint.CheckpointError, RecordError, WeightsError,
            TokenizerError, FineTuneError, FileNotFoundError)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())

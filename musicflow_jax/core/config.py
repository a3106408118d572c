"""The typed, frozen config of a flow-stage run and its validation.

A run is fully described by one `Config`. `configs/<name>.py` files expose `get_config()`; tiny variants are derived
with `dataclasses.replace`, never copied. Loading, `--set section.key=value` overrides, JSON and the hash are the one
loader's (core/config_io.py, shared with the codec's config); this module adds the `Config`-typed shortcuts. The
resolved config is serialised to JSON beside every checkpoint and exported model (`to_json` / `from_json`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from musicflow_jax.core import config_io
from musicflow_jax.core.config_io import ConfigError, check, int_at_least, number_at_least

STAGES = ("semantic", "acoustic")  # stage 1: text -> semantic; stage 2: semantic+text -> acoustic
DTYPES = ("float32", "bfloat16", "float16")
MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "frames", "embed", "mlp", "heads", "kv", "text", "vocab", "layers")
REMAT_POLICIES = ("none", "dots", "full")
ATTENTION = ("xla", "cudnn", "flash")
# LoRA on the blocks' attention projections (self and cross) and MLP kernels (models/lora.py)
LORA_TARGETS = r"(self_attn|cross_attn)\.w_[qkvo]$|mlp\.fc_(in|out)\.kernel$"


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Frozen T5 text encoder feeding cross-attention."""

    checkpoint: str = ""  # converted Flax T5 folder; "" = embedded tiny byte-level T5 (random)
    max_len: int = 64  # tokens; longer captions are truncated
    dim: int = 768  # hidden size of the encoder output (T5-base: 768)
    precomputed: bool = False  # use T5 embeddings stored in the data records instead
    meta: bool = False  # + a tempo and a key token parsed from the caption (encoders/meta.py; needs dim >= 64)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One Voicebox-style flow transformer; stage 1 and stage 2 are two settings of it."""

    stage: str = "semantic"
    feature_dim: int = 768  # dim of the generated stream (HuBERT feature / Encodec latent)
    cond_dim: int = 0  # dim of the frame-aligned condition stream (stage 2: semantic); 0 = none
    dim: int = 768
    depth: int = 8
    heads: int = 12
    mlp_dim: int = 3072
    time_dim: int = 256  # sinusoidal time-embedding width before its MLP
    rope_theta: float = 10_000.0
    dropout: float = 0.0
    dtype: str = "float32"  # activation/compute dtype
    param_dtype: str = "float32"  # master weights
    remat: str = "none"  # per-block rematerialisation in the backward pass: none | dots (save matmul outputs) | full
    scan_layers: bool = True  # run each U-Net half as a scan over stacked layers (one block compiled per half)
    attention: str = "xla"  # xla (any mask, fp32 scores) | cudnn (flash attention on NVIDIA GPUs, bf16/fp16) | flash
    # (Pallas flash attention on TPUs)
    # an average-velocity (few-step) student: the network also reads the interval end s (flow.FlowInput.s_b) through
    # a second time embedding of s - t whose output layer starts at zero (a teacher's weights load unchanged)
    interval: bool = False
    # a beat grid on the stage's frames from the caption's tempo (core/beat.py, flow.FlowInput.beat_btc), read with
    # the stream and the condition by the input projection; dropped with the text
    beat: bool = False
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank on lora_targets (models/lora.py); 0 = off
    lora_alpha: float = 8.0  # adapters enter as W + lora_alpha / lora_rank * A B
    lora_targets: str = LORA_TARGETS  # regex searched in parameter paths (e.g. down.layers.block.self_attn.w_q)

    def __post_init__(self) -> None:
        if isinstance(self.remat, bool):  # configs stored before remat became a policy: true = rematerialise all
            object.__setattr__(self, "remat", "full" if self.remat else "none")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Masked conditional flow matching (see flow.py for the convention)."""

    sigma_min: float = 1e-5
    time_sampler: str = "uniform"  # "uniform" | "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mask_min_frac: float = 0.7  # Voicebox: masked span covers 70-100% of the frames
    mask_max_frac: float = 1.0
    p_full_mask: float = 0.3  # probability the whole sequence is masked (pure text-to-music)
    p_drop_text: float = 0.2  # CFG: drop the text (and the context with it)
    p_drop_context: float = 0.2  # probability the audio context is dropped when text is kept
    # text.meta: probability the caption's own tokens are dropped while its tempo / key tokens stay, so the stage
    # learns to follow those tokens whatever the caption's wording (0 = off; draws no random numbers)
    p_drop_caption: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # "synthetic" | "arrayrecord"
    path: str = ""  # folder with *.array_record shards and index.json
    split: str = "train"
    frames: int = 500  # crop length in frames of the generated stream
    batch_size: int = 16  # global batch
    shuffle_seed: int = 0
    num_workers: int = 0  # grain worker processes; 0 = in-process
    prefetch: int = 2
    normalize: bool = True  # normalise features with the index statistics
    stats: str = ""  # features.json / index.json whose stats normalise instead (fine-tuning: the base model's)
    semantic_rate: float = 50.0  # Hz
    acoustic_rate: float = 75.0  # Hz
    # "as_written": each clip's caption as precomputed; "varied": a wording drawn per example from the clip's facts
    # (musicflow_jax/data/captions.py TRAIN_WORDINGS; needs a manifest with "facts", as build_corpus writes)
    captions: str = "as_written"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh over (data, fsdp, tensor); one entry may be -1 (fill with the rest)."""

    shape: tuple[int, int, int] = (-1, 1, 1)
    # logical axis -> mesh axis (or None = replicated). Data, not code: edit per run.
    rules: tuple[tuple[str, str | None], ...] = (
        ("batch", "data"),
        ("frames", None),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("text", None),
        ("vocab", None),
        ("layers", None),  # the stacking axis of the scanned blocks' parameters (never sharded by default)
    )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 5_000
    schedule: str = "cosine"  # "cosine" | "linear" | "constant"
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.9999


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 400_000
    seed: int = 0
    log_every: int = 100
    eval_every: int = 5_000
    eval_batches: int = 8
    ckpt_every: int = 5_000
    keep: int = 3
    keep_every: int = 50_000  # also keep every K-th step's checkpoint; 0 = off
    sample_every: int = 25_000  # periodic sampling of fixed prompts; 0 = off
    max_nan_in_row: int = 10
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 = measure a matmul peak at start
    sample_codec: str = ""  # converted Encodec folder decoding stage-2 samples to WAV; "" = the data's acoustic part
    block_every_step: bool = False  # wait for each step before the next (exact per-step timing; off = async dispatch)
    init_from: str = ""  # start from an exported stage (file/folder) or a run's workdir: fresh optimizer, EMA = loaded
    # init_from may miss / add parameters (missing ones keep their fresh init) and have fewer input rows in a 2-D
    # weight (a new input appended, e.g. model.beat: those rows start at zero, finetune.grow)
    init_partial: bool = False
    trainable: str = ""  # regex of base parameter paths that train ("" = all; with LoRA: none, adapters only)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    solver: str = "midpoint"  # "euler" | "midpoint" | "heun" | "dopri5"
    steps: int = 16
    rtol: float = 1e-5
    atol: float = 1e-5
    cfg_scale: float = 3.0
    # the starting noise of the generated frames is N(0, temperature^2) (core/sampling.py): < 1 draws nearer the
    # flow's high-density paths, trading diversity for fidelity; 1 = the distribution the flow was trained from
    temperature: float = 1.0


MAX_TEMPERATURE = 2.0  # sample.temperature's and StageSettings.temperature's upper bound


DISTILL_METHODS = ("meanflow", "shortcut", "trajectory")  # flow.distill_loss's targets


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Few-step student training (flow.distill_loss): a stage with model.interval learns the average velocity of a
    guided teacher stage, so that it samples in 1-2 jumps (sample.solver=average) with the guidance in its weights."""

    teacher: str = ""  # the teacher: an exported stage (file/folder) or a run's workdir; "" = plain flow matching
    # meanflow (one teacher evaluation + one JVP) | shortcut (self-consistency of two half jumps) | trajectory
    # (teacher_steps guided midpoint steps of the teacher): see flow.distill_loss
    method: str = "meanflow"
    cfg_scale: float = 3.0  # the teacher's guidance scale, built into the student
    p_instant: float = 0.75  # share of intervals with s = t (the student's velocity = the teacher's; MeanFlow's 75 %)
    adaptive_p: float = 1.0  # per-example loss weight sg(1 / (e + 1e-3)^p) (MeanFlow's adaptive loss); 0 = plain MSE
    teacher_steps: int = 2  # trajectory: the teacher's midpoint steps from t to s
    # share of the s != t intervals drawn as one of the sampler's sample.steps equal jumps (the intervals it samples)
    p_grid: float = 0.0


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "unnamed"
    text: TextConfig = TextConfig()
    model: ModelConfig = ModelConfig()
    flow: FlowConfig = FlowConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    distill: DistillConfig = DistillConfig()

    def __post_init__(self) -> None:
        validate(self)

    @property
    def frame_rate(self) -> float:
        """Frames per second of the stream this stage generates (data.semantic_rate or data.acoustic_rate)."""
        return self.data.acoustic_rate if self.model.stage == "acoustic" else self.data.semantic_rate


# --------------------------------------------------------------------------- validation


def _validate_counts(cfg: Config) -> None:
    """Intervals, counts and sizes: wrong ones would otherwise fail late (ZeroDivisionError after compile)."""
    t, d, o, s = cfg.train, cfg.data, cfg.optim, cfg.sample
    for key, value, low, what in (
            ("train.steps", t.steps, 1, "total training steps"),
            ("train.log_every", t.log_every, 1, "steps between log lines"),
            ("train.ckpt_every", t.ckpt_every, 1, "steps between checkpoints"),
            ("train.eval_every", t.eval_every, 0, "steps between evaluations; 0 = off"),
            ("train.eval_batches", t.eval_batches, 1, "validation batches per evaluation"),
            ("train.keep", t.keep, 1, "latest checkpoints kept"),
            ("train.keep_every", t.keep_every, 0, "also keep every K-th step; 0 = off"),
            ("train.sample_every", t.sample_every, 0, "steps between samples; 0 = off"),
            ("train.max_nan_in_row", t.max_nan_in_row, 1, "non-finite steps in a row before stopping"),
            ("train.seed", t.seed, 0, "random seed"),
            ("data.frames", d.frames, 1, "crop length in frames"),
            ("data.batch_size", d.batch_size, 1, "global batch size"),
            ("data.num_workers", d.num_workers, 0, "data worker processes; 0 = in-process"),
            ("data.prefetch", d.prefetch, 0, "prefetched batches"),
            ("data.shuffle_seed", d.shuffle_seed, 0, "shuffle seed"),
            ("optim.warmup_steps", o.warmup_steps, 0, "learning-rate warmup steps"),
            ("optim.grad_accum", o.grad_accum, 1, "micro-batches per step"),
            ("text.max_len", cfg.text.max_len, 1, "tokens per caption"),
            ("text.dim", cfg.text.dim, 1, "text encoder width"),
            ("sample.steps", s.steps, 1, "ODE solver steps")):
        int_at_least(value, key, low, what)
    for key, value, low, what, strict in (
            ("optim.lr", o.lr, 0.0, "learning rate", True),
            ("optim.eps", o.eps, 0.0, "Adam epsilon", True),
            ("optim.weight_decay", o.weight_decay, 0.0, "decoupled weight decay", False),
            ("optim.grad_clip", o.grad_clip, 0.0, "global-norm clip; 0 = off", False),
            ("train.peak_tflops", t.peak_tflops, 0.0, "per-device peak; 0 = measure", False),
            ("data.semantic_rate", d.semantic_rate, 0.0, "Hz", True),
            ("data.acoustic_rate", d.acoustic_rate, 0.0, "Hz", True),
            ("sample.rtol", s.rtol, 0.0, "dopri5 relative tolerance", True),
            ("sample.atol", s.atol, 0.0, "dopri5 absolute tolerance", True),
            ("sample.cfg_scale", s.cfg_scale, 0.0, "guidance scale; 1 = none", False),
            ("sample.temperature", s.temperature, 0.0, "scale of the starting noise; 1 = as trained", True)):
        number_at_least(value, key, low, what, strict=strict)
    check(s.temperature <= MAX_TEMPERATURE, "sample.temperature",
          f"must be <= {MAX_TEMPERATURE} (scale of the starting noise; 1 = as trained), got {s.temperature!r}")
    for key, value in (("optim.b1", o.b1), ("optim.b2", o.b2)):
        config_io.in_unit_interval(value, key)


def _validate_mesh_shape(shape: Any) -> None:
    check(isinstance(shape, tuple) and len(shape) == 3, "mesh.shape",
           f"needs 3 integers for {MESH_AXES}, e.g. --set 'mesh.shape=(-1,1,1)', got {shape!r}")
    for axis, s in zip(MESH_AXES, shape):
        check(isinstance(s, int) and not isinstance(s, bool), "mesh.shape",
               f"entry {axis!r} must be an integer (> 0, or -1 = fill), got {s!r}: e.g. --set 'mesh.shape=(-1,1,1)'")
    check(sum(s == -1 for s in shape) <= 1 and all(s == -1 or s > 0 for s in shape), "mesh.shape",
           "entries must be > 0, with at most one -1")


def validate(cfg: Config) -> None:
    _validate_counts(cfg)
    _validate_mesh_shape(cfg.mesh.shape)
    m, f, d, o = cfg.model, cfg.flow, cfg.data, cfg.optim
    check(m.stage in STAGES, "model.stage", f"must be one of {STAGES}, got {m.stage!r}")
    for k in ("dim", "depth", "heads", "mlp_dim", "feature_dim", "time_dim"):
        int_at_least(getattr(m, k), f"model.{k}", 1, "model size")
    int_at_least(m.cond_dim, "model.cond_dim", 0, "condition stream width; 0 = none")
    check(m.dim % m.heads == 0, "model.heads", f"must divide model.dim={m.dim}, got {m.heads}")
    check((m.dim // m.heads) % 2 == 0, "model.heads", "head dim (dim/heads) must be even for rotary embeddings")
    check(m.depth % 2 == 0, "model.depth", f"must be even for the U-Net skips, got {m.depth}")
    check(m.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}")
    check(m.remat in REMAT_POLICIES, "model.remat", f"must be one of {REMAT_POLICIES}, got {m.remat!r}")
    check(isinstance(m.scan_layers, bool), "model.scan_layers", f"must be true or false, got {m.scan_layers!r}")
    check(m.attention in ATTENTION, "model.attention", f"must be one of {ATTENTION} (cudnn needs an NVIDIA GPU and "
                                                        f"model.dtype bfloat16 or float16, flash a TPU), got "
                                                        f"{m.attention!r}")
    check(m.attention != "cudnn" or m.dtype != "float32", "model.attention",
           "cudnn flash attention takes bfloat16 / float16 only: set model.dtype=bfloat16 or model.attention=xla")
    check(m.param_dtype in DTYPES, "model.param_dtype", f"must be one of {DTYPES}")
    int_at_least(m.lora_rank, "model.lora_rank", 0, "LoRA adapter rank; 0 = off")
    number_at_least(m.lora_alpha, "model.lora_alpha", 0.0, "LoRA scale numerator", strict=True)
    for key, pattern in (("model.lora_targets", m.lora_targets), ("train.trainable", cfg.train.trainable)):
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ConfigError(f"config key '{key}': {pattern!r} is not a regular expression ({e}): e.g. "
                              f"--set '{key}=cross_attn'") from None
    if m.stage == "acoustic":
        check(m.cond_dim > 0, "model.cond_dim", "stage 'acoustic' needs the semantic feature dim (> 0)")
    else:
        check(m.cond_dim == 0, "model.cond_dim", "stage 'semantic' is conditioned on text only: set 0")
    check(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    check(0.0 <= f.sigma_min < 1.0, "flow.sigma_min", "must be in [0, 1)")
    check(f.time_sampler in ("uniform", "logit_normal"), "flow.time_sampler", "uniform | logit_normal")
    check(0.0 < f.mask_min_frac <= f.mask_max_frac <= 1.0, "flow.mask_min_frac",
           "need 0 < mask_min_frac <= mask_max_frac <= 1")
    for k in ("p_full_mask", "p_drop_text", "p_drop_context", "p_drop_caption"):
        check(0.0 <= getattr(f, k) <= 1.0, f"flow.{k}", "must be a probability in [0, 1]")
    check(d.source in ("synthetic", "arrayrecord"), "data.source", "synthetic | arrayrecord")
    check(d.source != "arrayrecord" or bool(d.path), "data.path", "required when data.source=arrayrecord")
    check(d.captions in ("as_written", "varied"), "data.captions", "as_written | varied")
    check(f.p_drop_caption == 0.0 or cfg.text.meta, "flow.p_drop_caption",
          "drops the caption but keeps its tempo / key tokens: set text.meta=true or flow.p_drop_caption=0")
    check(not cfg.text.meta or cfg.text.dim >= 64, "text.meta",
          f"the tempo / key tokens need text.dim >= 64, got {cfg.text.dim}: use a wider encoder or text.meta=false")
    check(d.captions == "as_written" or not cfg.text.precomputed, "data.captions",
          "varied wordings are encoded on the fly: set text.precomputed=false or data.captions=as_written")
    for logical, mesh_axis in cfg.mesh.rules:
        check(logical in LOGICAL_AXES, "mesh.rules", f"unknown logical axis {logical!r}; valid: {LOGICAL_AXES}")
        check(mesh_axis is None or mesh_axis in MESH_AXES, "mesh.rules",
               f"unknown mesh axis {mesh_axis!r} for {logical!r}; valid: {MESH_AXES} or None")
    check(o.schedule in ("cosine", "linear", "constant"), "optim.schedule", "cosine | linear | constant")
    check(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", "must be in [0, 1)")
    check(cfg.sample.solver in ("euler", "midpoint", "heun", "dopri5", "average"), "sample.solver",
           "euler | midpoint | heun | dopri5 | average (few-step students)")
    check(cfg.sample.solver != "average" or m.interval, "sample.solver",
          "'average' steps a few-step student: set model.interval=true, or choose euler | midpoint | heun | dopri5")
    _validate_distill(cfg)


def _validate_distill(cfg: Config) -> None:
    dc = cfg.distill
    check(dc.method in DISTILL_METHODS, "distill.method", f"{' | '.join(DISTILL_METHODS)}, got {dc.method!r}")
    int_at_least(dc.teacher_steps, "distill.teacher_steps", 1, "the teacher's midpoint steps per interval")
    number_at_least(dc.cfg_scale, "distill.cfg_scale", 0.0, "the teacher's guidance scale; 1 = none", strict=False)
    check(0.0 <= dc.p_instant <= 1.0, "distill.p_instant", "must be a probability in [0, 1]")
    check(0.0 <= dc.p_grid <= 1.0, "distill.p_grid", "must be a probability in [0, 1]")
    number_at_least(dc.adaptive_p, "distill.adaptive_p", 0.0, "adaptive loss power; 0 = plain MSE", strict=False)
    if dc.teacher:
        check(cfg.model.interval, "model.interval",
              "a distilled student reads the interval end s: set model.interval=true (or distill.teacher='')")
        check(cfg.model.lora_rank == 0 and not cfg.train.trainable, "distill.teacher",
              "students train all their weights: set model.lora_rank=0 and train.trainable=''")
        check(cfg.sample.solver == "average", "sample.solver",
              "a student samples (and its exported stage declares) the 'average' sampler: set sample.solver=average "
              "and sample.steps=1 or 2")
        check(cfg.sample.cfg_scale == 1.0, "sample.cfg_scale",
              "a student's guidance is in its weights (distill.cfg_scale): set sample.cfg_scale=1")


# --------------------------------------------------------------------------- loading (core/config_io.py)


def load(spec: str | Path, overrides: list[str] | None = None) -> Config:
    """configs/<name>.py (a path or a name) whose get_config() returns a Config, with `--set` overrides applied."""
    hint = " (a codec config? train it with python -m musicflow_jax.train or python -m musicflow_jax.train_codec)"
    return config_io.load(spec, overrides, (Config,), hint)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    return config_io.apply_overrides(cfg, overrides)


def from_dict(data: dict[str, Any]) -> Config:
    return config_io.from_dict(Config, data)


def from_json(text: str) -> Config:
    return config_io.from_json(Config, text)


to_dict, to_json, config_hash = config_io.to_dict, config_io.to_json, config_io.config_hash

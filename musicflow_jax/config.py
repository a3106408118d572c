"""Typed, frozen experiment configuration and its command-line override/validation logic.

A run is fully described by one `Config`. `configs/<name>.py` files expose `get_config()`;
tiny variants are derived with `dataclasses.replace`, never copied. Overrides use dotted
paths: `--set optim.lr=3e-4 --set 'mesh.shape=(2,4,1)'`. The resolved config is serialised to
JSON beside every checkpoint and exported model (`to_json` / `from_json`).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

STAGES = ("semantic", "acoustic")  # stage 1: text -> semantic; stage 2: semantic+text -> acoustic
DTYPES = ("float32", "bfloat16", "float16")
MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "frames", "embed", "mlp", "heads", "kv", "text", "vocab", "layers")
REMAT_POLICIES = ("none", "dots", "full")
ATTENTION = ("xla", "cudnn")
# LoRA on the blocks' attention projections (self and cross) and MLP kernels (finetune.py)
LORA_TARGETS = r"(self_attn|cross_attn)\.w_[qkvo]$|mlp\.fc_(in|out)\.kernel$"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and what to do."""


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Frozen T5 text encoder feeding cross-attention."""

    checkpoint: str = ""  # converted Flax T5 folder; "" = embedded tiny byte-level T5 (random)
    max_len: int = 64  # tokens; longer captions are truncated
    dim: int = 768  # hidden size of the encoder output (T5-base: 768)
    precomputed: bool = False  # use T5 embeddings stored in the data records instead


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
    attention: str = "xla"  # xla (any mask, fp32 scores) | cudnn (flash attention on NVIDIA GPUs, bf16/fp16)
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank on lora_targets (finetune.py); 0 = off
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
    init_partial: bool = False  # init_from may miss / add parameters (missing ones keep their fresh init)
    trainable: str = ""  # regex of base parameter paths that train ("" = all; with LoRA: none, adapters only)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    solver: str = "midpoint"  # "euler" | "midpoint" | "heun" | "dopri5"
    steps: int = 16
    rtol: float = 1e-5
    atol: float = 1e-5
    cfg_scale: float = 3.0


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

    def __post_init__(self) -> None:
        validate(self)


# --------------------------------------------------------------------------- validation


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def _int_at_least(value: Any, key: str, low: int, what: str) -> None:
    """`value` must be an int >= `low` (bools are not ints here); the message says what the key is for."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    _check(ok, key, f"must be an integer >= {low} ({what}), got {value!r}: set e.g. --set {key}={max(low, 1)}")


def _number_at_least(value: Any, key: str, low: float, what: str, *, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value > low if strict else value >= low)
    bound = f"> {low}" if strict else f">= {low}"
    _check(ok, key, f"must be a finite number {bound} ({what}), got {value!r}")


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
        _int_at_least(value, key, low, what)
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
            ("sample.cfg_scale", s.cfg_scale, 0.0, "guidance scale; 1 = none", False)):
        _number_at_least(value, key, low, what, strict=strict)
    for key, value in (("optim.b1", o.b1), ("optim.b2", o.b2)):
        _check(isinstance(value, (int, float)) and 0.0 <= value < 1.0, key, f"must be in [0, 1), got {value!r}")


def _validate_mesh_shape(shape: Any) -> None:
    _check(isinstance(shape, tuple) and len(shape) == 3, "mesh.shape",
           f"needs 3 integers for {MESH_AXES}, e.g. --set 'mesh.shape=(-1,1,1)', got {shape!r}")
    for axis, s in zip(MESH_AXES, shape):
        _check(isinstance(s, int) and not isinstance(s, bool), "mesh.shape",
               f"entry {axis!r} must be an integer (> 0, or -1 = fill), got {s!r}: e.g. --set 'mesh.shape=(-1,1,1)'")
    _check(sum(s == -1 for s in shape) <= 1 and all(s == -1 or s > 0 for s in shape), "mesh.shape",
           "entries must be > 0, with at most one -1")


def validate(cfg: Config) -> None:
    _validate_counts(cfg)
    _validate_mesh_shape(cfg.mesh.shape)
    m, f, d, o = cfg.model, cfg.flow, cfg.data, cfg.optim
    _check(m.stage in STAGES, "model.stage", f"must be one of {STAGES}, got {m.stage!r}")
    for k in ("dim", "depth", "heads", "mlp_dim", "feature_dim", "time_dim"):
        _int_at_least(getattr(m, k), f"model.{k}", 1, "model size")
    _int_at_least(m.cond_dim, "model.cond_dim", 0, "condition stream width; 0 = none")
    _check(m.dim % m.heads == 0, "model.heads", f"must divide model.dim={m.dim}, got {m.heads}")
    _check((m.dim // m.heads) % 2 == 0, "model.heads", "head dim (dim/heads) must be even for rotary embeddings")
    _check(m.depth % 2 == 0, "model.depth", f"must be even for the U-Net skips, got {m.depth}")
    _check(m.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}")
    _check(m.remat in REMAT_POLICIES, "model.remat", f"must be one of {REMAT_POLICIES}, got {m.remat!r}")
    _check(isinstance(m.scan_layers, bool), "model.scan_layers", f"must be true or false, got {m.scan_layers!r}")
    _check(m.attention in ATTENTION, "model.attention", f"must be one of {ATTENTION} (cudnn needs an NVIDIA GPU and "
                                                        f"model.dtype bfloat16 or float16), got {m.attention!r}")
    _check(m.attention != "cudnn" or m.dtype != "float32", "model.attention",
           "cudnn flash attention takes bfloat16 / float16 only: set model.dtype=bfloat16 or model.attention=xla")
    _check(m.param_dtype in DTYPES, "model.param_dtype", f"must be one of {DTYPES}")
    _int_at_least(m.lora_rank, "model.lora_rank", 0, "LoRA adapter rank; 0 = off")
    _number_at_least(m.lora_alpha, "model.lora_alpha", 0.0, "LoRA scale numerator", strict=True)
    for key, pattern in (("model.lora_targets", m.lora_targets), ("train.trainable", cfg.train.trainable)):
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ConfigError(f"config key '{key}': {pattern!r} is not a regular expression ({e}): e.g. "
                              f"--set '{key}=cross_attn'") from None
    if m.stage == "acoustic":
        _check(m.cond_dim > 0, "model.cond_dim", "stage 'acoustic' needs the semantic feature dim (> 0)")
    else:
        _check(m.cond_dim == 0, "model.cond_dim", "stage 'semantic' is conditioned on text only: set 0")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    _check(0.0 <= f.sigma_min < 1.0, "flow.sigma_min", "must be in [0, 1)")
    _check(f.time_sampler in ("uniform", "logit_normal"), "flow.time_sampler", "uniform | logit_normal")
    _check(0.0 < f.mask_min_frac <= f.mask_max_frac <= 1.0, "flow.mask_min_frac",
           "need 0 < mask_min_frac <= mask_max_frac <= 1")
    for k in ("p_full_mask", "p_drop_text", "p_drop_context"):
        _check(0.0 <= getattr(f, k) <= 1.0, f"flow.{k}", "must be a probability in [0, 1]")
    _check(d.source in ("synthetic", "arrayrecord"), "data.source", "synthetic | arrayrecord")
    _check(d.source != "arrayrecord" or bool(d.path), "data.path", "required when data.source=arrayrecord")
    for logical, mesh_axis in cfg.mesh.rules:
        _check(logical in LOGICAL_AXES, "mesh.rules", f"unknown logical axis {logical!r}; valid: {LOGICAL_AXES}")
        _check(mesh_axis is None or mesh_axis in MESH_AXES, "mesh.rules",
               f"unknown mesh axis {mesh_axis!r} for {logical!r}; valid: {MESH_AXES} or None")
    _check(o.schedule in ("cosine", "linear", "constant"), "optim.schedule", "cosine | linear | constant")
    _check(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", "must be in [0, 1)")
    _check(cfg.sample.solver in ("euler", "midpoint", "heun", "dopri5"), "sample.solver",
           "euler | midpoint | heun | dopri5")


# --------------------------------------------------------------------------- overrides


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: str, typ: Any, key: str) -> Any:
    """Parse the string `value` of an override into the field's declared type."""
    origin = typing.get_origin(typ)
    if typ is bool:
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key '{key}': expected a bool (true/false), got {value!r}")
    if typ is str:
        return value
    if typ in (int, float):
        try:
            num = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}") from None
        if isinstance(num, bool) or not isinstance(num, (int, float)) or (typ is int and not isinstance(num, int)):
            raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}")
        return typ(num)
    if origin in (typing.Union, types.UnionType) or origin is tuple:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        if origin is tuple and not isinstance(parsed, (tuple, list)):
            raise ConfigError(f"config key '{key}': expected a tuple like (1, 2), got {value!r}")
        return tuple(tuple(p) if isinstance(p, list) else p for p in parsed) if origin is tuple else parsed
    raise ConfigError(f"config key '{key}': unsupported field type {typ}")


def _set_in_dict(cls: type, data: dict[str, Any], path: list[str], value: str, full: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config key '{full}': no field '{head}' in {cls.__name__}; "
                          f"valid keys: {', '.join(names)}")
    typ = _field_types(cls)[head]
    if dataclasses.is_dataclass(typ):
        if len(path) == 1:
            first = dataclasses.fields(typ)[0].name
            raise ConfigError(f"config key '{full}' is a section; set one of its fields, e.g. '{full}.{first}=...'")
        _set_in_dict(typ, data[head], path[1:], value, full)
    elif len(path) > 1:
        raise ConfigError(f"config key '{full}': '{head}' is a value, not a section")
    else:
        data[head] = _coerce(value, typ, full)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `a.b=value` overrides in order, then validate the result once.

    Unknown keys, values of the wrong type and invalid combinations raise ConfigError naming the key.
    """
    data = to_dict(cfg)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like section.key=value (e.g. optim.lr=3e-4)")
        key, value = ov.split("=", 1)
        _set_in_dict(Config, data, key.strip().split("."), value.strip(), key.strip())
    return from_dict(data)


# --------------------------------------------------------------------------- files and JSON


def load_config_file(path: str | Path) -> Config:
    """Import `configs/<name>.py` and call its `get_config()`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (expected configs/<name>.py with get_config())")
    root = str(path.resolve().parent.parent)  # so configs can import their siblings: `from configs.x import`
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"musicflow_config_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config() function")
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        hint = (" (a codec config: train it with python -m musicflow_jax.train_codec)"
                if type(cfg).__name__ == "CodecTrainConfig" else "")
        raise ConfigError(f"{path}: get_config() must return musicflow_jax.config.Config, got "
                          f"{type(cfg).__name__}{hint}")
    return cfg


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    return apply_overrides(load_config_file(path), list(overrides or []))


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = _field_types(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)} for {cls.__name__}; valid: {sorted(names)}")
    for name, val in data.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _from_dict(typ, val)
        elif isinstance(val, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in val)
        else:
            kwargs[name] = val
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    return _from_dict(Config, data)


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(to_json(cfg).encode()).hexdigest()[:12]

"""Train the project's own Encodec-architecture codec (SEANet encoder/decoder of musicflow_jax/models/encodec.py,
continuous pre-quantisation latents, no quantiser in the loss) on a manifest's audio, and export it as a converted
Encodec folder that `musicflow_jax.codec.Codec.load` and the "encodec" acoustic part read.

Pieces, in the order `train_codec()` uses them:
  * `CodecTrainConfig`: typed frozen config (model / data / loss / optim / train sections), validated on creation
    with errors naming the key and the fix; `load_config(path, overrides)` reads `configs/codec_*.py` and applies
    `--set section.key=value` overrides (the machinery of musicflow_jax/config.py).
  * Data (`load_clips`, `crop_batch`): the manifest's clips of one split, read once at the codec's sample rate and
    kept in memory (the rendered corpus is small). The batch of step k is drawn from
    `np.random.default_rng((seed, k))`: clips picked with probability proportional to their length, one uniform
    crop of `segment_seconds` each (shorter clips zero-padded). The data position is therefore just the step, and
    a resumed run sees exactly the batches an uninterrupted one would.
  * Losses (`reconstruction_losses`), on x_hat = decode(encode(x)) against x, both (B, S):
      - multi-resolution STFT, for each FFT size n in `loss.stft_sizes` (Hann window, hop n/4, centred reflect
        padding, |X| floored at sqrt(1e-7)):
          spectral convergence  sc_n = ||X_hat| - |X||_F / ||X||_F   (over the whole batch)
          log-magnitude L1      lm_n = mean | log|X_hat| - log|X| |
        stft = mean_n (sc_n + lm_n);
      - multi-scale mel L1: for each (n_fft, n_mels) in `loss.mel_scales`,
          mean | log(max(M |X_hat|, 1e-5)) - log(max(M |X|, 1e-5)) |  with n_mels HTK triangles M
        (musicflow_jax/backends/mel.py, 0 .. sr/2) on an n_fft-point STFT, hop n_fft/4; mel = the mean over scales
        (Descript's audio codec uses windows 32 .. 2048 with 5 .. 320 bands: the short windows keep onsets sharp);
      - waveform L1: mean |x_hat - x|;
      total = loss.w_stft * stft + loss.w_mel * mel + loss.w_wave * wave. No discriminator.
    With `loss.latent_noise` = s > 0 the decoder sees z + s * rms(z) * n (n standard normal, rms over the batch,
    no gradient through the scale) during training: a decoder robust to small latent errors, which a flow model
    generating the latents will make. `loss.w_smooth` adds w * smooth, smooth = mean |z_t - z_{t-1}|^2 / (2 var(z))
    (var over time per clip and channel, averaged; = 1 - the latents' lag-1 autocorrelation): left free, the
    latents follow the waveform's phase frame to frame (lag-1 autocorrelation ~0, white noise to a flow model);
    with it they follow what changes slowly (pitch, loudness, timbre) and the decoder makes the phase, which the
    magnitude losses leave free.
  * The state is musicflow_jax.train_state.TrainState (params = the encoder/decoder nnx.Params, weight-normalised
    convs trained as weight_g / weight_v exactly as the converted folders store them; rest = the quantiser's
    codebooks, random and untouched; EMA of the params), optimised by train_state.make_optimizer (AdamW, warmup +
    schedule, global-norm clipping). A non-finite step leaves the state untouched (as the flow trainer does).
  * `train_codec()`: one linear loop: workdir lock -> fresh or resumed state (orbax, musicflow_jax.checkpoint) ->
    per step: crop batch, jitted step; metrics stay on device and are fetched only at log steps (also the NaN
    check) -> eval on fixed held-out crops -> checkpoints -> final checkpoint. SIGTERM saves and returns. Outputs in
    workdir: config.json, metrics.jsonl, tb/, checkpoints/, train.lock while running.
  * `export_codec()`: a run's checkpoint (or a live state) -> converted Encodec folder (config.json of weights.FORMAT,
    kind "encodec", the EncodecConfig fields + model.safetensors of the NNX parameter paths), written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from musicflow_jax import atomic_io, checkpoint, metrics, train_state, workdir_lock
from musicflow_jax import config as config_lib
from musicflow_jax.config import ConfigError, OptimConfig
from musicflow_jax.models.encodec import Encodec, EncodecConfig

TrainState = train_state.TrainState
NORM_TYPES = ("weight_norm", "time_group_norm")
EXPORT_BANDWIDTH = 1.5  # kbps: the exported (untrained) quantiser then has 2 codebooks at 75 Hz


class CodecDataError(ValueError):
    """The manifest yields no usable audio for the codec (no clips in the split, unreadable files), with the fix."""


class TrainingDivergedError(RuntimeError):
    """Raised after train.max_nan_in_row consecutive non-finite steps."""


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class CodecModelConfig:
    """The EncodecConfig fields the trainer sets; the rest keep the 24 kHz Encodec's values."""

    sample_rate: int = 24_000
    num_filters: int = 16  # SEANet base width (the 24 kHz Encodec: 32)
    hidden_size: int = 64  # latent dim (the 24 kHz Encodec: 128)
    ratios: tuple[int, ...] = (8, 5, 4, 2)  # decoder upsampling ratios; hop = prod = 320 -> 75 Hz at 24 kHz
    num_residual_layers: int = 1
    num_lstm_layers: int = 1
    norm_type: str = "weight_norm"  # "weight_norm" | "time_group_norm"
    causal: bool = False
    kernel_size: int = 7

    def encodec(self) -> EncodecConfig:
        return EncodecConfig(
            sampling_rate=self.sample_rate, audio_channels=1, hidden_size=self.hidden_size,
            num_filters=self.num_filters, num_residual_layers=self.num_residual_layers,
            upsampling_ratios=tuple(self.ratios), norm_type=self.norm_type, kernel_size=self.kernel_size,
            last_kernel_size=self.kernel_size, use_causal_conv=self.causal, num_lstm_layers=self.num_lstm_layers,
            codebook_size=1024, codebook_dim=self.hidden_size, target_bandwidths=(EXPORT_BANDWIDTH,),
            normalize=False)

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclasses.dataclass(frozen=True)
class CodecDataConfig:
    manifest: str = ""  # JSONL manifest (tools/build_corpus.py writes one)
    split: str = "train"  # clips trained on
    eval_split: str = "valid"  # held-out clips for eval; falls back to `split` when the manifest has none
    segment_seconds: float = 1.0  # crop length (rounded to whole hops)
    batch_size: int = 8
    max_clips: int = 0  # use at most this many clips per split (0 = all)


@dataclasses.dataclass(frozen=True)
class CodecLossConfig:
    stft_sizes: tuple[int, ...] = (512, 1024, 2048)  # multi-resolution STFT FFT sizes (hop n/4)
    mel_scales: tuple[tuple[int, int], ...] = ((1024, 64),)  # (n_fft, n_mels) per mel scale (hop n_fft/4)
    w_stft: float = 1.0
    w_mel: float = 1.0
    w_wave: float = 0.1
    latent_noise: float = 0.0  # decoder input noise, relative to the latents' RMS (training only)
    w_smooth: float = 0.0  # weight of the latents' temporal smoothness term (1 - lag-1 autocorrelation)


CODEC_OPTIM = OptimConfig(lr=3e-4, b2=0.99, weight_decay=0.0, warmup_steps=200, ema_decay=0.999)  # grad_accum unused


@dataclasses.dataclass(frozen=True)
class CodecLoopConfig:
    steps: int = 20_000
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1_000  # 0 = off
    eval_batches: int = 4
    ckpt_every: int = 1_000
    keep: int = 3
    keep_every: int = 0  # also keep every K-th step's checkpoint; 0 = off
    max_nan_in_row: int = 10


@dataclasses.dataclass(frozen=True)
class CodecTrainConfig:
    name: str = "codec"
    model: CodecModelConfig = CodecModelConfig()
    data: CodecDataConfig = CodecDataConfig()
    loss: CodecLossConfig = CodecLossConfig()
    optim: OptimConfig = CODEC_OPTIM
    train: CodecLoopConfig = CodecLoopConfig()

    def __post_init__(self) -> None:
        validate(self)

    @property
    def segment_samples(self) -> int:
        hop = self.model.hop_length
        return max(1, round(self.data.segment_seconds * self.model.sample_rate / hop)) * hop


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def validate(cfg: CodecTrainConfig) -> None:
    """Raise ConfigError naming the first bad key and what to set instead."""
    m, d, lo, o, t = cfg.model, cfg.data, cfg.loss, cfg.optim, cfg.train
    for key, value, low in (("model.sample_rate", m.sample_rate, 1000), ("model.num_filters", m.num_filters, 1),
                            ("model.hidden_size", m.hidden_size, 1), ("model.num_residual_layers",
                                                                      m.num_residual_layers, 1),
                            ("model.num_lstm_layers", m.num_lstm_layers, 0), ("model.kernel_size", m.kernel_size, 1),
                            ("data.batch_size", d.batch_size, 1), ("data.max_clips", d.max_clips, 0),
                            ("optim.warmup_steps", o.warmup_steps, 0), ("train.steps", t.steps, 1),
                            ("train.seed", t.seed, 0), ("train.log_every", t.log_every, 1),
                            ("train.eval_every", t.eval_every, 0), ("train.eval_batches", t.eval_batches, 1),
                            ("train.ckpt_every", t.ckpt_every, 1), ("train.keep", t.keep, 1),
                            ("train.keep_every", t.keep_every, 0), ("train.max_nan_in_row", t.max_nan_in_row, 1)):
        _check(_is_int(value, low), key, f"must be an integer >= {low}, got {value!r}: set e.g. --set {key}="
                                         f"{max(low, 1)}")
    _check(isinstance(m.ratios, tuple) and len(m.ratios) > 0 and all(_is_int(r, 1) for r in m.ratios),
           "model.ratios", f"must be a tuple of integers >= 1 such as (8, 5, 4, 2), got {m.ratios!r}")
    _check(m.norm_type in NORM_TYPES, "model.norm_type", f"must be one of {NORM_TYPES}, got {m.norm_type!r}")
    _check(isinstance(m.causal, bool), "model.causal", f"must be true or false, got {m.causal!r}")
    _check(isinstance(d.segment_seconds, (int, float)) and d.segment_seconds > 0, "data.segment_seconds",
           f"must be > 0 seconds, got {d.segment_seconds!r}")
    _check(d.split in ("train", "valid", "test") and d.eval_split in ("train", "valid", "test"), "data.split",
           f"data.split / data.eval_split must be train | valid | test, got {d.split!r} / {d.eval_split!r}")
    _check(isinstance(lo.stft_sizes, tuple) and all(_is_int(n, 16) for n in lo.stft_sizes), "loss.stft_sizes",
           f"must be a tuple of FFT sizes >= 16 such as (512, 1024, 2048), got {lo.stft_sizes!r}")
    _check(isinstance(lo.mel_scales, tuple) and len(lo.mel_scales) > 0 and all(
        isinstance(sc, tuple) and len(sc) == 2 and _is_int(sc[0], 16) and _is_int(sc[1], 1) for sc in lo.mel_scales),
        "loss.mel_scales", f"must be a tuple of (n_fft >= 16, n_mels >= 1) pairs such as ((1024, 64),), got "
                           f"{lo.mel_scales!r}")
    longest = max((*lo.stft_sizes, *(sc[0] for sc in lo.mel_scales)))
    _check(cfg.segment_samples > longest, "data.segment_seconds",
           f"a crop of {cfg.segment_samples} samples is not longer than the largest FFT ({longest}): raise "
           "data.segment_seconds or lower loss.stft_sizes / loss.mel_scales")
    for key, value in (("loss.w_stft", lo.w_stft), ("loss.w_mel", lo.w_mel), ("loss.w_wave", lo.w_wave),
                       ("loss.latent_noise", lo.latent_noise), ("loss.w_smooth", lo.w_smooth),
                       ("optim.weight_decay", o.weight_decay), ("optim.grad_clip", o.grad_clip)):
        _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, key,
               f"must be a finite number >= 0, got {value!r}")
    _check(lo.w_stft + lo.w_mel + lo.w_wave > 0, "loss.w_stft", "all loss weights are 0: set one > 0")
    _check(isinstance(o.lr, (int, float)) and o.lr > 0, "optim.lr", f"must be > 0, got {o.lr!r}")
    _check(isinstance(o.eps, (int, float)) and o.eps > 0, "optim.eps", f"must be > 0, got {o.eps!r}")
    for key, value in (("optim.b1", o.b1), ("optim.b2", o.b2), ("optim.ema_decay", o.ema_decay)):
        _check(isinstance(value, (int, float)) and 0.0 <= value < 1.0, key, f"must be in [0, 1), got {value!r}")
    _check(o.schedule in ("cosine", "linear", "constant"), "optim.schedule", "cosine | linear | constant")
    _check(o.grad_accum == 1, "optim.grad_accum", "the codec trainer takes whole batches: leave it at 1")


def from_dict(data: dict[str, Any]) -> CodecTrainConfig:
    return config_lib._from_dict(CodecTrainConfig, data)


def apply_overrides(cfg: CodecTrainConfig, overrides: list[str]) -> CodecTrainConfig:
    """`section.key=value` overrides (config.py's parser and type coercion), validated once at the end."""
    data = dataclasses.asdict(cfg)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like section.key=value (e.g. optim.lr=3e-4)")
        key, value = ov.split("=", 1)
        config_lib._set_in_dict(CodecTrainConfig, data, key.strip().split("."), value.strip(), key.strip())
    return from_dict(data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> CodecTrainConfig:
    """configs/<name>.py whose get_config() returns a CodecTrainConfig, with overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (expected configs/codec_<name>.py with get_config())")
    import importlib.util
    import sys

    root = str(path.resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"musicflow_codec_config_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = getattr(module, "get_config", lambda: None)()
    if not isinstance(cfg, CodecTrainConfig):
        raise ConfigError(f"{path}: get_config() must return musicflow_jax.codec_train.CodecTrainConfig (a codec "
                          f"training config such as configs/codec_corpus.py), got {type(cfg).__name__}")
    return apply_overrides(cfg, list(overrides or []))


def to_json(cfg: CodecTrainConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)


# --------------------------------------------------------------------------- data


def load_clips(cfg: CodecTrainConfig, split: str) -> list[np.ndarray]:
    """Mono float32 clips (S,) of `split` at the model's sample rate (at most data.max_clips), read once."""
    from musicflow_jax.audio import read_audio
    from musicflow_jax.manifest import read_manifest

    if not cfg.data.manifest:
        raise CodecDataError("config key 'data.manifest' is empty: set --set data.manifest=CORPUS/manifest.jsonl "
                             "(tools/build_corpus.py writes one)")
    entries, _ = read_manifest(cfg.data.manifest)
    entries = [e for e in entries if e.split == split]
    if cfg.data.max_clips:
        entries = entries[: cfg.data.max_clips]
    clips = []
    for e in entries:
        x_s, _ = read_audio(e.path, cfg.model.sample_rate)
        if x_s.size:
            clips.append(x_s)
    return clips


def crop_batch(clips: list[np.ndarray], segment: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """(batch_size, segment) float32 crops: clips picked with probability proportional to their length, one uniform
    crop each, zero-padded when a clip is shorter than `segment`."""
    lengths = np.array([len(c) for c in clips], np.float64)
    picks = rng.choice(len(clips), size=batch_size, p=lengths / lengths.sum())
    x_bs = np.zeros((batch_size, segment), np.float32)
    for b, i in enumerate(picks):
        clip = clips[i]
        off = int(rng.integers(0, max(len(clip) - segment, 0) + 1))
        piece = clip[off: off + segment]
        x_bs[b, : len(piece)] = piece
    return x_bs


def train_batch(cfg: CodecTrainConfig, clips: list[np.ndarray], step: int) -> np.ndarray:
    """The batch of step `step`: a function of (train.seed, step) only."""
    return crop_batch(clips, cfg.segment_samples, cfg.data.batch_size, np.random.default_rng((cfg.train.seed, step)))


def eval_batches(cfg: CodecTrainConfig, clips: list[np.ndarray]) -> list[np.ndarray]:
    """train.eval_batches fixed batches of held-out crops (the same at every eval and on resume)."""
    return [crop_batch(clips, cfg.segment_samples, cfg.data.batch_size,
                       np.random.default_rng((cfg.train.seed, i, 1))) for i in range(cfg.train.eval_batches)]


# --------------------------------------------------------------------------- losses


def stft_mag(x_bs: jax.Array, n_fft: int) -> jax.Array:
    """|STFT| (B, frames, n_fft//2 + 1): Hann window, hop n_fft/4, centred with reflect padding, floored at
    sqrt(1e-7) so the log and its gradient stay finite."""
    hop, pad = max(n_fft // 4, 1), n_fft // 2
    x = jnp.pad(x_bs, ((0, 0), (pad, pad)), mode="reflect")
    n_frames = 1 + (x.shape[1] - n_fft) // hop
    idx_tn = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    window = jnp.asarray(np.hanning(n_fft + 1)[:-1], jnp.float32)  # periodic Hann
    spec = jnp.fft.rfft(x[:, idx_tn] * window, axis=-1)
    return jnp.sqrt(jnp.maximum(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2, 1e-7))


def _mel_banks(cfg: CodecTrainConfig) -> list[np.ndarray]:
    """(n_mels, n_fft // 2 + 1) HTK mel matrices, one per loss.mel_scales entry."""
    from musicflow_jax.backends.mel import MelConfig, mel_filterbank

    sr = cfg.model.sample_rate
    return [mel_filterbank(MelConfig(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sr / 2))
            for n_fft, n_mels in cfg.loss.mel_scales]


def reconstruction_losses(y_bs: jax.Array, x_bs: jax.Array, cfg: CodecTrainConfig, mel_banks: list[np.ndarray]
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total, parts) of the reconstruction `y_bs` against the target `x_bs` (see the module docstring)."""
    lo = cfg.loss
    parts: dict[str, jax.Array] = {}
    stft_terms = []
    for n in lo.stft_sizes:
        ym, xm = stft_mag(y_bs, n), stft_mag(x_bs, n)
        sc = jnp.linalg.norm((ym - xm).ravel()) / jnp.maximum(jnp.linalg.norm(xm.ravel()), 1e-7)
        lm = jnp.mean(jnp.abs(jnp.log(ym) - jnp.log(xm)))
        parts[f"sc_{n}"], parts[f"logmag_{n}"] = sc, lm
        stft_terms.append(sc + lm)
    parts["stft"] = jnp.mean(jnp.stack(stft_terms)) if stft_terms else jnp.zeros(())
    mel_terms = []
    for (n_fft, _), bank_mf in zip(lo.mel_scales, mel_banks):
        bank = jnp.asarray(bank_mf)
        ymel = jnp.log(jnp.maximum(stft_mag(y_bs, n_fft) @ bank.T, 1e-5))
        xmel = jnp.log(jnp.maximum(stft_mag(x_bs, n_fft) @ bank.T, 1e-5))
        mel_terms.append(jnp.mean(jnp.abs(ymel - xmel)))
    parts["mel"] = jnp.mean(jnp.stack(mel_terms))
    parts["wave"] = jnp.mean(jnp.abs(y_bs - x_bs))
    total = lo.w_stft * parts["stft"] + lo.w_mel * parts["mel"] + lo.w_wave * parts["wave"]
    return total, parts


# --------------------------------------------------------------------------- state and step


def _trainable(path: tuple[Any, ...], value: Any) -> bool:
    """The encoder/decoder parameters; the quantiser's codebooks are not trained (the latents are continuous)."""
    return isinstance(value, nnx.Param) and path[0] in ("encoder", "decoder")


def build_model(cfg: CodecTrainConfig, seed: int) -> Encodec:
    return Encodec(cfg.model.encodec(), rngs=nnx.Rngs(seed))


def init_state(cfg: CodecTrainConfig, tx: optax.GradientTransformation) -> tuple[Any, TrainState]:
    """(graphdef, fresh TrainState) from train.seed."""
    graphdef, params, rest = nnx.split(build_model(cfg, cfg.train.seed), _trainable, ...)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                       ema=jax.tree.map(jnp.copy, params), nan_in_row=jnp.zeros((), jnp.int32),
                       nan_total=jnp.zeros((), jnp.int32))
    return graphdef, state


def abstract_state(cfg: CodecTrainConfig, tx: optax.GradientTransformation) -> tuple[Any, TrainState]:
    """(graphdef, ShapeDtypeStructs of the state on the first local device): the restore target."""
    out: dict[str, Any] = {}

    def f() -> TrainState:
        out["graphdef"], state = init_state(cfg, tx)
        return state

    shapes = jax.eval_shape(f)
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return out["graphdef"], jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), shapes)


def latent_roughness(z_btd: jax.Array) -> jax.Array:
    """mean |z_t - z_{t-1}|^2 / (2 var_t(z)): 1 - the lag-1 autocorrelation of the latents (0 = constant in time,
    1 = white noise), the variance taken over time per clip and channel and averaged."""
    var = jnp.mean(jnp.square(z_btd - z_btd.mean(axis=1, keepdims=True)))
    return jnp.mean(jnp.square(z_btd[:, 1:] - z_btd[:, :-1])) / (2.0 * var + 1e-8)


def make_loss_fn(cfg: CodecTrainConfig, graphdef: Any) -> Any:
    """loss(params, rest, x_bs, noise_key=None) -> (total, parts): encode -> (latent noise when a key is given and
    loss.latent_noise > 0) -> decode -> reconstruction losses."""
    banks = _mel_banks(cfg)
    noise = cfg.loss.latent_noise

    def loss_fn(params: Any, rest: Any, x_bs: jax.Array, noise_key: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        model = nnx.merge(graphdef, params, rest)
        z_btd = model.encode_latents(x_bs[..., None])
        smooth = latent_roughness(z_btd)
        if noise_key is not None and noise > 0:
            rms = jax.lax.stop_gradient(jnp.sqrt(jnp.mean(jnp.square(z_btd))))
            z_btd = z_btd + noise * rms * jax.random.normal(noise_key, z_btd.shape, z_btd.dtype)
        y_bs = model.decode_latents(z_btd)[..., 0]
        total, parts = reconstruction_losses(y_bs, x_bs, cfg, banks)
        parts["smooth"] = smooth
        return total + cfg.loss.w_smooth * smooth, parts

    return loss_fn


def make_train_step(cfg: CodecTrainConfig, graphdef: Any, tx: optax.GradientTransformation) -> Any:
    """Jitted `step(state, x_bs) -> (state, metrics)` (state donated); metrics are device scalars. The latent noise
    of step k is drawn from fold_in(key(train.seed), k), so a resumed run draws what an uninterrupted one would."""
    grad_fn = jax.value_and_grad(make_loss_fn(cfg, graphdef), has_aux=True)
    schedule = train_state.make_schedule(cfg)  # type: ignore[arg-type]
    decay = cfg.optim.ema_decay
    base_key = jax.random.key(cfg.train.seed)

    def step_fn(state: TrainState, x_bs: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, parts), grads = grad_fn(state.params, state.rest, x_bs, jax.random.fold_in(base_key, state.step))
        new_state, grad_norm, _ = train_state.guarded_update(state, grads, loss, state.rest, tx, decay)
        out = {"loss": loss, **parts, "grad_norm": grad_norm, "param_norm": optax.global_norm(new_state.params),
               "lr": schedule(train_state.adam_count(state.opt_state)), "nan_in_row": new_state.nan_in_row,
               "nan_total": new_state.nan_total}
        return new_state, out

    return jax.jit(step_fn, donate_argnums=(0,))


def make_eval_fn(cfg: CodecTrainConfig, graphdef: Any) -> Any:
    """Jitted (params, rest, x_bs) -> (total, parts)."""
    return jax.jit(make_loss_fn(cfg, graphdef))


def evaluate(eval_fn: Any, params: Any, rest: Any, batches: list[np.ndarray]) -> dict[str, float]:
    """Mean loss and loss parts over the fixed eval batches."""
    rows = [jax.device_get(eval_fn(params, rest, jnp.asarray(x_bs))) for x_bs in batches]
    out = {"loss": float(np.mean([r[0] for r in rows]))}
    for k in rows[0][1]:
        out[k] = float(np.mean([r[1][k] for r in rows]))
    return out


# --------------------------------------------------------------------------- the loop


@functools.lru_cache(maxsize=4)
def _compiled(cfg: CodecTrainConfig) -> tuple[Any, optax.GradientTransformation, TrainState, Any, Any]:
    """(graphdef, optimizer, abstract state, jitted train step, jitted eval) of a config, kept per process so that
    a resumed or repeated run in the same process (tests, notebooks) reuses the compiled programs."""
    tx = train_state.make_optimizer(cfg)  # type: ignore[arg-type]  # reads optim.* and train.steps only
    graphdef, abstract = abstract_state(cfg, tx)
    return graphdef, tx, abstract, make_train_step(cfg, graphdef, tx), make_eval_fn(cfg, graphdef)


def _manager(workdir: Path, cfg: CodecTrainConfig, async_save: bool) -> Any:
    return checkpoint.make_manager(workdir, cfg, async_save=async_save)  # type: ignore[arg-type]  # train.keep*


def train_codec(cfg: CodecTrainConfig, workdir: str | Path, *, stop_at: int | None = None,
                async_ckpt: bool = True) -> TrainState:
    """Train (or resume) the codec in `workdir` up to train.steps; returns the final state. `stop_at` stops after
    that step with a checkpoint, as SIGTERM does (tests use it to interrupt a run). The workdir is locked."""
    workdir = Path(workdir)
    lock = workdir_lock.acquire(workdir)
    try:
        return _train(cfg, workdir, stop_at=stop_at, async_ckpt=async_ckpt)
    finally:
        lock.release()


def _train(cfg: CodecTrainConfig, workdir: Path, *, stop_at: int | None, async_ckpt: bool) -> TrainState:
    t_cfg = cfg.train
    clips = load_clips(cfg, cfg.data.split)
    if not clips:
        raise CodecDataError(f"manifest {cfg.data.manifest} has no readable clips in split {cfg.data.split!r}: "
                             "set --set data.split=... or build a corpus with tools/build_corpus.py")
    held_out = load_clips(cfg, cfg.data.eval_split) if t_cfg.eval_every else []
    eval_data = eval_batches(cfg, held_out or clips) if t_cfg.eval_every else []

    graphdef, tx, abstract, step_fn, eval_fn = _compiled(cfg)
    manager = _manager(workdir, cfg, async_ckpt)
    if manager.latest_step() is not None:
        start, state, _ = checkpoint.restore(manager, abstract, set_aside_broken=True, config_from_dict=from_dict)
    else:  # placed like a restored state, so both hit the same compiled step
        start, state = 0, jax.device_put(init_state(cfg, tx)[1], jax.tree.leaves(abstract)[0].sharding)
    atomic_io.write_text(workdir / "config.json", to_json(cfg))
    writer = metrics.MetricsWriter(workdir)
    stop = {"sigterm": False}
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
    window: list[dict[str, jax.Array]] = []
    seconds_per_sample = cfg.segment_samples / cfg.model.sample_rate
    try:
        if start == 0 and t_cfg.eval_every:
            writer.scalars(0, evaluate(eval_fn, state.params, state.rest, eval_data), prefix="valid")
        t_window = time.perf_counter()
        for step in range(start, t_cfg.steps):
            state, m = step_fn(state, jnp.asarray(train_batch(cfg, clips, step)))
            window.append(m)  # stays on device until the next log step
            done = step + 1
            interrupt = stop["sigterm"] or done == stop_at
            if done % t_cfg.log_every == 0 or done == t_cfg.steps or done % t_cfg.ckpt_every == 0 or interrupt:
                rows = jax.device_get(window)
                dt = time.perf_counter() - t_window
                scalars = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
                scalars["nan_in_row"], scalars["nan_total"] = float(rows[-1]["nan_in_row"]), float(
                    rows[-1]["nan_total"])
                sps = len(rows) / max(dt, 1e-9)
                scalars.update(steps_per_s=sps, seconds_per_step=1.0 / sps,
                               audio_seconds_per_s=sps * cfg.data.batch_size * seconds_per_sample)
                writer.scalars(done, scalars)
                window, t_window = [], time.perf_counter()
                if scalars["nan_in_row"] >= t_cfg.max_nan_in_row:
                    raise TrainingDivergedError(
                        f"step {done}: {int(scalars['nan_in_row'])} non-finite steps in a row (train.max_nan_in_row="
                        f"{t_cfg.max_nan_in_row}); stopped without saving. Last good checkpoint: step "
                        f"{manager.latest_step()} in {manager.directory}. Lower optim.lr or check the data.")
                if scalars["nan_in_row"] == 0 and (done % t_cfg.ckpt_every == 0 or done == t_cfg.steps or interrupt):
                    checkpoint.save(manager, done, state, cfg, force=True)
            if t_cfg.eval_every and done % t_cfg.eval_every == 0:
                writer.scalars(done, evaluate(eval_fn, state.params, state.rest, eval_data), prefix="valid")
                t_window = time.perf_counter()  # eval time is not step time
            if interrupt:
                break
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
        signal.signal(signal.SIGTERM, previous_handler)
    return state


# --------------------------------------------------------------------------- restore and export


def read_run_config(workdir: str | Path) -> CodecTrainConfig:
    """The config of a codec run (workdir/config.json, written when the run started)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise checkpoint.CheckpointError(f"{path} does not exist: is {workdir} a codec training run folder "
                                         "(python -m musicflow_jax.train_codec ... --workdir)?")
    return from_dict(json.loads(path.read_text()))


def load_trained(workdir: str | Path, step: int | None = None) -> tuple[CodecTrainConfig, TrainState, int]:
    """(config, state, step) of a codec run's checkpoint (latest unless `step`)."""
    cfg = read_run_config(workdir)
    tx = train_state.make_optimizer(cfg)  # type: ignore[arg-type]  # reads optim.* and train.steps only
    _, abstract = abstract_state(cfg, tx)
    manager = _manager(Path(workdir), cfg, False)
    try:
        step, state, _ = checkpoint.restore(manager, abstract, step, config_from_dict=from_dict)
    finally:
        manager.close()
    return cfg, state, step


def trained_model(cfg: CodecTrainConfig, state: TrainState, *, ema: bool = False) -> Encodec:
    """The Encodec module holding the state's parameters (or their EMA) and its untrained quantiser."""
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(cfg, 0)), _trainable, ...)[0]
    return nnx.merge(graphdef, jax.device_get(state.ema if ema else state.params), jax.device_get(state.rest))


def export_codec(source: str | Path | TrainState, out: str | Path, *, cfg: CodecTrainConfig | None = None,
                 step: int | None = None, ema: bool = False) -> Path:
    """Write a converted Encodec folder at `out` (atomically: the folder appears complete or not at all) from a
    codec run's workdir (its latest checkpoint unless `step`) or from a live `TrainState` with its `cfg`. `ema`
    exports the EMA of the weights instead of the raw ones."""
    from musicflow_jax.weights import ENCODEC, flat_params, save_converted

    if isinstance(source, TrainState):
        if cfg is None:
            raise ValueError("export_codec(state, ...) needs cfg=the CodecTrainConfig the state was trained with")
        state, done, origin = source, int(jax.device_get(source.step)), "live state"
    else:
        cfg, state, done = load_trained(source, step)
        origin = str(source)
    model = trained_model(cfg, state, ema=ema)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    extra = {"trained_by": "musicflow_jax.codec_train", "step": done, "weights": "ema" if ema else "raw",
             "train_config": dataclasses.asdict(cfg),
             "quantizer": "untrained random codebooks: use the continuous latents (encode_latents / decode_latents)"}
    try:
        save_converted(tmp, ENCODEC, dataclasses.asdict(cfg.model.encodec()), flat_params(model),
                       source=f"musicflow_jax.codec_train ({origin}, step {done})", extra=extra)
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

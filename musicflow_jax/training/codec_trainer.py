"""Train the project's own Encodec-architecture codec (SEANet encoder/decoder of musicflow_jax/models/encodec.py,
continuous pre-quantisation latents, no quantiser in the loss) on a manifest's audio, and export it as a converted
Encodec folder that `musicflow_jax.encoders.codec.Codec.load` and the "encodec" acoustic part read.

Pieces, in the order `train_codec()` uses them:
  * `CodecTrainConfig` (training/codec_config.py): typed frozen config (model / data / loss / optim / train
    sections), loaded with `--set` overrides by the one config loader (core/config_io.py).
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
      - onset flux (loss.w_flux > 0): mean | R(x_hat) - R(x) | with R = `band_rises`, each of 96 mel bands'
        (27.5 Hz - 8 kHz) rise of log(1 + 100 |X|) over 2 frames, half-wave rectified, on a 2048-point STFT at
        100 frames/s (at 24 kHz): what the evaluation's onset detector reads (evaluate/music.py
        note_onset_strength), so attacks the decoder softens or adds to a held note cost directly;
      total = loss.w_stft * stft + loss.w_mel * mel + loss.w_wave * wave (+ loss.w_flux * flux).
    With `loss.latent_noise` = s > 0 the decoder sees z + s * rms(z) * n (n standard normal, rms over the batch,
    no gradient through the scale) during training: a decoder robust to small latent errors, which a flow model
    generating the latents will make. `loss.w_smooth` adds w * smooth, smooth = mean |z_t - z_{t-1}|^2 / (2 var(z))
    (var over time per clip and channel, averaged; = 1 - the latents' lag-1 autocorrelation): left free, the
    latents follow the waveform's phase frame to frame (lag-1 autocorrelation ~0, white noise to a flow model);
    with it they follow what changes slowly (pitch, loudness, timbre) and the decoder makes the phase, which the
    magnitude losses leave free.
  * Adversarial training (`loss.w_adv` or `loss.w_feat` > 0): a multi-scale discriminator D
    (models/discriminator.py) on the log-mels of `loss.disc_scales` (log(max(M |X|, 1e-5)), hop n_fft/4) is trained
    beside the codec, each step from the same state (simultaneous updates, each with its own AdamW of the optim
    settings and its own gradient clipping):
      D's loss (hinge)      mean_s [ mean relu(1 - D_s(x)) + mean relu(1 + D_s(sg(x_hat))) ]
      the codec's loss      total + on * ( w_adv * mean_s mean relu(1 - D_s(x_hat))
                                         + w_feat * mean_{s,l} mean|f_sl(x_hat) - f_sl(x)| / mean|f_sl(x)| )
    with f_sl the activations of D's layer l at scale s, and on = 0 for the first `loss.adv_warmup` steps (D learns
    alone), else 1. The state's params, EMA and optimizer state then hold {"codec": ..., "disc": ...}; the export
    and evaluation read the codec's part (`codec_params`), and the eval loss stays the reconstruction total.
  * Generated pairs (`data.pairs`, `data.pairs_batch`, decoder-only runs): latents a flow stage generated, each
    paired with the audio it should decode to (stage 2 run on a real clip's own semantic stream: the latents are
    frame-aligned with the clip, not sample-exact). Each step adds `data.pairs_batch` aligned crops of them; their
    loss is the stft + mel terms (no waveform L1: the phase is not the clip's), added to the encoded crops' loss.
    The decoder learns to decode what the flow actually produces, as TTS vocoders are fine-tuned on predicted
    spectrograms; the encoded crops keep the round trip (its measured trade-off: docs/training.md).
  * Starting point (`train.init_from`, `train.trainable`): random weights, or a converted codec folder's (its
    architecture must be the config's). With `train.trainable="decoder"` only the decoder is optimised and the
    encoder rides along in the state's `rest`, so the latents a flow model was trained on stay bit-exact: the
    decoder can be trained further (or against new losses) after the stages, without re-extracting features or
    retraining stage 2.
  * The state is training/state.py's TrainState (params = the encoder/decoder nnx.Params, weight-normalised
    convs trained as weight_g / weight_v exactly as the converted folders store them; rest = the quantiser's
    codebooks, random and untouched; EMA of the params), optimised by state.make_optimizer (AdamW, warmup +
    schedule, global-norm clipping). A non-finite step leaves the state untouched (the guarded update, as the flow
    trainer's).
  * `train_codec()`: `CodecTrainer` run by the training loop both trainers share (training/loop.py: workdir lock,
    resume, SIGTERM / SIGINT saving, NaN guard, checkpoint cadence), eval on fixed held-out crops.
  * `export_codec()`: a run's checkpoint (or a live state) -> converted Encodec folder (encoders/converted.py's
    format: config.json of kind "encodec" with the EncodecConfig fields + model.safetensors of the NNX parameter
    paths), written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from musicflow_jax.backends.mel import MelConfig, mel_filterbank
from musicflow_jax.core.audio import AudioError, read_audio
from musicflow_jax.data.manifest import read_manifest
from musicflow_jax.data.pairs import Pairs, PairsFileError, read_pairs
from musicflow_jax.encoders.converted import ENCODEC, load_encodec, save_converted
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.models.discriminator import DiscriminatorConfig, SpectrogramDiscriminator
from musicflow_jax.models.encodec import Encodec
from musicflow_jax.models.params import flat_params
from musicflow_jax.training import checkpoint, loop
from musicflow_jax.training.codec_config import CodecTrainConfig, flux_n_fft, from_dict
from musicflow_jax.training.state import TrainState, adam_count, guarded_update, make_optimizer, make_schedule
from musicflow_jax.utils import atomic_io


class CodecDataError(MusicFlowError):
    """The manifest yields no usable audio for the codec (no clips in the split, unreadable files), with the fix."""


# --------------------------------------------------------------------------- data


def load_clips(cfg: CodecTrainConfig, split: str) -> list[np.ndarray]:
    """Mono float32 clips (S,) of `split` at the model's sample rate (at most data.max_clips), read once. A bad
    manifest line or a file that cannot be read is skipped and listed on stderr (as precompute lists its failures):
    one broken file does not stop a run."""
    if not cfg.data.manifest:
        raise CodecDataError("config key 'data.manifest' is empty: set --set data.manifest=CORPUS/manifest.jsonl "
                             "(python -m musicflow_jax.build_corpus writes one)")
    entries, problems = read_manifest(cfg.data.manifest)
    skipped = [f"{p.where}: {p.reason}" for p in problems] if split == cfg.data.split else []
    entries = [e for e in entries if e.split == split]
    if cfg.data.max_clips:
        entries = entries[: cfg.data.max_clips]
    clips = []
    for e in entries:
        try:
            x_s, _ = read_audio(e.path, cfg.model.sample_rate)
        except AudioError as err:
            skipped.append(f"{e.where}: {err}")
            continue
        if x_s.size:
            clips.append(x_s)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if skipped:
        print(f"codec training: {len(skipped)} manifest line(s) skipped in split {split!r}, {len(clips)} clips read",
              file=sys.stderr)
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


def load_pairs(cfg: CodecTrainConfig) -> Pairs:
    """data.pairs, checked against the codec being trained (rate, hop, latent width) and the crop length."""
    path = Path(cfg.data.pairs)
    try:
        pairs = read_pairs(path)
    except PairsFileError as e:
        raise CodecDataError(f"data.pairs={e}") from None
    m = cfg.model
    want = (m.sample_rate, m.hop_length, m.hidden_size, cfg.segment_samples // m.hop_length)
    have = (pairs.sample_rate, pairs.hop_length, pairs.latents.shape[2], pairs.latents.shape[1])
    if have[:3] != want[:3] or have[3] < want[3]:
        raise CodecDataError(f"data.pairs={path}: {have[0]} Hz, hop {have[1]}, {have[2]}-d latents of {have[3]} "
                             f"frames do not fit this codec ({want[0]} Hz, hop {want[1]}, {want[2]}-d, crops of "
                             f"{want[3]} frames): write pairs with this codec's model folder")
    return pairs


def crop_pairs(pairs: Pairs, frames: int, batch_size: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """(latents (B, frames, D), audio (B, frames * hop)): uniform pairs, one uniform frame-aligned crop each."""
    n, t = pairs.latents.shape[:2]
    picks, offs = rng.integers(0, n, batch_size), rng.integers(0, t - frames + 1, batch_size)
    z = np.stack([pairs.latents[i, o: o + frames] for i, o in zip(picks, offs)])
    hop = pairs.hop_length
    x = np.stack([pairs.audio[i, o * hop: (o + frames) * hop] for i, o in zip(picks, offs)])
    return z, x


def train_batch(cfg: CodecTrainConfig, clips: list[np.ndarray], step: int, pairs: Pairs | None = None
                ) -> dict[str, np.ndarray]:
    """The batch of step `step`: a function of (train.seed, step) only. "x": encoded crops; with pairs also "zg" /
    "xg": generated latents and their audio."""
    batch = {"x": crop_batch(clips, cfg.segment_samples, cfg.data.batch_size,
                             np.random.default_rng((cfg.train.seed, step)))}
    if pairs is not None:
        batch["zg"], batch["xg"] = crop_pairs(pairs, cfg.segment_samples // cfg.model.hop_length,
                                              cfg.data.pairs_batch, np.random.default_rng((cfg.train.seed, step, 2)))
    return batch


def eval_batches(cfg: CodecTrainConfig, clips: list[np.ndarray]) -> list[np.ndarray]:
    """train.eval_batches fixed batches of held-out crops (the same at every eval and on resume)."""
    return [crop_batch(clips, cfg.segment_samples, cfg.data.batch_size,
                       np.random.default_rng((cfg.train.seed, i, 1))) for i in range(cfg.train.eval_batches)]


# --------------------------------------------------------------------------- losses


def stft_mag(x_bs: jax.Array, n_fft: int, hop: int | None = None) -> jax.Array:
    """|STFT| (B, frames, n_fft//2 + 1): Hann window, hop n_fft/4 (or `hop`), centred with reflect padding, floored at
    sqrt(1e-7) so the log and its gradient stay finite."""
    hop, pad = hop or max(n_fft // 4, 1), n_fft // 2
    x = jnp.pad(x_bs, ((0, 0), (pad, pad)), mode="reflect")
    n_frames = 1 + (x.shape[1] - n_fft) // hop
    idx_tn = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    window = jnp.asarray(np.hanning(n_fft + 1)[:-1], jnp.float32)  # periodic Hann
    spec = jnp.fft.rfft(x[:, idx_tn] * window, axis=-1)
    return jnp.sqrt(jnp.maximum(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2, 1e-7))


def _mel_banks(cfg: CodecTrainConfig, scales: tuple[tuple[int, int], ...] | None = None) -> list[np.ndarray]:
    """(n_mels, n_fft // 2 + 1) HTK mel matrices (0 .. sr/2), one per (n_fft, n_mels) of `scales` (loss.mel_scales
    unless given)."""
    sr = cfg.model.sample_rate
    return [mel_filterbank(MelConfig(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sr / 2))
            for n_fft, n_mels in (cfg.loss.mel_scales if scales is None else scales)]


def log_mel(x_bs: jax.Array, n_fft: int, bank_mf: np.ndarray) -> jax.Array:
    """log(max(M |X|, 1e-5)) (B, frames, n_mels): the mel loss's and the discriminator's spectrogram (stft_mag's
    n_fft-point STFT, hop n_fft/4; M a _mel_banks matrix)."""
    return jnp.log(jnp.maximum(stft_mag(x_bs, n_fft) @ jnp.asarray(bank_mf).T, 1e-5))


# the onset-flux term's analysis: what the evaluation's onset detector reads (evaluate/music.py note_onset_strength:
# 100 frames/s, a 2048-point window at 24 kHz, log(1 + 100 |X|) in bands, each band's rise over 2 frames)
# (the window: codec_config.flux_n_fft, which the config's crop-length check also reads)
FLUX_RATE, FLUX_BANDS, FLUX_LAG, FLUX_FMIN, FLUX_FMAX = 100.0, 96, 2, 27.5, 8000.0


@functools.lru_cache(maxsize=4)
def _flux_bank(sample_rate: int) -> tuple[int, int, np.ndarray]:
    """(n_fft, hop, (FLUX_BANDS, n_fft // 2 + 1) HTK mel matrix) of the onset-flux term at `sample_rate`."""
    n_fft = flux_n_fft(sample_rate)
    bank = mel_filterbank(MelConfig(sample_rate=sample_rate, n_fft=n_fft, n_mels=FLUX_BANDS, fmin=FLUX_FMIN,
                                    fmax=min(FLUX_FMAX, sample_rate / 2)))
    return n_fft, int(round(sample_rate / FLUX_RATE)), bank


def band_rises(x_bs: jax.Array, sample_rate: int) -> jax.Array:
    """(B, frames - FLUX_LAG, FLUX_BANDS): each band's rise of log(1 + 100 |X|) over FLUX_LAG frames, half-wave
    rectified - the onset strength per band before it is summed; a note's attack is a rise across its bands."""
    n_fft, hop, bank = _flux_bank(sample_rate)
    s_btf = jnp.log1p(100.0 * stft_mag(x_bs, n_fft, hop) @ jnp.asarray(bank.T))
    return jax.nn.relu(s_btf[:, FLUX_LAG:] - s_btf[:, :-FLUX_LAG])


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
        mel_terms.append(jnp.mean(jnp.abs(log_mel(y_bs, n_fft, bank_mf) - log_mel(x_bs, n_fft, bank_mf))))
    parts["mel"] = jnp.mean(jnp.stack(mel_terms))
    parts["wave"] = jnp.mean(jnp.abs(y_bs - x_bs))
    total = lo.w_stft * parts["stft"] + lo.w_mel * parts["mel"] + lo.w_wave * parts["wave"]
    if lo.w_flux > 0:
        sr = cfg.model.sample_rate
        parts["flux"] = jnp.mean(jnp.abs(band_rises(y_bs, sr) - band_rises(x_bs, sr)))
        total = total + lo.w_flux * parts["flux"]
    return total, parts


# --------------------------------------------------------------------------- state and step


def trainable_filter(cfg: CodecTrainConfig) -> Any:
    """The nnx filter of the parameters the optimiser updates: the encoder's and decoder's (train.trainable "all")
    or the decoder's alone ("decoder"). The quantiser's codebooks are never trained (the latents are continuous)."""
    parts = ("encoder", "decoder") if cfg.train.trainable == "all" else ("decoder",)

    def trainable(path: tuple[Any, ...], value: Any) -> bool:
        return isinstance(value, nnx.Param) and path[0] in parts

    return trainable


def build_model(cfg: CodecTrainConfig, seed: int) -> Encodec:
    return Encodec(cfg.model.encodec(), rngs=nnx.Rngs(seed))


def initial_model(cfg: CodecTrainConfig) -> Encodec:
    """The model a fresh run starts from: train.init_from's converted codec folder, or random from train.seed."""
    if not cfg.train.init_from:
        return build_model(cfg, cfg.train.seed)
    folder = Path(cfg.train.init_from)
    if not (folder / "config.json").is_file():
        raise CodecDataError(f"train.init_from={folder}: no converted codec folder there (config.json missing): "
                             "point it at export_codec's output, e.g. a model folder's acoustic/")
    enc_cfg, model = load_encodec(folder)
    want, have = dataclasses.asdict(cfg.model.encodec()), dataclasses.asdict(enc_cfg)
    diff = sorted(k for k in want if want[k] != have.get(k))
    if diff:
        k = diff[0]
        raise CodecDataError(f"train.init_from={folder}: its codec has {k}={have.get(k)!r} where the config's model "
                             f"makes {want[k]!r} (differing: {', '.join(diff)}): set model.* to the folder's "
                             "architecture")
    return model


def build_discriminator(cfg: CodecTrainConfig, seed: int) -> SpectrogramDiscriminator:
    return SpectrogramDiscriminator(DiscriminatorConfig(scales=len(cfg.loss.disc_scales),
                                                        filters=cfg.loss.disc_filters), rngs=nnx.Rngs(seed))


def discriminator_graphdef(cfg: CodecTrainConfig) -> Any:
    return nnx.split(nnx.eval_shape(lambda: build_discriminator(cfg, 0)), nnx.Param)[0]


def codec_params(cfg: CodecTrainConfig, tree: Any) -> Any:
    """The codec's part of a state's params / EMA (the whole tree unless the run is adversarial)."""
    return tree["codec"] if cfg.loss.adversarial else tree


def make_codec_optimizer(cfg: CodecTrainConfig) -> optax.GradientTransformation:
    """state.make_optimizer's AdamW; an adversarial run gets one for the codec and one for the discriminator."""
    if not cfg.loss.adversarial:
        return make_optimizer(cfg)

    def labels(params: dict[str, Any]) -> dict[str, Any]:
        return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}

    return optax.multi_transform({"codec": make_optimizer(cfg), "disc": make_optimizer(cfg)}, labels)


def init_state(cfg: CodecTrainConfig, tx: optax.GradientTransformation, model: Encodec | None = None
               ) -> tuple[Any, TrainState]:
    """(graphdef, fresh TrainState) of `model`, random from train.seed when None; an adversarial run's params are
    {"codec": the model's trainable params, "disc": a discriminator random from train.seed + 1}."""
    model = build_model(cfg, cfg.train.seed) if model is None else model
    graphdef, params, rest = nnx.split(model, trainable_filter(cfg), ...)
    if cfg.loss.adversarial:
        params = {"codec": params, "disc": nnx.split(build_discriminator(cfg, cfg.train.seed + 1), nnx.Param)[1]}
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


def make_loss_fn(cfg: CodecTrainConfig, graphdef: Any, *, with_audio: bool = False) -> Any:
    """loss(params, rest, x_bs, noise_key=None, zg_btd=None, xg_bs=None) -> (total, parts): encode -> (latent noise
    when a key is given and loss.latent_noise > 0) -> decode -> reconstruction losses; with generated pairs also
    their stft + mel terms (parts["pairs"]). `params` are the codec's (codec_params). `with_audio`: (total, (parts,
    the reconstruction x_hat (B, S)))."""
    banks = _mel_banks(cfg)
    noise = cfg.loss.latent_noise

    def loss_fn(params: Any, rest: Any, x_bs: jax.Array, noise_key: jax.Array | None = None,
                zg_btd: jax.Array | None = None, xg_bs: jax.Array | None = None) -> tuple[jax.Array, Any]:
        model = nnx.merge(graphdef, params, rest)
        z_btd = model.encode_latents(x_bs[..., None])
        smooth = latent_roughness(z_btd)
        if noise_key is not None and noise > 0:
            rms = jax.lax.stop_gradient(jnp.sqrt(jnp.mean(jnp.square(z_btd))))
            z_btd = z_btd + noise * rms * jax.random.normal(noise_key, z_btd.shape, z_btd.dtype)
        y_bs = model.decode_latents(z_btd)[..., 0]
        total, parts = reconstruction_losses(y_bs, x_bs, cfg, banks)
        parts["smooth"] = smooth
        total = total + cfg.loss.w_smooth * smooth
        if zg_btd is not None:  # generated pairs: magnitudes only, their phase is not the clip's
            _, gen = reconstruction_losses(model.decode_latents(zg_btd)[..., 0], xg_bs, cfg, banks)
            parts["pairs"] = cfg.loss.w_stft * gen["stft"] + cfg.loss.w_mel * gen["mel"]
            total = total + parts["pairs"]
        return total, ((parts, y_bs) if with_audio else parts)

    return loss_fn


def disc_inputs(x_bs: jax.Array, cfg: CodecTrainConfig, banks: list[np.ndarray]) -> list[jax.Array]:
    """The discriminator's input: one (B, frames, n_mels) log-mel per loss.disc_scales entry."""
    return [log_mel(x_bs, n_fft, bank) for (n_fft, _), bank in zip(cfg.loss.disc_scales, banks)]


def hinge_disc_loss(real: list[tuple[jax.Array, list[jax.Array]]], fake: list[tuple[jax.Array, list[jax.Array]]]
                    ) -> jax.Array:
    """The discriminator's hinge loss: mean over scales of mean relu(1 - D(x)) + mean relu(1 + D(x_hat))."""
    return jnp.mean(jnp.stack([jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
                               for (r, _), (f, _) in zip(real, fake)]))


def generator_terms(real: list[tuple[jax.Array, list[jax.Array]]], fake: list[tuple[jax.Array, list[jax.Array]]]
                    ) -> tuple[jax.Array, jax.Array]:
    """(adv, feat): the codec's hinge term mean_s mean relu(1 - D(x_hat)) and the feature-matching term, the mean
    over scales and layers of mean |f(x_hat) - f(x)| / mean |f(x)| (real features without gradient)."""
    adv = jnp.mean(jnp.stack([jnp.mean(jax.nn.relu(1.0 - f)) for f, _ in fake]))
    terms = [jnp.mean(jnp.abs(ff - jax.lax.stop_gradient(fr))) / (jnp.mean(jnp.abs(jax.lax.stop_gradient(fr))) + 1e-8)
             for (_, frs), (_, ffs) in zip(real, fake) for fr, ff in zip(frs, ffs)]
    return adv, jnp.mean(jnp.stack(terms))


def make_adversarial_losses(cfg: CodecTrainConfig, graphdef: Any) -> tuple[Any, Any]:
    """(codec_loss, disc_loss) of an adversarial run (module docstring):
    codec_loss(codec_params, disc_params, rest, x_bs, noise_key, zg_btd, xg_bs, on) -> (total, (parts, x_hat)) and
    disc_loss(disc_params, x_bs, x_hat) -> (hinge loss, {"d_real", "d_fake"}: mean logits)."""
    recon = make_loss_fn(cfg, graphdef, with_audio=True)
    d_graph, banks, lo = discriminator_graphdef(cfg), _mel_banks(cfg, cfg.loss.disc_scales), cfg.loss

    def run_disc(disc_params: Any, x_bs: jax.Array) -> list[tuple[jax.Array, list[jax.Array]]]:
        return nnx.merge(d_graph, disc_params)(disc_inputs(x_bs, cfg, banks))

    def codec_loss(params: Any, disc_params: Any, rest: Any, x_bs: jax.Array, noise_key: jax.Array | None,
                   zg_btd: jax.Array | None, xg_bs: jax.Array | None, on: jax.Array) -> tuple[jax.Array, Any]:
        total, (parts, y_bs) = recon(params, rest, x_bs, noise_key, zg_btd, xg_bs)
        parts["adv"], parts["feat"] = generator_terms(run_disc(disc_params, x_bs), run_disc(disc_params, y_bs))
        return total + on * (lo.w_adv * parts["adv"] + lo.w_feat * parts["feat"]), (parts, y_bs)

    def disc_loss(disc_params: Any, x_bs: jax.Array, y_bs: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        real, fake = run_disc(disc_params, x_bs), run_disc(disc_params, y_bs)
        means = {"d_real": jnp.mean(jnp.stack([jnp.mean(r) for r, _ in real])),
                 "d_fake": jnp.mean(jnp.stack([jnp.mean(f) for f, _ in fake]))}
        return hinge_disc_loss(real, fake), means

    return codec_loss, disc_loss


def make_train_step(cfg: CodecTrainConfig, graphdef: Any, tx: optax.GradientTransformation) -> Any:
    """Jitted `step(state, x_bs) -> (state, metrics)` (state donated); metrics are device scalars. The latent noise
    of step k is drawn from fold_in(key(train.seed), k), so a resumed run draws what an uninterrupted one would."""
    if cfg.loss.adversarial:
        return make_adversarial_step(cfg, graphdef, tx)
    grad_fn = jax.value_and_grad(make_loss_fn(cfg, graphdef), has_aux=True)
    schedule = make_schedule(cfg)
    decay = cfg.optim.ema_decay
    base_key = jax.random.key(cfg.train.seed)

    def step_fn(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, parts), grads = grad_fn(state.params, state.rest, batch["x"], jax.random.fold_in(base_key, state.step),
                                       batch.get("zg"), batch.get("xg"))
        new_state, grad_norm, _ = guarded_update(state, grads, loss, state.rest, tx, decay)
        out = {"loss": loss, **parts, "grad_norm": grad_norm, "param_norm": optax.global_norm(new_state.params),
               "lr": schedule(adam_count(state.opt_state)), "nan_in_row": new_state.nan_in_row,
               "nan_total": new_state.nan_total}
        return new_state, out

    return jax.jit(step_fn, donate_argnums=(0,))


def make_adversarial_step(cfg: CodecTrainConfig, graphdef: Any, tx: optax.GradientTransformation) -> Any:
    """make_train_step of an adversarial run: the codec's and the discriminator's gradients from the same state,
    one guarded update of both (a non-finite loss of either skips the step)."""
    codec_loss, disc_loss = make_adversarial_losses(cfg, graphdef)
    codec_grad = jax.value_and_grad(codec_loss, has_aux=True)
    disc_grad = jax.value_and_grad(disc_loss, has_aux=True)
    schedule = make_schedule(cfg)
    decay, warmup = cfg.optim.ema_decay, cfg.loss.adv_warmup
    base_key = jax.random.key(cfg.train.seed)

    def step_fn(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        on = (state.step >= warmup).astype(jnp.float32)
        p = state.params
        (loss, (parts, y_bs)), g_codec = codec_grad(p["codec"], p["disc"], state.rest, batch["x"],
                                                    jax.random.fold_in(base_key, state.step), batch.get("zg"),
                                                    batch.get("xg"), on)
        (d_loss, d_parts), g_disc = disc_grad(p["disc"], batch["x"], jax.lax.stop_gradient(y_bs))
        new_state, _, _ = guarded_update(state, {"codec": g_codec, "disc": g_disc}, loss + d_loss, state.rest, tx,
                                         decay)
        out = {"loss": loss, **parts, "disc_loss": d_loss, **d_parts, "grad_norm": optax.global_norm(g_codec),
               "disc_grad_norm": optax.global_norm(g_disc), "param_norm": optax.global_norm(new_state.params["codec"]),
               "lr": schedule(adam_count(state.opt_state)), "nan_in_row": new_state.nan_in_row,
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


# --------------------------------------------------------------------------- the trainer


@functools.lru_cache(maxsize=4)
def _compiled(cfg: CodecTrainConfig) -> tuple[Any, optax.GradientTransformation, TrainState, Any, Any]:
    """(graphdef, optimizer, abstract state, jitted train step, jitted eval) of a config, kept per process so that
    a resumed or repeated run in the same process (tests, notebooks) reuses the compiled programs."""
    tx = make_codec_optimizer(cfg)
    graphdef, abstract = abstract_state(cfg, tx)
    return graphdef, tx, abstract, make_train_step(cfg, graphdef, tx), make_eval_fn(cfg, graphdef)


class CodecTrainer(loop.Trainer):
    """The codec run `cfg` on the first local device; its data (the manifest's clips) read once, in memory."""

    def __init__(self, cfg: CodecTrainConfig):
        if cfg.train.trainable == "decoder" and not cfg.train.init_from:
            raise CodecDataError("train.trainable=decoder keeps the encoder as it starts, and no train.init_from is "
                                 "set: set train.init_from to a trained codec folder (export_codec's)")
        if cfg.data.pairs_batch and not cfg.data.pairs:
            raise CodecDataError(f"data.pairs_batch={cfg.data.pairs_batch} but no data.pairs file is set: set "
                                 "data.pairs (musicflow_jax.inference.decoder_pairs writes one) or data.pairs_batch=0")
        self.cfg = cfg
        self.clips = load_clips(cfg, cfg.data.split)
        if not self.clips:
            raise CodecDataError(f"manifest {cfg.data.manifest} has no readable clips in split {cfg.data.split!r}: "
                                 "set --set data.split=... or build a corpus with python -m musicflow_jax.build_corpus")
        self.pairs = load_pairs(cfg) if cfg.data.pairs else None
        held_out = load_clips(cfg, cfg.data.eval_split) if cfg.train.eval_every else []
        self.eval_data = eval_batches(cfg, held_out or self.clips) if cfg.train.eval_every else []
        self.graphdef, self.tx, self.abstract_state, self.step_fn, self.eval_fn = _compiled(cfg)
        self.seconds_per_sample = cfg.segment_samples / cfg.model.sample_rate

    def fresh_state(self) -> TrainState:  # placed like a restored state, so both hit the same compiled step
        state = init_state(self.cfg, self.tx, initial_model(self.cfg))[1]
        return jax.device_put(state, jax.tree.leaves(self.abstract_state)[0].sharding)

    def batches(self, start: int) -> Iterator[dict[str, np.ndarray]]:
        return (train_batch(self.cfg, self.clips, step, self.pairs) for step in itertools.count(start))

    def step(self, state: TrainState, batch: dict[str, np.ndarray]) -> tuple[TrainState, dict[str, jax.Array]]:
        return self.step_fn(state, {k: jnp.asarray(v) for k, v in batch.items()})

    def log_scalars(self, rows: list[dict[str, Any]], seconds: float, batch: Any) -> dict[str, float]:
        scalars = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        scalars["nan_in_row"], scalars["nan_total"] = float(rows[-1]["nan_in_row"]), float(rows[-1]["nan_total"])
        sps = len(rows) / max(seconds, 1e-9)
        scalars.update(steps_per_s=sps, seconds_per_step=1.0 / sps,
                       audio_seconds_per_s=sps * self.cfg.data.batch_size * self.seconds_per_sample)
        return scalars

    def evaluate(self, state: TrainState) -> dict[str, float]:
        return evaluate(self.eval_fn, codec_params(self.cfg, state.params), state.rest, self.eval_data)


def train_codec(cfg: CodecTrainConfig, workdir: str | Path, *, stop_at: int | None = None,
                async_ckpt: bool = True) -> TrainState:
    """Train (or resume) the codec in `workdir` up to train.steps; returns the final state. `stop_at` stops after
    that step with a checkpoint, as SIGTERM / SIGINT do (tests use it to interrupt a run). The workdir is locked."""
    return loop.run(CodecTrainer(cfg), workdir, async_ckpt=async_ckpt, stop_at=stop_at)


# --------------------------------------------------------------------------- restore and export


def is_codec_run(workdir: str | Path) -> bool:
    """Whether `workdir` is a codec training run (its config.json is a CodecTrainConfig's)."""
    path = Path(workdir) / "config.json"
    try:
        return path.is_file() and {"loss", "model", "data"} <= set(json.loads(path.read_text()))
    except ValueError:
        return False


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
    tx = make_codec_optimizer(cfg)
    _, abstract = abstract_state(cfg, tx)
    manager = checkpoint.make_manager(Path(workdir), cfg, async_save=False)
    try:
        step, state, _ = checkpoint.restore(manager, abstract, step, config_from_dict=from_dict)
    finally:
        manager.close()
    return cfg, state, step


def trained_model(cfg: CodecTrainConfig, state: TrainState, *, ema: bool = False) -> Encodec:
    """The Encodec module holding the state's parameters (or their EMA) and its untrained quantiser."""
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(cfg, 0)), trainable_filter(cfg), ...)[0]
    return nnx.merge(graphdef, jax.device_get(codec_params(cfg, state.ema if ema else state.params)),
                     jax.device_get(state.rest))


def export_codec(source: str | Path | TrainState, out: str | Path, *, cfg: CodecTrainConfig | None = None,
                 step: int | None = None, ema: bool = False) -> Path:
    """Write a converted Encodec folder at `out` (atomically: the folder appears complete or not at all) from a
    codec run's workdir (its latest checkpoint unless `step`) or from a live `TrainState` with its `cfg`. `ema`
    exports the EMA of the weights instead of the raw ones."""
    atomic_io.check_can_create(out, "--out")
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
    extra = {"trained_by": "musicflow_jax.training.codec_trainer", "step": done, "weights": "ema" if ema else "raw",
             "train_config": dataclasses.asdict(cfg),
             "quantizer": "untrained random codebooks: use the continuous latents (encode_latents / decode_latents)"}
    try:
        save_converted(tmp, ENCODEC, dataclasses.asdict(cfg.model.encodec()), flat_params(model),
                       source=f"musicflow_jax.training.codec_trainer ({origin}, step {done})", extra=extra)
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

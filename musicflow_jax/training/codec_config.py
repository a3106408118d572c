"""The typed, frozen config of a codec training run (training/codec_trainer.py), validated on creation with errors
naming the key and the fix. Loading, `--set` overrides, JSON and the hash are the one loader's (core/config_io.py),
as for the flow stages' `Config`; `configs/codec_corpus.py` is the recipe's config.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from musicflow_jax.core import config_io
from musicflow_jax.core.config import OptimConfig
from musicflow_jax.core.config_io import check, in_unit_interval, is_int
from musicflow_jax.models.encodec import EncodecConfig

NORM_TYPES = ("weight_norm", "time_group_norm")
TRAINABLE = ("all", "decoder")  # train.trainable: what the optimiser updates
EXPORT_BANDWIDTH = 1.5  # kbps: the exported (untrained) quantiser then has 2 codebooks at 75 Hz




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
    manifest: str = ""  # JSONL manifest (python -m musicflow_jax.build_corpus writes one)
    split: str = "train"  # clips trained on
    eval_split: str = "valid"  # held-out clips for eval; falls back to `split` when the manifest has none
    segment_seconds: float = 1.0  # crop length (rounded to whole hops)
    batch_size: int = 8
    max_clips: int = 0  # use at most this many clips per split (0 = all)
    pairs: str = ""  # .npz of generated latents paired with the audio they should decode to (codec_trainer.load_pairs)
    pairs_batch: int = 0  # crops of `pairs` per step, beside batch_size encoded ones (needs train.trainable=decoder)


@dataclasses.dataclass(frozen=True)
class CodecLossConfig:
    stft_sizes: tuple[int, ...] = (512, 1024, 2048)  # multi-resolution STFT FFT sizes (hop n/4)
    mel_scales: tuple[tuple[int, int], ...] = ((1024, 64),)  # (n_fft, n_mels) per mel scale (hop n_fft/4)
    w_stft: float = 1.0
    w_mel: float = 1.0
    w_wave: float = 0.1
    latent_noise: float = 0.0  # decoder input noise, relative to the latents' RMS (training only)
    w_smooth: float = 0.0  # weight of the latents' temporal smoothness term (1 - lag-1 autocorrelation)
    w_flux: float = 0.0  # weight of the onset-flux term: L1 between the two signals' band-wise rises (codec_trainer)
    # adversarial training (codec_trainer; off while both weights are 0): a multi-scale log-mel discriminator
    # (models/discriminator.py) trained with the hinge loss beside the codec, whose loss gains w_adv x its hinge term
    # and w_feat x the discriminator features' relative L1 (feature matching)
    w_adv: float = 0.0
    w_feat: float = 0.0
    disc_scales: tuple[tuple[int, int], ...] = ((2048, 128), (1024, 64), (512, 64))  # (n_fft, n_mels), hop n_fft/4
    disc_filters: int = 16
    adv_warmup: int = 0  # steps in which only the discriminator learns; the codec's adversarial terms start after

    @property
    def adversarial(self) -> bool:
        return self.w_adv > 0 or self.w_feat > 0


FLUX_FFT_24K = 2048  # the onset-flux term's window at 24 kHz (codec_trainer.band_rises), scaled with the rate


def flux_n_fft(sample_rate: int) -> int:
    """The onset-flux term's FFT size at `sample_rate`: FLUX_FFT_24K scaled with the rate, a power of 2."""
    return int(2 ** round(math.log2(FLUX_FFT_24K * sample_rate / 24_000)))


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
    init_from: str = ""  # a converted codec folder (export_codec's) to start from instead of random weights
    trainable: str = "all"  # "all" | "decoder": "decoder" keeps the encoder, so its latents stay bit-exact


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


def validate(cfg: CodecTrainConfig) -> None:
    """Raise ConfigError naming the first bad key and what to set instead."""
    m, d, lo, o, t = cfg.model, cfg.data, cfg.loss, cfg.optim, cfg.train
    for key, value, low in (("model.sample_rate", m.sample_rate, 1000), ("model.num_filters", m.num_filters, 1),
                            ("model.hidden_size", m.hidden_size, 1), ("model.num_residual_layers",
                                                                      m.num_residual_layers, 1),
                            ("model.num_lstm_layers", m.num_lstm_layers, 0), ("model.kernel_size", m.kernel_size, 1),
                            ("data.batch_size", d.batch_size, 1), ("data.max_clips", d.max_clips, 0),
                            ("data.pairs_batch", d.pairs_batch, 0),
                            ("optim.warmup_steps", o.warmup_steps, 0), ("train.steps", t.steps, 1),
                            ("train.seed", t.seed, 0), ("train.log_every", t.log_every, 1),
                            ("train.eval_every", t.eval_every, 0), ("train.eval_batches", t.eval_batches, 1),
                            ("train.ckpt_every", t.ckpt_every, 1), ("train.keep", t.keep, 1),
                            ("train.keep_every", t.keep_every, 0), ("train.max_nan_in_row", t.max_nan_in_row, 1)):
        check(is_int(value, low), key, f"must be an integer >= {low}, got {value!r}: set e.g. --set {key}="
                                         f"{max(low, 1)}")
    check(isinstance(m.ratios, tuple) and len(m.ratios) > 0 and all(is_int(r, 1) for r in m.ratios),
           "model.ratios", f"must be a tuple of integers >= 1 such as (8, 5, 4, 2), got {m.ratios!r}")
    check(m.norm_type in NORM_TYPES, "model.norm_type", f"must be one of {NORM_TYPES}, got {m.norm_type!r}")
    check(isinstance(m.causal, bool), "model.causal", f"must be true or false, got {m.causal!r}")
    check(isinstance(d.segment_seconds, (int, float)) and d.segment_seconds > 0, "data.segment_seconds",
           f"must be > 0 seconds, got {d.segment_seconds!r}")
    check(d.split in ("train", "valid", "test") and d.eval_split in ("train", "valid", "test"), "data.split",
           f"data.split / data.eval_split must be train | valid | test, got {d.split!r} / {d.eval_split!r}")
    check(isinstance(lo.stft_sizes, tuple) and all(is_int(n, 16) for n in lo.stft_sizes), "loss.stft_sizes",
           f"must be a tuple of FFT sizes >= 16 such as (512, 1024, 2048), got {lo.stft_sizes!r}")
    for key, scales in (("loss.mel_scales", lo.mel_scales), ("loss.disc_scales", lo.disc_scales)):
        check(isinstance(scales, tuple) and len(scales) > 0 and all(
            isinstance(sc, tuple) and len(sc) == 2 and is_int(sc[0], 16) and is_int(sc[1], 1) for sc in scales),
            key, f"must be a tuple of (n_fft >= 16, n_mels >= 1) pairs such as ((1024, 64),), got {scales!r}")
    check(is_int(lo.disc_filters, 1), "loss.disc_filters", f"must be an integer >= 1, got {lo.disc_filters!r}")
    check(is_int(lo.adv_warmup, 0), "loss.adv_warmup", f"must be an integer >= 0, got {lo.adv_warmup!r}")
    for key, value in (("loss.w_stft", lo.w_stft), ("loss.w_mel", lo.w_mel), ("loss.w_wave", lo.w_wave),
                       ("loss.latent_noise", lo.latent_noise), ("loss.w_smooth", lo.w_smooth),
                       ("loss.w_flux", lo.w_flux), ("loss.w_adv", lo.w_adv), ("loss.w_feat", lo.w_feat),
                       ("optim.weight_decay", o.weight_decay), ("optim.grad_clip", o.grad_clip)):
        check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, key,
               f"must be a finite number >= 0, got {value!r}")
    flux_fft = flux_n_fft(m.sample_rate) if lo.w_flux else 0
    disc_fft = max(sc[0] for sc in lo.disc_scales) if lo.adversarial else 0
    longest = max((*lo.stft_sizes, *(sc[0] for sc in lo.mel_scales), flux_fft, disc_fft))
    check(cfg.segment_samples > longest, "data.segment_seconds",
           f"a crop of {cfg.segment_samples} samples is not longer than the largest FFT ({longest}): raise "
           "data.segment_seconds or lower loss.stft_sizes / loss.mel_scales (or set loss.w_flux=0, or lower "
           "loss.disc_scales)")
    check(lo.w_stft + lo.w_mel + lo.w_wave > 0, "loss.w_stft", "all loss weights are 0: set one > 0")
    check(isinstance(o.lr, (int, float)) and o.lr > 0, "optim.lr", f"must be > 0, got {o.lr!r}")
    check(isinstance(o.eps, (int, float)) and o.eps > 0, "optim.eps", f"must be > 0, got {o.eps!r}")
    for key, value in (("optim.b1", o.b1), ("optim.b2", o.b2), ("optim.ema_decay", o.ema_decay)):
        in_unit_interval(value, key)
    check(o.schedule in ("cosine", "linear", "constant"), "optim.schedule", "cosine | linear | constant")
    check(t.trainable in TRAINABLE, "train.trainable", f"must be one of {TRAINABLE}, got {t.trainable!r}")
    check(isinstance(t.init_from, str), "train.init_from", f"must be a folder path, got {t.init_from!r}")
    check(isinstance(d.pairs, str) and (not d.pairs or d.pairs_batch > 0), "data.pairs",
          f"data.pairs is set ({d.pairs!r}) but data.pairs_batch is 0: set how many of its crops a step takes")
    check(not d.pairs or t.trainable == "decoder", "data.pairs",
          "pairs train the decoder on latents the encoder did not make: set train.trainable=decoder")
    check(o.grad_accum == 1, "optim.grad_accum", "the codec trainer takes whole batches: leave it at 1")


def load_config(spec: str | Path, overrides: list[str] | None = None) -> CodecTrainConfig:
    """configs/codec_<name>.py (a path or a name) whose get_config() returns a CodecTrainConfig, with overrides."""
    return config_io.load(spec, overrides, (CodecTrainConfig,))


def from_dict(data: dict[str, Any]) -> CodecTrainConfig:
    return config_io.from_dict(CodecTrainConfig, data)

"""PANNs CNN14 (16 kHz) clip embeddings and AudioSet logits, as AudioLDM's evaluation toolkit uses them for "FD",
KL and IS (haoheliu/audioldm_eval: audioldm_eval/eval.py with backbone "cnn14", the default before the 2024 MERT
option, and its copy of the model in feature_extractors/panns/models.py; the architecture of
qiuqiangkong/panns_inference's `Cnn14`).

Model: `Cnn14(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000,
classes_num=527)` loaded from the released checkpoint `Cnn14_16k_mAP=0.438.pth` (`torch.load(path)["model"]`,
keys spectrogram_extractor.*, logmel_extractor.*, bn0.*, conv_block1..6.*, fc1.*, fc_audioset.*):
- front end (torchlibrosa 0.1.0 `Spectrogram` + `LogmelFilterBank`): the clip is reflect-padded by 256 samples
  on both sides (center=True), cut into 512-sample frames every 160 samples, windowed by a periodic Hann window,
  DFT'd by two Conv1d's (the checkpoint's spectrogram_extractor.stft.conv_real / conv_imag weights), power
  |X|^2, times the checkpoint's logmel_extractor.melW (librosa's Slaney mel filters, 64 bands 50-8000 Hz, area
  normalised), 10 log10(max(mel, 1e-10)) (power_to_db with ref 1.0, top_db None). `slaney_mel_matrix` /
  `stft_kernels` compute the same filters here; the loader checks the checkpoint's against them;
- bn0 over the 64 mel bins; 6 conv blocks (2 x (3x3 conv without bias, BatchNorm, ReLU), 2x2 average pooling,
  the last block 1x1) with 64 ... 2048 channels; mean over frequency; max + mean over time; fc1 + ReLU = the
  2048-d "embedding"; fc_audioset -> 527 logits. Eval mode (no SpecAugment, no dropout), no gradients.

What audioldm_eval takes (eval.py `get_featuresdict`, `calculate_metrics`; its models.py `Cnn14.forward` returns
{"logits": fc_audioset(relu(fc1(x))), "2048": relu(fc1(x)), "clipwise_output": sigmoid(logits)}):
- "FD" (frechet_distance) = `calculate_fid(..., feat_layer_name="2048")`: the Fréchet distance of the per-clip
  2048-d embeddings (one row per clip; metrics/fid.py `np.mean` / `np.cov(rowvar=False)`): `embedding` here;
- KL and IS: `calculate_kl(..., "logits")`, `calculate_isc(feat_layer_name="logits")`: the fc_audioset outputs
  BEFORE the sigmoid; metrics/kl.py applies softmax / sigmoid itself, metrics/isc.py softmax. `logits` here is that
  tensor, what `musicflow_jax.evaluate.distributions` expects. (panns_inference's own `Cnn14.forward` returns only
  "clipwise_output" = sigmoid(logits) and "embedding"; its logits are the inverse sigmoid of clipwise_output.)
- audio: each file alone (batch size 1), whole clip, no cropping: `WaveDataset(dir, 16000)` (datasets/load_mel.py
  `read_from_file`): first channel, mean removed, `torchaudio.functional.resample` to 16 kHz, zero-padded at the
  end to >= 32000 samples (2 s). `torch_embedding.audioldm_eval_waveform` reproduces this (with scipy's polyphase
  resampler instead of torchaudio's sinc one). The model methods here downmix (channel mean) and resample with
  `musicflow_jax.audio.resample` but neither remove the mean nor pad: a clip needs >= 4960 samples (0.31 s) at
  16 kHz (32 frames: five 2x time poolings).
Clips of equal length are batched together (`batch_size` per forward pass); in eval mode this does not change the
per-clip result (up to float round-off).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musicflow_jax.evaluate.embedders.base import fd_clips, kl_and_is
from musicflow_jax.evaluate.embedders.torch_common import (
    AUDIOLDM_EVAL_RATE,
    EmbeddingModelError,
    WeightFileEmbedder,
    audioldm_eval_waveform,
    clip_name,
    load_state_dict_file,
    mono_16k,
)

SAMPLE_RATE = 16_000
N_FFT = 512  # window_size
HOP = 160
N_MELS = 64
FMIN, FMAX = 50.0, 8000.0
AMIN = 1e-10  # power_to_db amin; ref 1.0, top_db None
CLASSES = 527
EMBEDDING_SIZE = 2048
MIN_SAMPLES = 31 * HOP  # 32 centred frames: the five 2x2 average poolings leave >= 1 time step
FRONT_END_RTOL = 1e-3  # checkpoint front-end weights vs the ones computed here, relative to their max |value|


class PannsError(EmbeddingModelError):
    """A CNN14 checkpoint or input clip that cannot be used; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class PannsOutput:
    embedding: np.ndarray  # (N, 2048) float64: relu(fc1), audioldm_eval's "2048" (FD)
    logits: np.ndarray  # (N, 527) float64: fc_audioset before the sigmoid, audioldm_eval's "logits" (KL / IS)


def _slaney_hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep,
                    f / f_sp)


def _slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel_matrix(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN,
                      fmax: float = FMAX) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float64 mel filters as librosa.filters.mel(htk=False, norm="slaney").T: triangles
    between mel points equally spaced on the Slaney scale, each scaled by 2 / (its width in Hz)."""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_hz = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    w = np.maximum(0.0, np.minimum(-ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]))
    w *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return w.T


def stft_kernels(n_fft: int = N_FFT) -> tuple[np.ndarray, np.ndarray]:
    """(real, imag), each (n_fft // 2 + 1, 1, n_fft) float64: periodic-Hann-windowed DFT rows exp(-2 pi i k n / N)
    as Conv1d weights (torchlibrosa's STFT kernels)."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    phase = 2 * np.pi * ((k * n) % n_fft) / n_fft
    return (np.cos(phase) * window)[:, None, :], (-np.sin(phase) * window)[:, None, :]


class _STFT(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_real = nn.Conv1d(1, N_FFT // 2 + 1, N_FFT, stride=HOP, bias=False)
        self.conv_imag = nn.Conv1d(1, N_FFT // 2 + 1, N_FFT, stride=HOP, bias=False)


class _Spectrogram(nn.Module):
    def __init__(self):
        super().__init__()
        self.stft = _STFT()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, 1, frames, 257) power spectrogram, frames = 1 + S // 160."""
        x = F.pad(x[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)  # (B, 257, frames)
        return (real ** 2 + imag ** 2).transpose(1, 2)[:, None]


class _LogMel(nn.Module):
    def __init__(self):
        super().__init__()
        self.melW = nn.Parameter(torch.empty(N_FFT // 2 + 1, N_MELS), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=AMIN))  # - 10 log10(max(amin, ref 1)) = 0


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool) if pool > 1 else x


class Cnn14Net(nn.Module):
    """CNN14 at 16 kHz with the released checkpoint's parameter names; forward in eval mode only."""
    def __init__(self):
        super().__init__()
        self.spectrogram_extractor = _Spectrogram()
        self.logmel_extractor = _LogMel()
        self.bn0 = nn.BatchNorm2d(N_MELS)
        channels = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", _ConvBlock(channels[i], channels[i + 1]))
        self.fc1 = nn.Linear(2048, EMBEDDING_SIZE)
        self.fc_audioset = nn.Linear(EMBEDDING_SIZE, CLASSES)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) 16-kHz audio -> (B, 1, frames, 64) log-mel in dB."""
        return self.logmel_extractor(self.spectrogram_extractor(audio))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) -> (embedding (B, 2048), logits (B, 527))."""
        x = self.bn0(self.log_mel(audio).transpose(1, 3)).transpose(1, 3)  # BatchNorm over the mel bins
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, pool=2 if i < 5 else 1)
        x = x.mean(dim=3)  # over frequency -> (B, 2048, time)
        x = x.amax(dim=2) + x.mean(dim=2)
        embedding = F.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)


class PannsCnn14:
    """CNN14 (16 kHz) embeddings and logits from the released checkpoint (see the module docstring)."""
    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 8):
        if batch_size < 1:
            raise PannsError(f"batch_size {batch_size}: pass a positive number of clips per forward pass")
        with torch.device("meta"):
            net = Cnn14Net()
        load_state_dict_file(path, net, "CNN14", PannsError, nested_key="model")
        real, imag = stft_kernels()
        for key, ours in (("spectrogram_extractor.stft.conv_real.weight", real),
                          ("spectrogram_extractor.stft.conv_imag.weight", imag),
                          ("logmel_extractor.melW", slaney_mel_matrix())):
            theirs = net.state_dict()[key].double().numpy()
            if np.abs(theirs - ours).max() > FRONT_END_RTOL * np.abs(ours).max():
                raise PannsError(f"CNN14 weights file {path}: {key} is not the 16-kHz front end (512-point STFT, 64 "
                                 f"mel bands 50-8000 Hz); pass Cnn14_16k_mAP=0.438.pth")
        self.net = net.to(device).eval()
        self.device, self.batch_size = device, batch_size

    def _clips(self, audio: Sequence[np.ndarray], sample_rate: int, names: Sequence[str] | None) -> list[np.ndarray]:
        clips = mono_16k(audio, sample_rate, PannsError, names)
        for i, x in enumerate(clips):
            if x.size < MIN_SAMPLES:
                raise PannsError(f"{clip_name(i, names)}: {x.size / SAMPLE_RATE:.3f} s is shorter than CNN14's "
                                 f"minimum ({MIN_SAMPLES} samples = {MIN_SAMPLES / SAMPLE_RATE} s at 16 kHz); pass "
                                 "longer clips, e.g. zero-padded to 2 s as audioldm_eval does "
                                 "(torch_embedding.audioldm_eval_waveform)")
        return clips

    def __call__(self, audio: Sequence[np.ndarray], sample_rate: int,
                 names: Sequence[str] | None = None) -> PannsOutput:
        """Per-clip 2048-d embeddings and 527 logits of clips ((samples,) or (channels, samples) at
        `sample_rate`; downmixed, resampled to 16 kHz); `names` (one per clip) are used in error messages."""
        clips = self._clips(audio, sample_rate, names)
        emb = np.zeros((len(clips), EMBEDDING_SIZE))
        logits = np.zeros((len(clips), CLASSES))
        by_length: dict[int, list[int]] = {}
        for i, x in enumerate(clips):
            by_length.setdefault(x.size, []).append(i)
        with torch.no_grad():
            for idx in by_length.values():
                for lo in range(0, len(idx), self.batch_size):
                    part = idx[lo:lo + self.batch_size]
                    batch = torch.from_numpy(np.stack([clips[i] for i in part])).to(self.device)
                    e, y = self.net(batch)
                    emb[part], logits[part] = e.cpu().double().numpy(), y.cpu().double().numpy()
        return PannsOutput(emb, logits)

    def log_mel(self, audio: Sequence[np.ndarray], sample_rate: int,
                names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Per clip the (frames, 64) float64 log-mel (dB) the network sees before bn0."""
        clips = self._clips(audio, sample_rate, names)
        with torch.no_grad():
            return [self.net.log_mel(torch.from_numpy(x[None]).to(self.device))[0, 0].cpu().double().numpy()
                    for x in clips]


class PannsEmbedder(WeightFileEmbedder):
    """The "panns" embedder of musicflow_jax.evaluate.embeddings, audioldm_eval's CNN14 metrics: each clip prepared
    as its `WaveDataset` does (torch_embedding.audioldm_eval_waveform), then "fd" on the 2048-d embeddings (one per
    clip), "kl_softmax" / "kl_sigmoid" (KL(reference || generated) over caption-paired clips) and "is_mean" /
    "is_std" on the 527 logits (musicflow_jax.evaluate.distributions)."""
    name = "panns"

    def __init__(self, path: str | Path, device: str = "cpu"):
        super().__init__(path)
        self.model = PannsCnn14(self.path, device)

    def outputs(self, audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        out = self.model([audioldm_eval_waveform(audio, sample_rate)], AUDIOLDM_EVAL_RATE)
        return {"embedding": out.embedding[0], "logits": out.logits[0]}

    def metrics(self, gen: Sequence[dict[str, np.ndarray]], ref: Sequence[dict[str, np.ndarray]],
                pairs: Sequence[tuple[int, int]]) -> dict[str, float | int | None]:

        return {"fd": fd_clips(gen, ref, "embedding"), **kl_and_is(gen, ref, pairs, "logits", ("softmax", "sigmoid"))}

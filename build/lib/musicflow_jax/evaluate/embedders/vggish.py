"""VGGish frame embeddings for the Fréchet Audio Distance, as AudioLDM's evaluation toolkit computes FAD
(haoheliu/audioldm_eval, audioldm_eval/metrics/fad.py; the same recipe as gudgud96/frechet-audio-distance with
model_name="vggish", use_pca=False, use_activation=False).

Model: harritaylor/torchvggish's PyTorch port of VGGish (the `VGG` of torchvggish/vggish.py: conv 64 - pool -
conv 128 - pool - 2 x conv 256 - pool - 2 x conv 512 - pool, all 3x3 + ReLU, 2x2 max pooling; the (512, 6, 4) map
flattened in TensorFlow's (time, frequency, channel) order; Linear 12288-4096-4096-128), loaded from its released
state-dict file `vggish-10086976.pth` (keys features.* / embeddings.*). Conventions, as audioldm_eval's:
- no PCA / 8-bit quantisation postprocessing (fad.py: `self.model.postprocess = False`) and no ReLU after the last
  Linear (fad.py: `embeddings = nn.Sequential(*list(embeddings.children())[:-1])`): raw 128-d embeddings, which
  can be negative; the model is in eval mode and run without gradients;
- audio is mono at 16 kHz. audioldm_eval reads each file with `WaveDataset(dir, 16000)` (datasets/load_mel.py
  `read_from_file`: first channel, mean removed, `torchaudio.functional.resample` to 16 kHz, zero-padded to
  >= 32000 samples) and then calls the model with sr=16000, so torchvggish's own `resampy` resampling is not
  used there; frechet-audio-distance resamples with `resampy.resample` when loading. Here clips are downmixed
  (channel mean) and resampled with scipy's polyphase filter (`musicflow_jax.audio.resample`), a slightly
  different filter from both. `torch_embedding.audioldm_eval_waveform` reproduces audioldm_eval's loading
  (first channel, mean removal, 2-s zero padding) for callers that want it;
- the log-mel front end of torchvggish's vggish_input.waveform_to_examples / mel_features (the VGGish release's):
  25-ms (400-sample) periodic-Hann frames every 10 ms (160 samples), no centring/padding, |rfft| with 512 points,
  64 HTK-mel triangles between 125 and 7500 Hz applied to the magnitude (the DC bin weighted 0),
  log(mel + 0.01), then non-overlapping examples of 96 frames (0.96 s); an incomplete last example is dropped.
  A clip gives floor((1 + floor((S - 400) / 160)) / 96) examples, i.e. it needs S >= 15600 samples (0.975 s)
  at 16 kHz for one;
- FAD is the Fréchet distance between the Gaussian fits of the *frame* embeddings of all clips of each set pooled
  together (fad.py `get_embeddings`: `np.concatenate(embd_lst, axis=0)` of the per-clip (frames, 128) outputs,
  then `np.mean` / `np.cov(rowvar=False)` over the rows): `pooled_embeddings` gives those rows, e.g.
  `frechet.frechet_distance(vggish.pooled_embeddings(gen, sr), vggish.pooled_embeddings(ref, sr))`.
  (audioldm_eval's loop stops at the first clip that raises and scores the clips before it; here errors raise.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from musicflow_jax.evaluate.embedders.base import fd_frames
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
WINDOW = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
N_FFT = 512  # next power of two of the window
N_MELS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s examples, hop 0.96 s
EMBEDDING_SIZE = 128
MIN_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # 15600: one complete example


class VGGishError(EmbeddingModelError):
    """A VGGish weights file or input clip that cannot be used; the message names it and the fix."""


def htk_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, 1127 ln(1 + f / 700) (mel_features.hertz_to_mel)."""
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_matrix(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = MEL_MIN_HZ,
               fmax: float = MEL_MAX_HZ) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular HTK-mel weights on the rfft bins, the DC row zeroed (VGGish's
    mel_features.spectrogram_to_mel_matrix: triangles with edges equally spaced in mel, unnormalised)."""
    bins_mel = htk_mel(np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1))[:, None]
    edges = np.linspace(htk_mel(fmin), htk_mel(fmax), n_mels + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(0.0, np.minimum((bins_mel - lo) / (mid - lo), (hi - bins_mel) / (hi - mid)))
    w[0] = 0.0
    return w


def log_mel(x16k: np.ndarray) -> np.ndarray:
    """(frames, 64) float64 VGGish log-mel spectrogram of a 16-kHz mono clip of >= 400 samples."""
    x = np.asarray(x16k, np.float64)
    n = 1 + (x.size - WINDOW) // HOP
    frames = x[np.arange(WINDOW)[None, :] + HOP * np.arange(n)[:, None]]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, N_FFT))
    return np.log(magnitude @ mel_matrix() + LOG_OFFSET)


def log_mel_examples(x16k: np.ndarray) -> np.ndarray:
    """(examples, 96, 64) float64: the log-mel spectrogram cut into non-overlapping 0.96-s examples (the incomplete
    tail dropped), torchvggish's waveform_to_examples for 16-kHz mono input."""
    if np.asarray(x16k).size < MIN_SAMPLES:
        raise VGGishError(f"a clip of {np.asarray(x16k).size} samples at 16 kHz is shorter than one VGGish example "
                          f"({MIN_SAMPLES} samples); pass longer audio")
    mel = log_mel(x16k)
    n = mel.shape[0] // EXAMPLE_FRAMES
    return mel[:n * EXAMPLE_FRAMES].reshape(n, EXAMPLE_FRAMES, N_MELS)


class VGGishNet(nn.Module):
    """torchvggish's VGG without the final ReLU (parameter names as in vggish-10086976.pth)."""
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 4096),
                                        nn.ReLU(inplace=True), nn.Linear(4096, EMBEDDING_SIZE))

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """(B, 1, 96, 64) log-mel examples -> (B, 128) embeddings."""
        x = self.features(examples)  # (B, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TensorFlow's NHWC flattening order
        return self.embeddings(x)


class VGGish:
    """VGGish 128-d embeddings of 0.96-s frames from the released torchvggish state-dict file (see the module
    docstring for the conventions)."""
    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64):
        if batch_size < 1:
            raise VGGishError(f"batch_size {batch_size}: pass a positive number of examples per forward pass")
        with torch.device("meta"):
            net = VGGishNet()
        load_state_dict_file(path, net, "VGGish", VGGishError)
        self.net = net.to(device).eval()
        self.device, self.batch_size = device, batch_size

    def frame_embeddings(self, audio: Sequence[np.ndarray], sample_rate: int,
                         names: Sequence[str] | None = None) -> list[np.ndarray]:
        """One (examples, 128) float64 array per clip (each (samples,) or (channels, samples) at `sample_rate`,
        downmixed and resampled to 16 kHz); `names` (one per clip) are used in error messages."""
        clips = mono_16k(audio, sample_rate, VGGishError, names)
        examples = []
        for i, x in enumerate(clips):
            if x.size < MIN_SAMPLES:
                raise VGGishError(f"{clip_name(i, names)}: {x.size / SAMPLE_RATE:.3f} s is shorter than one VGGish "
                                  f"example ({MIN_SAMPLES} samples = {MIN_SAMPLES / SAMPLE_RATE} s at 16 kHz); pass "
                                  "longer clips, e.g. zero-padded to 2 s as audioldm_eval does "
                                  "(torch_embedding.audioldm_eval_waveform)")
            examples.append(log_mel_examples(x).astype(np.float32))
        counts = [e.shape[0] for e in examples]
        flat = np.concatenate(examples) if examples else np.zeros((0, EXAMPLE_FRAMES, N_MELS), np.float32)
        out = []
        with torch.no_grad():
            for lo in range(0, flat.shape[0], self.batch_size):
                batch = torch.from_numpy(flat[lo:lo + self.batch_size, None]).to(self.device)
                out.append(self.net(batch).cpu().numpy().astype(np.float64))
        emb = np.concatenate(out) if out else np.zeros((0, EMBEDDING_SIZE))
        return np.split(emb, np.cumsum(counts)[:-1]) if counts else []

    def pooled_embeddings(self, audio: Sequence[np.ndarray], sample_rate: int,
                          names: Sequence[str] | None = None) -> np.ndarray:
        """(total frames, 128) float64: the frame embeddings of all clips stacked, the rows FAD's Gaussian is
        fitted to (audioldm_eval / frechet-audio-distance pool frames, not clips)."""
        frames = self.frame_embeddings(audio, sample_rate, names)
        return np.concatenate(frames) if frames else np.zeros((0, EMBEDDING_SIZE))


class VGGishEmbedder(WeightFileEmbedder):
    """The "vggish" embedder of musicflow_jax.evaluate.embeddings: FAD as audioldm_eval computes it - each clip
    prepared as its `WaveDataset` does (torch_embedding.audioldm_eval_waveform: first channel, mean removed, 16 kHz,
    zero-padded to 2 s), the frame embeddings of all clips pooled, FD between the two pooled sets."""
    name = "vggish"

    def __init__(self, path: str | Path, device: str = "cpu"):
        super().__init__(path)
        self.model = VGGish(self.path, device)

    def outputs(self, audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        x = audioldm_eval_waveform(audio, sample_rate)
        return {"frames": self.model.frame_embeddings([x], AUDIOLDM_EVAL_RATE)[0]}

    def metrics(self, gen: Sequence[dict[str, np.ndarray]], ref: Sequence[dict[str, np.ndarray]],
                pairs: Sequence[tuple[int, int]]) -> dict[str, float | int | None]:

        return {"fad": fd_frames(gen, ref, "frames"), "frames_generated": int(sum(len(o["frames"]) for o in gen)),
                "frames_reference": int(sum(len(o["frames"]) for o in ref))}

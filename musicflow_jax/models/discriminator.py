"""A multi-scale spectrogram discriminator for training the codec adversarially (training/codec_trainer.py's
`loss.w_adv` / `loss.w_feat`): one small 2-D conv net per time-frequency resolution, as Encodec's MS-STFT
discriminator, here over log-mel spectrograms (the trainer computes them: the spectrogram lives above this layer,
in backends/mel.py), which keeps it cheap enough for a CPU.

Per scale, on a (B, T, F) log-mel, as a (B, T, F, 1) image:
  conv (3 x 9) -> LeakyReLU(0.2)
  3 x [conv (3 x 9), stride 2 over frequency, dilation 1 / 2 / 4 over time -> LeakyReLU(0.2)]
  conv (3 x 3) -> LeakyReLU(0.2)
  conv (3 x 3) -> 1 channel: the logits, one per (frame, band) patch
The activations after each LeakyReLU are the features the generator's feature-matching term compares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
from flax import nnx

TIME_DILATIONS = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    scales: int = 3  # number of spectrogram resolutions (one sub-discriminator each)
    filters: int = 16  # channels of every hidden conv
    slope: float = 0.2  # LeakyReLU's negative slope


class ScaleDiscriminator(nnx.Module):
    """The conv net of one resolution: (B, T, F) -> (logits (B, T, F'), [features (B, T, F_i, filters)])."""

    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        c = cfg.filters
        self.slope = cfg.slope
        self.convs = nnx.List([nnx.Conv(1, c, (3, 9), padding="SAME", rngs=rngs)] + [
            nnx.Conv(c, c, (3, 9), strides=(1, 2), kernel_dilation=(d, 1), padding="SAME", rngs=rngs)
            for d in TIME_DILATIONS] + [nnx.Conv(c, c, (3, 3), padding="SAME", rngs=rngs)])
        self.out = nnx.Conv(c, 1, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, spec_btf: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        h = spec_btf[..., None]
        features = []
        for conv in self.convs:
            h = jax.nn.leaky_relu(conv(h), self.slope)
            features.append(h)
        return self.out(h)[..., 0], features


class SpectrogramDiscriminator(nnx.Module):
    """One ScaleDiscriminator per resolution; called on a list of (B, T_i, F_i) spectrograms, one per scale."""

    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.scales = nnx.List([ScaleDiscriminator(cfg, rngs=rngs) for _ in range(cfg.scales)])

    def __call__(self, specs: Sequence[jax.Array]) -> list[tuple[jax.Array, list[jax.Array]]]:
        if len(specs) != len(self.scales):
            raise ValueError(f"the discriminator has {len(self.scales)} scales and was given {len(specs)} "
                             "spectrograms")
        return [d(s) for d, s in zip(self.scales, specs)]

"""The project's own codec trained on the rendered corpus (musicflow_jax/training/codec_trainer.py): a CPU-sized SEANet
Encodec (16 base filters, 64-d latents at 75 Hz, 24 kHz mono, non-causal, one LSTM layer), 1 s crops, batch 8.
Point it at a corpus: --set data.manifest=CORPUS/manifest.jsonl (python -m musicflow_jax.build_corpus)."""

import dataclasses

from musicflow_jax.training.codec_config import (
    CODEC_OPTIM,
    CodecDataConfig,
    CodecLoopConfig,
    CodecLossConfig,
    CodecModelConfig,
    CodecTrainConfig,
)

# Descript's audio codec's multi-scale mel loss: windows 32 .. 2048 samples with 5 .. 320 bands
MEL_SCALES = ((32, 5), (64, 10), (128, 20), (256, 40), (512, 80), (1024, 160), (2048, 320))


def get_config() -> CodecTrainConfig:
    return CodecTrainConfig(
        name="codec_corpus",
        model=CodecModelConfig(sample_rate=24_000, num_filters=16, hidden_size=64, ratios=(8, 5, 4, 2),
                               num_residual_layers=1, num_lstm_layers=1, norm_type="weight_norm", causal=False),
        data=CodecDataConfig(manifest="", split="train", eval_split="valid", segment_seconds=1.0, batch_size=8),
        loss=CodecLossConfig(stft_sizes=(512, 1024, 2048), mel_scales=MEL_SCALES, w_stft=1.0, w_mel=1.0, w_wave=0.1,
                             latent_noise=0.1),
        optim=dataclasses.replace(CODEC_OPTIM, lr=1e-3, warmup_steps=100, schedule="cosine", grad_clip=1.0),
        train=CodecLoopConfig(steps=20_000, seed=0, log_every=50, eval_every=1_000, eval_batches=4,
                              ckpt_every=1_000, keep=3),
    )

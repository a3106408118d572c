"""The project's own codec trained on the rendered corpus (musicflow_jax/codec_train.py): a CPU-sized SEANet
Encodec (16 base filters, 64-d latents at 75 Hz, 24 kHz mono, non-causal, one LSTM layer), 1 s crops, batch 8.
Point it at a corpus: --set data.manifest=CORPUS/manifest.jsonl (tools/build_corpus.py)."""

import dataclasses

from musicflow_jax.codec_train import (
    CODEC_OPTIM,
    CodecDataConfig,
    CodecLoopConfig,
    CodecLossConfig,
    CodecModelConfig,
    CodecTrainConfig,
)


def get_config() -> CodecTrainConfig:
    return CodecTrainConfig(
        name="codec_corpus",
        model=CodecModelConfig(sample_rate=24_000, num_filters=16, hidden_size=64, ratios=(8, 5, 4, 2),
                               num_residual_layers=1, num_lstm_layers=1, norm_type="weight_norm", causal=False),
        data=CodecDataConfig(manifest="", split="train", eval_split="valid", segment_seconds=1.0, batch_size=8),
        loss=CodecLossConfig(stft_sizes=(512, 1024, 2048), mel_fft=1024, n_mels=64, w_stft=1.0, w_mel=1.0,
                             w_wave=0.1),
        optim=dataclasses.replace(CODEC_OPTIM, lr=3e-4, warmup_steps=200, schedule="cosine", grad_clip=1.0),
        train=CodecLoopConfig(steps=20_000, seed=0, log_every=50, eval_every=1_000, eval_batches=4,
                              ckpt_every=1_000, keep=3),
    )

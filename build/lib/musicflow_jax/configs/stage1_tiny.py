"""CPU-sized stage 1, derived from stage1_base: the dims match the tiny random encoders the tests
build (HuBERT hidden 32, T5 d_model 32). Used by tests, CI and the README's end-to-end run."""

import dataclasses

from musicflow_jax.core.config import Config

from .stage1_base import get_config as base_config


def get_config() -> Config:
    base = base_config()
    return dataclasses.replace(
        base,
        name="stage1_tiny",
        text=dataclasses.replace(base.text, dim=32, max_len=32),
        model=dataclasses.replace(base.model, feature_dim=32, dim=64, depth=4, heads=4, mlp_dim=128, time_dim=32,
                                  dtype="float32"),
        data=dataclasses.replace(base.data, frames=64, batch_size=8),
        optim=dataclasses.replace(base.optim, lr=1e-3, warmup_steps=20, ema_decay=0.99),
        train=dataclasses.replace(base.train, steps=200, log_every=10, eval_every=100, ckpt_every=100,
                                  keep_every=0, sample_every=0),
        sample=dataclasses.replace(base.sample, steps=8),
    )

"""Stage 2 (semantic + text -> acoustic), paper scale: 24 layers, 12 heads, dim 768, FFN 3072.

Target: 128-d continuous Encodec-24kHz latents (pre-quantisation) at 75 Hz; condition: the 768-d
semantic features upsampled 50 -> 75 Hz; text: T5-base. ~10-s crops = 750 frames.
Remat "dots": at the paper's batch (256) on 8 devices (FSDP) the step needs ~119 GiB per device without remat,
~26 GiB with "dots" and ~8 GiB with "full" (AOT, `tools/bench_train.py --aot`; docs/training.md).
"""

import dataclasses

from musicflow_jax.core.config import Config

from .stage1_base import get_config as stage1_config


def get_config() -> Config:
    base = stage1_config()
    return dataclasses.replace(
        base,
        name="stage2_base",
        model=dataclasses.replace(base.model, stage="acoustic", feature_dim=128, cond_dim=768, depth=24, remat="dots"),
        data=dataclasses.replace(base.data, frames=750),
    )

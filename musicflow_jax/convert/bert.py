"""BERT encoder conversion: HF BertModel folder (safetensors or pytorch_model.bin, e.g. all-MiniLM-L6-v2) ->
converted Flax folder with its tokenizer. Safetensors folders also load directly at run time (encoders/hf_bert.py);
this is for `.bin` checkpoints and for a self-contained copy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from musicflow_jax.convert.torch_state import read_hf_config, read_state_dict
from musicflow_jax.encoders import converted
from musicflow_jax.encoders.converted import save_converted
from musicflow_jax.encoders.hf_bert import flat_from_hf
from musicflow_jax.encoders.tokenizer import copy_tokenizer, load_tokenizer
from musicflow_jax.models.bert import BertConfig, BertEncoder
from musicflow_jax.models.params import WeightsError, build_with_params

KIND = converted.BERT


def convert_bert(src: str | Path, dst: str | Path) -> Path:
    hf_cfg = read_hf_config(src)
    if hf_cfg.get("model_type") != "bert":
        raise WeightsError(f"{src}: config.json has model_type {hf_cfg.get('model_type')!r}, not 'bert'")
    cfg = BertConfig.from_hf(hf_cfg)
    flat = flat_from_hf(read_state_dict(src), str(src))
    build_with_params(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)), flat, str(src))  # validate before writing
    out = save_converted(dst, KIND, dataclasses.asdict(cfg), flat, source=str(src))
    if Path(src).is_dir():
        copy_tokenizer(src, out)
    load_tokenizer(out)  # refuse now if the tokenizer did not come along
    return out

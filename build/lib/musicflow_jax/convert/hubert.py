"""HuBERT conversion: HF HubertModel (or HubertForCTC etc., "hubert." prefix) folder -> converted Flax folder.

Parameter paths keep the HF names; only the leaf changes: Linear `weight` -> `kernel` (transposed), conv
`weight` -> `kernel` (width-major), norm `weight` -> `scale`, weight-norm pairs -> `weight_g` / `weight_v`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from flax import nnx

from musicflow_jax.convert.torch_state import conv_t, linear_t, read_hf_config, read_state_dict
from musicflow_jax.encoders import converted
from musicflow_jax.encoders.codebook import checkpoint_sha256
from musicflow_jax.encoders.converted import save_converted
from musicflow_jax.models.hubert import Hubert, HubertConfig
from musicflow_jax.models.params import WeightsError, build_with_params

KIND = converted.HUBERT
IGNORE = re.compile(r"masked_spec_embed|lm_head\..*|final_proj\..*|label_embs_concat|projector\..*|classifier\..*")


def hf_to_flax(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, arr in state.items():
        key = key.removeprefix("hubert.")
        if IGNORE.fullmatch(key):
            continue
        arr = np.asarray(arr, np.float32)
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        stem, _, leaf = key.rpartition(".")
        if leaf in ("weight_g", "weight_v"):
            out[key] = conv_t(arr)
        elif leaf == "weight" and arr.ndim == 1:  # LayerNorm / GroupNorm
            out[stem + ".scale"] = arr
        elif leaf == "weight" and arr.ndim == 2:  # Linear
            out[stem + ".kernel"] = linear_t(arr)
        elif leaf == "weight" and arr.ndim == 3:  # Conv1d
            out[stem + ".kernel"] = conv_t(arr)
        elif leaf == "weight":
            raise WeightsError(f"{source}: unexpected {arr.ndim}-D weight {key}")
        else:
            out[key] = arr
    return out


def convert_hubert(src: str | Path, dst: str | Path) -> Path:
    cfg = HubertConfig.from_hf(read_hf_config(src))
    flat = hf_to_flax(read_state_dict(src), str(src))
    build_with_params(lambda: Hubert(cfg, rngs=nnx.Rngs(0)), flat, str(src))
    # The feature extractor's waveform normalisation (zero mean, unit variance per clip) is part of the model's
    # input contract: some HuBERTs (e.g. large) are trained with it. python -m musicflow_jax.precompute applies it too.
    pre = Path(src) / "preprocessor_config.json"
    do_normalize = bool(json.loads(pre.read_text()).get("do_normalize", False)) if pre.is_file() else False
    return save_converted(dst, KIND, dataclasses.asdict(cfg), flat, source=str(src),
                          extra={"source_sha256": checkpoint_sha256(src), "do_normalize": do_normalize})

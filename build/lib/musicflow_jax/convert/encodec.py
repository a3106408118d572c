"""Encodec conversion: HF EncodecModel folders or original facebookresearch/encodec `.th` state dicts ->
converted Flax folder. Original checkpoints carry no config: pass `preset` ("24khz" | "48khz", the HF configs
of facebook/encodec_24khz / encodec_48khz) or an HF-style config dict.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from musicflow_jax.convert.torch_state import apply_rules, conv_t, convtr_t, linear_t, read_hf_config, read_state_dict
from musicflow_jax.encoders import converted
from musicflow_jax.encoders.converted import save_converted
from musicflow_jax.models.encodec import Encodec, EncodecConfig, SConvTranspose1d
from musicflow_jax.models.params import WeightsError, build_with_params

KIND = converted.ENCODEC
PRESETS: dict[str, dict[str, Any]] = {
    "24khz": dict(sampling_rate=24_000, audio_channels=1, normalize=False, chunk_length_s=None, overlap=None,
                  norm_type="weight_norm", use_causal_conv=True, target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0]),
    "48khz": dict(sampling_rate=48_000, audio_channels=2, normalize=True, chunk_length_s=1.0, overlap=0.01,
                  norm_type="time_group_norm", use_causal_conv=False, target_bandwidths=[3.0, 6.0, 12.0, 24.0]),
}
_L = r"((?:encoder|decoder)\.layers\.\d+(?:\.block\.\d+|\.shortcut)?)"
RULES = [
    (_L + r"\.conv\.(?:parametrizations\.weight\.original0|weight_g)", r"\1.conv.weight_g", None),
    (_L + r"\.conv\.(?:parametrizations\.weight\.original1|weight_v)", r"\1.conv.weight_v", None),
    (_L + r"\.conv\.weight", r"\1.conv.kernel", None),
    (_L + r"\.conv\.bias", r"\1.conv.bias", None),
    (_L + r"\.norm\.weight", r"\1.norm.scale", None),
    (_L + r"\.norm\.bias", r"\1.norm.bias", None),
    (_L + r"\.lstm\.weight_ih_l(\d+)", r"\1.lstm.w_ih.\2", linear_t),
    (_L + r"\.lstm\.weight_hh_l(\d+)", r"\1.lstm.w_hh.\2", linear_t),
    (_L + r"\.lstm\.bias_ih_l(\d+)", r"\1.lstm.b_ih.\2", None),
    (_L + r"\.lstm\.bias_hh_l(\d+)", r"\1.lstm.b_hh.\2", None),
    (r"quantizer\.layers\.(\d+)\.codebook\.embed", r"quantizer.layers.\1.codebook.embed", None),
]
IGNORE = [r"quantizer\.layers\.\d+\.codebook\.(inited|cluster_size|embed_avg)"]
_ORIGINAL = [  # facebookresearch/encodec names -> HF names
    (r"^(encoder|decoder)\.model\.", r"\1.layers."),
    (r"\.conv\.conv\.", ".conv."), (r"\.convtr\.convtr\.", ".conv."),
    (r"\.conv\.norm\.", ".norm."), (r"\.convtr\.norm\.", ".norm."),
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook."),
]


def original_to_hf_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        for pat, rep in _ORIGINAL:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def hf_to_flax(state: dict[str, np.ndarray], cfg: EncodecConfig, source: str) -> dict[str, np.ndarray]:
    flat = apply_rules(state, RULES, IGNORE, source)
    model = nnx.eval_shape(lambda: Encodec(cfg, rngs=nnx.Rngs(0)))
    for key in list(flat):
        if key.endswith((".weight_g", ".weight_v", ".kernel")):
            side, _, idx = key.split(".")[:3]
            layers = getattr(model, side).layers
            layer = layers[int(idx)] if idx.isdigit() and int(idx) < len(layers) else None
            tr = isinstance(layer, SConvTranspose1d) and key.split(".")[3] == "conv"
            if flat[key].ndim != 3:
                raise WeightsError(f"{source}: conv weight {key} should be 3-D, got shape {flat[key].shape}")
            flat[key] = convtr_t(flat[key]) if tr else conv_t(flat[key])
    return flat


def convert_encodec(src: str | Path, dst: str | Path, preset: str | None = None,
                    hf_config: dict[str, Any] | None = None) -> Path:
    """HF folder (config.json + weights) or original `.th` file (+ preset / hf_config) -> converted folder."""
    src = Path(src)
    original = src.is_file() and src.suffix in (".th", ".pt", ".pth")
    if hf_config is None:
        if preset is not None:
            if preset not in PRESETS:
                raise WeightsError(f"unknown encodec preset {preset!r}; choose one of {sorted(PRESETS)}")
            hf_config = PRESETS[preset]
        elif original:
            raise WeightsError(f"{src}: original encodec checkpoints have no config; pass preset='24khz'|'48khz'")
        else:
            hf_config = read_hf_config(src)
    cfg = EncodecConfig.from_hf(hf_config)
    state = read_state_dict(src)
    if original or any(k.startswith(("encoder.model.", "decoder.model.")) for k in state):
        state = original_to_hf_names(state)
    flat = hf_to_flax(state, cfg, str(src))
    build_with_params(lambda: Encodec(cfg, rngs=nnx.Rngs(0)), flat, str(src))
    return save_converted(dst, KIND, dataclasses.asdict(cfg), flat, source=str(src))

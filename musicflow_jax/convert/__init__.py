"""Weight conversion only: PyTorch checkpoints (HF folders, original encodec .th) -> converted Flax folders.

`torch_state` reads PyTorch-side files (torch imported lazily, only for .bin/.th/.pt) and holds the layout
transforms and rename rules; `t5`, `bert`, `encodec`, `hubert` hold the per-model rules and the `convert_*` functions,
`convert` picks one by kind. Reading converted folders at run time is `musicflow_jax.encoders.converted`
(torch-free; training and generation never import this package; precompute converts HF folders on the fly).
CLI: `python -m musicflow_jax.convert KIND SRC DST`.
"""

from __future__ import annotations

import json
from pathlib import Path

from musicflow_jax.convert.bert import convert_bert
from musicflow_jax.convert.encodec import PRESETS, convert_encodec
from musicflow_jax.convert.hubert import convert_hubert
from musicflow_jax.convert.t5 import convert_t5
from musicflow_jax.models.params import WeightsError

KINDS = ("t5", "bert", "encodec", "hubert")


def convert(kind: str, src: str | Path, dst: str | Path, *, preset: str | None = None,
            config_file: str | Path | None = None) -> Path:
    """Convert the `kind` checkpoint `src` into the converted folder `dst`. Original encodec `.th` files name their
    model with `preset` ("24khz" | "48khz") or an HF-style EncodecConfig JSON `config_file`."""
    if kind not in KINDS:
        raise WeightsError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    if not Path(src).exists():
        raise WeightsError(f"SRC {src} does not exist: pass an HF checkpoint folder (or an encodec .th file)")
    if kind == "t5":
        return convert_t5(src, dst)
    if kind == "bert":
        return convert_bert(src, dst)
    if kind == "hubert":
        return convert_hubert(src, dst)
    if preset is not None and preset not in PRESETS:
        raise WeightsError(f"--preset {preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    hf_config = None
    if config_file is not None:
        try:
            hf_config = json.loads(Path(config_file).read_text())
        except OSError:
            raise WeightsError(f"--config {config_file} does not exist: pass an HF-style EncodecConfig json file"
                               ) from None
        except ValueError as e:
            raise WeightsError(f"--config {config_file} is not valid JSON ({e}): pass an HF EncodecConfig json"
                               ) from None
    return convert_encodec(src, dst, preset=preset, hf_config=hf_config)

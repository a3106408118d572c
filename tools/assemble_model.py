"""Assemble a MusicFlow model folder (what `python -m musicflow_jax.generate --checkpoint DIR` loads) from the two
exported stages (tools/export.py), the feature index they were trained on, and the encoders.

    python tools/assemble_model.py --stage1 exp/stage1.safetensors --stage2 exp/stage2.safetensors \
        --index data/features/index.json --out models/mine \
        [--encodec ckpt/encodec_flax --hubert ckpt/hubert_flax --kmeans ckpt/kmeans.safetensors --layer 6]

The backend follows the index (its "backend" entry, backends/base.py): weight-free parts (chroma, mel) need no
files; HuBERT/Encodec parts need the *converted* (Flax) hubert/encodec folders (tools/convert_weights.py); the
k-means codebook the features were made with is taken from the index unless --kmeans names another copy.
The text encoder the stages were trained with is written to
`text_encoder/` (the embedded T5 from the stage config's seed, or a copy of its converted checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musicflow_jax.backends import BackendError, FeatureBackend  # noqa: E402
from musicflow_jax.stage_io import StageError, load_stage  # noqa: E402
from musicflow_jax.weights import WeightsError  # noqa: E402


def backend_from_index(index: dict[str, Any], encodec: str | None = None, hubert: str | None = None,
                       kmeans: str | None = None, layer: int | None = None) -> FeatureBackend:
    """The backend the index was precomputed with, its stats, and the converted encoder folders given here in place
    of the ones precompute read (an HF folder cannot be loaded at run time)."""
    spec = {**index["backend"], "stats": {k: {"mean": index["stats"][k]["mean"], "std": index["stats"][k]["std"]}
                                          for k in ("semantic", "acoustic")}}
    sem, ac = dict(spec["semantic"]), dict(spec["acoustic"])
    if sem["kind"] == "hubert":
        if not hubert:
            raise BackendError("the semantic stream is HuBERT: pass --hubert (a converted Flax folder, "
                             "tools/convert_weights.py hubert)")
        sem.update(folder=hubert, **({"layer": layer} if layer is not None else {}),
                   **({"kmeans": kmeans} if kmeans else {}))
    if ac["kind"] == "encodec":
        if not encodec:
            raise BackendError("the acoustic stream is Encodec: pass --encodec (a converted Flax folder, "
                             "tools/convert_weights.py encodec)")
        ac.update(folder=encodec)
    return FeatureBackend.from_json({**spec, "semantic": sem, "acoustic": ac}, where="--index backend")


def assemble(stage1: str, stage2: str, index_file: str, out: str, encodec: str | None = None,
             hubert: str | None = None, kmeans: str | None = None, layer: int | None = None) -> Path:
    from musicflow_jax.text_encoder import TextEncoder

    out_dir = Path(out)
    cfg1, _ = load_stage(stage1, "semantic")
    load_stage(stage2, "acoustic")
    backend = backend_from_index(json.loads(Path(index_file).read_text()), encodec, hubert, kmeans, layer)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(stage1, out_dir / "stage1.safetensors")
    shutil.copy(stage2, out_dir / "stage2.safetensors")
    TextEncoder.load(cfg1.text, cfg1.train.seed).save(out_dir / "text_encoder")
    backend.save(out_dir)  # features.json + the encoder files it names
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage1", required=True)
    ap.add_argument("--stage2", required=True)
    ap.add_argument("--index", required=True, help="index.json of the precomputed features the stages trained on")
    ap.add_argument("--out", required=True)
    ap.add_argument("--encodec", default=None)
    ap.add_argument("--hubert", default=None)
    ap.add_argument("--kmeans", default=None)
    ap.add_argument("--layer", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        index = Path(a.index)
        if not index.is_file():
            raise FileNotFoundError(f"--index {index} does not exist: pass the index.json of the features the stages "
                                    "were trained on")
        print(assemble(a.stage1, a.stage2, a.index, a.out, a.encodec, a.hubert, a.kmeans, a.layer))
    except (BackendError, StageError, WeightsError, FileNotFoundError, KeyError) as e:  # bad input: one line, exit 2
        msg = f"--index {a.index} has no {e} entry: rerun precompute" if isinstance(e, KeyError) else str(e)
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

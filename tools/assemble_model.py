"""Assemble a MusicFlow model folder (what `python -m musicflow_jax.generate --checkpoint DIR` loads) from the two
exported stages (tools/export.py), the feature index they were trained on, and the encoders.

    python tools/assemble_model.py --stage1 exp/stage1.safetensors --stage2 exp/stage2.safetensors \
        --index data/features/index.json --out models/mine \
        [--encodec ckpt/encodec_flax --hubert ckpt/hubert_flax --kmeans ckpt/kmeans.safetensors --layer 6]

The backend follows the index: features precomputed with the "mel" backend need no encoder folders; HuBERT/Encodec
features need the *converted* (Flax) encodec and hubert folders (tools/convert_weights.py) and, if the semantic
target was k-means centroids, the codebook. The text encoder the stages were trained with is written to
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

from musicflow_jax.stage_io import load_stage  # noqa: E402


def backend_spec(index: dict[str, Any], encodec: str | None, hubert: str | None, kmeans: str | None,
                 layer: int | None) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """(features.json content, [(source, name in the folder)] to copy)."""
    stats = {k: {"mean": index["stats"][k]["mean"], "std": index["stats"][k]["std"]} for k in ("semantic", "acoustic")}
    enc = index.get("encoders", {})
    if enc.get("backend") == "mel":
        return {"backend": "mel", "semantic": enc["semantic"], "acoustic": enc["acoustic"], "stats": stats}, []
    if not (encodec and hubert):
        raise SystemExit("error: these features come from HuBERT/Encodec: pass --encodec and --hubert (converted "
                         "Flax folders, tools/convert_weights.py)")
    copies = [(Path(encodec), "encodec"), (Path(hubert), "hubert")]
    layer = layer if layer is not None else enc.get("hubert", {}).get("layer")
    if layer is None:
        raise SystemExit("error: HuBERT layer unknown: pass --layer")
    spec = {"backend": "encodec", "encodec": "encodec", "hubert": "hubert", "layer": int(layer), "stats": stats}
    if enc.get("semantic_target") == "kmeans_centroid":
        if not kmeans:
            raise SystemExit("error: the semantic target was k-means centroids: pass --kmeans (tools/fit_kmeans.py)")
        copies.append((Path(kmeans), "kmeans.safetensors"))
        spec["kmeans"] = "kmeans.safetensors"
    return spec, copies


def assemble(stage1: str, stage2: str, index_file: str, out: str, encodec: str | None = None,
             hubert: str | None = None, kmeans: str | None = None, layer: int | None = None) -> Path:
    from musicflow_jax.text_encoder import TextEncoder

    out_dir = Path(out)
    cfg1, _ = load_stage(stage1, "semantic")
    load_stage(stage2, "acoustic")
    spec, copies = backend_spec(json.loads(Path(index_file).read_text()), encodec, hubert, kmeans, layer)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(stage1, out_dir / "stage1.safetensors")
    shutil.copy(stage2, out_dir / "stage2.safetensors")
    for src, name in copies:  # re-running into the same folder refreshes it
        if src.is_dir():
            shutil.copytree(src, out_dir / name, dirs_exist_ok=True)
        else:
            shutil.copy(src, out_dir / name)
    TextEncoder.load(cfg1.text, cfg1.train.seed).save(out_dir / "text_encoder")
    (out_dir / "features.json").write_text(json.dumps(spec, indent=1) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> None:
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
    print(assemble(a.stage1, a.stage2, a.index, a.out, a.encodec, a.hubert, a.kmeans, a.layer))


if __name__ == "__main__":
    main()

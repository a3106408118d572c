"""Precompute throughput of the two engines (musicflow_jax.precompute): --engine jax (Flax ports, batched) vs
--engine torch (transformers' PyTorch models), same random weights, same audio, same CPU/accelerator, one run.

    python tools/bench_precompute.py --seconds 120 --segment-seconds 10 --batch-size 4     # real shapes
    python tools/bench_precompute.py --tiny                                                # test-size models

Weights are random (no hub access): HuBERT-base (HF default HubertConfig) at layer 6 with a 100-unit codebook and the
24 kHz Encodec (HF default EncodecConfig), unless --tiny. The audio is a rendered-corpus-like synthetic chord
sequence written as 24 kHz WAV files. Each engine runs twice into fresh folders; the second (warm: compiled) run is
reported, with the first run's time too. Prints one JSON line with audio seconds per wall second and the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _write_audio(folder: Path, seconds: float, files: int, seed: int) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    sr = 24_000
    for i in range(files):
        t = np.arange(int(seconds / files * sr)) / sr
        f0 = 110.0 * 2 ** (rng.integers(0, 24, size=len(t) // sr + 1) / 12.0)
        x = sum(np.sin(2 * np.pi * k * f0[(t).astype(int)] * t) / k for k in (1, 2, 3)) * 0.2
        sf.write(folder / f"{i}.wav", (x + 0.01 * rng.normal(size=len(t))).astype(np.float32), sr)
        lines.append(json.dumps({"path": f"{i}.wav", "caption": f"piece {i}", "split": "train"}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def bench(seconds: float, segment_seconds: float, batch_size: int, tiny: bool, files: int, seed: int = 0
          ) -> dict[str, object]:
    import jax
    import torch
    from transformers import EncodecConfig, EncodecModel, HubertConfig, HubertModel

    from musicflow_jax.data.precompute import precompute
    from musicflow_jax.encoders.codebook import checkpoint_sha256, save_codebook

    torch.manual_seed(seed)
    layer = 2 if tiny else 6
    if tiny:
        from musicflow_jax.testing.tiny_models import TINY_ENCODEC, TINY_HUBERT
        hub_cfg, enc_cfg = HubertConfig(**TINY_HUBERT), EncodecConfig(**TINY_ENCODEC)
    else:
        hub_cfg, enc_cfg = HubertConfig(), EncodecConfig()
    out: dict[str, object] = {"config": "tiny" if tiny else "hubert-base+encodec_24khz",
                              "device": jax.devices()[0].platform, "torch_threads": torch.get_num_threads(),
                              "segment_seconds": segment_seconds, "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        HubertModel(hub_cfg).eval().save_pretrained(root / "hubert")
        EncodecModel(enc_cfg).eval().save_pretrained(root / "encodec")
        cents = np.random.default_rng(seed).normal(size=(100, hub_cfg.hidden_size)).astype(np.float32)
        save_codebook(root / "km.safetensors", cents, layer=layer, hubert_sha256=checkpoint_sha256(root / "hubert"))
        manifest = _write_audio(root / "audio", seconds, files, seed)
        kw = dict(backend="hubert+encodec", hubert=str(root / "hubert"), encodec=str(root / "encodec"), layer=layer,
                  kmeans=str(root / "km.safetensors"), segment_seconds=segment_seconds, batch_size=batch_size,
                  progress=False)
        for engine in ("torch", "jax"):
            times = []
            for run in range(2):
                t0 = time.perf_counter()
                r = precompute(manifest, root / f"{engine}{run}", engine=engine, **kw)
                times.append(time.perf_counter() - t0)
            audio = float(r["audio_seconds"])
            out[f"{engine}_first_run_s"] = round(times[0], 2)
            out[f"{engine}_s"] = round(times[1], 2)
            out[f"{engine}_audio_s_per_s"] = round(audio / times[1], 2)
        out["audio_seconds"] = audio
        out["jax_over_torch_speed"] = round(float(out["torch_s"]) / float(out["jax_s"]), 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="total audio")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--segment-seconds", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="tiny test-size models instead of the real shapes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = bench(a.seconds, a.segment_seconds, a.batch_size, a.tiny, a.files, a.seed)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()

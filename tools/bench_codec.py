"""Decode throughput of the Flax Encodec decoder vs transformers' PyTorch decoder, same weights, same CPU, one run.

    python tools/bench_codec.py --seconds 5 --batch 1 --repeats 3            # real 24 kHz architecture
    python tools/bench_codec.py --tiny                                      # tests/tiny_models.py size

Weights are random (no hub access); the architecture is the HF default EncodecConfig (= facebook/encodec_24khz)
unless --tiny. Prints one JSON line: seconds of audio decoded per wall-clock second for each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(fn, repeats: int) -> float:
    """Fastest of `repeats` timed calls of fn() (seconds); shared by the tools/bench_*.py scripts."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(seconds: float, batch: int, repeats: int, tiny: bool, seed: int = 0) -> dict[str, float | int | str]:
    import jax
    import torch
    from transformers import EncodecConfig, EncodecModel

    from musicflow_jax.convert.encodec import convert_encodec
    from musicflow_jax.encoders.codec import Codec

    torch.manual_seed(seed)
    overrides = {}
    if tiny:
        from musicflow_jax.testing.tiny_models import TINY_ENCODEC

        overrides = TINY_ENCODEC
    model = EncodecModel(EncodecConfig(**overrides)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "hf")
        convert_encodec(Path(tmp) / "hf", Path(tmp) / "flax")
        codec = Codec.load(Path(tmp) / "flax")
    frames = int(round(seconds * codec.frame_rate))
    z_btc = np.random.RandomState(seed).randn(batch, frames, codec.latent_dim).astype(np.float32)
    z_t = torch.from_numpy(np.ascontiguousarray(z_btc.transpose(0, 2, 1)))

    def run_torch():
        with torch.no_grad():
            return model.decoder(z_t)

    def run_jax():
        return jax.block_until_ready(codec.decode_latents(z_btc))

    t0 = time.perf_counter()
    y_jax = np.asarray(run_jax())  # compile
    compile_s = time.perf_counter() - t0
    y_torch = run_torch().numpy()[:, 0]
    rel = float(np.abs(y_jax - y_torch).max() / max(np.abs(y_torch).max(), 1e-12))
    t_jax, t_torch = best_of(run_jax, repeats), best_of(run_torch, repeats)
    audio_s = batch * frames / codec.frame_rate
    return {"config": "tiny" if tiny else "encodec_24khz", "device": jax.devices()[0].platform, "batch": batch,
            "audio_seconds": round(audio_s, 3), "torch_threads": torch.get_num_threads(),
            "jax_compile_s": round(compile_s, 3), "flax_s": round(t_jax, 6), "torch_s": round(t_torch, 6),
            "flax_audio_s_per_s": round(audio_s / t_jax, 2), "torch_audio_s_per_s": round(audio_s / t_torch, 2),
            "flax_over_torch_speed": round(t_torch / t_jax, 3), "max_rel_diff": rel}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="audio length decoded per example")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs each (best is reported)")
    ap.add_argument("--tiny", action="store_true", help="tiny test-size codec instead of the 24 kHz architecture")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = bench(a.seconds, a.batch, a.repeats, a.tiny, a.seed)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()

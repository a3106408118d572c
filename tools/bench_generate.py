"""Generation speed: seconds to make D s of audio (real-time factor) with the MusicFlow cascade vs an autoregressive
peer, side by side in one run on this machine.

MusicFlow: T5 (embedded, Flax) -> stage 1 ODE (500 frames for 10 s) -> stage 2 ODE (750 frames) -> Flax Encodec
decoder, for the tiny and base configs (configs/stage{1,2}_{tiny,base}.py, float32, random weights: speed does not
depend on them), midpoint solver at NFE 8/16/32 (steps = NFE / 2) per stage, classifier-free guidance on (each NFE
runs a doubled batch). The whole duration is one window (data.frames set to D * rate). `--student-steps 1,2` adds
few-step students' rows (model.interval, the 'average' sampler, guidance in the weights: one single-batch network
pass per step; training/distill.py): NFE per stage = steps.
MusicGen: transformers' MusicgenForConditionalGeneration with random weights, its decoder configured to the same
width/heads/FFN as the MusicFlow tier and the depth that brings its parameter count closest to MusicFlow's two flow
transformers together; 4 codebooks with the delay pattern at 50 Hz (32 kHz Encodec, hop 640), sampling with
guidance_scale 3, D * 50 new tokens, then its Encodec decoder. Compile/warm-up runs are excluded from the times.

    python tools/bench_generate.py --tiers tiny,base --nfe 8,16,32 --student-steps 1,2 --duration 10 [--repeats 1]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

TIERS = {"tiny": ("stage1_tiny", "stage2_tiny"),
         "base": ("stage1_base", "stage2_base")}


# ----------------------------------------------------------------------------------------- MusicFlow


def musicflow_setup(tier: str, duration: float, student: bool = False) -> dict[str, Any]:
    from flax import nnx

    from musicflow_jax.core import config as config_lib
    from musicflow_jax.encoders.codec import Codec
    from musicflow_jax.encoders.text import TextEncoder
    from musicflow_jax.models.encodec import Encodec, EncodecConfig
    from musicflow_jax.models.transformer import FlowTransformer, count_params

    f1, f2 = TIERS[tier]
    cfgs = []
    for f, rate in ((f1, 50), (f2, 75)):
        c = config_lib.load(f)
        cfgs.append(dataclasses.replace(c, model=dataclasses.replace(c.model, dtype="float32", interval=student),
                                        data=dataclasses.replace(c.data, frames=int(round(duration * rate)))))
    c1, c2 = cfgs
    ec = EncodecConfig(hidden_size=c2.model.feature_dim, num_filters=32 if tier == "base" else 4,
                       codebook_dim=c2.model.feature_dim, codebook_size=1024 if tier == "base" else 64)
    return {"cfg1": c1, "cfg2": c2, "model1": FlowTransformer(c1, rngs=nnx.Rngs(0)),
            "model2": FlowTransformer(c2, rngs=nnx.Rngs(1)), "text": TextEncoder.load(c1.text, 0),
            "codec": Codec(ec, Encodec(ec, rngs=nnx.Rngs(2))),
            "params": count_params(c1) + count_params(c2)}


def musicflow_run(s: dict[str, Any], nfe: int, seed: int = 0, student: bool = False) -> Any:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from musicflow_jax.core import frames as features
    from musicflow_jax.core.sampling import sample

    c1, c2 = s["cfg1"], s["cfg2"]
    emb, mask = s["text"](["a calm piano piece in C major"])
    key = jax.random.key(seed)
    kw = dict(text_emb=emb, text_mask=jnp.asarray(mask), solver="midpoint", steps=nfe // 2, cfg_scale=3.0)
    if student:  # the guidance is in a student's weights: one single-batch pass per jump
        kw.update(solver="average", steps=nfe, cfg_scale=1.0)
    sem, _ = sample(s["model1"], jax.random.fold_in(key, 1), frames=c1.data.frames,
                    feature_dim=c1.model.feature_dim, **kw)
    cond = features.upsample_nearest(np.asarray(sem[0]), c2.data.frames, c1.data.semantic_rate,
                                     c2.data.acoustic_rate)[None]
    ac, _ = sample(s["model2"], jax.random.fold_in(key, 2), frames=c2.data.frames, feature_dim=c2.model.feature_dim,
                   cond=jnp.asarray(cond), **kw)
    return jax.block_until_ready(s["codec"].decode_latents(ac))


# ----------------------------------------------------------------------------------------- MusicGen


def musicgen_config(hidden: int, heads: int, ffn: int, layers: int, vocab: int, text_dim: int) -> Any:
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    text = T5Config(vocab_size=384, d_model=text_dim, d_kv=max(text_dim // 4, 8), d_ff=2 * text_dim, num_layers=2,
                    num_heads=4, feed_forward_proj="gated-gelu")
    bits = vocab.bit_length() - 1
    audio = EncodecConfig(sampling_rate=32_000, upsampling_ratios=[8, 5, 4, 4], codebook_size=vocab,
                          hidden_size=128 if vocab >= 1024 else 16, num_filters=32 if vocab >= 1024 else 4,
                          target_bandwidths=[4 * bits * 50 / 1000], normalize=False, chunk_length_s=None,
                          overlap=None)
    dec = MusicgenDecoderConfig(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, ffn_dim=ffn,
                                num_hidden_layers=layers, num_codebooks=4, pad_token_id=vocab, bos_token_id=vocab,
                                dropout=0.0, max_position_embeddings=4096)
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=dec)


def musicgen_decoder_params(cfg: Any) -> int:
    import torch
    from transformers import MusicgenForCausalLM

    with torch.device("meta"):
        m = MusicgenForCausalLM(cfg.decoder)
    return sum(p.numel() for p in m.parameters())


def musicgen_setup(tier_cfg: Any, target_params: int, threads: int, device: str = "cpu") -> dict[str, Any]:
    import torch
    from transformers import MusicgenForConditionalGeneration

    torch.set_num_threads(threads)
    m = tier_cfg.model
    vocab = 2048 if m.dim >= 512 else 64
    best = None
    for layers in range(1, 64):
        cfg = musicgen_config(m.dim, m.heads, m.mlp_dim, layers, vocab, tier_cfg.text.dim)
        n = musicgen_decoder_params(cfg)
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (cfg, n, layers)
        if n > target_params:
            break
    cfg, n, layers = best
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(cfg).eval().to(device)
    return {"model": model, "params": n, "layers": layers, "frame_rate": 50, "device": device}


def musicgen_run(s: dict[str, Any], duration: float) -> Any:
    import torch

    ids = torch.tensor([[3 + b for b in b"a calm piano piece in C major"] + [1]], device=s["device"])
    with torch.no_grad():
        out = s["model"].generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                  guidance_scale=3.0, max_new_tokens=int(duration * s["frame_rate"]))
    if s["device"] != "cpu":
        torch.cuda.synchronize()
    return out


# ----------------------------------------------------------------------------------------- main


def timed(fn: Any, repeats: int) -> float:
    """Warm up (compile) once, then the fastest of `repeats` calls."""
    from bench_codec import best_of

    fn()
    return best_of(fn, repeats)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiers", default="tiny,base")
    ap.add_argument("--nfe", default="8,16,32")
    ap.add_argument("--student-steps", default="", help="also few-step students at these steps (NFE) per stage")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads for MusicGen")
    ap.add_argument("--torch-device", default="cpu", help="where MusicGen runs (cuda on a GPU machine: the peer on the "
                    "same accelerator as MusicFlow's JAX default device)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    a = ap.parse_args(argv)
    import jax

    rows = []
    for tier in a.tiers.split(","):
        mf = musicflow_setup(tier, a.duration)
        mg = musicgen_setup(mf["cfg1"], mf["params"], a.threads, a.torch_device)
        t_mg = timed(lambda: musicgen_run(mg, a.duration), a.repeats)  # noqa: B023 - called right away
        runs = [(mf, nfe, False) for nfe in (int(x) for x in a.nfe.split(",") if x)]
        if a.student_steps:
            st = musicflow_setup(tier, a.duration, student=True)
            runs += [(st, k, True) for k in (int(x) for x in a.student_steps.split(",") if x)]
        for setup, nfe, student in runs:
            t_mf = timed(lambda: musicflow_run(setup, nfe, student=student), a.repeats)  # noqa: B023 - called now
            row = {"tier": tier, "device": str(jax.devices()[0]), "duration_s": a.duration, "nfe_per_stage": nfe,
                   "sampler": "student average" if student else "midpoint+CFG",
                   "musicflow_params": setup["params"], "musicflow_s": round(t_mf, 3),
                   "musicflow_rtf": round(t_mf / a.duration, 4), "musicgen_params": mg["params"],
                   "musicgen_layers": mg["layers"], "musicgen_device": a.torch_device, "musicgen_s": round(t_mg, 3),
                   "musicgen_rtf": round(t_mg / a.duration, 4), "musicgen_over_musicflow": round(t_mg / t_mf, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'tier':<5} {'sampler':<16} {'NFE':>4} {'MusicFlow params':>17} {'MF s':>8} {'MF RTF':>7} "
          f"{'MusicGen params':>16} {'MG s':>8} {'MG RTF':>7} {'MG/MF':>6}")
    for r in rows:
        print(f"{r['tier']:<5} {r['sampler']:<16} {r['nfe_per_stage']:>4} {r['musicflow_params']:>17,} "
              f"{r['musicflow_s']:>8.2f} {r['musicflow_rtf']:>7.3f} {r['musicgen_params']:>16,} "
              f"{r['musicgen_s']:>8.2f} {r['musicgen_rtf']:>7.3f} {r['musicgen_over_musicflow']:>6.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()

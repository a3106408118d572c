"""Flax Encodec vs transformers' EncodecModel on tiny random models: latents, codes at two bandwidths,
audio decoded from codes and from latents; causal/non-causal, several ratios/LSTM/residual counts, and
24 kHz, 32 kHz-like and 48 kHz-like (stereo, time_group_norm, normalize, chunked) configurations."""

from __future__ import annotations

import numpy as np
import pytest

from musicflow_jax.convert.encodec import convert_encodec
from musicflow_jax.encoders.codec import Codec
from musicflow_jax.testing.tiny_models import save_tiny_encodec

CONFIGS = {
    "24k-causal": dict(),
    "noncausal-ratios-2lstm": dict(use_causal_conv=False, upsampling_ratios=(4, 3, 2), num_lstm_layers=2,
                                   num_residual_layers=2, pad_mode="constant", target_bandwidths=(6.0, 18.0)),
    "32k-like": dict(sampling_rate=32_000, upsampling_ratios=(8, 5, 4, 4), use_causal_conv=False,
                     use_conv_shortcut=False, num_lstm_layers=2, target_bandwidths=(1.2, 2.4)),
    "48k-like": dict(sampling_rate=48_000, audio_channels=2, normalize=True, norm_type="time_group_norm",
                     use_causal_conv=False, chunk_length_s=0.05, overlap=0.01, target_bandwidths=(3.0, 6.0)),
}


def save_tiny_encodec_with_codebooks(folder, seed=0, **overrides):
    """Tiny Encodec whose (zero-initialised) codebooks get random entries at the latents' scale."""
    import torch
    from transformers import EncodecModel

    src = save_tiny_encodec(folder, seed=seed, **overrides)
    model = EncodecModel.from_pretrained(src).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        audio = torch.randn(1, model.config.audio_channels, 4000, generator=gen) * 0.3
        z_std = model.encoder(audio).std()
        for layer in model.quantizer.layers:
            layer.codebook.embed.copy_(torch.randn(layer.codebook.embed.shape, generator=gen) * z_std)
    model.save_pretrained(src)
    return src, model


def _audio(channels: int, length: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    rs = np.random.RandomState(seed)
    t = np.arange(length) / 8000.0
    x = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + rs.rand(batch, channels, 1))) + 0.05 * rs.randn(batch, channels, length)
    return x.astype(np.float32)


def _rel(out, ref) -> float:
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "48k-like" else n for n in CONFIGS])
def test_encodec_matches_transformers(tmp_path, name):
    import torch

    src, ref_model = save_tiny_encodec_with_codebooks(tmp_path / "hf", seed=2, **CONFIGS[name])
    convert_encodec(src, tmp_path / "flax")
    codec = Codec.load(tmp_path / "flax")
    hf = ref_model.config
    assert codec.sample_rate == hf.sampling_rate and codec.frame_rate == hf.frame_rate
    assert codec.latent_dim == hf.hidden_size
    x = _audio(hf.audio_channels, 5000)
    codec_in = x[:, 0] if hf.audio_channels == 1 else x
    x_t = torch.from_numpy(x)

    with torch.no_grad():
        z_ref = ref_model.encoder(x_t).numpy()  # (B, C, T)
        y_from_z_ref = ref_model.decoder(torch.from_numpy(z_ref)).numpy()
    if not hf.normalize:
        z = codec.encode_latents(codec_in)
        assert _rel(np.swapaxes(np.asarray(z), 1, 2), z_ref) <= 1e-4
    y = codec.decode_latents(np.swapaxes(z_ref, 1, 2))
    y = y[:, None] if hf.audio_channels == 1 else y
    assert _rel(y, y_from_z_ref) <= 1e-4

    for bw in hf.target_bandwidths:
        with torch.no_grad():
            codes_ref, scales_ref, pad_ref = ref_model.encode(x_t, bandwidth=bw, return_dict=False)
            audio_ref = ref_model.decode(codes_ref, scales_ref, last_frame_pad_length=pad_ref)[0].numpy()
        codes, scales, pad = codec.encode_codes(codec_in, bandwidth=bw)
        assert codes.shape == tuple(codes_ref.shape) and pad == pad_ref
        assert codes.shape[2] == ref_model.quantizer.get_num_quantizers_for_bandwidth(bw)
        assert (codes == codes_ref.numpy()).mean() == 1.0
        if hf.normalize:
            np.testing.assert_allclose(scales, np.stack([s.numpy() for s in scales_ref]), rtol=1e-5)
        scales_arg = None if scales_ref[0] is None else np.stack([s.numpy() for s in scales_ref])
        audio = codec.decode_codes(codes_ref.numpy(), scales_arg, pad_ref)
        audio = audio[:, None] if hf.audio_channels == 1 else audio
        assert audio.shape == audio_ref.shape
        assert _rel(audio, audio_ref) <= 1e-4


def test_codebook_quantisation_is_nearest_neighbour(tmp_path):
    """Analytic check: latents built from codebook entries are coded back exactly by the first quantizer."""
    src, ref_model = save_tiny_encodec_with_codebooks(tmp_path / "hf", seed=5)
    convert_encodec(src, tmp_path / "flax")
    codec = Codec.load(tmp_path / "flax")
    embed = ref_model.quantizer.layers[0].codebook.embed.numpy()
    ids = np.random.RandomState(0).randint(0, embed.shape[0], (2, 9))
    codes = np.asarray(codec.quantize_latents(embed[ids], bandwidth=1.5))
    np.testing.assert_array_equal(codes[:, 0], ids)
    np.testing.assert_allclose(np.asarray(codec.codes_to_latents(codes[:, :1])), embed[ids], rtol=1e-6)


def test_codec_rejects_bad_shapes_and_bandwidths(tmp_path):
    src, _ = save_tiny_encodec_with_codebooks(tmp_path / "hf")
    convert_encodec(src, tmp_path / "flax")
    codec = Codec.load(tmp_path / "flax")
    with pytest.raises(ValueError, match="expected \\(B, S\\)"):
        codec.encode_latents(np.zeros((1, 2, 100), np.float32))
    with pytest.raises(ValueError, match="latents must be"):
        codec.decode_latents(np.zeros((1, 5, 3), np.float32))
    with pytest.raises(ValueError, match="bandwidth 7.0 not supported"):
        codec.encode_codes(np.zeros((1, 320), np.float32), bandwidth=7.0)


def test_bench_codec_tiny_runs_and_agrees():
    """tools/bench_codec.py (a script, run as one): the Flax and PyTorch decoders agree and the ratio is theirs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "tools/bench_codec.py", "--tiny", "--seconds", "0.4", "--batch", "1",
                           "--repeats", "1"], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                          capture_output=True, text=True, timeout=300)  # 30 frames at 75 Hz
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["max_rel_diff"] <= 1e-4 and res["audio_seconds"] == 0.4
    assert res["flax_audio_s_per_s"] > 0 and res["torch_audio_s_per_s"] > 0
    assert res["flax_over_torch_speed"] == pytest.approx(res["torch_s"] / res["flax_s"], rel=1e-2)

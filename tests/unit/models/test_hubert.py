"""Flax HuBERT vs transformers' HubertModel (every hidden state) and the HubertSemantic runtime part
(features at a layer, k-means units, centroid vectors, codebook checks)."""

from __future__ import annotations

import numpy as np
import pytest

from musicflow_jax.backends.hubert import HubertSemantic
from musicflow_jax.convert.hubert import convert_hubert
from musicflow_jax.encoders.codebook import checkpoint_sha256, save_codebook
from musicflow_jax.encoders.converted import load_hubert
from musicflow_jax.testing.tiny_models import save_tiny_hubert

VARIANTS = {
    "group-postln": dict(),
    "layer-stable": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
    "layer-postln-oddpos-noprojln": dict(feat_extract_norm="layer", num_conv_pos_embeddings=15,
                                         feat_proj_layer_norm=False, num_hidden_layers=3),
    "group-stable-4heads": dict(do_stable_layer_norm=True, num_attention_heads=4, conv_dim=(8, 16, 16, 16, 16, 16, 12)),
}


def _audio(length: int = 6400, batch: int = 2) -> np.ndarray:
    rs = np.random.RandomState(0)
    t = np.arange(length) / 16_000
    return (0.3 * np.sin(2 * np.pi * 200 * t) + 0.1 * rs.randn(batch, length)).astype(np.float32)


def _torch_hubert(folder, x):
    import torch
    from transformers import HubertModel

    model = HubertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], out.last_hidden_state.numpy()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_hubert_matches_transformers_at_every_layer(tmp_path, name):
    src = save_tiny_hubert(tmp_path / "hf", seed=4, **VARIANTS[name])
    convert_hubert(src, tmp_path / "flax")
    cfg, model = load_hubert(tmp_path / "flax")
    x = _audio()
    ref_states, ref_last = _torch_hubert(src, x)
    states = model.hidden_states(x)
    assert len(states) == len(ref_states) == cfg.num_hidden_layers + 1
    for i, (h, r) in enumerate(zip(states, ref_states)):
        assert h.shape == r.shape
        rel = np.abs(np.asarray(h) - r).max() / np.abs(r).max()
        assert rel <= 1e-4, (i, rel)
    last = np.asarray(model.last_hidden_state(x))
    assert np.abs(last - ref_last).max() / np.abs(ref_last).max() <= 1e-4


def test_semantic_encoder_features_units_vectors(tmp_path):
    src = save_tiny_hubert(tmp_path / "hf", seed=1)
    convert_hubert(src, tmp_path / "flax")
    x = _audio()
    ref_states, _ = _torch_hubert(src, x)
    layer = 1
    h_ref = ref_states[layer]  # (B, T, C)
    # centroids = a few actual frames, plus random ones: those frames must map to themselves
    rs = np.random.RandomState(0)
    cents = np.concatenate([h_ref[0, [3, 7, 11]], rs.randn(5, h_ref.shape[-1]).astype(np.float32)])
    save_codebook(tmp_path / "km.safetensors", cents, layer=layer, hubert_sha256=checkpoint_sha256(src))
    enc = HubertSemantic.load(tmp_path / "flax", tmp_path / "km.safetensors", layer)
    assert enc.frame_rate == 50.0
    h = np.asarray(enc.features(x))
    assert np.abs(h - h_ref).max() / np.abs(h_ref).max() <= 1e-4
    ids = np.asarray(enc.units(h))
    d = ((h_ref.astype(np.float64)[:, :, None] - cents.astype(np.float64)[None, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ids, d.argmin(-1))
    assert ids[0, 3] == 0 and ids[0, 7] == 1 and ids[0, 11] == 2
    np.testing.assert_array_equal(np.asarray(enc.unit_vectors(ids)), cents[ids])


def test_semantic_encoder_rejects_mismatched_codebooks(tmp_path):
    src = save_tiny_hubert(tmp_path / "hf", seed=1)
    convert_hubert(src, tmp_path / "flax")
    cents = np.zeros((4, 32), np.float32)
    save_codebook(tmp_path / "km_l2.safetensors", cents, layer=2, hubert_sha256=checkpoint_sha256(src))
    with pytest.raises(ValueError, match="fitted on HuBERT layer 2, not layer 1"):
        HubertSemantic.load(tmp_path / "flax", tmp_path / "km_l2.safetensors", 1)
    save_codebook(tmp_path / "km_other.safetensors", cents, layer=1, hubert_sha256="0" * 64)
    with pytest.raises(ValueError, match="different HuBERT"):
        HubertSemantic.load(tmp_path / "flax", tmp_path / "km_other.safetensors", 1)
    save_codebook(tmp_path / "km_dim.safetensors", np.zeros((4, 8), np.float32), layer=1,
                  hubert_sha256=checkpoint_sha256(src))
    with pytest.raises(ValueError, match="codebook dim 8"):
        HubertSemantic.load(tmp_path / "flax", tmp_path / "km_dim.safetensors", 1)
    with pytest.raises(ValueError, match="hidden states 0..2"):
        HubertSemantic.load(tmp_path / "flax", None, 3)


def test_waveform_normalisation_matches_precompute(tmp_path):
    """A HuBERT whose feature extractor has do_normalize=True: the JAX HubertSemantic and the offline
    precompute tool feed it the same normalised waveform, so their features agree."""
    import json

    from musicflow_jax.backends.torch_ref import TorchHubertSemantic

    src = save_tiny_hubert(tmp_path / "hf", seed=2, **VARIANTS["layer-stable"])  # group norm would hide it
    (src / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "sampling_rate": 16000}))
    convert_hubert(src, tmp_path / "flax")
    x = 3.0 * _audio(batch=1) + 0.5  # off-centre and loud: normalisation matters
    ref = TorchHubertSemantic(src, layer=2).features(x)[0]
    sem = HubertSemantic.load(tmp_path / "flax", None, layer=2)
    assert sem.do_normalize
    np.testing.assert_allclose(np.asarray(sem.features(x))[0], ref, rtol=1e-4, atol=1e-4)
    raw = np.asarray(HubertSemantic(sem.cfg, load_hubert(tmp_path / "flax")[1], 2).features(x))[0]
    assert np.abs(raw - ref).max() > 1e-2  # without it they differ

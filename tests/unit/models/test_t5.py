"""Flax T5 encoder vs transformers' T5EncoderModel (v1.0 relu, v1.1 gated-gelu) and the TextEncoder runtime."""

from __future__ import annotations

import numpy as np
import pytest

from musicflow_jax.convert.t5 import convert_t5
from musicflow_jax.core.config import ConfigError, TextConfig
from musicflow_jax.encoders.converted import load_t5
from musicflow_jax.encoders.text import TextEncoder
from musicflow_jax.models.t5 import relative_position_bucket
from musicflow_jax.testing.tiny_models import save_tiny_t5

VARIANTS = {
    "v1.0-relu": dict(feed_forward_proj="relu"),
    "v1.1-gated-gelu": dict(feed_forward_proj="gated-gelu", num_layers=3, num_heads=2, d_kv=16, d_ff=48),
    "gated-relu-wide-buckets": dict(feed_forward_proj="gated-relu", relative_attention_num_buckets=32,
                                    relative_attention_max_distance=16),
}


def _torch_t5(folder, ids, mask):
    import torch
    from transformers import T5EncoderModel

    model = T5EncoderModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_t5_matches_transformers(tmp_path, name):
    src = save_tiny_t5(tmp_path / "hf", seed=3, **VARIANTS[name])
    convert_t5(src, tmp_path / "flax")
    _, model = load_t5(tmp_path / "flax")
    rs = np.random.RandomState(0)
    ids = rs.randint(3, 384, (3, 40)).astype(np.int32)
    mask = np.ones((3, 40), bool)
    mask[1, 25:] = False
    mask[2, 3:] = False
    ref = _torch_t5(src, ids, mask)
    out = np.asarray(model(ids, mask))
    rel = np.abs(out - ref)[mask].max() / np.abs(ref[mask]).max()
    assert rel <= 1e-4, rel


def test_relative_position_bucket_reference_values():
    # hand-computed with transformers' T5Attention._relative_position_bucket(bidirectional, 32 buckets, 128)
    rel = np.array([-200, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 128, 200])
    want = np.array([15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31])
    got = np.asarray(relative_position_bucket(rel, 32, 128))
    assert got.tolist() == want.tolist()


def test_text_encoder_default_and_save_roundtrip(tmp_path):
    cfg = TextConfig(checkpoint="", max_len=16, dim=32)
    enc = TextEncoder.load(cfg, seed=0)
    ids, mask = enc.tokenize(["a calm piano", "drums"])
    assert ids.shape == (2, 16) and mask[0].sum() == len("a calm piano") + 1
    emb = np.asarray(enc.encode(ids, mask))
    assert emb.shape == (2, 16, 32) and emb.dtype == np.float32
    # deterministic from the seed, different across seeds
    np.testing.assert_array_equal(emb, np.asarray(TextEncoder.load(cfg, seed=0).encode(ids, mask)))
    assert np.abs(emb - np.asarray(TextEncoder.load(cfg, seed=1).encode(ids, mask))).max() > 1e-3
    # padding does not leak into real tokens: caption alone in a longer batch gives the same embedding
    alone = np.asarray(enc.encode(*enc.tokenize(["drums"])))
    np.testing.assert_allclose(alone[0, :6], emb[1, :6], rtol=1e-5, atol=1e-6)
    enc.save(tmp_path / "te")
    back = TextEncoder.load(TextConfig(checkpoint=str(tmp_path / "te"), max_len=16, dim=32))
    np.testing.assert_array_equal(np.asarray(back.encode(ids, mask)), emb)


def test_text_encoder_dim_mismatch_is_clear(tmp_path):
    TextEncoder.load(TextConfig(dim=32)).save(tmp_path / "te")
    with pytest.raises(ConfigError, match="text.dim"):
        TextEncoder.load(TextConfig(checkpoint=str(tmp_path / "te"), dim=64))


def test_text_encoder_from_converted_hf_folder_matches_torch(tmp_path):
    src = save_tiny_t5(tmp_path / "hf", seed=1, feed_forward_proj="gated-gelu")
    convert_t5(src, tmp_path / "flax")
    enc = TextEncoder.load(TextConfig(checkpoint=str(tmp_path / "flax"), max_len=24, dim=32))
    ids, mask = enc.tokenize(["ambient synth pad, slow", "fast techno"])
    ref = _torch_t5(src, ids, mask)
    out = np.asarray(enc.encode(ids, mask))
    assert np.abs(out - ref)[mask].max() / np.abs(ref[mask]).max() <= 1e-4


def test_sentencepiece_tokenizer_travels_with_converted_folder(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a calm piano melody", "fast techno with heavy drums", "ambient synth pads",
                                 "jazz trio with upright bass", "orchestral strings, slow and sad"] * 20))
    # T5 layout: pad=0, eos=1, unk=2
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=40,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram")
    src = save_tiny_t5(tmp_path / "hf", seed=2)
    (tmp_path / "sp.model").rename(src / "spiece.model")
    out = convert_t5(src, tmp_path / "flax")
    assert (out / "spiece.model").is_file()
    enc = TextEncoder.load(TextConfig(checkpoint=str(out), max_len=32, dim=32))
    ids, mask = enc.tokenize(["calm jazz piano"])
    want = spm.SentencePieceProcessor(model_file=str(out / "spiece.model")).encode("calm jazz piano") + [1]
    assert ids[0, : len(want)].tolist() == want and mask[0].sum() == len(want)
    ref = _torch_t5(src, ids, mask)
    out_emb = np.asarray(enc.encode(ids, mask))
    assert np.abs(out_emb - ref)[mask].max() / np.abs(ref[mask]).max() <= 1e-4
    enc.save(tmp_path / "bundle")  # a bundled model ships the tokenizer file too
    assert (tmp_path / "bundle" / "spiece.model").read_bytes() == (out / "spiece.model").read_bytes()

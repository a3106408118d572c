"""CLAP score (evaluate/embedders/clap.py) vs calling transformers' ClapModel directly, on a tiny random CLAP saved
with save_pretrained here (offline: a RoBERTa tokenizer over a byte-level character vocabulary written by the test,
ClapFeatureExtractor's defaults with the unfused models' "rand_trunc"), including the 24 -> 48 kHz resampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from musicflow_jax.evaluate.embedders.clap import ClapError, ClapScorer

SR = 24_000
TEXTS = ["A Bach chorale in G minor at 84 BPM played on a church organ", "a piano"]


@pytest.fixture(scope="module")
def clap_folder(tmp_path_factory) -> Path:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    d = tmp_path_factory.mktemp("clap")
    # GPT-2 byte-level alphabet for printable ASCII is the identity; the space byte maps to U+0120
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + [chr(c) for c in range(33, 127)] + ["\u0120", "<mask>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = RobertaTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    torch.manual_seed(0)
    cfg = ClapConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, projection_dim=16, max_position_embeddings=130),
        audio_config=dict(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                          projection_dim=16, num_hidden_layers=2),
        projection_dim=16)
    ClapModel(cfg).eval().save_pretrained(d)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tok).save_pretrained(d)
    return d


def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.normal(size=t.size)
    long = 0.1 * rng.normal(size=12 * SR)  # > 10 s: the feature extractor crops it
    return [tone.astype(np.float32), long.astype(np.float32)]


def direct(folder: Path, audio48: list[np.ndarray], texts: list[str], seed: int = 0) -> np.ndarray:
    """The reference: ClapFeatureExtractor + RobertaTokenizer + ClapModel.get_*_features, torch cosine."""
    from transformers import ClapFeatureExtractor, ClapModel, RobertaTokenizer

    model = ClapModel.from_pretrained(folder, local_files_only=True).eval()
    fe = ClapFeatureExtractor.from_pretrained(folder, local_files_only=True)
    tok = RobertaTokenizer.from_pretrained(folder, local_files_only=True)
    np.random.seed(seed)
    feats = fe(audio48, sampling_rate=48_000, return_tensors="pt")
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        a = model.get_audio_features(**feats).pooler_output
        t = model.get_text_features(**ids).pooler_output
    return torch.nn.functional.cosine_similarity(a, t, dim=1, eps=1e-8).numpy()


def test_clap_score_matches_clap_model_directly(clap_folder: Path) -> None:
    scorer = ClapScorer(clap_folder)
    assert scorer.sample_rate == 48_000
    x = clips()
    ref = direct(clap_folder, [resample_poly(c, 2, 1).astype(np.float32) for c in x], TEXTS)
    got = scorer.score(x, TEXTS, SR)
    np.testing.assert_allclose(got.per_clip, ref, atol=1e-6)
    assert got.score == pytest.approx(float(ref.mean()), abs=1e-6)
    # the resampling is really applied: the same samples declared as 48 kHz give other embeddings
    wrong = scorer.audio_embeddings(x, 48_000)
    assert np.abs(wrong - scorer.audio_embeddings(x, SR)).max() > 1e-3
    # the random crop of the 12-s clip is seeded: another seed crops elsewhere, the same seed repeats
    again = ClapScorer(clap_folder, seed=0).audio_embeddings(x, SR)
    np.testing.assert_array_equal(again, scorer.audio_embeddings(x, SR))
    other = ClapScorer(clap_folder, seed=1).audio_embeddings(x, SR)
    assert np.abs(other[1] - again[1]).max() > 1e-4 and np.abs(other[0] - again[0]).max() < 1e-6


def test_clap_errors(clap_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ClapError, match="has no config.json"):
        ClapScorer(tmp_path / "nowhere")
    with pytest.raises(ClapError, match="got 2 clips and 1 captions"):
        ClapScorer(clap_folder).score(clips(), TEXTS[:1], SR)

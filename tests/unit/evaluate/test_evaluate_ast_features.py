"""Model-based metrics (musicflow_jax/evaluate/embedders/): the AST AudioSet tagger against transformers called
directly with audiocraft's segmenting and KL, FD on a MusicFlow backend's Flax HuBERT/Encodec frames, caption
pairing, the per-clip cache, and the CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from musicflow_jax.core.audio import write_wav
from musicflow_jax.evaluate.embedders import base as embeddings
from musicflow_jax.evaluate.frechet import frechet_distance
from musicflow_jax.testing.tiny_models import save_tiny_backend_weights

SR = 24000


def _tone(seconds: float, f0: float, seed: int, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * f0 * r * t) / (k + 1) for k, r in enumerate((1.0, 1.25, 1.5)))
    return (0.2 * x + 0.02 * rng.normal(size=t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def ast_folder(tmp_path_factory) -> Path:
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ast")
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=6)
    ASTForAudioClassification(cfg).eval().save_pretrained(folder)
    ASTFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backend_folder(tmp_path_factory) -> Path:
    """A hubert+encodec backend of the Flax ports (tiny random HuBERT + Encodec converted from transformers)."""
    from musicflow_jax.backends import FeatureBackend, build_part

    root = tmp_path_factory.mktemp("be")
    w = save_tiny_backend_weights(root)
    sem = build_part("semantic", {"kind": "hubert", "folder": str(w["hubert"]), "layer": 1,
                                  "kmeans": str(w["kmeans"])})
    ac = build_part("acoustic", {"kind": "encodec", "folder": str(w["encodec"])})
    return FeatureBackend(sem, ac).save(root / "model")


def test_ast_segments_and_logits_match_transformers(ast_folder: Path) -> None:
    """audiocraft's split (10-s segments, no padding, <= 0.15 s dropped) of audio resampled to 16 kHz, each segment
    through the extractor + model exactly as transformers is called directly."""
    import torch
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    from musicflow_jax.evaluate.embedders.ast_tagger import AstTagger

    tagger = AstTagger(ast_folder, batch_size=2)
    x = _tone(20.1, 220.0, 0)  # 10 s + 10 s + 0.1 s: the 0.1-s tail is dropped
    segs = tagger.segments(x, SR)
    assert [s.size for s in segs] == [160000, 160000]
    y = _tone(12.5, 330.0, 1)
    x16 = resample_poly(y, 2, 3).astype(np.float32)
    ref_segs = [x16[:160000], x16[160000:]]
    fe = ASTFeatureExtractor.from_pretrained(ast_folder)
    model = ASTForAudioClassification.from_pretrained(ast_folder).eval()
    with torch.no_grad():
        want = np.concatenate([model(**fe(s, sampling_rate=16000, return_tensors="pt")).logits.double().numpy()
                               for s in ref_segs])
    got = tagger.segment_logits(y, SR)
    assert got.shape == (2, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ast_kl_is_audiocrafts_definition(ast_folder: Path) -> None:
    """kld_pq / kld_qp as audiocraft computes them (torch kl_div on softmax probabilities, eps 1e-6, mean over
    paired segment rows), and the IS over the generated rows."""
    import torch

    from musicflow_jax.evaluate import distributions
    from musicflow_jax.evaluate.embedders.ast_tagger import AstTagger

    tagger = AstTagger(ast_folder)
    gen = [tagger.outputs(_tone(d, f, s), SR) for d, f, s in ((11.0, 200, 0), (3.0, 300, 1), (4.0, 250, 2))]
    ref = [tagger.outputs(_tone(d, f, s), SR) for d, f, s in ((11.0, 410, 3), (3.0, 150, 4), (4.0, 500, 5))]
    pairs = [(0, 0), (1, 1), (2, 2)]
    m = tagger.metrics(gen, ref, pairs)
    g = torch.softmax(torch.tensor(np.concatenate([o["logits"] for o in gen])), -1)
    r = torch.softmax(torch.tensor(np.concatenate([o["logits"] for o in ref])), -1)
    assert g.shape[0] == 4  # 2 + 1 + 1 segment rows

    def kld(pred: torch.Tensor, target: torch.Tensor) -> float:
        return float(torch.nn.functional.kl_div((pred + 1e-6).log(), target, reduction="none").sum(-1).mean())

    assert m["kl_pairs"] == 3
    assert m["kl_softmax"] == pytest.approx(kld(g, r), rel=1e-9)
    assert m["kl_softmax_qp"] == pytest.approx(kld(r, g), rel=1e-9)
    want_is = distributions.inception_score(np.concatenate([o["logits"] for o in gen]), splits=4)
    assert (m["is_mean"], m["is_std"]) == pytest.approx(want_is)


def test_backend_features_fd_pools_the_frames_of_the_flax_ports(backend_folder: Path) -> None:
    from musicflow_jax.evaluate.embedders.backend_features import BackendFeatures

    feats = BackendFeatures(backend_folder)
    be = feats.backend
    clips = [_tone(1.0, 200 + 40 * i, i) for i in range(4)]  # one length: one compilation per part
    outs = [feats.outputs(c, SR) for c in clips]
    for c, o in zip(clips, outs):
        np.testing.assert_array_equal(o["semantic"], be.encode_semantic(c[None], SR)[0])
        np.testing.assert_array_equal(o["acoustic"], be.encode_acoustic(c[None], SR)[0])
        assert len(o["acoustic"]) == math.ceil(c.size / SR * 75)
    m = feats.metrics(outs[:2], outs[2:], [])
    want = frechet_distance(np.concatenate([o["acoustic"] for o in outs[:2]]),
                            np.concatenate([o["acoustic"] for o in outs[2:]]))
    assert m["fd_acoustic"] == pytest.approx(want, rel=1e-12)
    assert m["frames_generated"] == sum(len(o["acoustic"]) for o in outs[:2])
    same = feats.metrics(outs, outs, [])
    assert abs(same["fd_semantic"]) < 1e-6 * max(1.0, m["fd_semantic"]) and abs(same["fd_acoustic"]) < 1e-6


def test_pair_by_caption_takes_the_first_unused_reference() -> None:
    pairs = embeddings.pair_by_caption(["a", "b", "a", "z"], ["b", "a", "a", "c"])
    assert pairs == [(0, 1), (1, 0), (2, 2)]


def _clipset(folder: Path, captions: list[str], seed: int) -> Path:
    lines = []
    for i, c in enumerate(captions):
        p = write_wav(folder / f"{i:02d}.wav", _tone(2.0, 180 + 37 * i + seed, seed + i), SR, {"text": c})
        lines.append(json.dumps({"path": str(p), "caption": c}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def test_cli_embeddings_results_and_cache(ast_folder: Path, backend_folder: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from musicflow_jax.cli.evaluate import main
    from musicflow_jax.evaluate.embedders.ast_tagger import AstTagger
    from musicflow_jax.evaluate.embedders.backend_features import BackendFeatures

    caps = [f"A piece in C major at {100 + 5 * i} BPM played on a piano" for i in range(4)]
    ref = _clipset(tmp_path / "ref", caps, 0)
    gen_dir = tmp_path / "gen"
    _clipset(gen_dir, caps[::-1], 7)
    out = tmp_path / "out"
    argv = ["--generated", str(gen_dir), "--reference", str(ref), "--out", str(out), "--ast", str(ast_folder),
            "--features", str(backend_folder), "--quiet"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    emb = res["embeddings"]
    assert set(emb) == {"ast", "features"}
    assert emb["ast"]["kl_pairs"] == 4
    # pairs follow the captions (the generated set lists them in reverse): recompute KL from the files directly
    from musicflow_jax.core.audio import read_audio
    from musicflow_jax.evaluate import distributions

    tagger = AstTagger(ast_folder)
    g = np.concatenate([tagger.segment_logits(*read_audio(gen_dir / f"{3 - i:02d}.wav")) for i in range(4)])
    r = np.concatenate([tagger.segment_logits(*read_audio(tmp_path / "ref" / f"{i:02d}.wav")) for i in range(4)])
    assert emb["ast"]["kl_softmax"] == pytest.approx(distributions.kl_divergence(g, r), rel=1e-9, abs=1e-12)
    assert emb["features"]["fd_acoustic"] > 0
    assert "| ast |" in (out / "results.md").read_text()
    # the second run reads every clip's outputs from the cache: the models are never called
    monkeypatch.setattr(AstTagger, "outputs", lambda *a: pytest.fail("AST ran despite the cache"))
    monkeypatch.setattr(BackendFeatures, "outputs", lambda *a: pytest.fail("backend ran despite the cache"))
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["embeddings"] == emb


def test_cli_embedding_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from musicflow_jax.cli.evaluate import main

    ref = _clipset(tmp_path / "ref", ["a tune", "a song"], 0)
    base = ["--generated", str(ref), "--reference", str(ref), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(base + ["--ast", str(tmp_path)]) == 2
    assert "--ast" in capsys.readouterr().err
    assert main(base + ["--features", str(tmp_path)]) == 2
    assert "--features" in capsys.readouterr().err
    assert main(base + ["--features", "model"]) == 2
    assert "--checkpoint" in capsys.readouterr().err

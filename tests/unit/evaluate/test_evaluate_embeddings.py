"""VGGish (evaluate/embedders/vggish.py) and PANNs CNN14 (evaluate/embedders/panns.py) vs their reference
implementations on random weights: torchvggish 0.2 (`VGG` + vggish_input.waveform_to_examples, the final ReLU
dropped as audioldm_eval's FAD does) and panns_inference 0.1.1's `Cnn14` with the 16-kHz parameters (torchlibrosa
0.1.0 front end). The reference models are built with a fixed seed, their BatchNorm statistics randomised, saved in
the released file formats and loaded through the project's loaders; both are fed the same 16-kHz audio (for the
24-kHz clip: the project's resampled audio). panns_inference's package __init__ (which downloads a label list) is
never run: only its models module is imported."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from musicflow_jax.core.audio import resample
from musicflow_jax.evaluate.embedders import panns, vggish
from musicflow_jax.evaluate.embedders.panns import PannsCnn14, PannsError
from musicflow_jax.evaluate.embedders.torch_common import EmbeddingModelError, audioldm_eval_waveform
from musicflow_jax.evaluate.embedders.vggish import VGGish, VGGishError


def chord(seconds: float, sr: int, seed: int) -> np.ndarray:
    """A C-major chord with harmonics plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(0.2 / h * np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6)) for f in (261.6, 329.6, 392.0)
            for h in (1, 2, 3))
    return (x + 0.02 * rng.normal(size=t.size)).astype(np.float32)


def clips(seconds: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(inputs [16-kHz clip, 24-kHz clip], the 16-kHz clip, the 24-kHz clip resampled as the project does)."""
    a, b = chord(seconds, 16_000, 0), chord(seconds, 24_000, 1)
    return [a, b], a, resample(b, 24_000, 16_000)


def max_rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)).max() / np.abs(ref).max())


def randomise_batchnorm(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.2 * torch.randn(n, generator=g)
            m.running_mean.data = 0.3 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)
            m.num_batches_tracked.fill_(1000)


# ------------------------------------------------------------------------------------------------------ VGGish
@pytest.fixture(scope="module")
def vggish_ref(tmp_path_factory) -> tuple[torch.nn.Module, dict, Path]:
    from torchvggish.torchvggish import VGG, make_layers

    torch.manual_seed(0)
    model = VGG(make_layers(), postprocess=False)  # torchvggish's network; no download, no PCA
    for m in model.modules():  # non-trivial biases (PyTorch's default init is already random)
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.bias.data.uniform_(-0.05, 0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("vggish") / "vggish-10086976.pth"
    torch.save(state, path)
    # audioldm_eval metrics/fad.py: use_activation=False drops the final ReLU of `embeddings`; postprocess off
    model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])
    return model.eval(), state, path


def test_vggish_front_end_matches_torchvggish() -> None:
    from torchvggish import mel_features, vggish_input

    np.testing.assert_allclose(vggish.mel_matrix(), mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=64, num_spectrogram_bins=257, audio_sample_rate=16000, lower_edge_hertz=125,
        upper_edge_hertz=7500), rtol=1e-12, atol=1e-14)
    x = chord(3.05, 16_000, 2)
    ref = vggish_input.waveform_to_examples(x, 16_000, return_tensor=False)
    got = vggish.log_mel_examples(x)
    assert got.shape == ref.shape == (3, 96, 64)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    # the exact example count at the boundary: 15600 samples give one example, 15599 none
    assert vggish.log_mel_examples(x[:15600]).shape == (1, 96, 64)
    assert vggish_input.waveform_to_examples(x[:15600], 16_000, return_tensor=False).shape[0] == 1
    with pytest.raises(VGGishError, match="shorter than one VGGish example"):
        vggish.log_mel_examples(x[:15599])


def test_vggish_embeddings_match_reference(vggish_ref) -> None:
    from torchvggish import vggish_input

    ref_model, _, path = vggish_ref
    inputs, a16, b16 = clips(2.0)
    model = VGGish(path, batch_size=3)  # 4 examples: two forward passes, the first across the clip boundary
    got_b = model.frame_embeddings([inputs[1]], 24_000)[0]  # the resampling path
    both = model.frame_embeddings([a16, b16], 16_000)
    with torch.no_grad():
        ref = [ref_model(vggish_input.waveform_to_examples(x, 16_000)).numpy() for x in (a16, b16)]
    assert got_b.dtype == np.float64 and got_b.shape == ref[1].shape == (2, 128)
    assert max_rel(got_b, ref[1]) < 1e-5
    for g, r in zip(both, ref):
        assert g.dtype == np.float64 and g.shape == r.shape == (2, 128)
        assert max_rel(g, r) < 1e-5
    assert (ref[0] < 0).any() and (both[0] < 0).any()  # the final ReLU is really gone, in both
    pooled = model.pooled_embeddings([a16, b16], 16_000)
    np.testing.assert_array_equal(pooled, np.concatenate(both))
    assert pooled.shape == (4, 128)


def test_vggish_errors(vggish_ref, tmp_path: Path) -> None:
    _, state, path = vggish_ref
    with pytest.raises(VGGishError, match=r"nowhere\.pth does not exist"):
        VGGish(tmp_path / "nowhere.pth")
    bad = dict(state)
    bad["embeddings.4.weight_renamed"] = bad.pop("embeddings.4.weight")
    torch.save(bad, tmp_path / "renamed.pth")
    with pytest.raises(VGGishError, match=r"renamed\.pth lacks key 'embeddings\.4\.weight'"):
        VGGish(tmp_path / "renamed.pth")
    model = VGGish(path)
    x = chord(2.0, 16_000, 3)
    with pytest.raises(VGGishError, match=r"clip 1 \(short\.wav\): 0\.500 s is shorter than one VGGish example"):
        model.frame_embeddings([x, x[:8000]], 16_000, names=["ok.wav", "short.wav"])
    x_nan = x.copy()
    x_nan[5] = np.nan
    with pytest.raises(VGGishError, match=r"clip 0: audio contains NaN/inf"):
        model.frame_embeddings([x_nan], 16_000)
    assert issubclass(VGGishError, EmbeddingModelError) and issubclass(VGGishError, ValueError)


# ------------------------------------------------------------------------------------------------------ PANNs
def panns_inference_models() -> types.ModuleType:
    """panns_inference.models without running the package __init__ (it imports config.py, which downloads)."""
    if "panns_inference.models" in sys.modules:
        return sys.modules["panns_inference.models"]
    spec = importlib.util.find_spec("panns_inference")
    stub = types.ModuleType("panns_inference")
    stub.__path__ = list(spec.submodule_search_locations)
    saved = sys.modules.get("panns_inference")
    sys.modules["panns_inference"] = stub
    try:
        models = importlib.import_module("panns_inference.models")
    finally:
        if saved is None:
            del sys.modules["panns_inference"]
        else:
            sys.modules["panns_inference"] = saved
    assert "panns_inference.config" not in sys.modules
    return models


@pytest.fixture(scope="module")
def panns_ref(tmp_path_factory) -> tuple[torch.nn.Module, dict, Path]:
    models = panns_inference_models()
    torch.manual_seed(0)
    model = models.Cnn14(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000,
                         classes_num=527)
    randomise_batchnorm(model)
    g = torch.Generator().manual_seed(2)  # bn0 sees log-mel in dB: statistics on that scale
    model.bn0.running_mean.data = -30.0 + 10.0 * torch.randn(64, generator=g)
    model.bn0.running_var.data = 50.0 + 200.0 * torch.rand(64, generator=g)
    model.fc1.bias.data.uniform_(-0.1, 0.1)
    model.fc_audioset.bias.data.uniform_(-0.5, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("panns") / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": state, "iteration": 0}, path)  # the released checkpoint's layout
    return model.eval(), state, path


@pytest.fixture(scope="module")
def panns_model(panns_ref) -> PannsCnn14:
    return PannsCnn14(panns_ref[2], batch_size=2)


def test_panns_front_end_matches_torchlibrosa(panns_ref, panns_model) -> None:
    import librosa

    ref_model = panns_ref[0]
    np.testing.assert_allclose(panns.slaney_mel_matrix(), librosa.filters.mel(
        sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000).T, rtol=1e-5, atol=1e-8)
    real, imag = panns.stft_kernels()
    stft = ref_model.spectrogram_extractor.stft
    np.testing.assert_allclose(real, stft.conv_real.weight.numpy(), atol=1e-6)
    np.testing.assert_allclose(imag, stft.conv_imag.weight.numpy(), atol=1e-6)
    x = chord(2.0, 16_000, 4)
    got = panns_model.log_mel([x], 16_000)[0]
    with torch.no_grad():
        ref = ref_model.logmel_extractor(ref_model.spectrogram_extractor(torch.from_numpy(x)[None]))[0, 0].numpy()
    assert got.shape == ref.shape == (201, 64)
    np.testing.assert_allclose(got, ref, atol=1e-3)  # dB; float32 log10 of the same products
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


def test_panns_embeddings_and_logits_match_reference(panns_ref, panns_model) -> None:
    ref_model, _, _ = panns_ref
    inputs, a16, b16 = clips(2.0)
    got_b = panns_model([inputs[1]], 24_000)  # the resampling path
    both = panns_model([a16, b16], 16_000)  # equal lengths: one batch of 2
    with torch.no_grad():
        out = ref_model(torch.from_numpy(np.stack([a16, b16])))
        ref_emb = out["embedding"].numpy()
        ref_logits = ref_model.fc_audioset(out["embedding"]).numpy()  # panns_inference returns sigmoid(logits)
        ref_clipwise = out["clipwise_output"].numpy()
    assert both.embedding.dtype == both.logits.dtype == np.float64
    assert both.embedding.shape == (2, 2048) and both.logits.shape == (2, 527)
    assert max_rel(both.embedding, ref_emb) < 1e-5 and max_rel(both.logits, ref_logits) < 1e-5
    assert max_rel(got_b.embedding, ref_emb[1:]) < 1e-5 and max_rel(got_b.logits, ref_logits[1:]) < 1e-5
    np.testing.assert_allclose(1 / (1 + np.exp(-both.logits)), ref_clipwise, atol=1e-5)
    assert (both.logits < 0).any() and (both.logits > 0).any() and (both.embedding > 0).mean() > 0.05


def test_panns_errors(panns_ref, panns_model, tmp_path: Path) -> None:
    state = panns_ref[1]
    with pytest.raises(PannsError, match=r"nowhere\.pth does not exist"):
        PannsCnn14(tmp_path / "nowhere.pth")
    bad = dict(state)
    bad["fc_audioset.bias"] = torch.zeros(10)
    torch.save({"model": bad}, tmp_path / "shape.pth")
    with pytest.raises(PannsError, match=r"shape\.pth: 'fc_audioset\.bias' has shape \(10,\), expected \(527,\)"):
        PannsCnn14(tmp_path / "shape.pth")
    bad = dict(state)
    bad["head.weight"] = torch.zeros(1)
    torch.save({"model": bad}, tmp_path / "extra.pth")
    with pytest.raises(PannsError, match=r"extra\.pth has unexpected key 'head\.weight'"):
        PannsCnn14(tmp_path / "extra.pth")
    model = panns_model
    with pytest.raises(PannsError, match=r"clip 0 \(tiny\.wav\): 0\.300 s is shorter than CNN14's minimum"):
        model([chord(0.3, 16_000, 5)], 16_000, names=["tiny.wav"])
    assert model([chord(0.31, 16_000, 5)], 16_000).logits.shape == (1, 527)  # 4960 samples: the minimum


def test_audioldm_eval_waveform() -> None:
    x = np.stack([chord(1.0, 24_000, 6) + 0.5, np.zeros(24_000, np.float32)])  # DC offset; channel 1 ignored
    y = audioldm_eval_waveform(x, 24_000)
    assert y.shape == (32_000,) and y.dtype == np.float32
    np.testing.assert_allclose(y[:16_000], resample(x[0] - x[0].mean(), 24_000, 16_000), atol=1e-6)
    assert (y[16_000:] == 0).all() and abs(float(y[:16_000].mean())) < 1e-2
    long = chord(2.5, 16_000, 7)
    np.testing.assert_allclose(audioldm_eval_waveform(long, 16_000), long - long.mean(), atol=1e-7)


# ------------------------------------------------------------------------------------------ through the CLI
def test_cli_fad_fd_kl_is_equal_the_reference_pipeline(vggish_ref, panns_ref, tmp_path: Path) -> None:
    """`python -m musicflow_jax.evaluate --vggish F --panns F`: FAD, FD, KL (softmax, sigmoid) and IS equal those
    computed from the reference models on the audioldm_eval-prepared clips, clips paired by caption."""
    import json

    from torchvggish import vggish_input

    from musicflow_jax.cli.evaluate import main
    from musicflow_jax.core.audio import read_audio, write_wav
    from musicflow_jax.evaluate import distributions
    from musicflow_jax.evaluate.frechet import frechet_distance

    caps = [f"A chorale in C major at {90 + 10 * i} BPM played on a piano" for i in range(4)]
    for name, seed, order in (("ref", 0, caps), ("gen", 10, caps[::-1])):
        lines = []
        for i, c in enumerate(order):
            p = write_wav(tmp_path / name / f"{i}.wav", chord(1.5 + 0.5 * i, 24_000, seed + i), 24_000, {"text": c})
            lines.append(json.dumps({"path": str(p), "caption": c}))
        (tmp_path / name / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref" / "manifest.jsonl"),
                 "--out", str(out), "--vggish", str(vggish_ref[2]), "--panns", str(panns_ref[2]), "--quiet"]) == 0
    emb = json.loads((out / "results.json").read_text())["embeddings"]

    def prepared(folder: str, i: int) -> np.ndarray:
        return audioldm_eval_waveform(read_audio(tmp_path / folder / f"{i}.wav")[0], 24_000)

    with torch.no_grad():
        frames = {f: [vggish_ref[0](vggish_input.waveform_to_examples(prepared(f, i), 16_000)).numpy()
                      for i in range(4)] for f in ("gen", "ref")}
        pann = {f: [panns_ref[0](torch.from_numpy(prepared(f, i))[None])["embedding"] for i in range(4)]
                for f in ("gen", "ref")}
        logits = {f: np.concatenate([panns_ref[0].fc_audioset(e).numpy() for e in v]) for f, v in pann.items()}
    e = {f: np.concatenate([x.numpy() for x in v]) for f, v in pann.items()}
    g_logits, r_logits = logits["gen"], logits["ref"][::-1]  # generated clip i has reference clip 3 - i's caption
    assert emb["vggish"]["fad"] == pytest.approx(
        frechet_distance(np.concatenate(frames["gen"]), np.concatenate(frames["ref"])), rel=1e-4)
    assert emb["vggish"]["frames_reference"] == sum(len(f) for f in frames["ref"])
    p = emb["panns"]
    assert p["fd"] == pytest.approx(frechet_distance(e["gen"], e["ref"]), rel=1e-4)
    assert p["kl_pairs"] == 4
    assert p["kl_softmax"] == pytest.approx(distributions.kl_divergence(g_logits, r_logits, "softmax"), rel=1e-4)
    assert p["kl_sigmoid"] == pytest.approx(distributions.kl_divergence(g_logits, r_logits, "sigmoid"), rel=1e-4)
    assert p["is_mean"] == pytest.approx(distributions.inception_score(logits["gen"], splits=4)[0], rel=1e-4)

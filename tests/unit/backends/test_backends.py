"""One conformance test run against every feature backend (backends/): frame counts for odd lengths, decode
lengths, features.json round trip, normalisation inverse, frame-rate agreement; plus the config/data rate check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.backends import BackendError, FeatureBackend, StreamStats, build_part, load_backend
from musicflow_jax.core import config
from musicflow_jax.data import loader as data
from musicflow_jax.testing.tiny_models import save_tiny_backend_weights

BACKENDS = ("chroma+mel", "hubert+encodec", "chroma+encodec", "hubert+mel")
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_backend_weights(tmp_path_factory.mktemp("be"))


def make_backend(name: str, w: dict[str, Path]) -> FeatureBackend:
    sem, ac = name.split("+")
    sem_spec = ({"kind": "hubert", "folder": str(w["hubert"]), "layer": 1, "kmeans": str(w["kmeans"])}
                if sem == "hubert" else {"kind": sem})
    ac_spec = {"kind": "encodec", "folder": str(w["encodec"])} if ac == "encodec" else {"kind": ac}
    b = FeatureBackend(build_part("semantic", sem_spec), build_part("acoustic", ac_spec))
    rng = np.random.default_rng(1)
    stats = {k: StreamStats(rng.normal(size=d).astype(np.float32), rng.uniform(0.5, 2, d).astype(np.float32))
             for k, d in b.dims.items()}
    return b.with_stats(stats)


def _audio(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.normal(size=len(t))).astype(np.float32)[None]


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_conformance(name: str, weights: dict[str, Path], tmp_path: Path) -> None:
    b = make_backend(name, weights)
    assert b.name == name
    assert b.rates == {"semantic": 50.0, "acoustic": 75.0}  # every part here: HuBERT/chroma 50 Hz, Encodec/mel 75 Hz
    assert b.rates["semantic"] == b.semantic.frame_rate and b.rates["acoustic"] == b.acoustic.frame_rate
    assert b.dims == {"semantic": b.semantic.dim, "acoustic": b.acoustic.dim}
    for seconds in (0.5, 1.013, 1.37):  # odd lengths: not a multiple of either hop
        x = _audio(seconds, b.sample_rate)
        n = x.shape[-1]
        z = b.encode_acoustic(x)
        hop = b.acoustic.hop_length
        assert b.sample_rate / hop == b.rates["acoustic"]
        assert z.shape == (1, math.ceil(n / hop), b.dims["acoustic"]) and np.isfinite(z).all()
        h, u = b.encode_semantic_units(x)
        assert h.shape[-1] == b.dims["semantic"] and u.shape == h.shape[:2]
        assert abs(h.shape[1] - seconds * b.rates["semantic"]) <= 1.5  # same duration as the acoustic stream
        assert abs(h.shape[1] / b.rates["semantic"] - z.shape[1] / b.rates["acoustic"]) <= 2 / b.rates["semantic"]
        y = b.decode(z)
        assert y.shape == (1, z.shape[1] * hop) and np.isfinite(y).all()
        # a clip at another sample rate is resampled by the backend: same frames as resampling first
        from musicflow_jax.core.audio import resample

        x44 = resample(x[0], b.sample_rate, 44_100)[None]
        np.testing.assert_allclose(b.encode_acoustic(x44, 44_100),
                                   b.encode_acoustic(resample(x44[0], 44_100, b.sample_rate)[None]), atol=1e-5)
        if b.semantic.kind == "hubert":  # units index the codebook; the stream is their centroid vectors
            assert (u >= 0).all() and (u < 8).all()
        else:
            assert (u == -1).all()
    # normalisation: inverse of each other, per channel with the stats
    for stream in ("semantic", "acoustic"):
        v = np.random.default_rng(2).normal(size=(2, 7, b.dims[stream])).astype(np.float32)
        np.testing.assert_allclose(b.denormalize(stream, b.normalize(stream, v)), v, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b.normalize(stream, b.stats[stream].mean[None, None]), 0.0, atol=1e-6)
    # features.json round trip: a model folder with its part files copied in, relative names
    b.save(tmp_path / "model")
    spec = json.loads((tmp_path / "model" / "features.json").read_text())
    assert all(not Path(str(v)).is_absolute() for part in ("semantic", "acoustic") for k, v in spec[part].items()
               if k in ("folder", "kmeans") and v)
    b2 = load_backend(tmp_path / "model")
    assert (b2.name, b2.rates, b2.dims, b2.sample_rate) == (b.name, b.rates, b.dims, b.sample_rate)
    x = _audio(1.013, b.sample_rate, seed=3)
    np.testing.assert_array_equal(b2.encode_acoustic(x), b.encode_acoustic(x))
    np.testing.assert_array_equal(b2.encode_semantic(x), b.encode_semantic(x))
    for stream in ("semantic", "acoustic"):
        np.testing.assert_array_equal(b2.stats[stream].mean, b.stats[stream].mean)
        np.testing.assert_array_equal(b2.stats[stream].std, b.stats[stream].std)


def test_bad_descriptions_are_one_line_errors(weights: dict[str, Path], tmp_path: Path) -> None:
    b = make_backend("chroma+mel", weights)
    d = b.to_json()
    with pytest.raises(BackendError, match="unknown acoustic part kind 'wavenet'"):
        FeatureBackend.from_json({**d, "acoustic": {"kind": "wavenet"}})
    with pytest.raises(BackendError, match="not a musicflow_jax.features/2"):
        FeatureBackend.from_json({k: v for k, v in d.items() if k != "format"})
    with pytest.raises(BackendError, match="recorded rates"):
        FeatureBackend.from_json({**d, "rates": {"semantic": 50.0, "acoustic": 50.0}})
    with pytest.raises(BackendError, match="no features.json"):
        load_backend(tmp_path)
    with pytest.raises(BackendError, match="stats have 3 channels"):
        b.with_stats({"semantic": StreamStats(np.zeros(3), np.ones(3)), "acoustic": b.stats["acoustic"]})


def test_config_rates_must_match_the_data(tmp_path: Path) -> None:
    index = {"rates": {"semantic": 50.0, "acoustic": 75.0}, "backend": {"name": "hubert+encodec"}}
    cfg = config.load(CONFIGS / "stage2_tiny.py", [f"data.path={tmp_path}"])
    data.check_rates(cfg, index)  # agrees: no error
    bad = config.apply_overrides(cfg, ["data.acoustic_rate=150.0"])
    with pytest.raises(config.ConfigError, match=r"'data.acoustic_rate' is 150 Hz .* are 75 Hz .*hubert\+encodec"):
        data.check_rates(bad, index)

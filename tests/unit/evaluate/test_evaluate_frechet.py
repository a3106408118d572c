"""Fréchet distance (musicflow_jax.evaluate.frechet) against the closed form and a plain scipy implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from musicflow_jax.evaluate.frechet import FrechetError, Gaussian, frechet_distance, frechet_distance_stats


def plain_fd(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula with scipy's sqrtm and nothing else (well-conditioned inputs only)."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def test_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)) = (1 + 0 + 6.25) + (1 + 9 - 6) + (4 + 1 - 4) + 0 = 12.25
    want = 12.25
    for method in ("eigh", "sqrtm"):
        got = frechet_distance_stats(Gaussian(mu1, np.diag(s1), 10), Gaussian(mu2, np.diag(s2), 10), method)
        assert got == pytest.approx(want, abs=1e-12)


def test_closed_form_for_commuting_full_covariances() -> None:
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T share eigenvectors: tr((S1 S2)^1/2) = sum sqrt(a b)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    want = float(np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b)))
    g1, g2 = Gaussian(mu1, q @ np.diag(a) @ q.T, 10), Gaussian(mu2, q @ np.diag(b) @ q.T, 10)
    for method in ("eigh", "sqrtm"):
        assert frechet_distance_stats(g1, g2, method) == pytest.approx(want, rel=1e-10)


def test_agrees_with_plain_scipy_and_is_symmetric() -> None:
    rng = np.random.default_rng(1)
    d = 64
    x = rng.normal(size=(800, d)) @ rng.normal(size=(d, d)) * 0.3
    y = rng.normal(size=(700, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.2
    ref = plain_fd(x, y)
    for method in ("eigh", "sqrtm", "gram"):
        assert frechet_distance(x, y, method) == pytest.approx(ref, rel=1e-6)
        assert frechet_distance(y, x, method) == pytest.approx(ref, rel=1e-6)


def test_self_distance_is_zero_and_singular_covariances_are_finite() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 32))
    scale = float(np.trace(np.cov(x, rowvar=False)))
    for method in ("eigh", "sqrtm", "gram"):
        assert abs(frechet_distance(x, x, method)) < 1e-8 * scale
    # fewer samples than dims: both covariances have rank <= 19 in 64 dimensions
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(15, 64)) + 0.5
    fd = {m: frechet_distance(a, b, m) for m in ("eigh", "sqrtm", "gram", "auto")}
    assert all(np.isfinite(v) for v in fd.values()), fd
    assert fd["eigh"] == pytest.approx(fd["sqrtm"], rel=1e-4)
    assert fd["gram"] == fd["auto"] == pytest.approx(fd["eigh"], rel=1e-9)  # both exact; auto picks gram here
    # N < d with dimensions on very different scales (like the proxy embedding): FD(X, X) stays 0 to round-off
    z = rng.normal(size=(6, 197)) * np.geomspace(0.01, 100.0, 197)
    assert abs(frechet_distance(z, z)) < 1e-10 * float(np.trace(np.cov(z, rowvar=False)))
    # exact value for rank-deficient but commuting covariances: zero-padded diagonal Gaussians
    s1, s2 = np.diag([2.0, 0.0, 0.0, 1.0]), np.diag([0.0, 3.0, 0.0, 1.0])
    g1, g2 = Gaussian(np.zeros(4), s1, 3), Gaussian(np.ones(4), s2, 3)
    assert frechet_distance_stats(g1, g2) == pytest.approx(4.0 + 2.0 + 3.0, abs=1e-12)  # 4 + 2 + 3 + (1 + 1 - 2)


def test_gram_method_on_wide_embeddings() -> None:
    """32 clips of a 512-d embedding (PANNs-like: far fewer clips than dimensions): the cross-Gram nuclear norm
    equals the eigendecomposition route, and FD(X, X) = 0."""
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=(32, 512)) @ rng.normal(size=(512, 512)) * 0.05, 0.0)
    y = np.maximum(rng.normal(size=(40, 512)) @ rng.normal(size=(512, 512)) * 0.05 + 0.1, 0.0)
    assert frechet_distance(x, y, "gram") == pytest.approx(frechet_distance(x, y, "eigh"), rel=1e-9)
    assert frechet_distance(y, x) == pytest.approx(frechet_distance(x, y), rel=1e-12)
    assert abs(frechet_distance(x, x)) < 1e-9 * float(np.trace(np.cov(x, rowvar=False)))


def test_one_line_errors() -> None:
    with pytest.raises(FrechetError, match="at least 2 embeddings"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(FrechetError, match="4 vs 3 dimensions"):
        frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(FrechetError, match="NaN"):
        frechet_distance(np.full((5, 4), np.nan), np.zeros((5, 4)))

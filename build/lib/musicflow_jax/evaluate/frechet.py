"""Fréchet distance between Gaussian fits of two embedding sets (FID / FAD / AudioLDM's "FD").

For N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982, J. Multivariate Anal. 12(3):450-455):

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

Conventions of the reference implementations (pytorch-fid's `calculate_frechet_distance`, which AudioLDM's
audioldm_eval `calculate_fid` and the `frechet_audio_distance` package copy): the Gaussian is fitted in float64
with the sample mean and the unbiased covariance (`np.cov(x, rowvar=False)`, ddof 1); the squared distance is
reported (no square root); `scipy.linalg.sqrtm(S1 @ S2)` is retried as `sqrtm((S1 + eps I)(S2 + eps I))`, eps 1e-6,
when it is not finite; an imaginary part from round-off is dropped only when the diagonal's is within 1e-3 of 0.

Three ways of computing tr((S1 S2)^(1/2)) are given:
- `method="sqrtm"`: the reference recipe above (O(d^3) Schur method, ~seconds at d = 512);
- `method="eigh"` (default): S1 S2 is similar to the symmetric PSD matrix A S2 A with A = S1^(1/2)
  (S1 S2 = A (A S2 A) A^-1 when S1 is invertible, and by continuity otherwise), so the trace is the sum of the
  square roots of the eigenvalues of A S2 A. Two symmetric eigendecompositions, no complex arithmetic; exact for
  singular covariances too (eigenvalues below numpy's rank tolerance set to 0, so FD(X, X) of N < d samples is
  0 to round-off, where sqrtm's null-space round-off leaves a negative FD). tests/test_evaluate_frechet.py checks
  that both agree to 1e-6 relative on full-rank covariances;
- `method="gram"` (from samples only, `frechet_distance` picks it when N M < d^2): the nuclear norm of the
  centred samples' cross-Gram matrix, exact, O(N M d) - 2048-d PANNs embeddings of 32 clips in milliseconds
  instead of two 2048 x 2048 eigendecompositions (seconds).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from musicflow_jax.errors import MusicFlowError

EPS = 1e-6  # the reference's diagonal offset when sqrtm(S1 S2) is not finite
IMAG_ATOL = 1e-3  # the reference's tolerance on the diagonal's imaginary part


class FrechetError(MusicFlowError):
    """Embedding sets or statistics that cannot be compared; the message names the input and the fix."""


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """A Gaussian fit of an embedding set: mean (d,), covariance (d, d), both float64, and the sample count."""

    mean: np.ndarray
    cov: np.ndarray
    n: int

    @classmethod
    def fit(cls, x_nd: np.ndarray, name: str = "embeddings") -> Gaussian:
        """Sample mean and unbiased covariance (ddof 1) of (N, d) embeddings, N >= 2."""
        x = np.asarray(x_nd, np.float64)
        if x.ndim != 2:
            raise FrechetError(f"{name}: expected an (N, d) array of embeddings, got shape {x.shape}")
        if x.shape[0] < 2:
            raise FrechetError(f"{name}: a covariance needs at least 2 embeddings, got {x.shape[0]}; evaluate more "
                               "clips")
        if not np.isfinite(x).all():
            raise FrechetError(f"{name}: embeddings contain NaN/inf ({int((~np.isfinite(x)).sum())} values); check "
                               "the audio and the embedding model")
        return cls(x.mean(0), np.atleast_2d(np.cov(x, rowvar=False)), int(x.shape[0]))


def _check(a: Gaussian, b: Gaussian) -> None:
    if a.mean.shape != b.mean.shape or a.cov.shape != b.cov.shape:
        raise FrechetError(f"embedding sizes differ: {a.mean.shape[0]} vs {b.mean.shape[0]} dimensions; both sets "
                           "must come from the same embedding model and layer")


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off removed: those below max(w) * n * machine eps (numpy's
    matrix_rank tolerance) are 0. Without this, the square roots of +-1e-13-size null-space eigenvalues add
    sqrt(1e-13)-size terms per null dimension (covariances of fewer samples than dimensions)."""
    tol = max(float(w.max()), 0.0) * w.size * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (round-off eigenvalues set to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, method: str = "eigh") -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2 (see the module docstring for the two methods)."""
    if method == "eigh":
        a = _psd_sqrt(np.asarray(s1, np.float64))
        m = a @ np.asarray(s2, np.float64) @ a
        w = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sqrt(_clip_eigenvalues(w)).sum())
    if method == "sqrtm":
        from scipy import linalg

        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * EPS
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=IMAG_ATOL):
                raise FrechetError(f"sqrtm(S1 S2) has an imaginary diagonal part of "
                                   f"{np.abs(np.diagonal(covmean).imag).max():.3g}: use method='eigh'")
            covmean = covmean.real
        return float(np.trace(covmean))
    raise FrechetError(f"method {method!r}: choose 'eigh' or 'sqrtm'")


def frechet_distance_stats(a: Gaussian, b: Gaussian, method: str = "eigh") -> float:
    """FD between two Gaussian fits (squared form, as the references report it)."""
    _check(a, b)
    diff = a.mean - b.mean
    tr = trace_sqrt_product(a.cov, b.cov, method)
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * tr)


def _trace_sqrt_gram(x_nd: np.ndarray, y_md: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) from the samples: with S1 = A^T A, S2 = B^T B (A, B the centred samples / sqrt(N - 1)),
    the non-zero eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T, so the trace is the sum of the singular values
    of the (N, M) matrix A B^T (its nuclear norm): exact, O(N M d), no d x d decomposition."""
    a = (x_nd - x_nd.mean(0)) / np.sqrt(x_nd.shape[0] - 1)
    b = (y_md - y_md.mean(0)) / np.sqrt(y_md.shape[0] - 1)
    return float(np.linalg.svd(a @ b.T, compute_uv=False).sum())


def frechet_distance(x_nd: np.ndarray, y_nd: np.ndarray, method: str = "auto") -> float:
    """FD between the Gaussian fits of embedding sets (N, d) and (M, d). `method` "auto": "gram" (the samples'
    cross-Gram nuclear norm, `_trace_sqrt_gram`) when N M < d^2 - few clips of a wide embedding, e.g. 32 PANNs
    2048-d clip embeddings - else "eigh"; or "eigh" / "sqrtm" / "gram" explicitly."""
    a, b = Gaussian.fit(x_nd, "first embedding set"), Gaussian.fit(y_nd, "second embedding set")
    d = a.mean.shape[0]
    if method == "auto":
        method = "gram" if a.n * b.n < d * d else "eigh"
    if method != "gram":
        return frechet_distance_stats(a, b, method)
    _check(a, b)
    x, y = np.asarray(x_nd, np.float64), np.asarray(y_nd, np.float64)
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * _trace_sqrt_gram(x, y))

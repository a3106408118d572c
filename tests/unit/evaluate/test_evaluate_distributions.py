"""KL divergence and Inception Score (musicflow_jax.evaluate.distributions): hand-computed values and parity with
audioldm_eval's PyTorch formulas (metrics/kl.py, metrics/isc.py) transcribed here as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from musicflow_jax.evaluate.distributions import (
    DistributionError,
    inception_score,
    kl_divergence,
    label_probs,
    pair_by_key,
)

BIG = 1000.0  # softmax([BIG, 0, ...]) is exactly one-hot in float64


def audioldm_kl(gen: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """audioldm_eval calculate_kl's two numbers (softmax, sigmoid) for paired logits."""
    f1, f2 = torch.from_numpy(gen), torch.from_numpy(ref)
    n = len(f1)
    soft = torch.nn.functional.kl_div((f1.softmax(dim=1) + 1e-6).log(), f2.softmax(dim=1), reduction="sum") / n
    sig = torch.nn.functional.kl_div((f1.sigmoid() + 1e-6).log(), f2.sigmoid(), reduction="sum") / n
    return float(soft), float(sig)


def audioldm_isc(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """audioldm_eval calculate_isc with samples_shuffle=True."""
    f = torch.from_numpy(logits)
    n = f.shape[0]
    f = f[np.random.RandomState(seed).permutation(n), :].double()
    p, log_p = f.softmax(dim=1), f.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        pc, lpc = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
        q = pc.mean(dim=0, keepdim=True)
        scores.append((pc * (lpc - q.log())).sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def test_kl_hand_computed_and_direction() -> None:
    ref = np.log([[0.5, 0.5]])
    gen = np.log([[0.25, 0.75]])
    # KL(ref || gen) = 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln(4/3); the reverse would be
    # 0.25 ln(0.5) + 0.75 ln(1.5) = 0.1308
    assert kl_divergence(gen, ref) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-5)
    assert kl_divergence(ref, gen) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-5)
    # mean over clips: a second pair with KL = ln 2 (ref one-hot [1, 0], gen uniform)
    ref2, gen2 = np.array([[BIG, 0.0]]), np.array([[0.0, 0.0]])
    both = kl_divergence(np.concatenate([gen, gen2]), np.concatenate([ref, ref2]))
    assert both == pytest.approx((0.5 * math.log(4 / 3) + math.log(2)) / 2, abs=1e-5)
    # sigmoid form: per class p_ref (log p_ref - log p_gen), no (1 - p) terms; logits 0 vs ln 3 -> 0.5 vs 0.75
    want = 2 * 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(np.full((1, 2), math.log(3)), np.zeros((1, 2)), "sigmoid") == pytest.approx(want, abs=1e-5)


def test_kl_of_identical_distributions_is_zero() -> None:
    x = np.random.default_rng(0).normal(size=(16, 527)) * 3
    for act in ("softmax", "sigmoid"):
        assert abs(kl_divergence(x, x, act)) < 527 * 1e-6  # only the eps offset remains


def test_kl_matches_audioldm_eval_formula() -> None:
    rng = np.random.default_rng(1)
    gen, ref = rng.normal(size=(40, 527)) * 2, rng.normal(size=(40, 527)) * 2
    soft, sig = audioldm_kl(gen, ref)
    assert kl_divergence(gen, ref, "softmax") == pytest.approx(soft, rel=1e-10)
    assert kl_divergence(gen, ref, "sigmoid") == pytest.approx(sig, rel=1e-10)
    np.testing.assert_allclose(label_probs(gen).sum(1), 1.0, rtol=1e-12)


def test_inception_score_one_hot_uniform_classes_is_class_count() -> None:
    for c in (2, 5, 10):
        logits = BIG * np.eye(c)[np.arange(4 * c) % c]
        mean, std = inception_score(logits, splits=1, seed=None)
        assert mean == pytest.approx(c, rel=1e-12) and std == 0.0
    # all clips the same class: IS = 1 (no diversity)
    assert inception_score(BIG * np.eye(4)[np.zeros(8, int)], splits=2)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_hand_computed_and_reference() -> None:
    # p1 = [0.5, 0.5], p2 = [1, 0]: p(y) = [0.75, 0.25], KL1 = 0.5 ln(4/3), KL2 = ln(4/3) -> IS = (4/3)^0.75
    logits = np.array([[0.0, 0.0], [BIG, 0.0]])
    assert inception_score(logits, splits=1, seed=None)[0] == pytest.approx((4 / 3) ** 0.75, rel=1e-12)
    x = np.random.default_rng(2).normal(size=(103, 527)) * 4
    ref = audioldm_isc(x)
    got = inception_score(x)  # the defaults are audioldm_eval's: 10 splits, shuffled with seed 2020
    assert got == pytest.approx(ref, rel=1e-10)


def test_pairing_and_errors() -> None:
    gen = {"b.wav": np.ones(3), "a.wav": np.zeros(3)}
    ref = {"a.wav": np.full(3, 2.0), "b.wav": np.full(3, 3.0), "c.wav": np.full(3, 4.0)}
    g, r, missing = pair_by_key(gen, ref)
    assert g[:, 0].tolist() == [0.0, 1.0] and r[:, 0].tolist() == [2.0, 3.0] and missing == ["c.wav"]
    with pytest.raises(DistributionError, match="shares a name"):
        pair_by_key({"x.wav": np.ones(3)}, ref)
    with pytest.raises(DistributionError, match="pair row by row"):
        kl_divergence(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(DistributionError, match="cannot fill 10 splits"):
        inception_score(np.zeros((5, 3)))
    with pytest.raises(DistributionError, match="choose one of"):
        label_probs(np.zeros((2, 3)), "relu")

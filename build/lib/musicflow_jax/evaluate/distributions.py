"""KL divergence and Inception Score over an audio classifier's label distributions, with the conventions of
AudioLDM's evaluation toolkit (haoheliu/audioldm_eval: metrics/kl.py, metrics/isc.py, eval.py) and audiocraft
(audiocraft/metrics/kld.py).

Inputs are a classifier's per-clip *logits* (N, C): PANNs CNN14's 527 AudioSet outputs before the sigmoid in
audioldm_eval (its "logits" layer), PaSST's in audiocraft.

KL (paired: clip i of the generated set is compared with the reference clip it was generated for; audioldm_eval
pairs by file name, clips without a partner are left out):

    KL_i = sum_c p_ref,c (log p_ref,c - log(p_gen,c + eps)),  eps = 1e-6,  0 log 0 = 0

i.e. KL(reference || generated) (`torch.nn.functional.kl_div(log(p_gen + eps), p_ref)`), reported as the mean over
pairs (audioldm_eval: reduction "sum" / N). Two versions are reported by audioldm_eval:
- "softmax" (`kullback_leibler_divergence_softmax`, the "KL" of AudioLDM/AudioLDM2 tables, "AudioGen use this
  formulation"): p = softmax(logits) over the C classes;
- "sigmoid" (`kullback_leibler_divergence_sigmoid`): p = sigmoid(logits) per class, plugged into the same sum
  (not a sum of Bernoulli KLs: the 1 - p terms are absent, exactly as in the reference).
audiocraft's PaSST KL is the softmax form with the same direction and eps ("kld" = "kld_pq"); each unpadded 10-s
segment of a clip is one row (segments of a generated clip and of its reference pair in order) and the mean is
over rows; it also reports the reverse direction ("kld_qp"). See musicflow_jax.evaluate.ast_tagger.

Inception Score (audioldm_eval `calculate_isc`, called with splits=10, samples_shuffle=True, rng_seed=2020): the
generated clips' logits are shuffled with `np.random.RandomState(2020).permutation(N)`, cut into `splits` chunks
[i N // splits, (i + 1) N // splits), and per chunk, with p(y|x) = softmax(logits) in float64 and p(y) the chunk's
mean of p(y|x):

    IS_chunk = exp(E_x KL(p(y|x) || p(y)))

reported as the mean and the (population, ddof 0) standard deviation over chunks. It needs no reference set.
Terms with p(y|x) = 0 count 0 (0 log 0 = 0); the reference gives NaN there (a class with probability exactly 0 in
every clip of a chunk, i.e. underflowing logits), elsewhere the two agree to round-off.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_softmax, rel_entr, softmax

from musicflow_jax.errors import MusicFlowError

KL_EPS = 1e-6  # audioldm_eval's and audiocraft's offset inside the log of the generated probabilities
IS_SPLITS = 10
IS_SEED = 2020
ACTIVATIONS = ("softmax", "sigmoid")


class DistributionError(MusicFlowError):
    """Label distributions that cannot be compared; the message names the input and the fix."""


def _logits(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DistributionError(f"{name}: expected (N, classes) classifier logits with N >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DistributionError(f"{name}: logits contain NaN/inf; check the audio and the classifier")
    return x


def label_probs(logits: np.ndarray, activation: str = "softmax") -> np.ndarray:
    """(N, C) logits -> (N, C) label probabilities: softmax over classes or sigmoid per class, float64."""
    x = _logits(logits, "logits")
    if activation == "softmax":
        return softmax(x, axis=1)
    if activation == "sigmoid":
        return expit(x)
    raise DistributionError(f"activation {activation!r}: choose one of {ACTIVATIONS}")


def kl_per_clip(ref_probs: np.ndarray, gen_probs: np.ndarray, eps: float = KL_EPS) -> np.ndarray:
    """(N,) KL_i = sum_c ref (log ref - log(gen + eps)) for paired rows (0 log 0 = 0), i.e. KL(ref || gen)."""
    p, q = np.asarray(ref_probs, np.float64), np.asarray(gen_probs, np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise DistributionError(f"paired label distributions must have the same (N, classes) shape, got reference "
                                f"{p.shape} and generated {q.shape}")
    return rel_entr(p, q + eps).sum(axis=1)


def kl_divergence(gen_logits: np.ndarray, ref_logits: np.ndarray, activation: str = "softmax",
                  eps: float = KL_EPS) -> float:
    """Mean over paired clips of KL(reference || generated) label distributions (see the module docstring)."""
    g, r = _logits(gen_logits, "generated logits"), _logits(ref_logits, "reference logits")
    if g.shape != r.shape:
        raise DistributionError(f"generated logits {g.shape} and reference logits {r.shape} must pair row by row: "
                                "evaluate one generated clip per reference clip (see pair_by_key)")
    return float(kl_per_clip(label_probs(r, activation), label_probs(g, activation), eps).mean())


def pair_by_key(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(generated (N, C), reference (N, C), keys not generated): rows paired by key in the reference's order, as
    audioldm_eval pairs files by name; reference keys without a generated clip are left out and listed."""
    keys = [k for k in ref if k in gen]
    missing = [k for k in ref if k not in gen]
    if not keys:
        raise DistributionError(f"no generated clip shares a name with the {len(ref)} reference clips (e.g. "
                                f"{next(iter(ref), '-')!r}): name each generated clip after its reference clip")
    return np.stack([gen[k] for k in keys]), np.stack([ref[k] for k in keys]), missing


def inception_score(gen_logits: np.ndarray, splits: int = IS_SPLITS, seed: int | None = IS_SEED
                    ) -> tuple[float, float]:
    """(mean, std) over `splits` chunks of exp(E_x KL(p(y|x) || p(y))); `seed` None keeps the clip order."""
    x = _logits(gen_logits, "generated logits")
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise DistributionError(f"inception score: {n} clips cannot fill {splits} splits; evaluate >= {splits} "
                                "clips or pass fewer splits")
    if seed is not None:
        x = x[np.random.RandomState(seed).permutation(n)]
    log_p = log_softmax(x, axis=1)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_c, log_p_c = p[lo:hi], log_p[lo:hi]
        with np.errstate(divide="ignore", invalid="ignore"):  # a class no clip of the chunk has: p(y) = 0
            log_marginal = np.log(p_c.mean(axis=0, keepdims=True))
            terms = np.where(p_c > 0, p_c * (log_p_c - log_marginal), 0.0)  # 0 log 0 = 0 (the reference gives NaN)
        scores.append(float(np.exp(terms.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))

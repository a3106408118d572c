"""Does a text encoder carry a caption's facts? Linear probes on its outputs, fitted on captions in the training
wordings and scored on captions in the held-out wordings (musicflow_jax/data/captions.py) with fact combinations
the fit never saw.

Each caption -> the masked mean of the encoder's token outputs (what any cross-attention can at least read) ->
ridge regression: one-hot key (24 classes) and instrument (argmax), log BPM (scored as the share within 4 %, the
evaluation's tempo tolerance). A fact the probe cannot read from held-out wordings is one the flow stages will
struggle to follow from text alone: tools/probe_text_encoder.py prints these shares per encoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from musicflow_jax.data import captions

KEYS = tuple(f"{t} {m}" for m in ("major", "minor") for t in
             ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B"))
EncodeFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]  # captions -> (emb (B, L, E), mask (B, L))


@dataclasses.dataclass(frozen=True)
class ProbeScores:
    key: float  # share of held-out captions whose key the probe names exactly (chance 1/24)
    tempo_4pct: float  # share whose BPM the probe estimates within 4 %
    instrument: float  # share whose instrument the probe names (chance 1/len(instruments))
    n: int


def random_facts(n: int, instruments: Sequence[str], seed: int, bpm_range: tuple[int, int] = (60, 121)
                 ) -> list[captions.Facts]:
    """n seeded fact draws: a key of KEYS, an integer BPM in bpm_range, an instrument."""
    rng = np.random.default_rng(seed)
    return [captions.Facts("bach", "chorale", KEYS[rng.integers(len(KEYS))], int(rng.integers(*bpm_range)),
                           instruments[rng.integers(len(instruments))]) for _ in range(n)]


def pooled(encode: EncodeFn, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """(N, E) masked mean of the token outputs of each text."""
    out = []
    for i in range(0, len(texts), batch):
        emb, mask = encode(list(texts[i: i + batch]))
        m = np.asarray(mask, np.float64)[..., None]
        out.append((np.asarray(emb, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1.0))
    return np.concatenate(out)


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> Callable[[np.ndarray], np.ndarray]:
    """Closed-form ridge regression on standardised features (intercept unpenalised); returns the predictor."""
    mu, sd = x.mean(0), x.std(0) + 1e-8
    z = (x - mu) / sd
    y_mu = y.mean(0)
    w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - y_mu))
    return lambda q: ((q - mu) / sd) @ w + y_mu


def probe(encode: EncodeFn, train: Sequence[captions.Facts], test: Sequence[captions.Facts],
          train_wordings: Sequence[str] = captions.TRAIN_WORDINGS,
          test_wordings: Sequence[str] = captions.HELDOUT_WORDINGS, lam: float = 10.0, seed: int = 0) -> ProbeScores:
    """Fit the probes on `train` facts in drawn training wordings, score them on `test` facts in the test wordings
    (the i-th test caption in wording i mod len)."""
    rng = np.random.default_rng(seed)
    x_tr = pooled(encode, [captions.draw(f, rng, train_wordings) for f in train])
    x_te = pooled(encode, [captions.render(test_wordings[i % len(test_wordings)], f) for i, f in enumerate(test)])
    instruments = sorted({f.instrument for f in (*train, *test)})

    def onehot(values: Sequence[str], classes: Sequence[str]) -> np.ndarray:
        return np.eye(len(classes))[[classes.index(v) for v in values]]

    key = ridge(x_tr, onehot([f.key for f in train], KEYS), lam)(x_te).argmax(1)
    inst = ridge(x_tr, onehot([f.instrument for f in train], instruments), lam)(x_te).argmax(1)
    bpm = np.exp(ridge(x_tr, np.log([[f.bpm] for f in train]), lam)(x_te)[:, 0])
    true_bpm = np.array([f.bpm for f in test], np.float64)
    return ProbeScores(key=float(np.mean([KEYS[k] == f.key for k, f in zip(key, test)])),
                       tempo_4pct=float(np.mean(np.abs(bpm / true_bpm - 1) <= 0.04)),
                       instrument=float(np.mean([instruments[k] == f.instrument for k, f in zip(inst, test)])),
                       n=len(test))

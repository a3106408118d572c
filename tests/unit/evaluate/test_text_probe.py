"""The text-encoder probes (evaluate/text_probe.py) against encoders whose answers are known: one that writes the
facts into its output is read perfectly from held-out wordings, one that outputs a constant reads nothing."""

from __future__ import annotations

import numpy as np

from musicflow_jax.encoders import meta
from musicflow_jax.evaluate import text_probe

INSTRUMENTS = ("a piano", "a church organ", "a string quartet")


def oracle(texts):
    """Two tokens per caption: [one-hot key, log2 bpm, one-hot instrument] and noise; mask both."""
    rng = np.random.default_rng(len(texts))
    emb = np.zeros((len(texts), 2, 30))
    for i, t in enumerate(texts):
        emb[i, 0, meta.parse_key(t)] = 2.0  # the mean over the two tokens halves it
        emb[i, 0, 24] = 2.0 * np.log2(meta.parse_bpm(t))
        emb[i, 0, 25 + [k for k, name in enumerate(INSTRUMENTS) if name.split(" ", 1)[1] in t.lower()][0]] = 2.0
        emb[i, 1, 28:] = rng.normal(size=2)
    return emb, np.ones((len(texts), 2), bool)


def constant(texts):
    return np.ones((len(texts), 3, 8)), np.ones((len(texts), 3), bool)


def test_probe_reads_what_the_encoder_carries():
    train = text_probe.random_facts(600, INSTRUMENTS, seed=0)
    test = text_probe.random_facts(200, INSTRUMENTS, seed=1)
    s = text_probe.probe(oracle, train, test, lam=1e-3)
    assert (s.key, s.tempo_4pct, s.instrument, s.n) == (1.0, 1.0, 1.0, 200)
    c = text_probe.probe(constant, train, test)
    # a constant predicts the fit's most frequent class and its mean log BPM: the share of test captions that match

    def majority(values: list[str], classes) -> str:
        return max(classes, key=lambda k: (values.count(k), -list(classes).index(k)))

    assert c.key == np.mean([f.key == majority([g.key for g in train], text_probe.KEYS) for f in test])
    assert c.instrument == np.mean([f.instrument == majority([g.instrument for g in train], sorted(INSTRUMENTS))
                                    for f in test])
    mean_bpm = np.exp(np.mean(np.log([f.bpm for f in train])))
    assert c.tempo_4pct == np.mean([abs(mean_bpm / f.bpm - 1) <= 0.04 for f in test])

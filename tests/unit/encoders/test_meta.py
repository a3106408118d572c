"""Explicit tempo / key conditioning (encoders/meta.py): the parser reads every caption wording back to its facts,
the tokens are the documented closed form, and training's text memory equals generation's for the same captions."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from musicflow_jax.core import config
from musicflow_jax.core.config import TextConfig
from musicflow_jax.data import captions
from musicflow_jax.data.corpus import ENSEMBLES, SOLO
from musicflow_jax.data.loader import Collate
from musicflow_jax.encoders import meta
from musicflow_jax.encoders.text import TextEncoder
from musicflow_jax.evaluate.text_probe import KEYS, random_facts
from musicflow_jax.training.flow_step import with_text_emb

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_every_wording_parses_back_to_its_facts():
    facts = random_facts(40, sorted({*SOLO, *ENSEMBLES}), seed=5)
    for w in captions.TRAIN_WORDINGS + captions.HELDOUT_WORDINGS:
        for f in facts:
            text = captions.render(w, f)
            assert meta.parse_bpm(text) == f.bpm and meta.parse_key(text) == KEYS.index(f.key), text
    # every key name: mode * 12 + tonic pitch class
    assert [meta.parse_key(f"in {k}") for k in KEYS] == list(range(24))


@pytest.mark.parametrize(("text", "bpm", "key"), [
    ("Bb major at 120 bpm", 120.0, 10), ("E-flat minor, tempo 96", 96.0, 15), ("quarter note = 72, C# minor", 72.0, 13),
    ("a piano in F\u266f major, metronome at 66", 66.0, 6), ("piano at 90", 90.0, None),
    ("Symphony No. 5 in C minor", None, 12), ("in a minor mood, 4 voices", None, None),
    ("2 pianos, 60 bpm, 1200 notes", 60.0, None), ("solo cello, 1000 bpm", None, None)])
def test_free_text(text: str, bpm: float | None, key: int | None):
    assert (meta.parse_bpm(text), meta.parse_key(text)) == (bpm, key)


def test_tokens_closed_form_and_masks():
    tok, has = meta.tokens(jnp.array([120.0, 0.0]), jnp.array([18, -1]), 64)
    tok, has = np.asarray(tok), np.asarray(has)
    np.testing.assert_array_equal(has, [[True, True], [False, False]])
    x = 1.0  # log2(120 / 60)
    phase = 2 * np.pi * x * meta.FREQS
    np.testing.assert_allclose(tok[0, 0, :17], np.concatenate([[x], np.sin(phase), np.cos(phase)]), atol=1e-5)
    assert tok[0, 0, 62] == 1 and tok[0, 0, 63] == 0 and not tok[0, 0, 17:62].any()
    key = tok[0, 1]  # F sharp minor = 18: one-hots of 18 / 24, tonic 6 / 12, mode 1 / 2; marker at -1
    assert np.flatnonzero(key).tolist() == [18, 24 + 6, 36 + 1, 63]
    with pytest.raises(ValueError, match="text.dim >= 64"):
        meta.tokens(jnp.array([120.0]), jnp.array([0]), 32)


def test_training_text_memory_equals_generation_for_the_same_captions():
    """The loader parses and with_text_emb appends inside the train step; TextEncoder.__call__ does it in
    generation: the same (B, L + 2, E) memory and mask."""
    cfg = config.load(CONFIGS / "stage1_tiny.py", ["text.dim=64", "text.meta=true"])
    enc = TextEncoder.load(cfg.text, cfg.train.seed)
    texts = ["A Bach chorale in G minor at 72 BPM played on a church organ", "piano, no tempo, no key",
             "Tonality E flat major / tempo 104 / choir / Bach"]
    emb, mask = enc(texts)
    assert emb.shape == (3, cfg.text.max_len + 2, 64)
    np.testing.assert_array_equal(mask[:, -2:], [[True, True], [False, False], [True, True]])
    examples = [{"x1": np.zeros((4, 2), np.float32), "caption": t} for t in texts]
    batch = with_text_emb({k: jnp.asarray(v) for k, v in Collate(cfg)(examples).items()}, enc.apply, enc.state)
    np.testing.assert_allclose(np.asarray(batch["text_emb"]), np.asarray(emb), atol=1e-5)  # jit vs eager
    np.testing.assert_array_equal(np.asarray(batch["text_mask"]), mask)
    assert "text_bpm" not in batch and "text_key" not in batch
    # the marks flow.p_drop_caption uses: the last two tokens are the tempo / key ones
    np.testing.assert_array_equal(np.asarray(batch["text_is_meta"]),
                                  np.broadcast_to(np.arange(cfg.text.max_len + 2) >= cfg.text.max_len, mask.shape))
    plain, plain_mask = TextEncoder.load(TextConfig(checkpoint="", max_len=cfg.text.max_len, dim=64))(texts)
    np.testing.assert_allclose(np.asarray(emb[:, :-2]), np.asarray(plain), atol=1e-6)  # the caption's part unchanged
    with pytest.raises(config.ConfigError, match="text.meta.*text.dim >= 64, got 32"):
        config.load(CONFIGS / "stage1_tiny.py", ["text.meta=true"])
    with pytest.raises(config.ConfigError, match="flow.p_drop_caption.*text.meta=true"):
        config.load(CONFIGS / "stage1_tiny.py", ["flow.p_drop_caption=0.3"])

"""Captions from facts (musicflow_jax/data/captions.py): the wordings state the facts, the held-out set shares no
wording with training, facts travel manifest -> records -> loader, and varied wordings keep the loader exact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.core import config
from musicflow_jax.data import captions, records
from musicflow_jax.data import loader as data
from musicflow_jax.data.manifest import Entry, read_manifest, write_manifest
from musicflow_jax.encoders import meta
from musicflow_jax.evaluate import music
from musicflow_jax.testing.records import FACTS, fake_clip, write_fake_dataset

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
FACT = captions.Facts("bach", "chorale", "F sharp minor", 104, "a string quartet")


def test_every_wording_states_every_fact_and_heldout_shares_none_with_training():
    heldout = captions.HELDOUT_WORDINGS
    assert len(heldout) >= 32 and len(set(heldout)) == len(heldout)
    assert not captions.shapes(captions.TRAIN_WORDINGS) & captions.shapes(captions.HELDOUT_WORDINGS)
    for w in captions.TRAIN_WORDINGS + captions.HELDOUT_WORDINGS:
        text = captions.render(w, FACT)
        assert "F sharp minor" in text and "104" in text and "string quartet" in text.lower(), text
        assert not text[0].islower() and "{" not in text
    # the template is what build_corpus always wrote, and what the evaluation parses its ground truth from
    t = captions.template_caption(FACT)
    assert t == "A Bach chorale in F sharp minor at 104 BPM played on a string quartet"
    assert music.parse_key(t) == music.Key(6, "minor") and music.parse_bpm(t) == 104.0
    # the i-th clip's paraphrase is the i-th held-out wording: 34 clips, 34 different sentences
    assert len({captions.heldout_caption(FACT, i) for i in range(len(captions.HELDOUT_WORDINGS))}) == \
        len(captions.HELDOUT_WORDINGS)


def test_draw_is_seeded_and_uses_every_training_wording():
    def draws(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        return [captions.draw(FACT, rng) for _ in range(400)]

    assert draws(1) == draws(1) and draws(1) != draws(2)
    assert set(draws(1)) == {captions.render(w, FACT) for w in captions.TRAIN_WORDINGS}


def test_facts_validation_names_the_field():
    good = FACT.to_json()
    assert captions.Facts.from_json(good) == FACT and captions.Facts.from_json({**good, "bpm": 104.4}).bpm == 104
    for bad, match in (({k: v for k, v in good.items() if k != "key"}, r"lack \['key'\]"),
                       ({**good, "bpm": "fast"}, "bpm must be a number"), ({**good, "bpm": True}, "bpm must be"),
                       ({**good, "instrument": " "}, r"\['instrument'\] must be non-empty"),
                       ([1], "must be an object")):
        with pytest.raises(captions.CaptionError, match=match):
            captions.Facts.from_json(bad, "manifest.jsonl:3")


def test_manifest_and_records_carry_facts(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    write_manifest(tmp_path / "m.jsonl", [Entry(str(wav), captions.template_caption(FACT), facts=FACT),
                                          Entry(str(wav), "no facts here")])
    rows = (tmp_path / "m.jsonl").read_text().splitlines()
    assert json.loads(rows[0])["facts"] == FACT.to_json() and "facts" not in json.loads(rows[1])
    entries, problems = read_manifest(tmp_path / "m.jsonl")
    assert not problems and entries[0].facts == FACT and entries[1].facts is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({"path": "a.wav", "caption": "x", "facts": {"key": "C major"}})
                                        + "\n")
    entries, problems = read_manifest(tmp_path / "bad.jsonl")
    assert not entries and problems[0].where.endswith("bad.jsonl:1") and "facts lack" in problems[0].reason

    clip = fake_clip(1, 8, 4, 20, facts=True)
    assert records.decode_clip(records.encode_clip(clip)).facts == FACTS[1]
    assert records.decode_clip(records.encode_clip(fake_clip(1, 8, 4, 20))).facts is None


def cfg_for(*overrides: str) -> config.Config:
    return config.load(CONFIGS / "stage1_tiny.py", list(overrides))


def test_varied_captions_are_drawn_from_the_facts_and_resume_exactly(tmp_path):
    write_fake_dataset(tmp_path, n_train=12, n_valid=4, shards=2, facts=True)
    base = ["data.source=arrayrecord", f"data.path={tmp_path}", "data.batch_size=4"]
    varied = cfg_for(*base, "data.captions=varied")
    # the example map: a wording of the clip's own facts, drawn from its rng; no rng (eval) = the caption as written
    ex = data.ToExample(varied, None)
    clip = fake_clip(2, 32, 16, 60, facts=True)
    drawn = {ex.random_map(clip, np.random.default_rng(s))["caption"] for s in range(200)}
    assert drawn == {captions.render(w, FACTS[2]) for w in captions.TRAIN_WORDINGS}
    assert data.ToExample(varied, None, random_crop=False).random_map(clip, np.random.default_rng(0))["caption"] == \
        clip.caption
    # the crops are the as-written run's (the wording is drawn after the crop), the token ids are not; a resumed
    # iterator continues exactly
    plain = cfg_for(*base)
    it = iter(data.make_dataset(varied, "train", process_index=0, process_count=1, seed=3))
    a = [next(it) for _ in range(9)]
    it = iter(data.make_dataset(plain, "train", process_index=0, process_count=1, seed=3))
    b = [next(it) for _ in range(9)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["x1"], y["x1"])
    assert any(not np.array_equal(x["text_ids"], y["text_ids"]) for x, y in zip(a, b))
    it = iter(data.make_dataset(varied, "train", process_index=0, process_count=1, seed=3, start_batch=5))
    for want in a[5:]:
        got = next(it)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_varied_captions_need_facts_and_on_the_fly_text(tmp_path):
    write_fake_dataset(tmp_path, n_train=4, n_valid=4, shards=1)
    cfg = cfg_for("data.source=arrayrecord", f"data.path={tmp_path}", "data.batch_size=2", "data.captions=varied")
    with pytest.raises(records.RecordError, match=r"clip 'c\d+' .* has no facts but data.captions=varied"):
        next(iter(data.make_dataset(cfg, "train", process_index=0, process_count=1)))
    with pytest.raises(config.ConfigError, match="data.captions.*as_written | varied"):
        cfg_for("data.captions=random")
    with pytest.raises(config.ConfigError, match="data.captions.*text.precomputed=false"):
        cfg_for("data.captions=varied", "text.precomputed=true")


def test_beat_grid_follows_the_drawn_caption_and_the_crop():
    """model.beat: each example's grid is the drawn caption's tempo, in phase with the audio's beats (multiples of
    60 / bpm from the source's start: the segment's start plus the crop's), zero on padding and for a caption naming
    no tempo."""
    cfg = cfg_for("data.captions=varied", "model.beat=true")
    ex = data.ToExample(cfg, None)
    clip = dataclasses.replace(fake_clip(2, 32, 16, 300, ramp=True, facts=True), start=3.7)
    bpm, rate = FACTS[2].bpm, cfg.data.semantic_rate
    starts = set()
    for s in range(20):
        out = ex.random_map(clip, np.random.default_rng(s))
        start = int(out["x1"][0, 0])  # ramp: channel 0 holds the frame index (no index given: not normalised)
        starts.add(start)
        mask = out["frame_mask"]
        b = (3.7 + (start + np.arange(cfg.data.frames)) / rate) * bpm / 60  # beats since the source's start
        want = np.stack([np.cos(2 * np.pi * b), np.sin(2 * np.pi * b), np.cos(4 * np.pi * b), np.sin(4 * np.pi * b),
                         np.ones_like(b)], -1) * mask[:, None]
        assert meta.parse_bpm(out["caption"]) == bpm
        np.testing.assert_allclose(out["beat"], want, atol=1e-5)
    assert len(starts) > 10
    # a clip whose caption names no tempo (as written, no facts): no grid
    plain = data.ToExample(cfg_for("model.beat=true"), None)
    out = plain.random_map(dataclasses.replace(fake_clip(0, 32, 16, 300), caption="a chorale on an organ"),
                           np.random.default_rng(0))
    assert out["beat"].shape == (cfg.data.frames, 5) and not out["beat"].any()


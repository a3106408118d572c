"""The bundled model (musicflow_jax/assets/bundled): it loads with no arguments, matches its own description, and
its outputs follow the text: audio for two prompts that differ only in the instrument is told apart by a
classifier trained on the corpus' own features (per-clip mean of the codec latents of the rendered corpus), and
generated clips play notes in the caption's key, also when it is worded as no training caption was, and faster
when a faster tempo is asked (floors set below what was measured on the shipped model).

The slow tests' generations run once, in one child process (this file run as a script) at XLA's default optimisation
level: they are runtime-bound, and the suite's -O0 (tests/conftest.py) runs them ~2.8x slower."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from musicflow_jax.data import captions
from musicflow_jax.encoders import meta
from musicflow_jax.encoders.text import MINILM, MINILM_SHA256
from musicflow_jax.evaluate.proxy import InstrumentClassifier
from musicflow_jax.inference.cascade import MusicFlow, StageSettings
from musicflow_jax.inference.model_folder import BUNDLED
from musicflow_jax.testing import child

# Fixed before looking at any generated audio: the two most frequent classes of different families.
PAIR = ("a string quartet", "a harpsichord")
CAPTION = "A Bach chorale in G major at 90 BPM played on {}"
PER_CLASS = 8
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mf() -> MusicFlow:
    return MusicFlow.load()  # no checkpoint: the bundled model


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("bundled") / "generated.npz"
    proc = child.run_script(__file__, [str(out)], ROOT, timeout=900)  # XLA's defaults, not the suite's -O0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def test_bundle_is_complete_and_consistent(mf: MusicFlow) -> None:
    for name in ("stage1.safetensors", "stage2.safetensors", "features.json", "MODEL_CARD.md",
                 "corpus_features.npz", "train_report.json", "text_encoder/config.json"):
        assert (BUNDLED / name).is_file(), name
    size_mb = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file()) / 2**20
    assert size_mb < 30, size_mb  # issue 24's budget for assets in git
    # the text encoder is all-MiniLM-L6-v2, named by source and sha256 (its 90 MB are not copied), with the tempo /
    # key tokens; the stages read captions in many wordings
    assert not (BUNDLED / "text_encoder" / "model.safetensors").exists()
    ref = json.loads((BUNDLED / "text_encoder" / "config.json").read_text())["extra"]["weights_reference"]
    assert ref == {"source": MINILM, "sha256": MINILM_SHA256}
    assert mf.stages[0].text.family == "bert" and all(st.cfg.text.meta for st in mf.stages)
    assert all(st.cfg.data.captions == "varied" for st in mf.stages)
    spec = json.loads((BUNDLED / "features.json").read_text())
    st1, st2 = mf.stages
    assert spec["name"] == mf.backend.name == "chroma+encodec"
    meta = json.loads((BUNDLED / spec["acoustic"]["folder"] / "config.json").read_text())
    assert meta["extra"]["trained_by"] == "musicflow_jax.training.codec_trainer"  # trained here, as an Encodec folder
    assert st1.cfg.model.stage == "semantic" and st2.cfg.model.stage == "acoustic"
    assert st2.cfg.model.cond_dim == st1.cfg.model.feature_dim == mf.backend.dims["semantic"]
    assert st2.cfg.model.feature_dim == mf.backend.dims["acoustic"]
    report = json.loads((BUNDLED / "train_report.json").read_text())
    for stage in ("stage1", "stage2_first"):  # it was trained: the loss went down
        assert report[stage]["last_loss"] < 0.6 * report[stage]["first_loss"], report[stage]
    # the decoder's second pass started from the first's export and went lower still on the validation clips
    assert report["decoder_second"]["last_valid_loss"] < report["decoder"]["last_valid_loss"], report["decoder_second"]
    # stage 2's second and third passes each started from the previous one's export and went lower still
    assert (report["stage2"]["last_loss"] < report["stage2_second"]["last_loss"] < report["stage2_first"]["last_loss"]
            ), (report["stage2_first"], report["stage2_second"], report["stage2"])
    # its few-step students (turbo/: float16 files of model.interval stages sampling 2 average-velocity jumps with the
    # teacher's guidance in their weights), drafts' default
    assert mf.turbo is not None
    for i in (1, 2):
        assert {v.dtype for v in load_file(BUNDLED / "turbo" / f"stage{i}.safetensors").values()} == {
            np.dtype("float16")}
    for student, teacher in zip(mf.turbo, mf.stages):
        assert student.cfg.model.interval and student.settings == StageSettings(steps=2, solver="average",
                                                                                 cfg_scale=1.0)
        assert student.cfg.distill.cfg_scale == teacher.settings.cfg_scale
        assert student.cfg.distill.method == report["turbo"][student.name]["method"] == "meanflow"


def corpus_classifier(pair: tuple[str, str]) -> tuple[InstrumentClassifier, float]:
    d = np.load(BUNDLED / "corpus_features.npz")
    x, y = d["mean_acoustic"], d["instrument"]
    m = np.isin(y, pair)
    clf = InstrumentClassifier().fit(x[m], y[m])
    return clf, clf.accuracy(x[m], y[m])


def generate_instrument_pair(mf: MusicFlow) -> np.ndarray:
    """PER_CLASS clips of each instrument of PAIR, one context window long, at the shipped CFG and temperature with 8
    midpoint steps per stage, re-encoded: the per-clip mean of the generated audio's codec latents."""
    texts = [CAPTION.format(inst) for inst in PAIR for _ in range(PER_CLASS)]
    s1, s2 = (dataclasses.replace(st.settings, steps=8, solver="midpoint") for st in mf.stages)
    window_s = mf.stages[1].window / mf.stages[1].rate
    g = mf.generate(texts, duration=window_s, seed=0, stage1=s1, stage2=s2, progress=False)  # the shipped CFG
    return mf.backend.encode_acoustic(g.audio).mean(axis=1)  # re-encode the generated audio


@pytest.mark.slow
def test_instrument_prompts_differ_as_the_corpus_does(generated: dict[str, np.ndarray]) -> None:
    clf, train_acc = corpus_classifier(PAIR)
    assert train_acc > 0.95  # the feature separates the two instruments in the real corpus
    pred = clf.predict(generated["instrument_features"])
    truth = np.asarray([inst for inst in PAIR for _ in range(PER_CLASS)])
    acc = float((pred == truth).mean())
    print(f"bundled model: instrument accuracy on generated audio {acc:.3f} (chance 0.5), pair {PAIR}")
    assert acc >= 0.875, (acc, list(pred))  # measured 1.000


# The eight most frequent keys of the rendered corpus, one caption each, generated once for the key/notes test.
KEYS = ("A minor", "G major", "C major", "G minor", "D major", "F major", "A major", "B flat major")
KEY_CAPTION = "A Bach chorale in {} at 90 BPM played on a string quartet"
# measured on the shipped model (stage 2 at temperature 0.6, 2026-12-05): key exact 0.875 / MIREX 0.94 (chance 0.04 /
# ~0.08), note presence 1.000; at temperature 1 0.75 / 0.85 (the previous bundled model: MIREX 0.19); with the stage 1
# trained with caption dropout (2026-12-05): 0.875 / 0.94, note presence 1.000; with stage 2's third pass (2026-12-05):
# 0.875 / 0.94, note presence 1.000; with the codec decoder's second pass (2026-12-05): 0.875 / 0.94, notes 1.000
KEY_FLOORS = {"key_exact": 0.75, "key_mirex": 0.8, "note_presence": 0.9}


# the few-step students (turbo/: 2 jumps per window and stage), measured on the shipped ones (the beat-grid stage 1's
# student, 2026-12-04): template key exact 0.75 / MIREX 0.85, held-out wordings 0.875 / 0.91, note presence 1.0;
# measured again 2026-12-05 (this file, seed 0): template 0.875 / 0.91, held-out 0.875 / 0.91; the student of the
# stage 1 trained with caption dropout (2026-12-05): template 0.875 / 0.91, held-out 0.75 / 0.79, note presence 1.0;
# with the stage-2 student distilled from stage 2's third pass (2026-12-05): template 1.0 / 1.0, held-out 1.0 / 1.0;
# distilled again for 300 steps, with the codec decoder's second pass (2026-12-05): template 1.0 / 1.0, held-out
# 0.875 / 0.91
TURBO_FLOORS = {"template": {"key_exact": 0.75, "key_mirex": 0.8, "note_presence": 0.9},
                "held-out": {"key_exact": 0.75, "key_mirex": 0.8, "note_presence": 0.9}}


TEMPO_CAPTION = "A Bach chorale in G major at {} BPM played on a piano"
TEMPI = (60, 66, 76, 84, 96, 104, 112, 120)  # the corpus' range (60-120 BPM)
# measured on the shipped model (8 clips each, 8 midpoint steps; stage 1 with the beat grid, 2026-12-04): template key
# exact 0.75 / MIREX 0.85, held-out wordings 0.875 / 0.94 (stage 2 trained on: 0.875 / 0.94 both); the stage-1
# streams within 4 % of the caption's tempo in 0.875 (7 of 8; on a piano 8 of 8). The audio's tempo, read by the
# suite's onset-autocorrelation estimator (stage 2 trained on, 2026-12-04; seeds 0-2): on a piano 8 of 8 within 4 %
# and rank correlation of asked and estimated 1.0 at every seed (the first-pass stage 2 the same); on a harpsichord
# 7 of 8, rank 1.0 (first pass 0.25-0.88, 0.48-1.0). On a string quartet (this test's caption until then) the
# estimator reads the sustained instruments' extra attacks (MODEL_CARD.md): rank -0.98 to 0.31 over seeds 0-5 (the
# first-pass stage 2 -0.69 to 0.71), so the audio test asks for a piano. With stage 2 at temperature 0.6 (2026-12-05,
# seed 0): held-out wordings 0.75 / 0.81, notes 1.0; the stage-1 streams 8 of 8 within 4 %; on a piano 8 of 8, rank 1.0.
# With the stage 1 trained with caption dropout (2026-12-05): held-out wordings 0.75 / 0.84, notes 1.0; streams 8 of 8;
# on a piano 8 of 8, rank 1.0. With stage 2's third pass (2026-12-05): held-out wordings 0.625 / 0.75 (the suite's 32
# held-out-wording clips rose, 0.562 -> 0.594 key exact at seed 0; these 8 lost one clip), notes 1.0; streams 8 of 8;
# on a piano 8 of 8, rank 1.0. With the codec decoder's second pass (2026-12-05): held-out wordings 0.625 / 0.75, notes
# 1.0; streams 8 of 8; on a piano 8 of 8, rank 1.0; the instrument pair 1.000
PARAPHRASE_FLOORS = {"key_exact": 0.5, "key_mirex": 0.65, "note_presence": 0.9}
TEMPO_FLOOR_RANK = 0.9
TEMPO_FLOOR_AUDIO = 0.75  # share of clips whose audio is within 4 % of the caption's tempo
TEMPO_FLOOR_STREAM = 0.75


def generate_clips(mf: MusicFlow, captions: list[str], streams: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One 8-s clip per caption at the shipped CFG and temperature with 8 midpoint steps per stage (half the default
    NFE); with `streams` also the stage-1 streams (denormalised, as the evaluation suite scores them)."""
    s1, s2 = (dataclasses.replace(st.settings, steps=8, solver="midpoint") for st in mf.stages)
    g = mf.generate(captions, duration=8.0, seed=0, stage1=s1, stage2=s2, progress=False)
    return (g.audio, mf.backend.denormalize("semantic", g.semantic)) if streams else g.audio


def key_captions() -> list[str]:
    return [KEY_CAPTION.format(k) for k in KEYS]


def paraphrase_captions() -> list[str]:
    """KEYS' captions in held-out wordings (musicflow_jax/data/captions.py: no training caption is worded so)."""
    return [captions.heldout_caption(captions.Facts("bach", "chorale", k, 90, "a string quartet"), i)
            for i, k in enumerate(KEYS)]


def tempo_captions() -> list[str]:
    return [TEMPO_CAPTION.format(bpm) for bpm in TEMPI]


def key_scores(texts: list[str], audio: np.ndarray, sr: int) -> dict[str, float]:
    from musicflow_jax.evaluate import music

    mirex = [music.mirex_key_score(music.Key(k % 12, music.MODES[k // 12]), music.estimate_key(a, sr))
             for k, a in zip([meta.parse_key(t) for t in texts], audio, strict=True)]
    return {"key_exact": float(np.mean(np.equal(mirex, 1.0))), "key_mirex": float(np.mean(mirex)),
            "note_presence": float(np.mean([music.note_presence(a, sr) for a in audio]))}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["stages", "turbo"])
@pytest.mark.parametrize("wording", ["template", "held-out"])
def test_generated_clips_play_notes_in_the_captions_key(generated: dict[str, np.ndarray], wording: str,
                                                        model: str) -> None:
    """The evaluation suite's key estimator (Krumhansl-Schmuckler on the clips' chroma) scored against the caption's
    key (MIREX weighting) and the share of pitched frames, for KEYS in the training template and in sentences no
    training caption uses, from the stages (8 midpoint steps) and from the few-step students (turbo/: 2 jumps);
    floors below what the shipped model measured (MODEL_CARD.md), above what a noise texture (the previous bundled
    models: note presence 0.70, key near chance) gives."""
    texts, audio, floors = ((key_captions(), "key_audio", KEY_FLOORS) if wording == "template" else
                            (paraphrase_captions(), "paraphrase_audio", PARAPHRASE_FLOORS))
    if model == "turbo":
        audio, floors = f"turbo_{audio}", TURBO_FLOORS[wording]
    got = key_scores(texts, generated[audio], int(generated["sample_rate"]))
    print(f"bundled model ({model}), {len(KEYS)} captions ({wording} wording) x 8 s: {got}")
    for name, floor in floors.items():
        assert got[name] >= floor, (name, got, floors)


@pytest.mark.slow
def test_generated_tempo_follows_the_caption(generated: dict[str, np.ndarray]) -> None:
    """The evaluation suite's tempo estimators on clips asked for at TEMPI: the stage-1 stream's tempo (read off its
    onsets, evaluate/model.py) within 4 % of the caption's, and the audio's (a piano: see TEMPI's comment) within 4 %
    of it, faster asked, faster played (rank correlation of asked and estimated tempi)."""
    from musicflow_jax.evaluate import music
    from musicflow_jax.evaluate.model import stream_tempo

    sr = int(generated["sample_rate"])
    est = np.array([music.estimate_tempo(a, sr) for a in generated["tempo_audio"]])
    within = float(np.mean([music.tempo_class(e, b) == "within_4pct" for e, b in zip(est, TEMPI, strict=True)]))
    rank = float(np.corrcoef(np.argsort(np.argsort(TEMPI)), np.argsort(np.argsort(est)))[0, 1])
    streams = [stream_tempo(x, 50.0) for x in generated["tempo_streams"]]
    in_stream = float(np.mean([music.tempo_class(e, b) == "within_4pct" for e, b in zip(streams, TEMPI, strict=True)]))
    print(f"bundled model: tempi asked {TEMPI}, estimated {np.round(est, 1).tolist()}: within 4 % {within:.3f}, "
          f"rank correlation {rank:.3f}; stage-1 streams {np.round(streams, 1).tolist()}: within 4 % {in_stream:.3f}")
    assert in_stream >= TEMPO_FLOOR_STREAM, (in_stream, streams)
    assert rank >= TEMPO_FLOOR_RANK, (rank, est.tolist())
    assert within >= TEMPO_FLOOR_AUDIO, (within, est.tolist())


def test_bundled_long_form_has_no_seams(mf: MusicFlow) -> None:
    """Around each window seam the streams jump no more than they do elsewhere. Stage 1 follows the caption's beat
    grid (90 BPM: a beat every 33.3 frames at 50 Hz, and the seams at frames 200 and 300 are beats), so its biggest
    jumps are its onsets: frames within 2 of a beat are compared with the jumps within 2 of other beats, the rest with
    the rest."""
    from musicflow_jax.core import beat
    from musicflow_jax.inference import longform

    s = StageSettings(steps=8, solver="midpoint", cfg_scale=3.0)
    g = mf.generate([CAPTION.format("a church organ")], duration=12.0, seed=0, stage1=s, stage2=s, progress=False)
    assert g.audio.shape == (1, 12 * mf.sample_rate)
    for x, st in ((g.semantic, mf.stages[0]), (g.acoustic, mf.stages[1])):
        wins = longform.plan_windows(x.shape[1], st.window, st.window // 2)
        assert len(wins) == 5  # 12 s from 4-s windows
        b = beat.beat_positions(np.array([90.0]), 0.0, x.shape[1], st.rate)[0]  # jump i rises into frame i + 1
        on_beat = np.abs(b[1:] - np.round(b[1:])) * 60 * st.rate / 90 <= 2
        for kind, frames in (("on a beat", on_beat), ("off the beats", ~on_beat)):
            at, elsewhere = longform.seam_jumps(x, [e for _, e in wins[:-1]], frames)
            print(f"{st.name} {kind}: seam jump {at:.3f} vs 99th percentile elsewhere {elsewhere:.3f}")
            assert at <= 1.5 * elsewhere, (st.name, kind, at, elsewhere)


def test_bundled_codec_was_trained_with_the_configs_in_configs() -> None:
    """The bundled codec is configs/codec_corpus.py's run with its decoder trained on twice by configs/codec_decoder.py
    (the recipe's "decoder" and "decoder_second" steps: tools/train_bundled.py), all but the paths the recipe sets; its
    encoder, which the features and both stages read, is the first run's."""
    from musicflow_jax.training import codec_config

    meta = json.loads((BUNDLED / "acoustic" / "config.json").read_text())
    stored = codec_config.from_dict(meta["extra"]["train_config"])
    want = codec_config.load_config(ROOT / "configs" / "codec_decoder.py", [
        f"data.manifest={stored.data.manifest}", f"train.init_from={stored.train.init_from}"])
    assert dataclasses.asdict(stored) == dataclasses.asdict(want)
    assert stored.train.trainable == "decoder" and not stored.data.pairs and meta["extra"]["weights"] == "ema"
    assert meta["extra"]["step"] == stored.train.steps


def test_bundled_stages_were_trained_with_the_configs_in_configs() -> None:
    """configs/bundled_stage{1,2}.py are the bundled model's training configs (stage 2's third pass, trained on from
    configs/bundled_stage2_second.py's export) and configs/bundled_turbo{1,2}.py its students' (all but the paths the
    recipe sets)."""
    from musicflow_jax.core import config
    from musicflow_jax.models.stage_file import load_stage

    for i in (1, 2):
        stored, _ = load_stage(BUNDLED / f"stage{i}.safetensors")
        cfg = config.load(ROOT / "configs" / f"bundled_stage{i}.py", [f"data.path={stored.data.path}",
                                                                      f"train.init_from={stored.train.init_from}"])
        assert config.to_json(cfg) == config.to_json(stored)
        assert bool(stored.train.init_from) == (i == 2)  # stage 2 was trained on from its second pass
        stored, _ = load_stage(BUNDLED / "turbo" / f"stage{i}.safetensors")
        cfg = config.load(ROOT / "configs" / f"bundled_turbo{i}.py", [
            f"data.path={stored.data.path}", f"data.stats={stored.data.stats}",
            f"distill.teacher={stored.distill.teacher}"])
        assert config.to_json(cfg) == config.to_json(stored)


def generate_turbo(turbo: MusicFlow, captions: list[str]) -> np.ndarray:
    """One 8-s clip per caption from the few-step students at their own sampler (2 jumps per window and stage)."""
    return turbo.generate(captions, duration=8.0, seed=0, progress=False).audio


def main(out: Path) -> None:
    """The child process: every generation above, saved to one .npz."""
    mf, turbo = MusicFlow.load(), MusicFlow.load(turbo=True)
    np.savez(out, sample_rate=mf.sample_rate, instrument_features=generate_instrument_pair(mf),
             key_audio=generate_clips(mf, key_captions()), paraphrase_audio=generate_clips(mf, paraphrase_captions()),
             **dict(zip(("tempo_audio", "tempo_streams"), generate_clips(mf, tempo_captions(), streams=True))),
             turbo_key_audio=generate_turbo(turbo, key_captions()),
             turbo_paraphrase_audio=generate_turbo(turbo, paraphrase_captions()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

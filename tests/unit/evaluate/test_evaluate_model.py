"""`python -m musicflow_jax.evaluate --checkpoint MODEL --manifest M` end to end with a tiny random model folder
(tests/gen_fixtures.py) on a handful of synthetic captioned clips: results.json schema with its "run" section, the
generated clips are exactly what the MusicFlow API makes with the documented seeds (so fixed seeds reproduce), the
backend-ceiling clips equal a direct encode -> decode, continuation evaluates the generated part only, the halves
row compares clips [0, n) with [n, 2n), the instrument classifier is fitted on clips in no evaluated set, and
one-line errors."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.cli.evaluate import main
from musicflow_jax.core.audio import read_audio, write_wav
from musicflow_jax.data import captions
from musicflow_jax.data.manifest import Entry, write_manifest
from musicflow_jax.evaluate import report as R
from musicflow_jax.evaluate.alignment import clip_alignment, seam_discontinuity
from musicflow_jax.evaluate.frechet import frechet_distance
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.testing.model_folders import make_model_folder, tone
from musicflow_jax.utils.atomic_io import write_text

SR = 24_000
CAPTIONS = ["A Bach chorale in C major at 120 BPM played on a piano",
            "A Bach chorale in A minor at 90 BPM played on a church organ",
            "A Bach chorale in G major at 100 BPM played on a piano",
            "A Bach chorale in D minor at 80 BPM played on a church organ",
            "A Bach chorale in F major at 110 BPM played on a piano",
            "A Bach chorale in E minor at 70 BPM played on a church organ"]
N = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval_model")
    model = make_model_folder(root / "model")
    entries = []
    for i, cap in enumerate(CAPTIONS):
        freqs = (220.0 * 2 ** (i / 12), 330.0 * 2 ** (i / 12)) if "piano" in cap else (110.0, 165.0, 220.0, 440.0)
        x = tone(3.0, SR, freqs)
        x[:: int(SR * 60 / (90 + 10 * i))] += 0.3  # clicks: something for the onset and tempo estimators
        path = write_wav(root / "audio" / f"c{i}.wav", x, SR)
        pitches = [int(round(69 + 12 * np.log2(f / 440.0))) for f in freqs]  # the tones as a score: ground truth
        notes = write_text(root / "notes" / f"c{i}.json", json.dumps([[0.0, 3.0, p, 0] for p in pitches]))
        entries.append(Entry(str(path), cap, "test", 3.0, notes=str(notes), facts=facts_of(cap)))
    write_manifest(root / "manifest.jsonl", entries)
    write_manifest(root / "no_facts.jsonl", [dataclasses.replace(e, facts=None) for e in entries])
    return model, root / "manifest.jsonl"


def facts_of(caption: str) -> captions.Facts:
    """The facts the test captions were written from (they follow captions.TEMPLATE)."""
    m = re.fullmatch(r"A Bach chorale in (.+) at (\d+) BPM played on (.+)", caption)
    assert m is not None
    return captions.Facts("bach", "chorale", m[1], int(m[2]), m[3])


def run(setup: tuple[Path, Path], out: Path, *extra: str) -> dict:
    model, manifest = setup
    rc = main(["--checkpoint", str(model), "--manifest", str(manifest), "--out", str(out), "--n", str(N),
               "--quiet", *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def clips_of(res: dict) -> list[np.ndarray]:
    return [read_audio(c["path"])[0] for c in res["clips"]]


def test_generate_row_schema_and_fixed_seeds(setup: tuple[Path, Path], tmp_path: Path) -> None:
    res = run(setup, tmp_path / "a", "--duration", "1.5", "--seed", "7", "--batch", "1", "--steps1", "2",
              "--cfg2", "1.5", "--temperature2", "0.7")
    assert set(res) == {"format", "generated", "reference", "fd_proxy", "fd_proxy_reference_halves",
                        "instrument_accuracy", "clap", "cache_hits", "clips", "run", "embeddings", "alignment",
                        "stage1_stream"}
    s1 = res["stage1_stream"]  # the test model's semantic part is chroma: its streams' keys are scored too
    assert s1["generated"]["key_n"] == s1["real"]["key_n"] == N
    assert res["embeddings"] == {} and res["alignment"] is None  # no embedding model given; no same-piece row
    run_ = res["run"]
    assert run_["mode"] == "generate" and run_["spec"]["n"] == N and run_["audio_seconds_per_clip"] == 1.5
    assert run_["stage1"]["steps"] == 2 and run_["stage2"]["steps"] == 4  # stage 2 keeps its default (tiny: 4)
    assert run_["stage2"]["cfg_scale"] == 1.5 and run_["stage1"]["cfg_scale"] == 2.0
    assert run_["stage2"]["temperature"] == 0.7 and run_["stage1"]["temperature"] == 1.0
    assert run_["classifier_clips"] == len(CAPTIONS) - 2 * N and res["instrument_accuracy"] is not None
    assert res["generated"]["n"] == res["reference"]["n"] == N and res["generated"]["key_n"] == N
    assert [c["caption"] for c in res["clips"]] == CAPTIONS[:N]
    # the clips are the API's output: batch k (of size 1) with seed 7 + k
    from musicflow_jax.inference.cascade import StageSettings

    mf = MusicFlow.load(setup[0])
    s1 = StageSettings(steps=2, solver="euler", cfg_scale=2.0)
    s2 = StageSettings(steps=4, solver="euler", cfg_scale=1.5, temperature=0.7)
    for k, got in enumerate(clips_of(res)):
        g = mf.generate([CAPTIONS[k]], 1.5, seed=7 + k, stage1=s1, stage2=s2, progress=False)
        np.testing.assert_array_equal(got, g.audio[0])
        assert run_["nfe"] == g.nfe
    # the reference set is the real clips' first 1.5 s
    ref = R.load_clips(tmp_path / "a" / "clips" / "reference", "reference")
    np.testing.assert_allclose(read_audio(ref[0].path)[0], read_audio(str(Path(setup[1]).parent / "audio" / "c0.wav"))
                               [0][: int(1.5 * SR)], atol=1e-6)
    # fixed seeds reproduce: a second run elsewhere writes the same audio; the table names the run
    again = run(setup, tmp_path / "b", "--duration", "1.5", "--seed", "7", "--batch", "1", "--steps1", "2",
                "--cfg2", "1.5", "--temperature2", "0.7")
    for x, y in zip(clips_of(res), clips_of(again)):
        np.testing.assert_array_equal(x, y)
    assert again["generated"] == res["generated"] and again["fd_proxy"] == res["fd_proxy"]
    assert "run: mode generate, 2 clips of 1.5 s" in (tmp_path / "a" / "results.md").read_text()
    # another seed gives other audio
    other = run(setup, tmp_path / "c", "--duration", "1.5", "--seed", "8", "--batch", "1", "--steps1", "2",
                "--cfg2", "1.5", "--temperature2", "0.7")
    assert not np.array_equal(clips_of(other)[0], clips_of(res)[0])


def test_ceiling_halves_and_continuation_rows(setup: tuple[Path, Path], tmp_path: Path) -> None:
    model, manifest = setup
    mf = MusicFlow.load(model)
    real = [read_audio(str(manifest.parent / "audio" / f"c{i}.wav"))[0] for i in range(len(CAPTIONS))]
    res = run(setup, tmp_path / "ceil", "--mode", "ceiling", "--duration", "2")
    assert res["run"]["mode"] == "ceiling" and res["run"]["nfe"] == {} and res["run"]["stage1"] is None
    for x, got in zip(real, clips_of(res)):
        want = mf.backend.decode(mf.backend.encode_acoustic(x[None, : 2 * SR]))[0, : 2 * SR]
        np.testing.assert_array_equal(got, want)
        assert np.abs(got - x[: 2 * SR]).max() > 1e-3  # a lossy round trip, not a copy

    # a backend-only folder (python -m musicflow_jax.assemble --semantic S --acoustic A) gives the same ceiling row:
    # no flow stages needed
    from musicflow_jax.cli import assemble

    be = json.loads((model / "features.json").read_text())
    assert assemble.main(["--semantic", json.dumps(be["semantic"]), "--acoustic", json.dumps(be["acoustic"]),
                                "--out", str(tmp_path / "be_only")]) == 0
    alone = run((tmp_path / "be_only", manifest), tmp_path / "ceil_be", "--mode", "ceiling", "--duration", "2")
    for x, y in zip(clips_of(res), clips_of(alone)):
        np.testing.assert_array_equal(x, y)
    assert alone["generated"] == res["generated"] and alone["alignment"] == res["alignment"]
    assert assemble.main(["--semantic", "{bad", "--acoustic", "{}", "--out", str(tmp_path / "x")]) == 2
    # an encodec part without its folder (in the spec or as --encodec) is one line, exit 2 (was a KeyError)
    assert assemble.main(["--semantic", '{"kind": "chroma"}', "--acoustic", '{"kind": "encodec"}', "--out",
                          str(tmp_path / "x")]) == 2 and not (tmp_path / "x").exists()

    halves = run(setup, tmp_path / "halves", "--mode", "halves", "--duration", "2")
    assert [c["caption"] for c in halves["clips"]] == CAPTIONS[:N]
    for x, got in zip(real, clips_of(halves)):
        np.testing.assert_allclose(got, x[: 2 * SR], atol=1e-6)
    second = R.load_clips(tmp_path / "halves" / "clips" / "second_half", "reference")
    assert [c.caption for c in second] == CAPTIONS[N: 2 * N]
    emb = [R.analyze_clip(c["path"], c["caption"])["proxy"] for c in halves["clips"]]
    emb2 = [R.analyze_clip(c.path, c.caption)["proxy"] for c in second]
    assert halves["fd_proxy"] == pytest.approx(frechet_distance(np.asarray(emb), np.asarray(emb2)))
    assert halves["run"]["classifier_clips"] == len(CAPTIONS) - 2 * N

    cont = run(setup, tmp_path / "cont", "--mode", "continue", "--duration", "2.5", "--prompt-seconds", "1")
    assert cont["run"]["audio_seconds_per_clip"] == 1.5
    for k, got in enumerate(clips_of(cont)):
        assert got.size == int(1.5 * SR)
        g = mf.continue_([CAPTIONS[k]], real[k][:SR], 2.5, seed=(k // 16) * 1000 + k % 16, progress=False)
        np.testing.assert_array_equal(got, g.audio[0, SR: int(2.5 * SR)])

    fill = run(setup, tmp_path / "fill", "--mode", "infill", "--duration", "3", "--prompt-seconds", "1",
               "--infill-seconds", "1.2")
    assert fill["run"]["audio_seconds_per_clip"] == pytest.approx(1.2)
    rows = []
    for k, got in enumerate(clips_of(fill)):  # the regenerated region only, as the API makes it for that seed
        g = mf.infill([CAPTIONS[k]], real[k][: 3 * SR], [(1.0, 2.2)], seed=(k // 16) * 1000 + k % 16, progress=False)
        np.testing.assert_array_equal(got, g.audio[0, SR: int(2.2 * SR)])
        # same-piece scores: the region against the real clip's region and the notes; seams at both region edges
        want = clip_alignment(got, real[k][SR: int(2.2 * SR)], SR, manifest.parent / "notes" / f"c{k}.json", 1.0,
                              2.2)
        want["seam"] = np.mean([seam_discontinuity(g.audio[0], SR, t) for t in (1.0, 2.2)])
        want["real_seam"] = np.mean([seam_discontinuity(real[k][: 3 * SR], SR, t) for t in (1.0, 2.2)])
        assert fill["clips"][k]["alignment"] == pytest.approx(want, nan_ok=True)
        rows.append(want)
    assert fill["alignment"]["n"] == N
    assert fill["alignment"]["chroma_vs_real"] == pytest.approx(np.mean([r["chroma_vs_real"] for r in rows]))
    assert fill["alignment"]["real_chroma_vs_notes"] > 0.5  # the tones are their notes
    assert "| alignment (same piece; n = 2)" in (tmp_path / "fill" / "results.md").read_text()


def test_model_run_errors(setup: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    model, manifest = setup

    def err(*args: str) -> str:
        assert main([*args, "--out", str(tmp_path / "e"), "--quiet"]) == 2
        msg = capsys.readouterr().err
        assert msg.startswith("error: ") and msg.count("\n") == 1, msg
        return msg

    assert "is not a folder" in err("--checkpoint", str(tmp_path / "nope"), "--manifest", str(manifest), "--n", "2")
    assert "context on both sides" in err("--checkpoint", str(model), "--manifest", str(manifest), "--mode", "infill",
                                          "--duration", "3", "--prompt-seconds", "2", "--infill-seconds", "1")
    assert "needs 8" in err("--checkpoint", str(model), "--manifest", str(manifest), "--n", "4", "--mode", "halves")
    assert "needs 10 s" in err("--checkpoint", str(model), "--manifest", str(manifest), "--n", "2", "--duration",
                               "10")
    assert "--mode 'x'" in err("--checkpoint", str(model), "--manifest", str(manifest), "--mode", "x")
    for flag in ("--duration", "--prompt-seconds"):  # were tracebacks (float -> int of NaN / infinity)
        for value in ("nan", "inf"):
            assert f"{flag} {value}: give a finite number" in err("--checkpoint", str(model), "--manifest",
                                                                   str(manifest), "--n", "2", flag, value)
    with pytest.raises(SystemExit) as e:  # argparse-level: exits 2 with one line
        main(["--checkpoint", str(model), "--manifest", str(manifest), "--generated", str(manifest), "--out", "x"])
    assert e.value.code == 2 and "two ways to run" in capsys.readouterr().err


def test_heldout_captions_prompt_paraphrases_scored_against_the_facts(setup: tuple[Path, Path], tmp_path: Path,
                                                                      capsys) -> None:
    """--captions heldout: each clip is generated from its facts in the i-th held-out wording (the API's output for
    that text, bit for bit), its WAV records that prompt, and it is scored against the entry's own caption."""
    res = run(setup, tmp_path / "p", "--duration", "1.5", "--seed", "3", "--batch", "2", "--captions", "heldout")
    said = [captions.heldout_caption(facts_of(c), i) for i, c in enumerate(CAPTIONS[:N])]
    assert said[0] != said[1] and all(s not in CAPTIONS for s in said)
    assert [c["caption"] for c in res["clips"]] == CAPTIONS[:N] and res["run"]["spec"]["captions"] == "heldout"
    assert [R.read_wav_metadata(c["path"])["prompt"] for c in res["clips"]] == said
    g = MusicFlow.load(setup[0]).generate(said, 1.5, seed=3, progress=False)
    for k, got in enumerate(clips_of(res)):
        np.testing.assert_array_equal(got, g.audio[k])
    # rows without facts cannot be reworded: one line, exit 2, before the model loads
    rc = main(["--checkpoint", str(setup[0]), "--manifest", str(Path(setup[1]).parent / "no_facts.jsonl"), "--out",
               str(tmp_path / "e"), "--n", str(N), "--quiet", "--captions", "heldout"])
    msg = capsys.readouterr().err
    assert rc == 2 and msg.count("\n") == 1 and "needs each evaluated manifest row's \"facts\"" in msg, msg


def test_stage1_stream_key_is_krumhansl_schmuckler_on_its_mean_chroma(tmp_path: Path) -> None:
    """A chroma stream whose pitch-class mean is the major profile rotated to D reads as D major; the summary scores
    the generated and the real streams against each caption's key (exact 1, relative/fifth/parallel per MIREX)."""
    from types import SimpleNamespace

    from musicflow_jax.backends.chroma import ChromaSemantic
    from musicflow_jax.evaluate import model as M
    from musicflow_jax.evaluate import music

    major = np.array(music.PROFILES[music.DEFAULT_PROFILE][0], np.float64)

    def stream(tonic: int) -> np.ndarray:  # (T, 12 chroma + 4 bands), per-frame noise around the rotated profile
        rng = np.random.default_rng(tonic)
        c = np.roll(major, tonic)[None] * (1 + 0.05 * rng.standard_normal((40, 12)))
        return np.concatenate([c / c.sum(1, keepdims=True), rng.standard_normal((40, 4))], 1).astype(np.float32)

    assert M.stream_key(stream(2)) == music.Key(2, "major") and M.stream_key(stream(7)) == music.Key(7, "major")
    entries = [SimpleNamespace(caption=f"A Bach chorale in {k} at 90 BPM played on a piano")
               for k in ("D major", "C major", "A minor")]
    path = write_wav(tmp_path / "r.wav", np.zeros(2400, np.float32), 24_000)
    real = {str(path): stream(0)}
    mf = SimpleNamespace(sample_rate=24_000, backend=SimpleNamespace(
        semantic=ChromaSemantic(), encode_semantic=lambda x: real[str(path)][None]))
    got = M.stage1_stream_scores(mf, entries, [stream(2), stream(7), stream(0)], [R.Clip(str(path), "")] * 3)
    # generated: D major exact; G major for C major = a fifth (0.5); C major for A minor = relative (0.3)
    key_fields = ("key_exact", "key_mirex", "key_n")
    assert {k: got["generated"][k] for k in key_fields} == {"key_exact": 1 / 3,
                                                           "key_mirex": pytest.approx((1 + 0.5 + 0.3) / 3), "key_n": 3}
    # real (C major each): D major vs C = 0, C = 1, A minor vs C major = relative 0.3
    assert {k: got["real"][k] for k in key_fields} == {"key_exact": 1 / 3,
                                                      "key_mirex": pytest.approx((0 + 1 + 0.3) / 3), "key_n": 3}
    mel = SimpleNamespace(backend=SimpleNamespace(semantic=object()))
    assert M.stage1_stream_scores(mel, entries, [stream(2)], []) is None


def _pulsed_stream(frames_per_beat: int, frames: int = 400, seed: int = 0) -> np.ndarray:
    """(frames, 12 + 4) chroma stream at 50 Hz whose notes start every `frames_per_beat` frames: each note is a new
    pitch class, its band energies jump up at the start and decay, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)
    beat, phase = t // frames_per_beat, t % frames_per_beat
    chroma = np.eye(12)[(7 * beat) % 12] + 0.02 * rng.random((frames, 12))
    bands = (-0.15 * phase)[:, None] + 0.05 * rng.standard_normal((frames, 4))
    return np.concatenate([chroma / chroma.sum(1, keepdims=True), bands], 1).astype(np.float32)


def test_stage1_stream_tempo_reads_the_streams_note_rate(tmp_path: Path) -> None:
    """A stream whose notes start every 25 frames at 50 Hz is at 120 BPM (every 30: 100 BPM); the summary scores the
    generated and real streams' tempi against each caption's (within 4 %); a stream too short for a tempo is left
    out."""
    from types import SimpleNamespace

    from musicflow_jax.backends.chroma import ChromaSemantic
    from musicflow_jax.evaluate import model as M

    for fpb, bpm in ((25, 120.0), (30, 100.0), (40, 75.0)):
        assert M.stream_tempo(_pulsed_stream(fpb), 50.0) == pytest.approx(bpm, rel=0.01)
    env = M.stream_onsets(_pulsed_stream(25))
    assert env.shape == (400,) and env[0] == 0.0 and set(np.argsort(env)[-15:] % 25) == {0}  # peaks on the note starts
    entries = [SimpleNamespace(caption=f"A Bach chorale in C major at {b} BPM played on a piano")
               for b in (120, 100, 60)]
    path = write_wav(tmp_path / "r.wav", np.zeros(2400, np.float32), 24_000)
    mf = SimpleNamespace(sample_rate=24_000, backend=SimpleNamespace(
        semantic=ChromaSemantic(), encode_semantic=lambda x: _pulsed_stream(30)[None]))
    got = M.stage1_stream_scores(mf, entries, [_pulsed_stream(25)] * 2 + [_pulsed_stream(25, frames=30)],
                               [R.Clip(str(path), "")] * 3)
    # generated 120 BPM: the 120 caption within, the 100 one not; the 30-frame stream (0.6 s) has no tempo
    assert (got["generated"]["tempo_within_4pct"], got["generated"]["tempo_n"]) == (0.5, 2)
    # real 100 BPM: only the 100 caption; 60 BPM is not within 4 % of 100 (nor is 120)
    assert (got["real"]["tempo_within_4pct"], got["real"]["tempo_n"]) == (pytest.approx(1 / 3), 3)

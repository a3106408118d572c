"""Generation CLI + API on a tiny random two-stage model (mel backend): determinism, continuation/infill/restyle
context guarantees, prompts files, and the one-line exit-code-2 errors for bad input (generate.main in this process)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from musicflow_jax.cli import generate
from musicflow_jax.core import frames as features
from musicflow_jax.core.audio import read_wav_metadata, write_wav
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.inference.cascade import GenerateError, MusicFlow, StageSettings, region_mask
from musicflow_jax.inference.checks import parse_regions
from musicflow_jax.models.stage_file import save_stage
from musicflow_jax.models.transformer import FlowTransformer
from musicflow_jax.testing.cli import Done, one_error_line, run_main
from musicflow_jax.testing.model_folders import make_model_folder, tiny_configs, tone
from musicflow_jax.utils import plots

SR = 24_000
FAST = StageSettings(steps=2, solver="euler", cfg_scale=2.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def mf(folder: Path) -> MusicFlow:
    return MusicFlow.load(folder)


def _cli(folder: Path, out: Path, *extra: str) -> list[Path]:
    args = ["--checkpoint", str(folder), "--out", str(out), "--quiet", "--steps", "2", "--solver", "euler", *extra]
    assert generate.main(args) == 0
    return sorted(out.parent.glob("*.wav"))


def test_same_seed_same_bytes_different_seed_differs(folder: Path, tmp_path: Path) -> None:
    common = ["--text", "a calm organ chorale in G minor", "--duration", "1.5"]  # 1.5 s > 1 s window: long-form
    _cli(folder, tmp_path / "a" / "x.wav", *common, "--seed", "3")
    _cli(folder, tmp_path / "b" / "x.wav", *common, "--seed", "3")
    _cli(folder, tmp_path / "c" / "x.wav", *common, "--seed", "4")
    a, b, c = ((tmp_path / d / "x.wav").read_bytes() for d in "abc")
    assert a == b
    assert a != c
    meta = read_wav_metadata(tmp_path / "a" / "x.wav")
    assert meta["text"] == "a calm organ chorale in G minor" and meta["seed"] == 3
    assert meta["duration"] == 1.5 and meta["steps"] == [2, 2]
    assert (tmp_path / "a" / "x.png").stat().st_size > 1000


def test_continuation_keeps_prompt_frames(mf: MusicFlow) -> None:
    prompt = tone(1.2)
    g = mf.continue_(["a brass quartet"], prompt, duration=2.0, seed=1, stage1=FAST, stage2=FAST, progress=False)
    n_s, n_a = features.frames_at(1.2, 50), features.frames_at(1.2, 75)
    assert g.audio.shape == (1, 2 * SR)
    np.testing.assert_array_equal(g.semantic[0, :n_s], g.prompt_semantic[:n_s])
    np.testing.assert_array_equal(g.acoustic[0, :n_a], g.prompt_acoustic[:n_a])
    np.testing.assert_array_equal(g.audio[0, : len(prompt)], prompt)  # kept bit-for-bit in audio too
    assert np.abs(g.acoustic[:, n_a:]).max() > 0.1  # the rest is generated
    g2 = mf.continue_(["a piano"], prompt, duration=2.0, seed=1, stage1=FAST, stage2=FAST, progress=False)
    np.testing.assert_array_equal(g2.acoustic[0, :n_a], g.acoustic[0, :n_a])
    assert not np.allclose(g.acoustic[0, n_a:], g2.acoustic[0, n_a:])  # the continuation depends on the text


def test_infill_changes_only_the_regions(mf: MusicFlow) -> None:
    prompt = tone(1.5)
    regions = parse_regions("0.3-0.6,1.0-1.2")
    g = mf.infill(["a marimba"], prompt, regions, seed=2, stage1=FAST, stage2=FAST, progress=False)
    assert g.audio.shape == (1, len(prompt))
    for x, p, rate in ((g.semantic[0], g.prompt_semantic, 50), (g.acoustic[0], g.prompt_acoustic, 75)):
        inside = region_mask(regions, len(x), rate)
        assert inside.sum() == sum(math.ceil(b * rate) - math.floor(a * rate) for a, b in regions)  # partial frames too
        np.testing.assert_array_equal(x[~inside], p[: len(x)][~inside])
        assert (np.abs(x[inside] - p[: len(x)][inside]).max(axis=-1) > 1e-3).all()  # every inside frame changed
    keep = ~region_mask(regions, len(prompt), SR)
    np.testing.assert_array_equal(g.audio[0, keep], prompt[keep])
    assert np.abs(g.audio[0, ~keep] - prompt[~keep]).max() > 1e-3


def test_restyle_keeps_semantics_changes_acoustics(mf: MusicFlow) -> None:
    prompt = tone(1.0)
    sem_p, _ = mf.encode(prompt)
    gs = [mf.restyle([t], prompt, seed=0, stage2=FAST, progress=False) for t in ("a church organ", "a guitar")]
    for g in gs:
        np.testing.assert_array_equal(g.semantic[0], sem_p[:50])
        assert g.nfe == {"stage1": 0, "stage2": 2}  # euler, 2 steps, one window
    assert not np.allclose(gs[0].acoustic, gs[1].acoustic, atol=1e-3)


def test_prompts_file_plain_and_jsonl(folder: Path, tmp_path: Path) -> None:
    pf = tmp_path / "prompts.txt"
    pf.write_text("a piano piece\n# a comment\n\n" + json.dumps({"text": "an organ piece", "seed": 5,
                                                                  "out": "organ.wav"}) + "\n"
                  + "a guitar piece\n")
    outs = _cli(folder, tmp_path / "o" / "p.wav", "--prompts-file", str(pf), "--duration", "1", "--batch", "1")
    assert [p.name for p in outs] == ["organ.wav", "p_0.wav", "p_2.wav"]
    metas = {p.name: read_wav_metadata(p) for p in outs}
    assert metas["p_0.wav"]["text"] == "a piano piece" and metas["p_2.wav"]["text"] == "a guitar piece"
    assert metas["organ.wav"]["seed"] == 5 and metas["p_0.wav"]["seed"] == 0


def test_prompts_file_bad_fields_name_the_line(tmp_path: Path) -> None:
    pf = tmp_path / "prompts.txt"
    for line, msg in (('{"text": "x", "seed": "abc"}', ":2: \"seed\" must be an integer"),
                      ('{"text": "x", "out": 3}', ":2: \"out\" must be a file path")):
        pf.write_text("a piano piece\n" + line + "\n")
        with pytest.raises(GenerateError, match=msg):
            generate.read_prompts(str(pf), "10", 0)
    pf.write_text('{"text": "x", "seed": "7"}\n')
    assert generate.read_prompts(str(pf), "10", 0)[0]["seed"] == 7


def test_each_stage_gets_the_text_encoder_it_was_trained_with(folder: Path, tmp_path: Path) -> None:
    """text_encoder/ is stage 1's; a stage 2 trained with another embedded T5 (train.seed) must not reuse it."""
    import shutil

    from musicflow_jax.encoders.text import TextEncoder
    from musicflow_jax.models.stage_file import load_stage

    d = tmp_path / "model"
    shutil.copytree(folder, d)
    c2, m2 = load_stage(folder / "stage2.safetensors")
    c2 = dataclasses.replace(c2, train=dataclasses.replace(c2.train, seed=c2.train.seed + 1))
    save_stage(d / "stage2.safetensors", c2, m2)
    mf2 = MusicFlow.load(d)
    texts = ["a calm organ chorale"]
    cfg1 = mf2.stages[0].cfg
    want1 = np.asarray(TextEncoder.load(cfg1.text, cfg1.train.seed)(texts)[0])
    want2 = np.asarray(TextEncoder.load(c2.text, c2.train.seed)(texts)[0])
    assert np.abs(want1 - want2).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(mf2.stages[0].text(texts)[0]), want1)
    np.testing.assert_array_equal(np.asarray(mf2.stages[1].text(texts)[0]), want2)
    mf1 = MusicFlow.load(folder)  # same T5 for both stages: one encoder, the shipped one
    assert mf1.stages[1].text is mf1.stages[0].text
    np.testing.assert_array_equal(np.asarray(mf1.stages[0].text(texts)[0]), want1)


def test_stage_settings_parsing(mf: MusicFlow) -> None:
    s1, s2 = generate.stage_settings(mf, "16,8", "midpoint", "3,1.5")
    assert (s1.steps, s2.steps, s1.solver, s2.solver, s1.cfg_scale, s2.cfg_scale) == (16, 8, "midpoint", "midpoint",
                                                                                    3.0, 1.5)
    assert (s1.temperature, s2.temperature) == (1.0, 1.0)  # the tiny stages' sample.temperature
    s1, s2 = generate.stage_settings(mf, None, None, None, temperature="1,0.6")
    assert (s1.temperature, s2.temperature) == (1.0, 0.6) and s2.steps == mf.stages[1].settings.steps
    with pytest.raises(GenerateError, match="--steps"):
        generate.stage_settings(mf, "a,b", None, None)
    with pytest.raises(GenerateError, match="--temperature"):
        generate.stage_settings(mf, None, None, None, temperature="warm")


def test_overridden_replaces_the_given_fields_and_keeps_the_rest() -> None:
    """StageSettings.overridden, the one "given, else the stage's default" merge (CLI, evaluation, quality table)."""
    base = StageSettings(steps=16, solver="midpoint", cfg_scale=5.0, max_steps=77, temperature=0.6)
    assert base.overridden() == base
    assert base.overridden(steps=4, temperature=1.0) == StageSettings(4, "midpoint", 5.0, 77, 1.0)
    assert base.overridden(solver="euler", cfg_scale=1.0) == StageSettings(16, "euler", 1.0, 77, 0.6)


def test_a_stages_sample_temperature_is_its_default(folder: Path, tmp_path: Path) -> None:
    """A stage whose config samples at sample.temperature=0.5 generates, by default and in a draft, what its
    untempered twin generates when asked for 0.5; the CLI's --temperature is the same setting and lands in the WAV's
    metadata."""
    import shutil

    from musicflow_jax.models.stage_file import load_stage

    hot = tmp_path / "hot"
    shutil.copytree(folder, hot)
    cfg, model = load_stage(folder / "stage2.safetensors")
    save_stage(hot / "stage2.safetensors", dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample,
                                                                                               temperature=0.5)), model)
    plain, tempered = MusicFlow.load(folder), MusicFlow.load(hot)
    assert tempered.stages[1].settings.temperature == 0.5 and plain.stages[1].settings.temperature == 1.0
    assert MusicFlow.draft_settings(tempered.stages[1]).temperature == 0.5
    text = ["a calm organ chorale in G minor"]
    a = tempered.generate(text, 1.0, seed=2, progress=False)
    b = plain.generate(text, 1.0, seed=2, progress=False,
                       stage2=dataclasses.replace(plain.stages[1].settings, temperature=0.5))
    c = plain.generate(text, 1.0, seed=2, progress=False)
    np.testing.assert_array_equal(a.acoustic, b.acoustic)
    np.testing.assert_array_equal(a.semantic, c.semantic)  # stage 1 samples at its own temperature, 1
    assert np.abs(a.acoustic - c.acoustic).max() > 1e-3
    assert a.settings["stage2"]["temperature"] == 0.5 and a.settings["stage1"]["temperature"] == 1.0
    out = tmp_path / "cli" / "x.wav"
    args = ["--checkpoint", str(folder), "--out", str(out), "--quiet", "--text", text[0], "--duration", "1",
            "--seed", "2", "--temperature", "1,0.5"]
    assert generate.main(args) == 0
    assert read_wav_metadata(out)["temperature"] == [1.0, 0.5]


# ----------------------------------------------------------------------------------------- bad input -> exit 2


@pytest.fixture(scope="module")
def bad_files(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    write_wav(d / "prompt.wav", tone(2.0), SR)
    (d / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    c1, c2 = tiny_configs()
    c2_bad = dataclasses.replace(c2, model=dataclasses.replace(c2.model, cond_dim=8))
    save_stage(d / "stage2_bad.safetensors", c2_bad, FlowTransformer(c2_bad, rngs=nnx.Rngs(0)))
    return {"prompt": d / "prompt.wav", "garbage": d / "garbage.wav", "stage2_bad": d / "stage2_bad.safetensors",
            "out": d / "out.wav"}


def test_bad_inputs_exit_2_with_one_line(folder: Path, bad_files: dict[str, Path],
                                        capsys: pytest.CaptureFixture) -> None:
    f, m = bad_files, str(folder)
    cases = {
        "empty text": (["--text", "  "], "is empty"),
        "no text": (["--duration", "5"], "no text given"),
        "negative duration": (["--text", "x", "--duration", "-3"], "must be a positive"),
        "zero duration": (["--text", "x", "--duration", "0"], "must be a positive"),
        "huge duration": (["--text", "x", "--duration", "100000"], "too long"),
        "region outside": (["--text", "x", "--mode", "infill", "--prompt-audio", str(f["prompt"]), "--regions",
                            "1.5-2.5"], "outside the prompt audio"),
        "regions overlap": (["--text", "x", "--mode", "infill", "--prompt-audio", str(f["prompt"]), "--regions",
                             "0.2-0.8,0.5-1.0"], "overlap"),
        "unreadable prompt": (["--text", "x", "--prompt-audio", str(f["garbage"]), "--duration", "3"],
                              "cannot be read as audio"),
        "missing prompt": (["--text", "x", "--prompt-audio", str(f["garbage"]) + ".nope", "--duration", "3"],
                           "does not exist"),
        "wrong stage": (["--text", "x", "--stage1-checkpoint", str(folder / "stage2.safetensors")], "swap"),
        "mismatched config": (["--text", "x", "--stage2-checkpoint", str(f["stage2_bad"])], "mismatched stages"),
        "bad option": (["--text", "x", "--no-such-flag"], "unrecognized arguments"),
        "zero temperature": (["--text", "x", "--temperature", "1,0"], "--temperature 0.0 (stage2) must be in (0, 2]"),
    }
    for name, (args, needle) in cases.items():  # in this process: generate.main is what the entry point runs
        done = run_main(generate.main, ["--checkpoint", m, "--out", str(f["out"]), "--quiet", *args], capsys)
        assert done.returncode == 2, (name, done.stderr[-2000:])
        one_error_line(done, needle)
    assert not f["out"].exists()


# ----------------------------------------------------------------------------------------- the HuBERT/Encodec path


def test_encodec_backend_infill_and_generate(tmp_path: Path) -> None:
    """The default (paper) backend: converted tiny HuBERT + k-means + Encodec behind the same API."""
    from safetensors.numpy import save_file

    from musicflow_jax.convert.encodec import convert_encodec
    from musicflow_jax.convert.hubert import convert_hubert
    from musicflow_jax.encoders.text import TextEncoder
    from musicflow_jax.testing.tiny_models import save_tiny_encodec, save_tiny_hubert

    folder = tmp_path / "model"
    convert_hubert(save_tiny_hubert(tmp_path / "hf_hubert"), folder / "hubert")
    convert_encodec(save_tiny_encodec(tmp_path / "hf_encodec"), folder / "encodec")
    cents = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32)
    save_file({"centroids": cents}, str(folder / "kmeans.safetensors"), metadata={"layer": "1"})
    c1, c2 = tiny_configs()
    c1 = dataclasses.replace(c1, model=dataclasses.replace(c1.model, feature_dim=32))
    c2 = dataclasses.replace(c2, model=dataclasses.replace(c2.model, feature_dim=16, cond_dim=32))
    save_stage(folder / "stage1.safetensors", c1, FlowTransformer(c1, rngs=nnx.Rngs(0)))
    save_stage(folder / "stage2.safetensors", c2, FlowTransformer(c2, rngs=nnx.Rngs(1)))
    TextEncoder.load(c1.text, 0).save(folder / "text_encoder")
    stats = {"semantic": {"mean": [0.0] * 32, "std": [1.0] * 32}, "acoustic": {"mean": [0.0] * 16, "std": [1.0] * 16}}
    spec = {"format": "musicflow_jax.features/2", "semantic": {"kind": "hubert", "folder": "hubert", "layer": 1,
                                                              "kmeans": "kmeans.safetensors"},
            "acoustic": {"kind": "encodec", "folder": "encodec"}, "stats": stats}
    (folder / "features.json").write_text(json.dumps(spec))
    mf = MusicFlow.load(folder)
    assert mf.backend.name == "hubert+encodec" and mf.sample_rate == 24_000
    prompt = tone(1.0)
    g = mf.infill(["a piano"], prompt, [(0.4, 0.6)], seed=0, stage1=FAST, stage2=FAST, progress=False)
    sem_in = region_mask([(0.4, 0.6)], g.semantic.shape[1], 50)
    ac_in = region_mask([(0.4, 0.6)], g.acoustic.shape[1], 75)
    for x, p, inside in ((g.semantic[0], g.prompt_semantic, sem_in), (g.acoustic[0], g.prompt_acoustic, ac_in)):
        n = min(len(p), len(x))  # HuBERT gives 49 frames for 1 s: the 50th is generated like a region
        np.testing.assert_array_equal(x[:n][~inside[:n]], p[:n][~inside[:n]])
        assert (np.abs(x[inside] - p[:n][inside[:n]]).max(-1) > 1e-4).all()
    # semantic context = k-means centroids of the prompt's HuBERT features
    assert all(any(np.array_equal(v, c) for c in cents) for v in g.prompt_semantic)
    assert g.audio.shape == (1, len(prompt)) and np.isfinite(g.audio).all()


# ----------------------------------------------------------------------------------------- reliability


def _run_cli(capsys: pytest.CaptureFixture, *args: str) -> Done:
    return run_main(generate.main, ["--quiet", *args], capsys)


def test_prompts_file_cannot_write_outside_the_output_folder(folder: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A prompts file's "out" stays under --out's folder: absolute paths, '..', other extensions and duplicate
    outputs are refused before anything is generated; nothing outside is touched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "gen" / "p.wav"
    cases = {
        "absolute": ({"text": "organ", "duration": 1, "out": str(victim)}, "must be a relative .wav path"),
        "dotdot": ({"text": "organ", "duration": 1, "out": "../victim.wav"}, "without '..'"),
        "extension": ({"text": "organ", "duration": 1, "out": "x.txt"}, "relative .wav path"),
    }
    (tmp_path / "gen").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "gen" / "link").symlink_to(tmp_path / "outside")  # the '..' check is lexical; this is not
    cases["symlink"] = ({"text": "organ", "duration": 1, "out": "link/x.wav"},
                        "leads outside --out's folder .* through a symbolic link")
    cases["nul"] = ({"text": "organ", "duration": 1, "out": "a\x00.wav"}, "no NUL byte")
    for name, (line, needle) in cases.items():
        pf = tmp_path / f"{name}.jsonl"
        pf.write_text(json.dumps(line) + "\n")
        with pytest.raises(GenerateError, match=needle):
            generate.run(generate.build_parser().parse_args(["--prompts-file", str(pf), "--out", str(out)]))
    pf = tmp_path / "dup.jsonl"
    pf.write_text(json.dumps({"text": "a", "out": "same.wav"}) + "\n" + json.dumps({"text": "b", "out": "same.wav"})
                  + "\n")
    p = _run_cli(capsys, "--checkpoint", str(folder), "--prompts-file", str(pf), "--out", str(out), "--steps", "1")
    one_error_line(p, "dup.jsonl:2: output")
    assert victim.read_text() == "precious" and not any((tmp_path / "outside").iterdir())
    assert sorted(q.name for q in out.parent.iterdir()) == ["link"]
    pf.write_text(json.dumps({"text": "a", "out": "sub/a.wav"}) + "\n")  # relative names land under --out's folder
    assert generate.main(["--checkpoint", str(folder), "--prompts-file", str(pf), "--out", str(out), "--quiet",
                          "--steps", "1", "--duration", "0.5", "--no-spectrogram"]) == 0
    assert (out.parent / "sub" / "a.wav").is_file()


def test_prompts_file_fields_are_strict(tmp_path: Path) -> None:
    pf = tmp_path / "p.jsonl"
    for line, msg in (('{"text": "x", "seed": 1.7}', ':1: "seed" must be an integer'),
                      ('{"text": "x", "seed": true}', ':1: "seed" must be an integer'),
                      ('{"text": "x", "duration": true}', ':1: "duration" must be a number')):
        pf.write_text(line + "\n")
        with pytest.raises(GenerateError, match=msg):
            generate.read_prompts(str(pf), "10", 0)
    pf.write_text('{"text": "x", "duration": -2}\n')
    with pytest.raises(GenerateError, match=r'p.jsonl:1: "duration" -2 must be a positive'):
        generate.run(generate.build_parser().parse_args(["--prompts-file", str(pf), "--out", str(tmp_path / "o.wav")]))
    pf.write_bytes(b"caf\xe9 organ\n")
    with pytest.raises(GenerateError, match="not UTF-8"):
        generate.read_prompts(str(pf), "10", 0)


def test_bad_cli_values_are_refused_before_generating(folder: Path, bad_files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    m = str(folder)
    (tmp_path / "adir").mkdir()
    cases = [(["--text", "x", "--seed", "99999999999999999999"], "must be an integer in [0, 2**32)"),
             (["--text", "x", "--out", str(tmp_path / "adir")], "is a folder"),
             (["--text", "x", "--out", str(bad_files["prompt"] / "o.wav")], "is a file, not a folder"),
             (["--text", "x", "--out", "/dev/null"], "--out /dev/null is not a regular file"),
             (["--text", "x", "--out", "/proc/x.wav"], "--out /proc/x.wav: cannot create files under /proc"),
             (["--text", "x", "--mode", "restyle", "--prompt-audio", str(bad_files["prompt"]), "--duration", "3"],
              "keeps the prompt's length: drop --duration")]
    for args, needle in cases:
        argv = ["--checkpoint", m, *args] + ([] if "--out" in args else ["--out", str(tmp_path / "o.wav")])
        with pytest.raises(MusicFlowError, match=re.escape(needle)):
            generate.run(generate.build_parser().parse_args(argv))
    assert not (tmp_path / "o.wav").exists()


def test_corrupt_weights_and_non_finite_outputs_are_refused(folder: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """256 corrupt bytes in the middle of a stage file -> NaN weights: refused at load naming the file; a model whose
    output is non-finite writes nothing and names the stage."""
    import shutil

    d = tmp_path / "model"
    shutil.copytree(folder, d)
    f = d / "stage1.safetensors"
    raw = bytearray(f.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    mid = header + (len(raw) - header) // 2
    raw[mid: mid + 256] = b"\xff" * 256  # 0xffffffff is a float32 NaN
    f.write_bytes(bytes(raw))
    out = tmp_path / "o.wav"
    p = _run_cli(capsys, "--checkpoint", str(d), "--text", "organ", "--out", str(out), "--steps", "1")
    one_error_line(p, "NaN/inf values in")
    assert str(f) in p.stderr and not out.exists()
    mf = MusicFlow.load(folder)
    st = mf.stages[1]
    state = nnx.state(st.model, nnx.Param)
    nnx.update(st.model, jax.tree.map(lambda v: v * np.nan, state))
    with pytest.raises(GenerateError, match=r"stage2 \(acoustic stream\) produced .* NaN/inf values"):
        mf.generate(["organ"], 0.5, stage1=FAST, stage2=FAST, progress=False)


def test_spectrogram_panels_stack_one_panel_per_clip(tmp_path: Path) -> None:
    """tools/spectrograms.py's figure: one 2.6-inch panel per clip at 100 dpi (PNG header: width, height)."""
    import struct

    sr = 8000
    t = np.arange(sr) / sr
    panels = [(f"tone {f} Hz", np.sin(2 * np.pi * f * t).astype(np.float32)) for f in (220, 440, 880)]
    path = plots.spectrogram_panels_png(tmp_path / "p.png", panels, sr, fmax=2000)
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (800, round(3 * 2.6 * 100))
    one = generate.spectrogram_png(tmp_path / "one.png", panels[0][1], sr, "one")
    assert struct.unpack(">II", one.read_bytes()[16:24]) == (800, 260)


# ----------------------------------------------------------------------------------------- decode bombs, duration caps


def _long_silent_flac(path: Path, seconds: float, sr: int = 8000) -> Path:
    """A FLAC of `seconds` of silence written in blocks: tiny on disk, large once decoded."""
    import soundfile as sf

    block = np.zeros(sr * 10, np.int16)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 10)):
            f.write(block)
        f.write(block[: int(round(seconds % 10 * sr))])
    return path


def test_a_too_long_prompt_is_refused_from_its_header(mf: MusicFlow, folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """601 s of silence (a few KB of FLAC, 19 MB of float32 at 8 kHz, 58 MB at 24 kHz) is refused by the header
    check in read_audio, MusicFlow.read_prompt and the CLI before any sample is decoded (soundfile.read would fail
    the test); the header's numbers are exact."""
    import soundfile as sf

    from musicflow_jax.core.audio import AudioError, audio_info, read_audio

    path = _long_silent_flac(tmp_path / "hour.flac", 601.0)
    assert path.stat().st_size < 200_000
    info = audio_info(path)
    assert (info.frames, info.sample_rate, info.channels) == (601 * 8000, 8000, 1)

    def no_decoding(*a, **k):
        raise AssertionError("decoded a file the header check should have refused")

    monkeypatch.setattr(sf, "read", no_decoding)
    with pytest.raises(AudioError, match=r"is 601\.0 s long \(4808000 frames at 8000 Hz\): at most 600 s"):
        read_audio(path, max_seconds=600)
    with pytest.raises(GenerateError, match=r"hour\.flac is 601\.0 s long: at most 600 s; cut it first"):
        mf.read_prompt(path)
    with pytest.raises(GenerateError, match=r"at most 30 s"):
        mf.read_prompt(path, max_seconds=30)
    with pytest.raises(GenerateError, match=r"prompt is 2\.0 s long: at most 1 s"):
        mf.read_prompt(tone(2.0), max_seconds=1)
    done = run_main(generate.main, ["--checkpoint", str(folder), "--text", "x", "--mode", "restyle", "--prompt-audio",
                                    str(path), "--out", str(tmp_path / "o.wav"), "--quiet"], capsys)
    one_error_line(done, "hour.flac is 601.0 s long: at most 600 s; cut it first")
    assert not (tmp_path / "o.wav").exists()


def test_prompt_channels_and_rate_refused_from_the_header(mf: MusicFlow, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding costs frames x channels and resampling scales with the rate: a 64-channel or a 1-kHz file is refused
    by its header before any sample is decoded."""
    import soundfile as sf

    sf.write(tmp_path / "many.wav", np.zeros((4000, 64), np.float32), 24_000, subtype="FLOAT")
    sf.write(tmp_path / "slow.wav", np.zeros(1000, np.float32), 1_000, subtype="FLOAT")

    def no_decoding(*a, **k):
        raise AssertionError("decoded a file the header check should have refused")

    monkeypatch.setattr(sf, "read", no_decoding)
    with pytest.raises(GenerateError, match=r"many\.wav has 64 channels at 24000 Hz: give audio with at most 8 "
                       r"channels at 4000\.\.384000 Hz"):
        mf.read_prompt(tmp_path / "many.wav")
    with pytest.raises(GenerateError, match=r"slow\.wav has 1 channels at 1000 Hz"):
        mf.read_prompt(tmp_path / "slow.wav")


def test_every_app_mode_keeps_the_servers_duration_cap(mf: MusicFlow, tmp_path: Path) -> None:
    """The app's Studio: restyle and infill keep the uploaded clip's length, so the upload itself is capped at
    --max-duration (before decoding); generate and continue are capped by their duration."""
    from musicflow_jax.app.studio import Limits, Studio

    studio = Studio(mf, tmp_path, limits=Limits(max_duration=1.5))
    write_wav(tmp_path / "clip.wav", tone(2.0), SR)
    fast = (StageSettings(steps=1, solver="euler"), StageSettings(steps=1, solver="euler"))
    for mode, duration, regions in (("restyle", 2.0, ""), ("infill", 2.0, "0.2-0.4"), ("continue", 1.2, "")):
        with pytest.raises(GenerateError, match=r"clip\.wav is 2\.0 s long: at most 1\.5 s"):
            studio.run(mode, "organ", duration, 0, 1, str(tmp_path / "clip.wav"), regions, fast, False)
    for mode in ("generate", "continue"):
        with pytest.raises(GenerateError, match=r"duration 2\.0 s: choose up to 1\.5 s"):
            studio.run(mode, "organ", 2.0, 0, 1, str(tmp_path / "clip.wav"), "", fast, False)
    write_wav(tmp_path / "short.wav", tone(1.0), SR)
    g, _ = studio.run("restyle", "organ", 1.0, 0, 1, str(tmp_path / "short.wav"), "", fast, False)
    assert g.audio.shape == (1, SR)  # within the cap: served


def test_clips_are_decoded_one_at_a_time(mf: MusicFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batched long generation: the decoder (the largest working set, ~6 MB per second of audio on the bundled model)
    sees one clip at a time, so memory does not grow with the batch by the decoder's share (bundled model, 150 s,
    peak RSS: 1 clip 1.50 GB, 4 clips 1.58 GB; 0.85 GB more per clip when the batch was decoded at once)."""
    shapes = []
    decode = mf.backend.decode
    monkeypatch.setattr(mf.backend, "decode", lambda z: shapes.append(z.shape) or decode(z))
    g = mf.generate(["a", "b", "c"], 1.0, stage1=FAST, stage2=FAST, progress=False)
    assert [s[0] for s in shapes] == [1, 1, 1] and g.audio.shape == (3, SR)


def test_average_solver_only_for_few_step_students(mf: MusicFlow) -> None:
    with pytest.raises(GenerateError, match=r"^solver average \(stage1\): 'average' steps a few-step student "
                       r"\(model.interval\); this stage is a flow: choose euler"):
        mf.generate(["x"], 1.0, stage1=StageSettings(2, "average", 1.0), progress=False)

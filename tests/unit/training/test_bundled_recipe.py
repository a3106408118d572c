"""tools/train_bundled.py's wiring, with every step's work replaced by a recorder: the steps run in the documented
order, each training pass starts from the previous pass's export (the codec's two decoder passes, stage 2's three),
the model folder is bundled from the last decoder pass's codec and the last stage-2 pass, `--until` stops where it
says, the report sums each step's wall time over sittings, a rendered corpus is not rendered again, and a run its
loop stopped early (SIGTERM, Ctrl-C: saved, returned) ends the recipe there with exit 75 instead of building on it,
and a bad input inside a step is one error line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from musicflow_jax.errors import RunUnfinishedError
from musicflow_jax.training.flow_trainer import TrainInputError

ROOT = Path(__file__).resolve().parents[3]


def load_recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_bundled", ROOT / "tools" / "train_bundled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def recipe(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, list[tuple[str, ...]]]:
    """The recipe module with its work functions recording (name, arguments that say where from and to)."""
    tb, calls = load_recipe(), []

    def train_codec(config: str, manifest: Path, workdir: Path, steps: int | None, init_from: Path | None = None
                    ) -> dict[str, Any]:
        calls.append(("codec", config, workdir.name, str(init_from)))
        return {"steps": steps}

    def precompute_features(manifest: Path, codec: Path, out: Path) -> dict[str, Any]:
        calls.append(("features", str(codec)))
        return {"splits": {"train": {"clips": 3}}}

    def stage_config(name: str, data: Path, steps: int | None, init_from: Path | None = None) -> SimpleNamespace:
        return SimpleNamespace(name=name, init_from=str(init_from), train=SimpleNamespace(steps=10), sample=None)

    def train_stage(cfg: SimpleNamespace, workdir: Path, out_file: Path) -> dict[str, Any]:
        calls.append(("stage", cfg.name, cfg.init_from, workdir.name, out_file.name))
        return {"steps": 1}

    def bundle(stage1: Path, stage2: Path, index: Path, codec: Path, data: Path, out: Path) -> None:
        calls.append(("bundle", stage1.name, stage2.name, str(codec)))
        out.mkdir(parents=True, exist_ok=True)

    def distill_turbo(folder: Path, data: Path, work: Path, steps: int | None) -> dict[str, Any]:
        calls.append(("turbo", str(data)))
        return {}

    for name, fn in (("train_codec", train_codec), ("precompute_features", precompute_features),
                     ("stage_config", stage_config), ("train_stage", train_stage), ("bundle", bundle),
                     ("distill_turbo", distill_turbo)):
        monkeypatch.setattr(tb, name, fn)
    return tb, calls


def run(tb: ModuleType, tmp_path: Path, *extra: str) -> int:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "manifest.jsonl").write_text("{}\n")
    return tb.main(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--corpus", str(corpus), *extra])


def test_each_pass_starts_from_the_previous_export_and_the_folder_takes_the_last(
        recipe: tuple[ModuleType, list[tuple[str, ...]]], tmp_path: Path) -> None:
    tb, calls = recipe
    assert run(tb, tmp_path) == 0
    w = tmp_path / "w"
    assert calls == [
        ("codec", "codec_corpus", "codec", "None"),
        ("codec", "codec_decoder", "decoder", str(w / "codec" / "export")),
        ("codec", "codec_decoder", "decoder_second", str(w / "decoder" / "export")),
        ("features", str(w / "codec" / "export")),  # the encoder the decoder passes keep bit-exact
        ("stage", "stage1", "None", "run1", "stage1.safetensors"),
        ("stage", "stage2_first", "None", "run2_first", "stage2_first.safetensors"),
        ("stage", "stage2_second", str(w / "stage2_first.safetensors"), "run2_second", "stage2_second.safetensors"),
        ("stage", "stage2", str(w / "stage2_second.safetensors"), "run2", "stage2.safetensors"),
        ("bundle", "stage1.safetensors", "stage2.safetensors", str(w / "decoder_second" / "export")),
        ("turbo", str(w / "features")),
    ]
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    assert list(report["wall_seconds"]) == [s for s in tb.STEPS if s != "corpus"]  # --corpus given: not rendered
    assert report["corpus"] == {"given": str(tmp_path / "corpus")}
    assert report["total_wall_seconds"] == pytest.approx(sum(report["wall_seconds"].values()), abs=0.2)


def test_a_given_corpus_replaces_an_earlier_sittings_rendering_in_the_report(
        recipe: tuple[ModuleType, list[tuple[str, ...]]], tmp_path: Path) -> None:
    tb, _ = recipe
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "train_report.json").write_text(json.dumps({"corpus": {"clips": 99}, "wall_seconds": {}}))
    assert run(tb, tmp_path, "--until", "codec") == 0
    report = json.loads((tmp_path / "w" / "train_report.json").read_text())
    assert report["corpus"] == {"given": str(tmp_path / "corpus")} and report["sittings"] == 1


def test_until_stops_after_its_step_and_a_second_sitting_adds_to_the_first(
        recipe: tuple[ModuleType, list[tuple[str, ...]]], tmp_path: Path) -> None:
    tb, calls = recipe
    assert run(tb, tmp_path, "--until", "decoder_second") == 0
    assert [c[2] for c in calls] == ["codec", "decoder", "decoder_second"]
    first = json.loads((tmp_path / "w" / "train_report.json").read_text())
    assert first["sittings"] == 1 and list(first["wall_seconds"]) == ["codec", "decoder", "decoder_second"]
    calls.clear()
    assert run(tb, tmp_path, "--until", "stage1") == 0
    second = json.loads((tmp_path / "w" / "train_report.json").read_text())
    assert second["sittings"] == 2 and list(second["wall_seconds"]) == [
        "codec", "decoder", "decoder_second", "features", "stage1"]
    for step in ("codec", "decoder", "decoder_second"):  # the reruns' (recorded, so instant) time is added
        assert second["wall_seconds"][step] >= first["wall_seconds"][step]


def test_a_run_stopped_early_ends_the_recipe_and_counts_its_time(
        recipe: tuple[ModuleType, list[tuple[str, ...]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    tb, calls = recipe
    real = load_recipe()
    monkeypatch.setattr(tb, "train_stage", real.train_stage)  # the real one, its loop stopped after step 4 of 10
    monkeypatch.setattr(tb.flow_trainer, "train", lambda cfg, workdir, **kw: SimpleNamespace(step=np.int32(4)))
    monkeypatch.setattr(real, "export", lambda *a, **kw: pytest.fail("exported an unfinished run"))
    assert run(tb, tmp_path) == RunUnfinishedError.exit_code == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run1 stopped after step 4 of 10: rerun the same command" in err[0], err
    assert [c[0] for c in calls] == ["codec", "codec", "codec", "features"]  # nothing after stage 1
    report = json.loads((tmp_path / "w" / "train_report.json").read_text())
    assert "stage1" in report["wall_seconds"] and "stage1" not in report and "bundle" not in report["wall_seconds"]


def test_a_bad_input_inside_a_step_is_one_line(
        recipe: tuple[ModuleType, list[tuple[str, ...]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A MusicFlowError raised by a step (here a resumed run whose init_from changed) is the CLIs' one `error:` line
    and exit 2, not a traceback."""
    tb, _ = recipe

    def refuse(cfg: SimpleNamespace, workdir: Path, out_file: Path) -> dict[str, Any]:
        raise TrainInputError(f"train.init_from {cfg.init_from} differs from the weights this run started from")

    monkeypatch.setattr(tb, "train_stage", refuse)
    assert run(tb, tmp_path) == TrainInputError.exit_code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: train.init_from None differs from the weights this run started from"], err


def test_a_corpus_rendered_in_an_earlier_sitting_is_not_rendered_again(
        recipe: tuple[ModuleType, list[tuple[str, ...]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --corpus the recipe renders one; a later sitting with the settings it was rendered with skips it (its
    recorded time stays), other settings render it again, also when that sitting stops right after the corpus; a
    rendering that did not finish is redone."""
    tb, _ = recipe
    rendered: list[int] = []

    def build(corpus: Path, limit: int, transpositions: int, jobs: int) -> dict[str, Any]:
        rendered.append(limit)
        corpus.mkdir(parents=True, exist_ok=True)
        (corpus / "manifest.jsonl").write_text(f'{{"limit": {limit}}}\n')
        if limit == 7:
            raise KeyboardInterrupt  # stopped after the manifest, before the recipe marks the corpus whole
        return {"ok": limit}

    monkeypatch.setattr(tb, "build", build)
    w = tmp_path / "w"

    def sitting(limit: int, until: str = "codec") -> dict[str, Any]:
        tb.main(["--work", str(w), "--out", str(tmp_path / "out"), "--until", until, "--limit", str(limit)])
        return json.loads((w / "train_report.json").read_text())

    first = sitting(5)
    assert rendered == [5] and first["corpus"] == {"ok": 5}
    report = json.loads((w / "train_report.json").read_text())
    report["wall_seconds"]["corpus"] = 12.3  # what a real rendering took
    (w / "train_report.json").write_text(json.dumps(report))
    assert sitting(5)["wall_seconds"]["corpus"] == 12.3 and rendered == [5]
    assert sitting(6, "corpus")["corpus"] == {"ok": 6} and rendered == [5, 6]
    assert sitting(5)["corpus"] == {"ok": 5} and rendered == [5, 6, 5]  # the limit-6 corpus is not taken for 5
    assert (w / "corpus" / "manifest.jsonl").read_text() == '{"limit": 5}\n'
    assert tb.main(["--work", str(w), "--out", str(tmp_path / "out"), "--until", "corpus", "--limit", "7"]) == 130
    sitting(5)
    assert rendered == [5, 6, 5, 7, 5]  # the unfinished one left no mark, so 5 renders again


def test_missing_inputs_are_one_line_exit_2(recipe: tuple[ModuleType, list[tuple[str, ...]]], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A --corpus folder without a manifest, and --only turbo without a model folder: one `error:` line, exit 2,
    nothing run."""
    tb, calls = recipe
    (tmp_path / "empty").mkdir()
    assert tb.main(["--work", str(tmp_path / "w"), "--corpus", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'empty' / 'manifest.jsonl'} does not exist: pass --corpus with a python -m "
                   "musicflow_jax.build_corpus folder"], err
    assert tb.main(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "none"), "--only", "turbo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = f"error: --only turbo needs a model folder at --out ({tmp_path / 'none'})"
    assert len(err) == 1 and err[0].startswith(want), err
    assert calls == []

"""Bad input to the command lines ends in one line on stderr (`error: ...`, naming the input and the fix) and exit
code 2, without a traceback and before any work; `--debug` shows the traceback. Each command's `main` runs here
(what `python -m musicflow_jax.<name>` runs); tests/unit/utils/test_locks.py and the e2e tests run the entry points
as processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from musicflow_jax.cli import build_corpus, convert, fit_kmeans
from musicflow_jax.cli import train as train_cli
from musicflow_jax.testing.cli import Done, one_error_line, run_main
from musicflow_jax.testing.records import write_fake_dataset
from musicflow_jax.training.flow_trainer import TrainInputError

ROOT = Path(__file__).resolve().parents[3]
TRAIN = ["--config", "stage1_tiny"]


@pytest.fixture()
def run(capsys: pytest.CaptureFixture) -> Callable[..., Done]:
    return lambda main, args: run_main(main, args, capsys)


def test_train_missing_config_file(run, tmp_path):
    proc = run(train_cli.main, ["--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "run")])
    one_error_line(proc, f"config file {tmp_path / 'nope.py'} does not exist", "get_config()")
    assert not (tmp_path / "run").exists()


def test_train_workdir_that_is_a_file_or_unwritable(run, tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run(train_cli.main, [*TRAIN, "--workdir", str(tmp_path / "afile")])
    one_error_line(proc, f"workdir {tmp_path / 'afile'} is a file, not a folder", "--workdir")
    proc = run(train_cli.main, [*TRAIN, "--workdir", "/proc/musicflow_run"])  # no file can be created there
    one_error_line(proc, "workdir /proc/musicflow_run cannot be written", "pick a writable folder for --workdir")


def test_train_bad_config_value(run, tmp_path):
    proc = run(train_cli.main, [*TRAIN, "--workdir", str(tmp_path / "run"), "--set", "train.ckpt_every=0"])
    one_error_line(proc, "config key 'train.ckpt_every': must be an integer >= 1")


def test_train_missing_data_path(run, tmp_path):
    missing = tmp_path / "features"
    proc = run(train_cli.main, [*TRAIN, "--workdir", str(tmp_path / "run"), "--set", "data.source=arrayrecord",
                 "--set", f"data.path={missing}"])
    one_error_line(proc, f"data.path {missing} is not a folder", "python -m musicflow_jax.precompute")
    assert not (tmp_path / "run" / "train.lock").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_train_data_without_index(run, tmp_path):
    (tmp_path / "features").mkdir()
    proc = run(train_cli.main, [*TRAIN, "--workdir", str(tmp_path / "run"), "--set", "data.source=arrayrecord",
                 "--set", f"data.path={tmp_path / 'features'}"])
    one_error_line(proc, f"{tmp_path / 'features' / 'index.json'} not found")


def test_train_feature_dim_mismatch_with_the_data(run, tmp_path):
    write_fake_dataset(tmp_path / "features", n_train=8, n_valid=8, shards=1, sem_dim=16, ac_dim=8)
    args = [*TRAIN, "--workdir", str(tmp_path / "run"), "--set", "data.source=arrayrecord",
            "--set", f"data.path={tmp_path / 'features'}"]
    line = one_error_line(run(train_cli.main, args), "config model.feature_dim=32 but the data index",
                           "has semantic features of dim 16: set --set model.feature_dim=16")
    assert str(tmp_path / "features" / "index.json") in line
    with pytest.raises(TrainInputError, match="config model.feature_dim=32"):  # --debug: the traceback on request
        train_cli.main([*args, "--debug"])


def test_build_corpus_unknown_composer_writes_nothing(run, tmp_path):
    proc = run(build_corpus.main, ["--out", str(tmp_path / "c"), "--composers", "nobody"])
    one_error_line(proc, "--composers: music21's corpus has no scores for composer 'nobody'", "bach")
    assert not (tmp_path / "c").exists()  # no empty manifest


@pytest.mark.parametrize("args,fragment", [
    (["--limit", "-3"], "--limit must be >= 0 (0 = all scores), got -3"),
    (["--soundfont", "/nonexistent/gm.sf2"], "--soundfont '/nonexistent/gm.sf2' is not a file"),
    (["--soundfont", ""], "--soundfont '' is not a file"),
    (["--composers", ","], "--composers ',' names no composer"),
    (["--valid-frac", "0.6", "--test-frac", "0.5"], "--valid-frac + --test-frac must be < 1"),
])
def test_build_corpus_bad_arguments(run, tmp_path, args, fragment):
    proc = run(build_corpus.main, ["--out", str(tmp_path / "c"), *args])
    one_error_line(proc, fragment)
    assert not (tmp_path / "c").exists()


def test_convert_weights_missing_source(run, tmp_path):
    proc = run(convert.main, ["hubert", str(tmp_path / "hf"), str(tmp_path / "out")])
    one_error_line(proc, f"SRC {tmp_path / 'hf'} does not exist")
    (tmp_path / "enc.th").write_bytes(b"")
    proc = run(convert.main, ["encodec", str(tmp_path / "enc.th"), str(tmp_path / "o"),
                 "--config", str(tmp_path / "cfg.json")])
    one_error_line(proc, f"--config {tmp_path / 'cfg.json'} does not exist")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_fit_kmeans_bad_arguments(run, tmp_path):
    out = str(tmp_path / "k.safetensors")
    proc = run(fit_kmeans.main, ["--manifest", str(tmp_path / "m.jsonl"), "--hubert",
                 str(tmp_path), "--layer", "6", "--out", out])
    one_error_line(proc, f"--manifest {tmp_path / 'm.jsonl'} does not exist")
    (tmp_path / "m.jsonl").write_text("")
    proc = run(fit_kmeans.main, ["--manifest", str(tmp_path / "m.jsonl"), "--hubert",
                 str(tmp_path), "--layer", "6", "--k", "0", "--out", out])
    one_error_line(proc, "--k must be >= 1, got 0")
    assert not Path(out).exists()


def _run(args: list[str]) -> subprocess.CompletedProcess:
    """A tool script as a process (tools/ are scripts, not modules)."""
    return subprocess.run(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=300)


def test_spectrograms_missing_manifest_and_model(tmp_path):
    tool = [sys.executable, "tools/spectrograms.py", "--out", str(tmp_path / "s.png")]
    one_error_line(_run([*tool, "--manifest", str(tmp_path / "none.jsonl")]), "--manifest", "does not exist")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.wav", "caption": "x", "split": "train", "duration": 1.0}\n')
    one_error_line(_run([*tool, "--manifest", str(manifest), "--checkpoint", str(tmp_path / "nomodel")]),
                    "is not a folder")


def test_train_init_from_missing_and_build_corpus_unknown_instrument(run, tmp_path):
    proc = run(train_cli.main, [*TRAIN, "--workdir", str(tmp_path / "run"), "--set",
                                f"train.init_from={tmp_path / 'none'}"])
    one_error_line(proc, f"train.init_from {tmp_path / 'none'} does not exist")
    proc = run(build_corpus.main, ["--out", str(tmp_path / "c"), "--instrument", "a kazoo"])
    one_error_line(proc, "--instrument 'a kazoo' is not one of the corpus instruments")


def test_config_that_is_not_python_and_corpus_out_that_cannot_be_written(run, tmp_path):
    """Found by the flag-space property (test_cli_flag_space.py): both ended in tracebacks."""
    (tmp_path / "clip.wav").write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    proc = run(train_cli.main, ["--config", str(tmp_path / "clip.wav"), "--workdir", str(tmp_path / "run")])
    one_error_line(proc, f"config file {tmp_path / 'clip.wav'} is not a Python file")
    proc = run(build_corpus.main, ["--out", "/proc/musicflow_corpus", "--limit", "1"])
    one_error_line(proc, "--out /proc/musicflow_corpus cannot be written", "pick a writable folder")
    proc = run(build_corpus.main, ["--out", "/dev/null", "--limit", "1"])
    one_error_line(proc, "--out /dev/null is a file, not a folder")

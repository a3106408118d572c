"""Learning on real music: Bach scores rendered with fluidsynth (musicflow_jax/data/corpus.py), encoded with the tiny
random HuBERT / Encodec (musicflow_jax.precompute, jax engine), then the tiny stage-1 and stage-2 configs trained with
musicflow_jax.train for 50 steps must bring the validation flow loss clearly below step 0."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicflow_jax.backends.registry import PartFiles
from musicflow_jax.convert.encodec import convert_encodec
from musicflow_jax.core import config
from musicflow_jax.data import corpus as bc
from musicflow_jax.data import loader as data
from musicflow_jax.data import precompute as pf
from musicflow_jax.testing.tiny_models import save_tiny_encodec, save_tiny_hubert
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.training import logger as metrics

STEPS = 50  # measured at 50 steps: stage1 EMA valid 2.98 -> 2.17, stage2 4.17 -> 3.07 (< 0.8x; 100 steps: 1.82, 2.98)


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    assert shutil.which("fluidsynth") and any(Path(p).is_file() for p in bc.SOUNDFONTS), \
        "fluidsynth + a GM soundfont are needed: run .ci/setup_env.sh"
    root = tmp_path_factory.mktemp("learn")
    summary = bc.build_corpus(root / "corpus", composers=("bach",), limit=10, seed=0, max_seconds=20.0,
                              valid_frac=0.3, test_frac=0.0, progress=False)
    assert summary["ok"] >= 8, summary
    out = root / "features"
    pf.precompute(root / "corpus" / "manifest.jsonl", out,
                  files=PartFiles(hubert=str(save_tiny_hubert(root / "hubert")),
                                  encodec=str(save_tiny_encodec(root / "encodec")), layer=2),
                  cut=pf.Segmenting(4.0), threads=1,
                  progress=False)
    convert_encodec(root / "encodec", root / "encodec_flax")
    return out


def _train(features: Path, cfg_file: str, workdir: Path) -> tuple[float, float]:
    cfg = config.load(cfg_file, ["data.source=arrayrecord", f"data.path={features}", f"train.steps={STEPS}",
                                 f"train.eval_every={STEPS}", "train.eval_batches=4", "train.log_every=50",
                                 f"train.ckpt_every={STEPS}", "optim.warmup_steps=20", f"train.sample_every={STEPS}",
                                 f"train.sample_codec={features.parent / 'encodec_flax'}"])
    n_valid = sum(1 for _ in data.make_eval_dataset(cfg, "valid"))
    assert n_valid >= 1, "the rendered corpus has no validation batch"
    train.train(cfg, workdir)
    valid = {r["step"]: r for r in metrics.read_jsonl(workdir / "metrics.jsonl", "valid")}
    assert sorted(valid) == [0, STEPS]
    return valid[0]["loss"], valid[STEPS]["loss_ema"]


@pytest.mark.slow
@pytest.mark.parametrize("cfg_file", ["stage1_tiny", "stage2_tiny"])
def test_tiny_stage_learns_real_music(features, cfg_file, tmp_path):
    first, last = _train(features, cfg_file, tmp_path)
    print(f"{cfg_file}: valid loss step 0 {first:.4f} -> step {STEPS} (EMA) {last:.4f}")
    assert last < 0.8 * first, (first, last)
    # periodic samples of the fixed prompts with the EMA weights; stage 2 decoded to WAV by the codec
    cfg = config.load(cfg_file)
    x = np.load(tmp_path / "samples" / f"step{STEPS:08d}.npy")
    assert x.shape == (3, cfg.data.frames, cfg.model.feature_dim) and np.isfinite(x).all()
    wavs = sorted((tmp_path / "samples").glob("*.wav"))
    if cfg.model.stage == "acoustic":
        assert len(wavs) == 3
        audio, sr = sf.read(wavs[0])
        assert sr == 24_000 and len(audio) == cfg.data.frames * 320 and np.isfinite(audio).all()
    else:
        assert not wavs

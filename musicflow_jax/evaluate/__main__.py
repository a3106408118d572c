"""`python -m musicflow_jax.evaluate --generated DIR|manifest --reference manifest --out DIR [--clap FOLDER]`:
the weight-free music metrics (and the CLAP score with a local CLAP folder) of generated clips against a reference
set, written to DIR/results.json and DIR/results.md (musicflow_jax.evaluate.report). Per-clip analyses are cached
in DIR/cache by content hash, so re-runs are fast.
`python -m musicflow_jax.evaluate --compare A/results.json B/results.json` prints both runs side by side with paired
bootstrap 95% intervals over clips (musicflow_jax.evaluate.compare). Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from musicflow_jax.evaluate.report import EvaluateError, evaluate, load_clips, markdown

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m musicflow_jax.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--generated", help="folder of generated WAVs (captions in their metadata) or a manifest .jsonl")
    ap.add_argument("--reference", help="manifest .jsonl (or WAV folder) of real clips with captions")
    ap.add_argument("--out", help="output folder: results.json, results.md, cache/")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two results.json of the same prompts: print them "
                    "side by side with paired bootstrap 95%% intervals")
    ap.add_argument("--clap", default=None, help="local transformers CLAP folder (save_pretrained) for the CLAP score")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    if a.compare:
        return _compare(*a.compare)
    missing = [f for f, v in (("--generated", a.generated), ("--reference", a.reference), ("--out", a.out)) if not v]
    if missing:
        ap.error(f"{', '.join(missing)} required (or --compare A B)")
    from musicflow_jax.evaluate.clap import ClapError

    out = Path(a.out)
    try:
        results = evaluate(load_clips(a.generated, "generated"), load_clips(a.reference, "reference"),
                           cache=out / "cache", clap_folder=a.clap, progress=not a.quiet)
    except (EvaluateError, ClapError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from musicflow_jax.atomic_io import write_text

    write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    write_text(out / "results.md", table)
    if not a.quiet:
        print(table)
    return 0


def _compare(path_a: str, path_b: str) -> int:
    from musicflow_jax.evaluate.compare import CompareError, compare, load_results, markdown

    try:
        cmp = compare(load_results(path_a), load_results(path_b))
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(markdown(cmp, "A", "B"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

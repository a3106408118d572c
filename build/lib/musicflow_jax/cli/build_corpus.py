"""`python -m musicflow_jax.build_corpus --out data/corpus --composers bach --limit 200 --seed 0`: render music21's
bundled scores to a captioned 24 kHz mono WAV corpus with ground-truth note lists (musicflow_jax/data/corpus.py).

`--skip N` leaves out the first N scores of the seeded order (a held-out corpus: `--seed 0 --skip 160` avoids the
bundled model's training scores); `--transpositions K` also renders K seeded transposed copies of each score;
`--jobs J` renders J scores at a time. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from musicflow_jax.cli import _common
from musicflow_jax.data.corpus import SOUNDFONTS, build_corpus


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("build_corpus", __doc__)
    ap.add_argument("--out", required=True, help="output folder (audio/, manifest.jsonl, failures.jsonl)")
    ap.add_argument("--composers", default="bach", help="comma-separated music21 corpus composers")
    ap.add_argument("--limit", type=int, default=0, help="max scores (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N scores of the seeded order (held-out "
                    "sets: --seed 0 --skip 160 avoids the bundled model's training scores)")
    ap.add_argument("--sample-rate", type=int, default=24_000)
    ap.add_argument("--soundfont", default=None, help=f"GM .sf2 (default: first of {SOUNDFONTS})")
    ap.add_argument("--max-seconds", type=float, default=0.0, help="cut each rendering to this length (0 = off)")
    ap.add_argument("--transpositions", type=int, default=0, help="also render each score in this many seeded "
                    "transposed keys (-5..+6 semitones; captions name the transposed key)")
    ap.add_argument("--jobs", type=int, default=1, help="scores rendered at a time")
    ap.add_argument("--instrument", default=None, help="play every score on this one (caption name, e.g. 'a marimba'; "
                    "default: a seeded draw per score)")
    ap.add_argument("--valid-frac", type=float, default=0.05)
    ap.add_argument("--test-frac", type=float, default=0.05)
    a = ap.parse_args(argv)

    def run() -> int:
        summary = build_corpus(a.out, composers=a.composers, limit=a.limit or None, seed=a.seed,
                               sample_rate=a.sample_rate, soundfont=a.soundfont, max_seconds=a.max_seconds,
                               valid_frac=a.valid_frac, test_frac=a.test_frac, skip=a.skip,
                               transpositions_per_score=a.transpositions, jobs=a.jobs, instrument=a.instrument)
        print(json.dumps(summary, indent=1))
        if not summary["ok"]:
            print(f"error: no score could be rendered ({summary['skipped']} failed): see the reasons in "
                  f"{Path(a.out) / 'failures.jsonl'}", file=sys.stderr)
            return 1
        return 0

    return _common.run(run, debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())

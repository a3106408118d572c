"""What an interactive user waits for, measured in one run with one model folder (default: the bundled model):
a draft vs a full generation vs refining the draft (warm, best of --repeats), and the first generation at a new
duration inside a compiled length bucket vs without buckets. A folder with few-step students (turbo/) drafts with
them: its rows add the stages' own DRAFT_STEPS-midpoint draft beside them. Prints the times and their ratios.

    python tools/bench_interactive.py [--checkpoint DIR] [--duration 10] [--bucket-durations 4.0,3.6]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from musicflow_jax.inference.cascade import MusicFlow

TEXT = ["a calm Bach chorale played on a church organ"]


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--duration", type=float, default=10.0, help="clip length for draft / full / refine")
    ap.add_argument("--bucket-durations", default="4.0,3.6", help="A,B: B is a new duration in A's bucket")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    a, b = (float(x) for x in args.bucket_durations.split(","))

    first = {}
    for per_window in (8, 0):  # with buckets (default), then without
        mf = MusicFlow.load(args.checkpoint, per_window=per_window)
        mf.generate(TEXT, a, seed=0, progress=False)
        t = time.perf_counter()
        mf.generate(TEXT, b, seed=0, progress=False)
        first[per_window] = time.perf_counter() - t
    print(f"first generation at {b:g} s after {a:g} s: {first[8]:.2f} s with buckets, {first[0]:.2f} s without "
          f"({first[0] / first[8]:.1f}x)")

    mf = MusicFlow.load(args.checkpoint)
    d = args.duration
    draft = mf.generate(TEXT, d, seed=0, progress=False, draft=True)
    mf.generate(TEXT, d, seed=0, progress=False)
    mf.refine(draft, progress=False)  # everything compiled
    full_s = best(lambda: mf.generate(TEXT, d, seed=1, progress=False), args.repeats)
    draft_s = best(lambda: mf.generate(TEXT, d, seed=1, progress=False, draft=True), args.repeats)
    refine_s = best(lambda: mf.refine(draft, progress=False), args.repeats)
    kind = "turbo draft (the few-step students)" if mf.turbo else "draft"
    print(f"{d:g}-s clip: full {full_s:.2f} s (NFE {sum(mf.generate(TEXT, d, progress=False).nfe.values())}), "
          f"{kind} {draft_s:.2f} s (NFE {sum(draft.nfe.values())}): {full_s / draft_s:.1f}x faster; refining the "
          f"draft {refine_s:.2f} s ({refine_s / full_s:.2f}x a full generation)")
    if mf.turbo:
        s1, s2 = (MusicFlow.draft_settings(st) for st in mf.stages)
        plain = mf.generate(TEXT, d, seed=0, progress=False, stage1=s1, stage2=s2)
        plain_s = best(lambda: mf.generate(TEXT, d, seed=1, progress=False, stage1=s1, stage2=s2), args.repeats)
        print(f"  the stages' own {s1.steps}-step midpoint draft {plain_s:.2f} s (NFE {sum(plain.nfe.values())}): "
              f"the turbo draft is {plain_s / draft_s:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which text encoder carries a caption's key, tempo and instrument in words it was not fitted on? Linear probes
(musicflow_jax/evaluate/text_probe.py) on the embedded random byte-T5 and on all-MiniLM-L6-v2, fitted on captions in
the training wordings, scored on held-out wordings with unseen fact combinations; one run, side by side:

    python tools/probe_text_encoder.py [--train 3000 --test 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from musicflow_jax.core.config import TextConfig
from musicflow_jax.data.corpus import ENSEMBLES, SOLO
from musicflow_jax.encoders.text import MINILM, TextEncoder
from musicflow_jax.evaluate import text_probe

ENCODERS = {  # name -> the TextConfig the bundled stages used / use
    "byte-T5 (random, d 32)": TextConfig(checkpoint="", max_len=96, dim=32),
    "all-MiniLM-L6-v2": TextConfig(checkpoint=MINILM, max_len=32, dim=384),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=3000, help="captions the probes are fitted on")
    ap.add_argument("--test", type=int, default=1000, help="held-out-wording captions they are scored on")
    a = ap.parse_args(argv)
    instruments = sorted({*SOLO, *ENSEMBLES})
    train = text_probe.random_facts(a.train, instruments, seed=0)
    test = text_probe.random_facts(a.test, instruments, seed=1)
    rows = {}
    for name, cfg in ENCODERS.items():
        t0 = time.perf_counter()
        enc = TextEncoder.load(cfg)
        s = text_probe.probe(enc, train, test)
        rows[name] = {**s.__dict__, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({name: rows[name]}), flush=True)
    print(f"\nchance: key {1 / 24:.3f}, instrument {1 / len(instruments):.3f}\n")
    print("| encoder | key exact | tempo within 4 % | instrument |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['key']:.3f} | {r['tempo_4pct']:.3f} | {r['instrument']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

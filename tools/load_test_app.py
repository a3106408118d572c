"""Load-test the web demo on loopback: start `python -m musicflow_jax.app`, then several clients send small requests
alone, then while one client holds the heaviest request the page allows, which then closes its page
(musicflow_jax/app/loadtest.py). Prints the measurements as JSON (small-request latency p50 / p95 with and without
the heavy request, the heavy request's cost and how soon it stopped after its page closed, the server's peak RSS).

    python tools/load_test_app.py [--checkpoint FOLDER | --tiny] [--clients 3] [--rounds 3] [--max-duration 30]

--tiny builds a tiny random model in a temporary folder (what tests/e2e/test_app.py runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from musicflow_jax.app.loadtest import Heavy, run
from musicflow_jax.testing.browser import free_port, start_app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model instead")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="small requests per client, one after another")
    ap.add_argument("--max-duration", type=float, default=30.0, help="the app's --max-duration (the heavy request's)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="musicflow_load_"))
    checkpoint = a.checkpoint
    if a.tiny:
        from musicflow_jax.testing.model_folders import make_model_folder

        checkpoint = str(make_model_folder(work / "model"))
    port, log = free_port(), work / "app.log"
    app_args = ["--max-duration", str(a.max_duration), "--outdir", str(work / "results")]
    proc = start_app(app_args + (["--checkpoint", checkpoint] if checkpoint else []), port, log)
    try:
        from musicflow_jax.inference.cascade import MusicFlow

        st1, st2 = MusicFlow.load(checkpoint).stages  # the page's heaviest request at the default settings
        s = st1.settings
        if (s.steps, s.solver, s.cfg_scale) != (st2.settings.steps, st2.settings.solver, st2.settings.cfg_scale):
            s = max((st1.settings, st2.settings), key=lambda x: x.steps)
        heavy = Heavy(duration=a.max_duration, variations=4, steps=s.steps, solver=s.solver, cfg=s.cfg_scale)
        result = run(f"http://127.0.0.1:{port}", proc.pid, log, a.clients, a.rounds, heavy)
    finally:
        proc.terminate()
        proc.wait(30)
    result["heavy"] = dataclasses.asdict(heavy)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

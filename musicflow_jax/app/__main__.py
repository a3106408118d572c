"""The web demo: `python -m musicflow_jax.app [--checkpoint MODEL] [--host 127.0.0.1 --port 7860]` (needs the
optional extra: `pip install -e '.[app]'`).

A Gradio page (ui.py) over the Python API: the model (the bundled one unless --checkpoint) is loaded once and shared
by every request (studio.py); durations share compiled executables through the length buckets and the persistent
compilation cache. Serving many sessions: every request is bounded (--max-duration, --budget, --deadline), requests
take turns on the model window by window (turns.py), uploads are capped (--max-upload-mb) and checked from their
header, results live in per-session folders no other session can name, pruned by age and size (--keep-hours,
--keep-gb). Bad input on the command line: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from musicflow_jax.app.studio import Limits, Studio
from musicflow_jax.app.ui import build_ui
from musicflow_jax.errors import EXIT_BAD_INPUT, MusicFlowError
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.utils import compile_cache

log = logging.getLogger("musicflow_jax.app")


FLAGS = {"checkpoint": "--checkpoint", "lora": "--lora", "dtype": "--dtype", "device": "--device"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m musicflow_jax.app", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--lora", action="append", default=[], help="adapter file of a LoRA fine-tune (repeatable)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="flow stages' compute dtype")
    ap.add_argument("--device", default=None, help="cpu, gpu, tpu or gpu:N")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="a public gradio.live link (needs internet)")
    ap.add_argument("--outdir", default=None, help="where results are saved (default: a temporary folder)")
    ap.add_argument("--duration", type=float, default=8.0, help="the page's initial duration (s)")
    ap.add_argument("--max-duration", type=float, default=30.0,
                    help="the longest result or upload a request may have (s; the duration slider's maximum)")
    ap.add_argument("--budget", type=float, default=1.0, help="compute per request, in units of the page's heaviest "
                    "request at the model's default settings (more steps / guidance beyond them are refused)")
    ap.add_argument("--deadline", type=float, default=600.0, help="a request unfinished this long after it was "
                    "sent is stopped (s)")
    ap.add_argument("--max-upload-mb", type=float, default=50.0, help="largest prompt-audio upload (MB)")
    ap.add_argument("--queue-size", type=int, default=32, help="requests waiting at most; more are turned away")
    ap.add_argument("--keep-hours", type=float, default=24.0, help="results older than this are deleted")
    ap.add_argument("--keep-gb", type=float, default=2.0, help="the oldest results beyond this total are deleted")
    args = ap.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the web demo needs gradio: pip install -e '.[app]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not 0.5 <= args.duration <= args.max_duration:
        print(f"error: --duration {args.duration} must be within 0.5..--max-duration ({args.max_duration})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    for flag in ("budget", "deadline", "max_upload_mb", "queue_size", "keep_hours", "keep_gb"):
        v = getattr(args, flag)
        if not v > 0 or v == float("inf"):
            print(f"error: --{flag.replace('_', '-')} {v} must be a positive number", file=sys.stderr)
            return EXIT_BAD_INPUT
    compile_cache.enable()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        mf = MusicFlow.load(args.checkpoint, lora=args.lora, dtype=args.dtype, device=args.device, eval_progress=True)
    except MusicFlowError as e:
        print(f"error: {e.one_line(FLAGS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    outdir = Path(args.outdir) if args.outdir else Path(tempfile.mkdtemp(prefix="musicflow_app_"))
    outdir.mkdir(parents=True, exist_ok=True)
    limits = Limits(max_duration=args.max_duration, budget=args.budget, deadline_s=args.deadline,
                    keep_hours=args.keep_hours, keep_gb=args.keep_gb)
    studio = Studio(mf, outdir, limits=limits)
    studio.prune()
    ui = build_ui(studio, args.duration, args.max_duration)
    log.info("model %s loaded; results in %s; at most %s network frame-evaluations per request", mf.folder, outdir,
             f"{studio.max_cost:,}")
    # the requests enter together and take turns inside Studio (the cheapest waiting first, handing over between
    # windows), so Gradio's own queue only bounds how many wait
    ui.queue(max_size=args.queue_size, default_concurrency_limit=args.queue_size).launch(
        server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(outdir)], ssr_mode=False,
        show_error=False, quiet=False, max_file_size=int(args.max_upload_mb * 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())

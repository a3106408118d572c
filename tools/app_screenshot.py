"""Drive the web demo in headless Chromium: start `python -m musicflow_jax.app`, request a generation in the page,
wait for the audio players, save a screenshot.

    python tools/app_screenshot.py --out docs/app.png [--checkpoint FOLDER] [--text "..."] [--duration 4]

Needs Debian's chromium + chromium-driver (.ci/setup_env.sh installs them) and the app extra (gradio, selenium).
The browser functions are musicflow_jax/testing/browser.py's (the browser test uses them too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from musicflow_jax.testing.browser import chromium, free_port, generate_in_page, start_app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/app.png")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--text", default="a calm Bach chorale played on a church organ")
    ap.add_argument("--duration", type=float, default=4.0)
    args = ap.parse_args(argv)
    port, log = free_port(), Path(args.out).with_suffix(".log")
    app_args = ["--duration", str(args.duration)] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    proc = start_app(app_args, port, log)
    driver = chromium()
    try:
        t0 = time.time()
        srcs = generate_in_page(driver, f"http://127.0.0.1:{port}/", args.text)
        time.sleep(2.0)  # spectrogram images and waveforms finish drawing
        driver.save_screenshot(args.out)
        print(f"{len(srcs)} players after {time.time() - t0:.1f} s; screenshot {args.out}")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(30)
        log.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

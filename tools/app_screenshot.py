"""Drive the web demo in headless Chromium: start `python -m musicflow_jax.app`, request a generation in the page,
wait for the audio players, save a screenshot.

    python tools/app_screenshot.py --out docs/app.png [--checkpoint FOLDER] [--text "..."] [--duration 4]

Needs Debian's chromium + chromium-driver (.ci/setup_env.sh installs them) and the app extra (gradio, selenium).
tests/test_app.py uses the same functions.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args: list[str], port: int, log: Path, timeout: float = 240.0) -> subprocess.Popen:
    """The app on 127.0.0.1:port (its output in `log`), once it answers HTTP; raises if it exits or times out."""
    cmd = [sys.executable, "-m", "musicflow_jax.app", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"the app did not answer on port {port} within {timeout:.0f} s: {log.read_text()[-2000:]}")


def chromium() -> object:
    """A headless Chromium WebDriver session (selenium) at 1400 x 1000."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((p for p in CHROMIUM if Path(p).exists()), None)
    driver = next((p for p in DRIVER if Path(p).exists()), None)
    if binary is None or driver is None:
        raise FileNotFoundError("chromium / chromedriver not found: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000",
              "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(fn: object, timeout: float, what: str, poll: float = 0.5) -> object:
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = fn()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def set_text(driver: object, elem_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if value:
        box.send_keys(value)
    box.send_keys(Keys.TAB)  # commit the value (Gradio listens to change/blur)


def audio_sources(driver: object) -> list[str]:
    """The audio URL of every output player that holds an <audio> element (its download link), in order."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('[id^=out-]'))"
        ".filter(p => p.querySelector('audio') && p.querySelector('a[download]'))"
        ".map(p => p.querySelector('a[download]').href);")


def status_text(driver: object) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def generate_in_page(driver: object, url: str, text: str, timeout: float = 300.0, button: str = "generate"
                     ) -> list[str]:
    """Open the page, enter `text`, press the button; the players' audio URLs once they appear."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#text textarea"), 60, "the page to load")
    set_text(driver, "text", text)
    driver.find_element(By.ID, button).click()
    return wait_for(lambda: audio_sources(driver), timeout, "an audio player")


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

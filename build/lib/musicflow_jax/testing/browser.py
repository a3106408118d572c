"""Driving the web demo in headless Chromium (Debian's chromium + chromium-driver, selenium from the `app` extra):
start `python -m musicflow_jax.app` on a free loopback port, open the page, type, click, read the players. Used by the
browser test and tools/app_screenshot.py.
"""

from __future__ import annotations

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

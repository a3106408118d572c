"""The web demo end to end in headless Chromium (Debian's chromium + chromedriver, started here) on the tiny random
model: the page loads, a generation requested in it yields two players whose WAVs are the API's audio for the same
request, Draft then Refine keeps the draft's semantic stream bit for bit, and bad input is a message in the page."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicflow_jax.app import loadtest
from musicflow_jax.app.studio import Studio
from musicflow_jax.inference.cascade import GenerateError, MusicFlow, StageSettings
from musicflow_jax.testing import browser
from musicflow_jax.testing.model_folders import tone

TEXT = "a fast jazz piano trio"


def _results(outdir: Path, mode: str) -> list[Path]:
    """Result folders of `mode` (outdir/<session folder>/<time>-<random>-<mode>/)."""
    return sorted(p for p in outdir.glob("*/*") if p.name.endswith(f"-{mode}") and (p / "generation.json").exists())


MAX_DURATION = 10.0  # the test server's --max-duration: the load test's heavy request is 4 x 10 s


@dataclasses.dataclass
class App:
    url: str
    proc: subprocess.Popen
    log: Path
    outdir: Path


@pytest.fixture(scope="module")
def app(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """One server on the tiny model for the module's tests (the browser test, then the load test)."""
    tmp = tmp_path_factory.mktemp("app")
    outdir, port = tmp / "results", browser.free_port()
    proc = browser.start_app(["--checkpoint", str(tiny_folder), "--duration", "1", "--max-duration", str(MAX_DURATION),
                              "--outdir", str(outdir)], port, tmp / "app.log")
    try:
        yield App(f"http://127.0.0.1:{port}", proc, tmp / "app.log", outdir)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_page_generates_drafts_refines_and_reports_bad_input(app: App, tiny_folder: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    outdir = app.outdir
    driver = browser.chromium()
    try:
        url = app.url + "/"
        srcs = browser.generate_in_page(driver, url, TEXT, timeout=240)
        assert len(srcs) == 2  # two variations side by side (the page's default)
        clips = []
        for src in srcs:
            with urllib.request.urlopen(src, timeout=30) as r:
                audio, sr = sf.read(io.BytesIO(r.read()), dtype="float32")
            clips.append(audio)
            assert sr == 24_000 and audio.shape == (24_000,) and float(np.sqrt(np.mean(audio**2))) > 1e-3
        # the page's request is the API's: same text x 2, 1 s, seed 0, the stages' default settings
        want = MusicFlow.load(tiny_folder).generate([TEXT, TEXT], 1.0, seed=0, progress=False)
        np.testing.assert_allclose(np.stack(clips), want.audio, atol=1e-6)
        assert driver.find_elements(By.CSS_SELECTOR, "#spec-0 img"), "spectrogram shown"
        assert browser.status_text(driver).startswith("Generate: 2 x 1.00 s")
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 20_000

        driver.find_element(By.ID, "draft").click()
        browser.wait_for(lambda: browser.status_text(driver).startswith("Draft:"), 120, "the draft")
        driver.find_element(By.ID, "refine").click()
        browser.wait_for(lambda: browser.status_text(driver).startswith("Refined:"), 120, "the refined clip")
        (draft,), (refined,) = _results(outdir, "draft"), _results(outdir, "refine")
        assert sorted(p.name for p in draft.glob("*.draft.npz")) == ["00.draft.npz", "01.draft.npz"]
        with np.load(draft / "streams.npz") as d, np.load(refined / "streams.npz") as r:
            np.testing.assert_array_equal(r["semantic"], d["semantic"][:1])  # variation 1's stream, bit for bit
            assert r["acoustic"].shape == d["acoustic"][:1].shape
        meta = json.loads((refined / "generation.json").read_text())
        assert meta["nfe"]["stage1"] == 0 and meta["nfe"]["stage2"] == want.nfe["stage2"]

        browser.set_text(driver, "text", "")  # bad input: a message in the page, no traceback
        driver.find_element(By.ID, "generate").click()
        msg = browser.wait_for(lambda: "Error" in browser.status_text(driver) and browser.status_text(driver), 60,
                               "the error message")
        assert "is empty: describe the music" in msg and "Traceback" not in driver.page_source
    finally:
        driver.quit()


@pytest.mark.slow
def test_small_requests_are_not_held_by_the_heaviest_one(app: App) -> None:
    """Loopback load (musicflow_jax/app/loadtest.py): 3 clients x 2 small requests alone, then while a fourth holds the
    heaviest request the page allows at its defaults (4 x 10 s; the default budget admits exactly it), which then
    closes its page. Bounds set from `python tools/load_test_app.py --tiny` (4 x 30 s heavy, 13.7 s alone): small
    requests waited at most 0.100 s server-side with the heavy one running (0.058 s without it); first come first
    served would make them wait for all of it."""
    heavy = loadtest.Heavy(duration=MAX_DURATION, variations=4, steps=4, solver="euler", cfg=2.0)  # tiny defaults
    r = loadtest.run(app.url, app.proc.pid, app.log, clients=3, rounds=2, heavy=heavy)
    assert r["small_all_own_results"], "every client got its own results"
    assert r["heavy_alone_status"].startswith("Generate: 4 x 10.00 s"), "the budget admits the page's heaviest"
    assert r["over_budget_status"].startswith("**Error:** this request needs up to 152,000 network frame-evaluations")
    assert r["heavy_outcome"] == "request stopped: the page was closed" and r["heavy_stopped_after_close_s"] < 5
    assert r["small_loaded_wait_max_s"] < 1.0, r  # one heavy window at most (0.3 s measured), with slack for CI
    assert r["heavy_alone_s"] > 3.0, "the heavy request must be heavy enough for the bound to mean something"
    assert r["server_peak_rss_mb"] < 3000
    sessions = {p.parent for p in app.outdir.glob("*/*-generate")}
    assert len(sessions) >= 4 and all(len(s.name) == 32 for s in sessions)  # one folder per client


def test_studio_modes_and_messages(tiny_folder: Path, tmp_path: Path) -> None:
    studio = Studio(MusicFlow.load(tiny_folder), tmp_path)  # (the modes' own guarantees: test_generate.py)
    fast = (StageSettings(steps=1, solver="euler"), StageSettings(steps=1, solver="euler"))
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(1.0), 24_000)
    g, saved = studio.run("infill", TEXT, 1.0, 3, 1, str(clip), "0.3-0.6", fast, False)
    assert g.mode == "infill" and g.audio.shape == (1, 24_000) and (saved / "00.wav").is_file()
    kept, _ = sf.read(clip, dtype="float32")
    np.testing.assert_array_equal(g.audio[0, :2000], kept[:2000])  # the prompt kept outside the regions
    for args, message in [
        (("continue", TEXT, 2.0, 0, 1, None, "", fast, False), "^mode continue needs a clip"),
        (("infill", TEXT, 1.0, 0, 1, str(clip), " ", fast, False), "^infill needs regions"),
        (("infill", TEXT, 1.0, 0, 1, str(clip), "0.5-9", fast, False), r"^regions 0\.5-9 is outside"),
        (("generate", TEXT, 1.0, 0.5, 1, None, "", fast, False), r"^seed 0\.5 must be an integer"),
        (("generate", TEXT, 1.0, 0, 9, None, "", fast, False), "^variations 9: choose 1 to 4"),
        (("restyle", TEXT, 1.0, 0, 1, str(clip), "", fast, True), "^drafts are for text-to-music"),
    ]:
        with pytest.raises(GenerateError, match=message):
            studio.run(*args)
    with pytest.raises(GenerateError, match="^nothing to refine yet"):
        studio.refine(None, 1, fast[1])
    with pytest.raises(GenerateError, match="^the last result is a infill: refine works on Draft"):
        studio.refine(g, 1, fast[1])
    d, _ = studio.run("generate", TEXT, 0.5, 0, 2, None, "", fast, True)
    with pytest.raises(GenerateError, match="^variation 3: the last result has 2; choose 1 to 2"):
        studio.refine(d, 3, fast[1])
    r, saved = studio.refine(d, 2, fast[1])
    np.testing.assert_array_equal(r.semantic, d.semantic[1:])
    assert r.rows == [1] and sorted(p.name for p in saved.glob("*.wav")) == ["00.wav"]


def test_cli_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from musicflow_jax.app.__main__ import main

    assert main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --checkpoint {tmp_path / 'nope'} is not a folder: pass a MusicFlow model folder (stage1/stage2 "
        ".safetensors + features.json + text_encoder/)"]
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "musicflow_jax.app", "--duration", "99"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: --duration 99.0 must be within 0.5..--max-duration (30.0)"]
    assert time.time() - t0 < 120

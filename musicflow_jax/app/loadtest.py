"""A load test of a running web app on loopback (tools/load_test_app.py, tests/e2e/test_app.py): several clients
send small requests, first alone, then while one client holds the heaviest request the page allows; then that client
closes its page mid-request. Measures what a shared service must keep: the small requests' latency (p50 / p95, with
and without the heavy one), the heavy one bounded by the budget and stopped when its page closes, the server's peak
memory, and that every client gets its own results (each WAV's metadata names its own caption).

Everything is compiled first (a small request, and the heavy one alone, which also times it): compiling a new shape
holds the model for its whole duration (it happens inside one window or one clip's decoding), which only the first
request of that shape meets. Last, a request over the budget (the heavy one at twice its steps) must be refused.

Clients are gradio_client sessions calling the page's /generate endpoint; a "page" is its heartbeat connection
(/gradio_api/heartbeat/<session>), whose closing is how Gradio learns a tab was closed (the app's unload event).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.core.audio import read_wav_metadata

SMALL = dict(duration=0.5, variations=1, steps=1, solver="euler", cfg=1.0)


@dataclasses.dataclass(frozen=True)
class Heavy:
    """The heavy request: `variations` x `duration` s at `steps` of `solver` with guidance `cfg` on both stages."""

    duration: float = 30.0
    variations: int = 4
    steps: int = 4
    solver: str = "euler"
    cfg: float = 2.0


def _args(text: str, seed: int, duration: float, variations: int, steps: int, solver: str, cfg: float,
          temperature: float = 1.0) -> list[Any]:
    """The /generate endpoint's inputs (ui.py's order): mode, text, duration, seed, variations, prompt, regions,
    then steps / solver / guidance / temperature of stage 1 and of stage 2."""
    stage = [steps, solver, cfg, temperature]
    return ["generate", text, duration, seed, variations, None, "", *stage, *stage]


class Page:
    """One client session with its heartbeat open (an open tab)."""

    def __init__(self, url: str):
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        host, port = url.split("//")[1].rstrip("/").split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self._conn.request("GET", f"/gradio_api/heartbeat/{self.client.session_hash}")
        self._resp = self._conn.getresponse()
        self._resp.readline()  # "data: ALIVE": the server holds the session

    def generate(self, text: str, seed: int, **kw: Any) -> tuple[float, str, list[str]]:
        """(seconds, status line, the captions in the returned WAVs' metadata)."""
        t0 = time.perf_counter()
        out = self.client.predict(*_args(text, seed, **kw), api_name="/generate")
        seconds = time.perf_counter() - t0
        # (State outputs are not part of the API's: the downloads are the first list after the status)
        status, files = out[0], next((o for o in out[1:] if isinstance(o, (list, tuple))), [])
        paths = [f if isinstance(f, str) else f.get("path", f.get("name")) for f in files]
        captions = [read_wav_metadata(Path(p)).get("text", "") for p in paths if str(p).endswith(".wav")]
        return seconds, status, captions

    def submit(self, text: str, seed: int, **kw: Any) -> Any:
        return self.client.submit(*_args(text, seed, **kw), api_name="/generate")

    def close(self) -> None:
        """Close the tab: the heartbeat connection drops."""
        self._conn.close()
        self.client.close()


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _small_round(pages: Sequence[Page], rounds: int, tag: str) -> tuple[list[float], list[bool]]:
    """Every page sends `rounds` small requests one after another, the pages at once: (latencies, own results)."""
    lat: list[float] = []
    own: list[bool] = []
    lock = threading.Lock()

    def client(i: int, page: Page) -> None:
        for r in range(rounds):
            text = f"{tag} client {i} request {r}"
            s, status, caps = page.generate(text, 100 * i + r, **SMALL)
            with lock:
                lat.append(s)
                own.append(status.startswith("Generate:") and caps == [text])

    threads = [threading.Thread(target=client, args=(i, p)) for i, p in enumerate(pages)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, own


def _pct(x: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(x), q)) if len(x) else float("nan")


def run(url: str, server_pid: int, server_log: Path, clients: int = 3, rounds: int = 3, heavy: Heavy = Heavy()
        ) -> dict[str, Any]:
    """The scenario (module docstring); returns the measurements (seconds, MB)."""
    hv = dataclasses.asdict(heavy)
    pages = [Page(url) for _ in range(clients)]
    try:
        pages[0].generate("warm-up", 0, **SMALL)
        alone, own_alone = _small_round(pages, rounds, "alone")
        heavy_alone_s, heavy_status, _ = pages[0].generate("heavy alone", 7, **hv)  # also compiles its shapes
        heavy_page = Page(url)
        t0 = time.perf_counter()
        heavy_page.submit("heavy", 7, **hv)
        _wait_for_log(server_log, "heavy", "start", 120)  # the heavy request holds the model
        loaded, own_loaded = _small_round(pages, rounds, "loaded")
        small_done = time.perf_counter() - t0
        t_close = time.perf_counter()
        heavy_page.close()  # the heavy request's page goes away
        stopped = _wait_for_log(server_log, "heavy", "end", 300)
        heavy_stop_s = time.perf_counter() - t_close
        over = {**hv, "steps": 2 * heavy.steps}  # past the budget: refused before it runs
        over_s, over_status, _ = pages[0].generate("over budget", 0, **over)
    finally:
        for p in pages:
            p.close()
    return {
        "clients": clients, "rounds": rounds, "heavy": hv,
        "small_alone_p50_s": _pct(alone, 50), "small_alone_p95_s": _pct(alone, 95),
        "small_loaded_p50_s": _pct(loaded, 50), "small_loaded_p95_s": _pct(loaded, 95),
        "small_all_own_results": all(own_alone) and all(own_loaded) and len(own_loaded) == clients * rounds,
        "heavy_alone_s": heavy_alone_s, "heavy_alone_status": heavy_status,
        "small_done_while_heavy_ran_s": small_done,
        "heavy_outcome": stopped.get("outcome"), "heavy_cost": stopped.get("cost"),
        "heavy_ran_s": stopped.get("seconds"), "heavy_stopped_after_close_s": heavy_stop_s,
        "over_budget_status": over_status, "over_budget_s": over_s,
        "server_peak_rss_mb": _rss_peak_mb(server_pid),
        **{f"small_{tag}_wait_{k}_s": v for tag in ("alone", "loaded")
           for k, v in _waits(server_log, tag).items()},
    }


def _waits(log: Path, tag: str) -> dict[str, float]:
    """p50 / p95 / max of the server-side waits (seconds before and between turns) of the small `tag` requests."""
    w = [rec["waited_s"] for rec in _records(log, "end") if str(rec.get("text", "")).startswith(f"{tag} client")]
    return {"p50": _pct(w, 50), "p95": _pct(w, 95), "max": max(w, default=float("nan"))}


def _records(log: Path, what: str) -> list[dict[str, Any]]:
    """The server log's "request start" / "request end" records (studio.py)."""
    return [json.loads(line.split(f"request {what} ", 1)[1]) for line in log.read_text(errors="replace").splitlines()
            if f"request {what} " in line]


def _wait_for_log(log: Path, text_tag: str, what: str, timeout: float) -> dict[str, Any]:
    """Wait for the server log's `request start` / `request end` record of the request whose caption starts with
    `text_tag`; the record (parsed JSON)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for rec in _records(log, what):
            if rec.get("text") == text_tag:
                return rec
        time.sleep(0.02)
    raise TimeoutError(f"no 'request {what}' record of {text_tag!r} in {log} within {timeout:.0f} s")

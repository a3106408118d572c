"""What the web demo's requests share (`Studio`): the loaded cascade, the turns on it, and the folder results are
saved in. The page (ui.py) calls `Studio.run` / `Studio.refine`; bad input is a GenerateError whose message the page
shows.

A shared service, not a single-user demo:
- every request is bounded before it runs: at most `max_duration` seconds in every mode (restyle and infill keep the
  upload's length: the upload is refused from its header), and at most `max_cost` network frame-evaluations
  (`MusicFlow.cost`: rows x frames x the solver's most evaluations, doubled by guidance). The default budget is what
  the page's heaviest request costs at the model's default settings, so raising steps or guidance beyond them is
  refused with the numbers; dopri5's step limit is set to what the budget leaves;
- requests take turns on the model (turns.py): the cheapest waiting goes next and a running one hands over between
  windows, so a small request never waits for all of a heavy one; a request past `deadline_s` (from its submission)
  or whose page was closed (`cancel_session`) stops at its next window;
- results go to `outdir/<session folder>/<time>-<random>-<mode>/`: the session folder is an HMAC of the session id
  under a key made at start, the result folder has 128 random bits, so no session can name another's files; result
  folders older than `keep_hours` or beyond `keep_gb` in total (oldest first) are deleted after every save.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from musicflow_jax.app.turns import StoppedError, Turns
from musicflow_jax.core.sampling import MAX_ADAPTIVE_STEPS, adaptive_steps_within
from musicflow_jax.inference.cascade import MusicFlow, between_windows
from musicflow_jax.inference.checks import GenerateError, StageSettings, check_settings, parse_regions
from musicflow_jax.inference.generation import Generation

log = logging.getLogger("musicflow_jax.app")

MAX_VARIATIONS = 4
MODES = ("generate", "continue", "infill", "restyle")
LOCAL = "local"  # the session of calls made without one (the Python API, tests)


@dataclasses.dataclass(frozen=True)
class Limits:
    """A server's per-request limits (the app's command-line flags)."""

    max_duration: float = 30.0  # seconds of audio a request may ask for or upload
    budget: float = 1.0  # max_cost = budget x the cost of MAX_VARIATIONS x max_duration at the default settings
    deadline_s: float = 600.0  # a request still unfinished this long after its submission is stopped
    keep_hours: float = 24.0  # results older than this are deleted
    keep_gb: float = 2.0  # and the oldest beyond this total


class Studio:
    """What the page's requests share (see the module docstring)."""

    def __init__(self, mf: MusicFlow, outdir: Path, limits: Limits | None = None):
        self.mf, self.outdir = mf, Path(outdir)
        self.limits = limits or Limits()
        self.max_duration = self.limits.max_duration
        defaults = [st.settings for st in mf.stages]
        self.max_cost = int(self.limits.budget * mf.cost(MAX_VARIATIONS, self.max_duration, defaults))
        self.turns = Turns()
        self._key = secrets.token_bytes(32)  # session folders are HMACs under it: not derivable from a session id
        self._prune_lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # one record per finished or failed request (tests, the log)

    # ------------------------------------------------------------------ requests
    def run(self, mode: str, text: str, duration: float, seed: float, variations: float, prompt: str | None,
            regions: str, settings: tuple[StageSettings, StageSettings], draft: bool, session: str = LOCAL
            ) -> tuple[Generation, Path]:
        """One request -> (the generation, the folder it is saved in). Raises GenerateError for bad input, a request
        over the budget, or one stopped (StoppedError)."""
        if mode not in MODES:
            raise GenerateError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        n = _int(variations, "variations")
        if not 1 <= n <= MAX_VARIATIONS:
            raise GenerateError(f"variations {variations}: choose 1 to {MAX_VARIATIONS}")
        if mode in ("generate", "continue") and not 0 < float(duration) <= self.max_duration:
            raise GenerateError(f"duration {duration} s: choose up to {self.max_duration:g} s (this server's limit)")
        texts, s1, s2 = [text] * n, *settings
        kw: dict[str, Any] = dict(seed=_int(seed, "seed"), progress=True)
        seconds = float(duration)
        if mode == "generate":
            s1, s2 = self._bounded(n, seconds, [s1, s2])
            run = lambda: self.mf.generate(texts, seconds, stage1=s1, stage2=s2, draft=draft, **kw)  # noqa: E731
        else:
            if draft:
                raise GenerateError("drafts are for text-to-music: choose the mode 'generate' (or press Generate)")
            if not prompt:
                raise GenerateError(f"mode {mode} needs a clip: upload or record one under 'Prompt audio'")
            # every mode's result is at most max_duration: restyle and infill keep the clip's length; the upload's
            # header is checked before its samples are decoded
            audio = self.mf.read_prompt(prompt, max_seconds=self.max_duration)
            if mode == "continue":
                s1, s2 = self._bounded(n, seconds, [s1, s2])
                run = lambda: self.mf.continue_(texts, audio, seconds, stage1=s1, stage2=s2, **kw)  # noqa: E731
            elif mode == "infill":
                if not (regions or "").strip():
                    raise GenerateError("infill needs regions: seconds to regenerate, e.g. 1.0-2.5, 4-5")
                regs = parse_regions(regions)
                seconds = len(audio) / self.mf.sample_rate
                s1, s2 = self._bounded(n, seconds, [s1, s2])
                run = lambda: self.mf.infill(texts, audio, regs, stage1=s1, stage2=s2, **kw)  # noqa: E731
            else:
                seconds, s1 = len(audio) / self.mf.sample_rate, None
                _, s2 = self._bounded(n, seconds, [None, s2])
                run = lambda: self.mf.restyle(texts, audio, stage2=s2, **kw)  # noqa: E731
        return self._take_turn(mode, text, session, n, seconds, [s1, s2], run, draft)

    def draft_settings(self, page: Sequence[StageSettings]) -> tuple[StageSettings, StageSettings]:
        """What "Draft" runs with the page's settings: the model's few-step students at their own sampler (the
        guidance is in their weights), else its stages at the draft's steps and solver with the page's guidance and
        temperature."""
        if self.mf.turbo is not None:
            s1, s2 = (MusicFlow.draft_settings(st) for st in self.mf.turbo)
        else:
            s1, s2 = (dataclasses.replace(MusicFlow.draft_settings(st), cfg_scale=s.cfg_scale,
                                          temperature=s.temperature) for st, s in zip(self.mf.stages, page))
        return s1, s2

    def refine(self, g: Generation | None, which: float, settings: StageSettings, session: str = LOCAL
               ) -> tuple[Generation, Path]:
        if g is None:
            raise GenerateError("nothing to refine yet: press Draft (or Generate) first")
        if g.mode not in ("draft", "generate", "refine"):  # (the API refuses them too, naming its parameter)
            raise GenerateError(f"the last result is a {g.mode}: refine works on Draft / Generate results")
        i = _int(which, "variation") - 1
        if not 0 <= i < len(g.texts):
            raise GenerateError(f"variation {which}: the last result has {len(g.texts)}; choose 1 to {len(g.texts)}")
        one = Generation(**{**g.__dict__, "audio": g.audio[i:i + 1], "semantic": g.semantic[i:i + 1],
                            "acoustic": g.acoustic[i:i + 1], "texts": g.texts[i:i + 1],
                            "rows": [g.rows[i] if g.rows else i]})
        _, s2 = self._bounded(1, g.duration, [None, settings])
        return self._take_turn("refine", one.texts[0], session, 1, g.duration, [None, s2],
                               lambda: self.mf.refine(one, stage2=s2, progress=True), False)

    def cancel_session(self, session: str, why: str = "the page was closed") -> int:
        """Stop the session's unfinished requests at their next window (the page's unload event)."""
        return self.turns.cancel_session(session, why)

    # ------------------------------------------------------------------ budget
    def _bounded(self, rows: int, seconds: float, settings: list[StageSettings | None]
                 ) -> list[StageSettings | None]:
        """The settings with dopri5's step limit set to what the budget leaves; GenerateError if over the budget."""
        stages = self.mf.stages
        settings = [None if s is None else check_settings(s, st.name) for s, st in zip(settings, stages)]
        fixed = [i for i, s in enumerate(settings) if s is not None and s.solver != "dopri5"]
        adaptive = [i for i, s in enumerate(settings) if s is not None and s.solver == "dopri5"]
        spent = sum(stages[i].cost(rows, stages[i].frames(seconds), settings[i]) for i in fixed)
        for i in adaptive:  # the budget left, shared evenly by the dopri5 stages
            s, st = settings[i], stages[i]
            per_eval = st.cost(rows, st.frames(seconds), dataclasses.replace(s, solver="euler", steps=1))
            share = (self.max_cost - spent) // len(adaptive)
            steps = min(s.max_steps, adaptive_steps_within(share // per_eval), MAX_ADAPTIVE_STEPS)
            if steps < 1:
                raise GenerateError(f"solver dopri5 ({st.name}) does not fit this server's compute budget for "
                                    f"{rows} x {seconds:g} s: use midpoint, or fewer seconds or variations")
            settings[i] = dataclasses.replace(s, max_steps=int(steps))
        cost = self.mf.cost(rows, seconds, settings)
        if cost > self.max_cost:
            what = ", ".join(f"{st.name} {s.solver} {s.steps} steps" + (f" guidance {s.cfg_scale:g}"
                                                                       if s.cfg_scale != 1 else "")
                             for st, s in zip(stages, settings) if s is not None)
            raise GenerateError(f"this request needs up to {cost:,} network frame-evaluations ({rows} x {seconds:g} s, "
                                f"{what}); this server allows {self.max_cost:,} per request: ask for fewer steps, "
                                "variations or seconds")
        return settings

    # ------------------------------------------------------------------ turns
    def _take_turn(self, mode: str, text: str, session: str, rows: int, seconds: float,
                   settings: list[StageSettings | None], run: Callable[[], Generation], draft: bool
                   ) -> tuple[Generation, Path]:
        """Run the request in its turns; the server log gets a "request start" record at its first turn and a
        "request end" one (JSON: mode, text, rows, seconds of audio, cost, waited_s, seconds, outcome)."""
        cost = self.mf.cost(rows, seconds, settings)
        ticket = self.turns.ticket(cost, session, self.limits.deadline_s)
        record: dict[str, Any] = dict(mode=mode, text=text[:80], rows=rows, audio_s=round(seconds, 3), cost=cost,
                                      outcome="ok")
        t0 = time.monotonic()
        try:
            self.turns.start(ticket)
            log.info("request start %s", json.dumps({**record, "waited_s": round(ticket.waited_s, 3)}))
            with between_windows(ticket.between):
                g = run()
        except StoppedError as e:
            record["outcome"] = str(e)
            raise
        except GenerateError as e:
            if e.param == "max_steps":  # dopri5 hit the limit the budget set
                record["outcome"] = "budget"
                limit = max(s.max_steps for s in settings if s and s.solver == "dopri5")
                raise GenerateError(f"solver dopri5 needed more steps than this server's compute budget allows "
                                    f"({limit}): use midpoint, or fewer seconds or variations") from None
            record["outcome"] = "error"
            raise
        finally:
            self.turns.finish(ticket)
            record.update(waited_s=round(ticket.waited_s, 3), seconds=round(time.monotonic() - t0, 3))
            self.requests.append(record)
            log.info("request end %s", json.dumps(record))
        return g, self.save(g, draft, session)

    # ------------------------------------------------------------------ results
    def session_folder(self, session: str) -> Path:
        """outdir/<HMAC of the session id>: stable for a session, underivable for anyone without the server's key."""
        return self.outdir / hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()[:32]

    def save(self, g: Generation, draft: bool, session: str = LOCAL) -> Path:
        folder = self.session_folder(session) / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(16)}-{g.mode}"
        g.save(folder, spectrograms=True)
        if draft:
            for i in range(len(g.texts)):
                g.save_draft(i, folder / f"{i:02d}.draft.npz")
        self.prune(keep=folder)
        return folder

    def prune(self, keep: Path | None = None, now: float | None = None) -> list[Path]:
        """Delete result folders older than keep_hours, then the oldest while the total is over keep_gb (never
        `keep`, the one just saved). Returns what was deleted."""
        now = time.time() if now is None else now
        with self._prune_lock:
            results = sorted((p for s in self.outdir.glob("*/") if s.is_dir() for p in s.iterdir() if p.is_dir()),
                             key=lambda p: p.stat().st_mtime)
            sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in results}
            total, gone = sum(sizes.values()), []
            for p in results:
                old = now - p.stat().st_mtime > self.limits.keep_hours * 3600
                if p != keep and (old or total > self.limits.keep_gb * 1e9):
                    shutil.rmtree(p, ignore_errors=True)
                    total -= sizes[p]
                    gone.append(p)
            for s in {p.parent for p in gone}:
                if s.is_dir() and not any(s.iterdir()):
                    s.rmdir()
        return gone


def _int(value: Any, name: str) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GenerateError(f"{name} {value!r} must be an integer") from None
    if not v.is_integer():
        raise GenerateError(f"{name} {value!r} must be an integer")
    return int(v)


def settings_of(steps: float, solver: str, cfg: float, temperature: float, stage: str) -> StageSettings:
    """A stage's settings from the page's controls."""
    return StageSettings(steps=_int(steps, f"{stage} steps"), solver=str(solver), cfg_scale=float(cfg),
                         temperature=float(temperature))

"""What the web demo's requests share (`Studio`): the loaded cascade, one generation at a time, and the folder every
result is saved in. The page (ui.py) calls `Studio.run` / `Studio.refine`; bad input is a GenerateError whose
message the page shows.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.inference.checks import GenerateError, StageSettings, parse_regions
from musicflow_jax.inference.generation import Generation

MAX_VARIATIONS = 4
MODES = ("generate", "continue", "infill", "restyle")


class Studio:
    """What the page's requests share: the loaded cascade, a lock (one generation at a time: the model and the
    progress reporting are shared), and the folder every result is saved in."""

    def __init__(self, mf: MusicFlow, outdir: Path, max_duration: float = 30.0):
        self.mf, self.outdir, self.max_duration = mf, Path(outdir), float(max_duration)
        self.lock = threading.Lock()
        self._ids = itertools.count()

    def run(self, mode: str, text: str, duration: float, seed: float, variations: float, prompt: str | None,
            regions: str, settings: tuple[StageSettings, StageSettings], draft: bool) -> tuple[Generation, Path]:
        """One request -> (the generation, the folder it is saved in). Raises GenerateError for bad input."""
        if mode not in MODES:
            raise GenerateError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        n = _int(variations, "variations")
        if not 1 <= n <= MAX_VARIATIONS:
            raise GenerateError(f"variations {variations}: choose 1 to {MAX_VARIATIONS}")
        if mode in ("generate", "continue") and not 0 < float(duration) <= self.max_duration:
            raise GenerateError(f"duration {duration} s: choose up to {self.max_duration:g} s (this server's limit)")
        texts, s1, s2 = [text] * n, *settings
        kw: dict[str, Any] = dict(seed=_int(seed, "seed"), progress=True)
        if mode == "generate":
            run = lambda: self.mf.generate(texts, duration, stage1=s1, stage2=s2, draft=draft, **kw)  # noqa: E731
        else:
            if draft:
                raise GenerateError("drafts are for text-to-music: choose the mode 'generate' (or press Generate)")
            if not prompt:
                raise GenerateError(f"mode {mode} needs a clip: upload or record one under 'Prompt audio'")
            # every mode's result is at most max_duration: restyle and infill keep the clip's length; the upload's
            # header is checked before its samples are decoded
            audio = self.mf.read_prompt(prompt, max_seconds=self.max_duration)
            if mode == "continue":
                run = lambda: self.mf.continue_(texts, audio, duration, stage1=s1, stage2=s2, **kw)  # noqa: E731
            elif mode == "infill":
                if not (regions or "").strip():
                    raise GenerateError("infill needs regions: seconds to regenerate, e.g. 1.0-2.5, 4-5")
                regs = parse_regions(regions)
                run = lambda: self.mf.infill(texts, audio, regs, stage1=s1, stage2=s2, **kw)  # noqa: E731
            else:
                run = lambda: self.mf.restyle(texts, audio, stage2=s2, **kw)  # noqa: E731
        with self.lock:
            g = run()
        return g, self.save(g, draft)

    def refine(self, g: Generation | None, which: float, settings: StageSettings) -> tuple[Generation, Path]:
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
        with self.lock:
            r = self.mf.refine(one, stage2=settings, progress=True)
        return r, self.save(r, False)

    def save(self, g: Generation, draft: bool) -> Path:
        folder = self.outdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids):04d}-{g.mode}"
        g.save(folder, spectrograms=True)
        if draft:
            for i in range(len(g.texts)):
                g.save_draft(i, folder / f"{i:02d}.draft.npz")
        return folder


def _int(value: Any, name: str) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GenerateError(f"{name} {value!r} must be an integer") from None
    if not v.is_integer():
        raise GenerateError(f"{name} {value!r} must be an integer")
    return int(v)


def settings_of(steps: float, solver: str, cfg: float, stage: str) -> StageSettings:
    """A stage's settings from the page's controls."""
    return StageSettings(steps=_int(steps, f"{stage} steps"), solver=str(solver), cfg_scale=float(cfg))

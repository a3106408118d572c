"""Every check of the generation API's inputs, defined once: the API (cascade.py) runs them, and the command line
and the web app call the same functions before loading a model to fail fast. Each problem is a `GenerateError` (a
MusicFlowError) whose one-line message starts with the API parameter it names (`e.param`), so a front end can name
its own control instead ("duration" -> "--duration").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from musicflow_jax.core.config import MAX_TEMPERATURE, Config
from musicflow_jax.core.sampling import MAX_ADAPTIVE_STEPS, SOLVERS
from musicflow_jax.errors import MusicFlowError

MAX_DURATION = 600.0  # seconds; long-form beyond this is refused (memory/time on CPU)
DRAFT_STEPS = 4  # midpoint steps per stage of a draft (8 network evaluations instead of the defaults' 32)
COMPUTE_DTYPES = ("float32", "bfloat16")
MAX_STEPS, MAX_CFG = 1000, 50.0


class GenerateError(MusicFlowError):
    """A bad input or model file; one line naming the problem and the fix. `param` is the API parameter the
    message starts with (None for model files), so a CLI can name its own flag instead."""



@dataclasses.dataclass(frozen=True)
class StageSettings:
    steps: int = 16
    solver: str = "midpoint"
    cfg_scale: float = 3.0
    max_steps: int = MAX_ADAPTIVE_STEPS  # dopri5 only: it stops with an error after this many steps
    temperature: float = 1.0  # the starting noise's scale (core/sampling.py); a stage's default: sample.temperature

    @classmethod
    def from_config(cls, cfg: Config) -> StageSettings:
        """The stage's own defaults (cfg.sample)."""
        return cls(steps=cfg.sample.steps, solver=cfg.sample.solver, cfg_scale=cfg.sample.cfg_scale,
                   temperature=cfg.sample.temperature)

    def overridden(self, *, steps: int | None = None, solver: str | None = None, cfg_scale: float | None = None,
                   temperature: float | None = None) -> StageSettings:
        """These settings with each given field replaced; None keeps the field (a flag or spec left unset). The one
        merge of "a caller's choice, else the stage's default" for the CLI, the evaluation and the quality table."""
        given = {"steps": steps, "solver": solver, "cfg_scale": cfg_scale, "temperature": temperature}
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})



def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise GenerateError("texts is empty: give at least one description of the music", "texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise GenerateError(f"text {i + 1} of {len(texts)} is empty: describe the music, e.g. 'a calm piano "
                                "piece in C major'")
    return [t.strip() for t in texts]


def check_duration(duration: float, param: str = "duration") -> float:
    try:
        d = float(duration)
    except (TypeError, ValueError):
        raise GenerateError(f"{param} {duration!r} is not a number: give seconds, e.g. 10", param) from None
    if not math.isfinite(d) or d <= 0:
        raise GenerateError(f"{param} {duration} must be a positive number of seconds, e.g. 10", param)
    if d < 0.04:
        raise GenerateError(f"{param} {d} s is shorter than two semantic frames (0.04 s): ask for more", param)
    if d > MAX_DURATION:
        raise GenerateError(f"{param} {d} s is too long: at most {MAX_DURATION:.0f} s (generate parts and join them)",
                            param)
    return d


def check_regions(regions: Sequence[tuple[float, float]], audio_seconds: float) -> list[tuple[float, float]]:
    """[(start, end), ...] seconds -> sorted; checks order, bounds and overlaps (errors name `regions`)."""
    try:
        out = sorted((float(a), float(b)) for a, b in regions)
    except (TypeError, ValueError):
        raise GenerateError(f"regions {regions!r}: give (start, end) pairs in seconds, e.g. [(3.0, 5.5)]",
                            "regions") from None
    if not out:
        raise GenerateError("regions is empty: give at least one (start, end) pair in seconds", "regions")
    for a, b in out:
        if not (math.isfinite(a) and math.isfinite(b)) or a >= b:
            raise GenerateError(f"regions {a:g}-{b:g}: start must be before end (seconds, e.g. 3.0-5.5)", "regions")
        if a < 0 or b > audio_seconds + 1e-6:
            raise GenerateError(f"regions {a:g}-{b:g} is outside the prompt audio (0-{audio_seconds:.2f} s): keep "
                                "regions inside it", "regions")
    for (a0, b0), (a1, b1) in zip(out, out[1:]):
        if a1 < b0:
            raise GenerateError(f"regions {a0:g}-{b0:g} and {a1:g}-{b1:g} overlap: merge them into one region",
                                "regions")
    return out


def check_settings(s: StageSettings, stage: str) -> StageSettings:
    if s.solver not in SOLVERS:
        raise GenerateError(f"solver {s.solver!r} ({stage}) is unknown; choose one of {', '.join(SOLVERS)}", "solver")
    if not isinstance(s.steps, int) or s.steps < 1 or s.steps > MAX_STEPS:
        raise GenerateError(f"steps {s.steps} ({stage}) must be an integer in 1..1000", "steps")
    if not math.isfinite(s.cfg_scale) or s.cfg_scale < 0 or s.cfg_scale > MAX_CFG:
        raise GenerateError(f"cfg_scale {s.cfg_scale} ({stage}) must be in 0..50 (1 = no guidance)", "cfg_scale")
    if isinstance(s.temperature, bool) or not isinstance(s.temperature, (int, float, np.floating)) or not (
            math.isfinite(s.temperature) and 0 < s.temperature <= MAX_TEMPERATURE):
        raise GenerateError(f"temperature {s.temperature} ({stage}) must be in (0, {MAX_TEMPERATURE:g}] (1 = the noise "
                            "the flow was trained from)", "temperature")
    if not isinstance(s.max_steps, int) or not 1 <= s.max_steps <= MAX_ADAPTIVE_STEPS:
        raise GenerateError(f"max_steps {s.max_steps} ({stage}) must be an integer in 1..{MAX_ADAPTIVE_STEPS} "
                            "(dopri5's step limit)", "max_steps")
    return s


def check_seed(seed: Any, param: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise GenerateError(f"{param} {seed!r} must be an integer in [0, 2**32)", param)
    return int(seed)


def check_overlap(overlap: Any) -> float:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
        raise GenerateError(f"overlap {overlap} must be a fraction of the window in [0, 1)", "overlap")
    return float(overlap)


def parse_regions(spec: str, param: str = "regions") -> list[tuple[float, float]]:
    """'3.0-5.5,8-9' (seconds) -> [(3.0, 5.5), (8.0, 9.0)]; bounds are `check_regions`'."""
    if not str(spec).strip():
        raise GenerateError(f"{param} is empty: give START-END seconds, e.g. 3.0-5.5,8-9", param)
    out = []
    for part in str(spec).split(","):
        bits = part.strip().split("-")
        try:
            if len(bits) != 2:
                raise ValueError
            out.append((float(bits[0]), float(bits[1])))
        except ValueError:
            raise GenerateError(f"{param}: cannot read {part.strip()!r}; use START-END in seconds, e.g. 3.0-5.5,8-9",
                                param) from None
    return out


def check_lora_scales(scales: float | Sequence[float], n: int) -> list[float]:
    """One adapter strength for every adapter file, or one per file; finite numbers (0 = the base model)."""
    vals = list(scales) if isinstance(scales, (list, tuple)) else [scales] * n
    if len(vals) != n:
        raise GenerateError(f"lora_scale: {len(vals)} scales for {n} adapter files: give one scale, or one per file",
                            "lora_scale")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise GenerateError(f"lora_scale {v!r} must be a finite number (0 = base model, 1 = fine-tuned)",
                                "lora_scale")
    return [float(v) for v in vals]


def check_dtype(dtype: str | None) -> str | None:
    if dtype not in (None, *COMPUTE_DTYPES):
        raise GenerateError(f"dtype {dtype!r} is not a compute dtype: choose {' or '.join(COMPUTE_DTYPES)}", "dtype")
    return dtype


def check_per_window(per_window: Any) -> int:
    if isinstance(per_window, bool) or not isinstance(per_window, int) or per_window < 0:
        raise GenerateError(f"per_window {per_window!r} must be an integer >= 0 (0 = no length buckets)",
                            "per_window")
    return per_window


def resolve_device(spec: str | None) -> jax.Device | None:
    """"cpu" / "gpu" / "tpu" / "cuda" / "gpu:1" -> that JAX device; None -> None (JAX's default)."""
    if spec is None or spec == "":
        return None
    platform, _, index = str(spec).lower().partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        have = sorted({d.platform for d in jax.devices()} | {"cpu"})
        raise GenerateError(f"device {spec!r}: no {platform} devices here (have: {', '.join(have)}); install the "
                            f"accelerator's jax plugin (pip install -e .[cuda12] / .[tpu]) or use --device cpu",
                            "device") from None
    try:
        i = int(index) if index else 0
        return devices[i]
    except (ValueError, IndexError):
        raise GenerateError(f"device {spec!r}: {platform} has devices 0..{len(devices) - 1}; give e.g. "
                            f"{platform}:0", "device") from None




def check_finite(x: np.ndarray, what: str) -> None:
    """Refuse NaN/inf outputs (a corrupt model or a diverged solve) before anything is written."""
    if not np.isfinite(x).all():
        raise GenerateError(f"{what} produced {int(x.size - np.isfinite(x).sum())} NaN/inf values: nothing was "
                            "written; check the model files (re-export them) or use another solver/fewer CFG")


def region_mask(regions: Sequence[tuple[float, float]], n: int, rate: float) -> np.ndarray:
    """(n,) bool: frames (or samples) at `rate` that overlap any [start, end) region in seconds."""
    m = np.zeros(n, bool)
    for a, b in regions:
        lo, hi = int(math.floor(a * rate + 1e-6)), int(math.ceil(b * rate - 1e-6))
        m[max(lo, 0): max(min(hi, n), 0)] = True
    return m



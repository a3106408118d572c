"""The app's Studio as a shared service on the tiny random model: the compute budget (closed form of the cost, the
default budget admitting the page's heaviest default request, dopri5's step limit set from what is left), deadlines
and closed pages stopping a running generation, results in per-session folders no other session can name, and the
output folder pruned by age and size."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from pathlib import Path

import pytest

from musicflow_jax.app.studio import MAX_VARIATIONS, Limits, Studio
from musicflow_jax.app.turns import StoppedError
from musicflow_jax.core.sampling import max_nfe
from musicflow_jax.inference.cascade import GenerateError, MusicFlow, StageSettings

EULER = StageSettings(steps=2, solver="euler", cfg_scale=2.0)


def test_cost_closed_form_and_the_default_budget(tiny_mf: MusicFlow, tmp_path: Path) -> None:
    st1, st2 = tiny_mf.stages  # 1-s windows: 50 semantic, 75 acoustic frames
    # one window: rows x 2 (guidance) x NFE x frames
    assert tiny_mf.cost(3, 1.0, [EULER, EULER]) == 3 * 2 * 2 * 50 + 3 * 2 * 2 * 75
    assert tiny_mf.cost(3, 1.0, [None, dataclasses.replace(EULER, cfg_scale=1.0)]) == 3 * 2 * 75
    dopri = StageSettings(steps=4, solver="dopri5", cfg_scale=2.0, max_steps=10)
    assert tiny_mf.cost(1, 1.0, [dopri, None]) == 2 * (1 + 6 * 10) * 50 == 2 * max_nfe("dopri5", 4, 10) * 50
    # the real NFE of a fixed-step run is what the cost counts
    g = tiny_mf.generate(["x"], 1.0, stage1=EULER, stage2=EULER, progress=False)
    assert g.nfe == {"stage1": 2, "stage2": 2}
    studio = Studio(tiny_mf, tmp_path, limits=Limits(max_duration=3.0))
    assert studio.max_cost == tiny_mf.cost(MAX_VARIATIONS, 3.0, [st1.settings, st2.settings])
    assert studio._bounded(MAX_VARIATIONS, 3.0, [st1.settings, st2.settings]) == [st1.settings, st2.settings]
    heavy = dataclasses.replace(st1.settings, steps=st1.settings.steps * 4)
    with pytest.raises(GenerateError, match=r"^this request needs up to [\d,]+ network frame-evaluations \(4 x 3 s, "
                       r"stage1 euler 16 steps guidance 2, stage2 euler 4 steps guidance 2\); this server allows "
                       rf"{studio.max_cost:,} per request: ask for fewer steps"):
        studio.run("generate", "x", 3.0, 0, 4, None, "", (heavy, st2.settings), False)


def test_dopri5_gets_the_steps_the_budget_leaves(tiny_mf: MusicFlow, tmp_path: Path) -> None:
    studio = Studio(tiny_mf, tmp_path, limits=Limits(max_duration=2.0))
    st1, st2 = tiny_mf.stages
    dopri = StageSettings(steps=4, solver="dopri5", cfg_scale=2.0)
    s1, s2 = studio._bounded(1, 1.0, [dopri, st2.settings])
    left = studio.max_cost - st2.cost(1, 75, st2.settings)
    assert s1.max_steps == (left // (2 * 50) - 1) // 6 and s2 == st2.settings  # the most that fits
    assert tiny_mf.cost(1, 1.0, [s1, s2]) <= studio.max_cost < tiny_mf.cost(
        1, 1.0, [dataclasses.replace(s1, max_steps=s1.max_steps + 1), s2])
    tight = Studio(tiny_mf, tmp_path, limits=Limits(max_duration=2.0, budget=1e-4))
    with pytest.raises(GenerateError, match=r"^solver dopri5 \(stage1\) does not fit this server's compute budget"):
        tight._bounded(1, 1.0, [dopri, st2.settings])
    # a solve that needs more steps than the budget left stops with the budget named, after max_steps steps
    one_step = Studio(tiny_mf, tmp_path, limits=Limits(max_duration=2.0))
    one_step.max_cost = st2.cost(1, 75, EULER) + 2 * (1 + 6) * 50  # dopri5 gets exactly 1 step
    with pytest.raises(GenerateError, match=r"^solver dopri5 needed more steps than this server's compute budget "
                       r"allows \(1\)"):
        one_step.run("generate", "x", 1.0, 0, 1, None, "", (dataclasses.replace(dopri, steps=1), EULER), False)
    assert one_step.requests[-1]["outcome"] == "budget"


def test_deadline_and_closed_page_stop_a_running_generation(tiny_mf: MusicFlow, tmp_path: Path) -> None:
    late = Studio(tiny_mf, tmp_path, limits=Limits(max_duration=5.0, deadline_s=0.0))
    with pytest.raises(StoppedError, match="ran past this server's deadline of 0 s"):
        late.run("generate", "x", 1.0, 0, 1, None, "", (EULER, EULER), False)
    studio = Studio(tiny_mf, tmp_path / "b", limits=Limits(max_duration=5.0))
    errors: list[BaseException] = []

    def request() -> None:
        try:
            studio.run("generate", "x", 5.0, 0, 1, None, "", (EULER, EULER), False, session="page-1")
        except BaseException as e:  # noqa: BLE001 - the test reads it
            errors.append(e)

    th = threading.Thread(target=request)
    th.start()
    while not studio.turns.tickets:
        time.sleep(0.01)
    assert studio.cancel_session("page-2") == 0 and studio.cancel_session("page-1") == 1
    th.join(120)
    assert len(errors) == 1 and isinstance(errors[0], StoppedError)
    assert str(errors[0]) == "request stopped: the page was closed"
    assert not list((tmp_path / "b").glob("*/*")), "a stopped request saves nothing"


def test_results_in_unguessable_session_folders(tiny_mf: MusicFlow, tmp_path: Path) -> None:
    studio = Studio(tiny_mf, tmp_path, limits=Limits(max_duration=2.0))
    _, a1 = studio.run("generate", "x", 0.5, 0, 1, None, "", (EULER, EULER), False, session="alice")
    _, a2 = studio.run("generate", "x", 0.5, 0, 1, None, "", (EULER, EULER), False, session="alice")
    _, b1 = studio.run("generate", "x", 0.5, 0, 1, None, "", (EULER, EULER), False, session="bob")
    assert a1.parent == a2.parent != b1.parent and a1.parent.parent == tmp_path
    for p in (a1, a2, b1):
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{32}-generate", p.name) and (p / "00.wav").is_file()
    assert re.fullmatch(r"[0-9a-f]{32}", a1.parent.name)
    # the session folder is keyed by a secret made at start: another server (or anyone) cannot derive it
    assert Studio(tiny_mf, tmp_path, limits=Limits(max_duration=2.0)).session_folder("alice") != a1.parent


def test_prune_by_age_then_size(tiny_mf: MusicFlow, tmp_path: Path) -> None:
    studio = Studio(tiny_mf, tmp_path, limits=Limits(max_duration=2.0, keep_hours=1.0, keep_gb=2.5e-6))  # 2.5 kB
    now = time.time()
    made = {}
    for name, age_h in (("old", 2.0), ("a", 0.5), ("b", 0.4), ("c", 0.3)):
        p = tmp_path / ("s1" if name in ("old", "a") else "s2") / name
        p.mkdir(parents=True)
        (p / "x.bin").write_bytes(b"0" * 1000)
        os.utime(p, (now - age_h * 3600, now - age_h * 3600))
        made[name] = p
    gone = studio.prune(keep=made["a"], now=now)
    # "old" by age; then 3 kB left > 2.5 kB: the oldest not kept ("a" is the one just saved) is "b"
    assert gone == [made["old"], made["b"]]
    assert sorted(p.name for p in tmp_path.glob("*/*")) == ["a", "c"]
    assert studio.prune(now=now + 3 * 3600) == [made["a"], made["c"]] and not list(tmp_path.iterdir())

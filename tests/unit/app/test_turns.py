"""The app's turns on the one model (musicflow_jax/app/turns.py): the cheapest waiting request next, a running one
handing over between windows, no starvation, deadlines and closed pages stopping requests - asserted on the exact
order of events (threads synchronised on the queue's state, no sleeps deciding the outcome)."""

from __future__ import annotations

import threading
import time

import pytest

from musicflow_jax.app.turns import StoppedError, Ticket, Turns


def _until(cond, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.005)


def _job(turns: Turns, t: Ticket, name: str, windows: int, log: list[str], between=None) -> threading.Thread:
    def body() -> None:
        try:
            turns.start(t)
            for i in range(windows):
                log.append(f"{name}{i}")
                if between is not None:
                    between(i)
                t.between()
        except StoppedError as e:
            log.append(f"{name}: {e}")
        finally:
            turns.finish(t)

    th = threading.Thread(target=body)
    th.start()
    return th


def test_a_small_request_waits_one_window_of_a_heavy_one() -> None:
    turns, log = Turns(), []
    heavy = turns.ticket(1000, "a", 60)
    small = turns.ticket(10, "b", 60)
    started: list[threading.Thread] = []

    def submit_small(i: int) -> None:  # during the heavy request's window 2 the small one arrives
        if i == 2:
            started.append(_job(turns, small, "s", 2, log))
            _until(lambda: turns.waiting == 1)

    h = _job(turns, heavy, "h", 5, log, submit_small)
    h.join(10)
    started[0].join(10)
    assert log == ["h0", "h1", "h2", "s0", "s1", "h3", "h4"]
    assert small.waited_s < 5 and heavy.waited_s > 0  # the heavy one waited while the small one ran


def test_cheapest_first_but_no_starvation() -> None:
    """With max_overtakes 2, a heavy request overtaken twice goes before the cheaper ones still waiting."""
    turns, log = Turns(max_overtakes=2), []
    hold = turns.ticket(1, "x", 60)
    turns.start(hold)
    jobs = [_job(turns, turns.ticket(100, "a", 60), "H", 1, log)]
    _until(lambda: turns.waiting == 1)
    for k in range(4):
        jobs.append(_job(turns, turns.ticket(1, "b", 60), f"s{k}", 1, log))
        _until(lambda k=k: turns.waiting == k + 2)
    turns.finish(hold)
    for j in jobs:
        j.join(10)
    assert log == ["s00", "s10", "H0", "s20", "s30"]


def test_deadline_stops_a_waiting_and_a_running_request() -> None:
    turns = Turns()
    hold = turns.ticket(1, "x", 60)
    turns.start(hold)
    late = turns.ticket(1, "y", 0.3)
    t0 = time.monotonic()
    with pytest.raises(StoppedError, match="deadline of 0.3 s"):
        turns.start(late)
    assert 0.3 <= time.monotonic() - t0 < 3 and turns.waiting == 0
    turns.finish(late)
    running = turns.ticket(1, "z", 0.2)
    turns.finish(hold)
    turns.start(running)
    running.between()  # within its deadline: nothing happens
    time.sleep(0.25)
    with pytest.raises(StoppedError, match="past this server's deadline"):
        running.between()


def test_closing_a_page_stops_only_its_requests() -> None:
    turns, log = Turns(), []
    mine, other = turns.ticket(5, "closed", 60), turns.ticket(5, "open", 60)

    def close_at_window_1(i: int) -> None:
        if i == 1:
            assert turns.cancel_session("closed", "the page was closed") == 1

    _job(turns, mine, "m", 4, log, close_at_window_1).join(10)
    _job(turns, other, "o", 2, log).join(10)
    assert log == ["m0", "m1", "m: request stopped: the page was closed", "o0", "o1"]
    assert not turns.tickets

"""Whose turn it is on the one loaded model (`Turns`), and how a request gives it up (`Ticket`).

The web app serves many sessions with one model, so requests take turns. Each request holds a `Ticket` with its
cost (network frame-evaluations, `MusicFlow.cost`), its session, a deadline and a cancel flag. The cheapest waiting
request goes next, and a running request calls `Ticket.between()` between windows and stages (the cascade's
`between_windows` hook): there it hands the model to a cheaper waiting request and waits for its turn again, so a
small request waits for at most one window of a heavy one, never for all of it. A request overtaken `max_overtakes`
times goes next, before the others (those starved go in arrival order), for one turn: a heavy request still makes
progress, one window per `max_overtakes` small requests. `between()` also stops the request - a `StoppedError`
naming why - once its deadline passed or its session went away (the page was closed).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time

from musicflow_jax.inference.checks import GenerateError


class StoppedError(GenerateError):
    """A request stopped before it finished: its deadline passed, or its client went away."""


@dataclasses.dataclass(eq=False)
class Ticket:
    """One request's place in the turns; `between()` is the hook the cascade calls between windows."""

    turns: Turns
    cost: int
    session: str
    deadline_s: float
    submitted: float = dataclasses.field(default_factory=time.monotonic)
    cancelled: str | None = None  # why the request was stopped from outside (its session closed)
    overtaken: int = 0
    seq: int = 0
    waited_s: float = 0.0  # seconds spent waiting for a turn (first turn and after every hand-over)

    def check(self) -> None:
        """Raise StoppedError if the request must stop now."""
        if self.cancelled:
            raise StoppedError(f"request stopped: {self.cancelled}")
        if time.monotonic() - self.submitted > self.deadline_s:
            raise StoppedError(f"request stopped: it ran past this server's deadline of {self.deadline_s:g} s; ask for "
                          "fewer seconds, variations or steps")

    def between(self) -> None:
        self.check()
        self.turns.hand_over(self)


class Turns:
    """One request on the model at a time; the cheapest waiting one next (see the module docstring)."""

    POLL_S = 0.1  # how often a waiting request checks its deadline and cancel flag

    def __init__(self, max_overtakes: int = 8):
        self.max_overtakes = max_overtakes
        self._cv = threading.Condition()
        self._running: Ticket | None = None
        self._waiting: list[tuple[tuple[int, int, int], int, Ticket]] = []  # (key, seq, ticket): a heap
        self._seq = itertools.count()
        self.tickets: set[Ticket] = set()  # every request not finished (for cancelling a session's requests)

    def ticket(self, cost: int, session: str, deadline_s: float) -> Ticket:
        t = Ticket(self, int(cost), session, float(deadline_s), seq=next(self._seq))
        with self._cv:
            self.tickets.add(t)
        return t

    def _key(self, t: Ticket) -> tuple[int, int, int]:
        """Starved requests first, in arrival order; then the cheapest."""
        return (0, t.seq, 0) if t.overtaken >= self.max_overtakes else (1, t.cost, t.seq)

    def _push(self, t: Ticket) -> None:
        heapq.heappush(self._waiting, (self._key(t), t.seq, t))

    def _wait_for_turn(self, t: Ticket) -> None:
        """With the lock held: queue `t` and wait until it runs (or raise StoppedError, leaving the queue)."""
        self._push(t)
        self._cv.notify_all()
        t0 = time.monotonic()
        try:
            while not (self._running is None and self._waiting[0][2] is t):
                try:
                    t.check()
                except StoppedError:
                    self._waiting = [w for w in self._waiting if w[2] is not t]
                    heapq.heapify(self._waiting)
                    self._cv.notify_all()
                    raise
                self._cv.wait(self.POLL_S)
            heapq.heappop(self._waiting)
            self._running = t
            t.overtaken = 0  # a starved request gets one turn ahead of the others, not all of them
            for *_, w in self._waiting:  # everyone still waiting was overtaken once more
                w.overtaken += 1
            self._waiting = [(self._key(w), w.seq, w) for *_, w in self._waiting]
            heapq.heapify(self._waiting)
        finally:
            t.waited_s += time.monotonic() - t0

    def start(self, t: Ticket) -> None:
        """Wait for `t`'s first turn."""
        with self._cv:
            self._wait_for_turn(t)

    def hand_over(self, t: Ticket) -> None:
        """Between windows: if a request that should go first is waiting, let it run and wait for the next turn."""
        with self._cv:
            if self._running is not t or not self._waiting or self._waiting[0][0] > (1, t.cost, t.seq):
                return
            self._running = None
            self._wait_for_turn(t)

    def finish(self, t: Ticket) -> None:
        with self._cv:
            if self._running is t:
                self._running = None
            self.tickets.discard(t)
            self._cv.notify_all()

    def cancel_session(self, session: str, why: str) -> int:
        """Stop every unfinished request of `session` at its next window; how many there were."""
        with self._cv:
            hit = [t for t in self.tickets if t.session == session]
            for t in hit:
                t.cancelled = why
            self._cv.notify_all()
        return len(hit)

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._waiting)

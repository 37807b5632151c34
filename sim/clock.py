"""The engine's clock and event heap: a few lines of our own instead of SimPy's internals.

An event is a bare heap entry ``(time, priority, id, fn, arg)``; :meth:`Engine.run_until
<hailan_sim.sim.engine.Engine.run_until>` pops entries in key order and calls ``fn(arg)``.
The key ``(time, priority, id)`` is the ordering SimPy uses (``simpy.core.Environment``:
``heappush(self._queue, (self._now + delay, priority, next(self._eid), event))``, with
``URGENT = 0`` before ``NORMAL = 1``): events at the same instant run by priority, then
first-in first-out by their id, which is what makes a run deterministic. The engine used
SimPy's environment for exactly this and nothing else (no processes, no resources), reaching
into its private ``_now``, ``_queue`` and ``_eid``; owning the three fields makes that
contract explicit, and every event keeps the key it had, so every event log is unchanged.

``now`` starts as the integer ``0`` (as SimPy's ``initial_time=0``): the event log's
canonical JSON writes ``0`` and ``0.0`` differently, so this is part of a log's bytes.
"""

from __future__ import annotations

from heapq import heappush
from itertools import count
from typing import Callable

__all__ = ["Clock", "NORMAL", "URGENT", "at", "at_first"]

URGENT = 0  # runs before ordinary events at the same instant (simpy.events.URGENT)
NORMAL = 1  # simpy.events.NORMAL


class Clock:
    """Simulated time and the pending events.

    ``now``    the current time (seconds)
    ``queue``  the heap of ``(time, priority, id, fn, arg)`` entries
    ``eid``    the counter that hands out ids (in scheduling order)
    ``cur``    the entry being run (set by ``run_until``)

    Hot paths push onto ``queue`` directly (``heappush(clock.queue, (clock.now + d, NORMAL,
    next(clock.eid), fn, arg))``): the same entry :func:`at` builds, without the call.
    """

    __slots__ = ("now", "queue", "eid", "cur")

    def __init__(self) -> None:
        self.now: float = 0
        self.queue: list = []
        self.eid = count()
        self.cur: tuple = (0, 0, -1)  # the entry being run (its key orders it among the rest)


def at(clock: Clock, delay: float, fn: Callable, arg) -> None:
    """Schedule ``fn(arg)`` after ``delay``."""
    heappush(clock.queue, (clock.now + delay, NORMAL, next(clock.eid), fn, arg))


def at_first(clock: Clock, delay: float, fn: Callable, arg) -> None:
    """Like :func:`at`, but ahead of ordinary events at the same instant (and of the
    runner's stop at that instant): for bookkeeping that must see a boundary time."""
    heappush(clock.queue, (clock.now + delay, URGENT, next(clock.eid), fn, arg))

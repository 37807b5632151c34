"""Arrival processes as pure functions of time: rate schedules and exact next-arrival times.

A piecewise-constant rate gives a non-homogeneous Poisson process. Its next arrival after
``now`` is found exactly (no thinning) by inverting the integrated rate: draw
``e ~ Exp(1)`` and walk forward until the integral of the rate from ``now`` reaches ``e``
(Cinlar's time-transformation method; Law, *Simulation Modeling and Analysis*, 5th ed., 8.6.2).
"""

from __future__ import annotations

import bisect
import math
from typing import Union

from hailan_sim.models.scenario import PiecewiseArrival, PoissonArrival, TraceArrival

__all__ = ["RateSchedule", "TraceSchedule", "cumulative_rate", "schedule_for"]


class RateSchedule:
    """The rate (per second) of an arrival process as a step function, times ``factor``."""

    __slots__ = ("_ts", "_rates", "_period", "_constant")

    def __init__(
        self, arrival: Union[PoissonArrival, PiecewiseArrival], factor: float = 1.0
    ) -> None:
        if isinstance(arrival, PoissonArrival):
            self._ts = [0.0]
            self._rates = [arrival.rate * factor]
            self._period = None
        else:
            assert arrival.steps is not None
            self._ts = [t for t, _ in arrival.steps]
            self._rates = [r * arrival.scale * factor for _, r in arrival.steps]
            self._period = arrival.period_s
        # A single step without a period is a homogeneous Poisson process.
        self._constant = self._rates[0] if len(self._rates) == 1 and not self._period else None

    def rate_at(self, t: float) -> float:
        local = t % self._period if self._period else t
        return self._rates[bisect.bisect_right(self._ts, local) - 1]

    def _segment(self, t: float) -> tuple[float, float]:
        """(rate, absolute end time) of the step containing ``t``."""
        if self._period:
            base = math.floor(t / self._period) * self._period
            local = t - base
        else:
            base, local = 0.0, t
        i = bisect.bisect_right(self._ts, local) - 1
        if i + 1 < len(self._ts):
            end = base + self._ts[i + 1]
        elif self._period:
            end = base + self._period
        else:
            end = math.inf
        # Guard against float rounding leaving us at (not past) a boundary.
        if end <= t:
            return self._segment(math.nextafter(t, math.inf))
        return self._rates[i], end

    def next_arrival(self, now: float, e: float) -> float:
        """The time at which the integrated rate since ``now`` reaches ``e`` (inf if never)."""
        if self._constant is not None:
            return now + e / self._constant if self._constant > 0 else math.inf
        t = now
        if self._period:
            # Skip whole periods at once: each holds exactly this much integrated rate.
            per_period = self.integral(0.0, self._period)
            if e > per_period:
                whole = math.floor(e / per_period) - 1
                if whole > 0:
                    e -= whole * per_period
                    t += whole * self._period
        for _ in range(1_000_000):
            rate, end = self._segment(t)
            if rate > 0:
                reach = t + e / rate
                if reach <= end:
                    return reach
                e -= rate * (end - t)
            if end == math.inf:
                return math.inf
            t = end
        raise RuntimeError("arrival schedule did not advance")  # pragma: no cover

    def integral(self, t0: float, t1: float) -> float:
        """The expected number of arrivals in ``[t0, t1)``."""
        total, t = 0.0, t0
        while t < t1:
            rate, end = self._segment(t)
            stop = min(end, t1)
            total += rate * (stop - t)
            t = stop
        return total


class TraceSchedule:
    """Arrivals at listed times. Stateful: each call returns the next listed time."""

    __slots__ = ("_times", "_i")

    def __init__(self, arrival: TraceArrival) -> None:
        self._times = list(arrival.times_s)
        self._i = 0

    def next_arrival(self, now: float, e: float) -> float:
        """The next listed time (``e`` is ignored; inf when the list is exhausted)."""
        if self._i == len(self._times):
            return math.inf
        t = self._times[self._i]
        self._i += 1
        return max(t, now)

    def integral(self, t0: float, t1: float) -> float:
        return float(sum(1 for t in self._times if t0 <= t < t1))


def schedule_for(arrival, factor: float = 1.0):
    """A fresh schedule object for an arrival process (``factor`` scales rates)."""
    if isinstance(arrival, TraceArrival):
        return TraceSchedule(arrival)
    return RateSchedule(arrival, factor)


def cumulative_rate(arrival: Union[PoissonArrival, PiecewiseArrival, TraceArrival], horizon_s: float) -> float:
    """Expected arrivals of ``arrival`` in ``[0, horizon_s)``."""
    return schedule_for(arrival).integral(0.0, horizon_s)

"""What one sweep run measures: a flat row of numbers (docs/metrics.md defines each).

Every figure is a pure function of the run's :class:`~hailan_sim.sim.Result` (and, for
``invariants``, of its fault-free baseline), so a row is the same on any executor.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from hailan_sim.models.scenario import Scenario
from hailan_sim.sim.result import Result

__all__ = ["needs_events", "recovery_s", "run_metrics"]


def needs_events(metrics: Sequence[str]) -> bool:
    """Whether a run measured for ``metrics`` must keep its event log: only to judge
    invariants. Retry amplification and breaker trips are read from the counts the engine
    keeps anyway (``Result.calls_started``, ``Result.breaker_trips``), since keeping the
    log costs a run 5-15% (issue 11 item 8)."""
    return "invariants" in metrics


def _fault_windows(scenario: Scenario) -> list[tuple[float, float]]:
    """(start, end) of every fault; a permanent fault ends with the arrivals."""
    end = scenario.run.duration_s
    return [(f.start_s, f.end_s() if f.end_s() is not None else end) for f in scenario.faults]


def recovery_s(result: Result, scenario: Scenario, *, success_ratio: float, window_s: float) -> tuple[float, bool]:
    """Seconds from the end of the last fault until the success ratio of all endpoints
    together stays at or above ``success_ratio`` in every ``window_s`` window up to the end
    of the arrivals. ``(seconds, True)``; when it never does, ``(time left in the run,
    False)`` (a censored value). No faults: ``(0.0, True)``."""
    faults = _fault_windows(scenario)
    if not faults:
        return 0.0, True
    t0 = max(e for _, e in faults)
    end = scenario.run.duration_s
    if t0 >= end:
        return 0.0, False
    w = result.windows
    w = w[(w["window_start_s"] >= t0) & (w["window_start_s"] < end)]
    nbins = int(math.ceil((end - t0) / window_s))
    ok = np.zeros(nbins)
    total = np.zeros(nbins)
    b = np.minimum(((w["window_start_s"].to_numpy() - t0) // window_s).astype(np.int64), nbins - 1)
    np.add.at(ok, b, w["ok"].to_numpy(dtype=float))
    np.add.at(total, b, w["total"].to_numpy(dtype=float))
    bad = (total > 0) & (ok < success_ratio * total)
    if not bad.any():
        return 0.0, True
    last_bad = int(np.flatnonzero(bad)[-1])
    if last_bad == nbins - 1:
        return end - t0, False
    return (last_bad + 1) * window_s, True


def _trips(result: Result) -> list[float]:
    """Times of every closed -> open breaker transition."""
    return result.breaker_trips


def run_metrics(scenario: Scenario, result: Result, metrics: Sequence[str], *,
                success_ratio: float = 0.99, window_s: float = 5.0, false_trip_grace_s: float = 10.0,
                baseline: Optional[Result] = None) -> dict:
    """One flat row: column name -> number (NaN when it does not apply)."""
    row: dict = {"event_log_sha256": result.event_log_sha256}
    req = result.requests
    total = sum(req.values())
    eps = result.endpoints
    if "availability" in metrics:
        row["requests"] = float(total)
        row["availability"] = req["ok"] / total if total else math.nan
        for name in eps.index:
            n = eps.at[name, "total"]
            row[f"availability.{name}"] = float(eps.at[name, "ok"] / n) if n else math.nan
    if "p99" in metrics:
        for name in eps.index:
            v = eps.at[name, "p99_ms"]
            row[f"p99_ms.{name}"] = math.nan if v is None or v != v else float(v)
    if "recovery" in metrics:
        sec, ok = recovery_s(result, scenario, success_ratio=success_ratio, window_s=window_s)
        row["recovery_s"] = float(sec)
        row["recovered"] = 1.0 if ok else 0.0
    if "retry_amplification" in metrics:
        sent = result.calls_started
        retries = result.mechanisms.get("retries", 0)
        first = sent - retries
        row["retry_amplification"] = sent / first if first > 0 else math.nan
    if "breaker_trips" in metrics or "false_trips" in metrics:
        trips = _trips(result)
        if "breaker_trips" in metrics:
            row["breaker_trips"] = float(len(trips))
        if "false_trips" in metrics:
            windows = [(s, e + false_trip_grace_s) for s, e in _fault_windows(scenario)]
            row["false_trips"] = float(sum(1 for t in trips if not any(s <= t <= e for s, e in windows)))
    if "cost" in metrics:
        row["instances"] = float(sum(s.instances for s in scenario.services))
        row["instance_s"] = float(sum(s.instances for s in scenario.services) * scenario.run.duration_s)
    if "invariants" in metrics:
        from hailan_sim.properties.invariants import Record, evaluate

        record = Record(scenario, result, baseline)
        for v in evaluate(record, [n for n in _invariant_names() if n != "determinism"]):
            row[f"holds.{v.name}"] = 1.0 if v.holds else 0.0
    return row


def _invariant_names() -> list[str]:
    from hailan_sim.properties.invariants import INVARIANTS

    return list(INVARIANTS)

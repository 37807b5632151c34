"""Helpers for ``test_queueing.py``: scenario builders, replications, t-intervals, theory.

Kept apart from the tests so that worker processes can import :func:`run_one` (the
function a process pool runs) without importing pytest or the test module.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from scipy import stats

from hailan_sim.models.scenario import Scenario
from hailan_sim.sim import simulate

__all__ = [
    "Interval",
    "erlang_c",
    "make_pool",
    "mm1k",
    "replicate",
    "run_one",
    "single_station",
    "t_interval",
    "tandem",
]


# --------------------------------------------------------------------------- scenarios


def _service(name: str, service_time_ms: dict, *, port: int = 8000, workers: int = 1,
             queue_limit: Optional[int] = None, calls: Optional[str] = None) -> dict:
    op: dict[str, Any] = {"service_time_ms": service_time_ms}
    svc: dict[str, Any] = {
        "name": name, "port": port, "instances": 1, "workers": workers,
        "queue_limit": queue_limit, "operations": {"serve": op},
    }
    if calls is not None:
        op["calls"] = {"call": f"{calls}.serve"}
        svc["depends_on"] = [calls]
    return svc


def _scenario(name: str, services: list[dict], entry: str, rate: float) -> Scenario:
    # No gateway, no network latency (the default), no timeouts anywhere: a request is
    # exactly one call per service visited and nothing is ever abandoned.
    return Scenario.model_validate({
        "name": name,
        "services": services,
        "workload": {"endpoints": [{
            "name": "req", "entry": f"{entry}.serve", "timeout_s": None,
            "arrival": {"kind": "poisson", "rate": rate},
        }]},
        "policies": {"timeout_s": None},
    })


def single_station(rate: float, service_time_ms: dict, *, workers: int = 1,
                   queue_limit: Optional[int] = None) -> Scenario:
    """One service ``server`` with ``workers`` workers fed by a Poisson stream of ``rate``/s:
    M/G/c (M/M/c with an exponential service time), M/G/c/K with ``queue_limit = K - c``."""
    return _scenario("station", [_service("server", service_time_ms, workers=workers,
                                          queue_limit=queue_limit)], "server", rate)


def tandem(rate: float, means_ms: Sequence[float]) -> Scenario:
    """Services ``s0 -> s1 -> ...`` in series, one worker each, exponential service times.

    Each operation calls the next service after its own service time; with non-blocking
    workers (the default) a worker is free as soon as its own service ends, so the call
    leaves ``s_i`` and joins ``s_{i+1}`` at the same instant: a Jackson network of M/M/1
    queues in series (Burke: every station sees Poisson arrivals of ``rate``).
    """
    n = len(means_ms)
    services = [
        _service(f"s{i}", {"dist": "exponential", "mean": m}, port=8000 + i,
                 calls=f"s{i + 1}" if i + 1 < n else None)
        for i, m in enumerate(means_ms)
    ]
    return _scenario("tandem", services, "s0", rate)


# --------------------------------------------------------------------------- running


def _in_system_at_arrivals(result, service: str, warmup_s: float) -> np.ndarray:
    """How many calls were at ``service`` when each call arriving after the warm-up came
    (so P(wait) = the fraction that found at least ``workers``), reconstructed from the
    event log: with no network latency a call joins the service at its ``call_start`` and
    leaves at its ``work_end``, so the number there just before an arrival is the starts
    so far minus the ends so far (records are in the order the events happened)."""
    # The raw records behind Result.events() (rebuilt from the kept columns): building that
    # DataFrame would cost half as much again as the run itself. Fall back to it if not kept.
    records = result._kept() if result.has_events else None
    if records is None:
        ev = result.events()
        records = ev[["t", "event", "request", "call", "parent", "source", "target"]].itertuples(
            index=False, name=None)
    t, delta = [], []
    for rec in records:
        if rec[6] == service:
            if rec[1] == "call_start":
                t.append(rec[0])
                delta.append(1)
            elif rec[1] == "work_end":
                t.append(rec[0])
                delta.append(-1)
    d = np.array(delta)
    start = d == 1
    in_system_before = np.cumsum(d) - start  # the count just before this record
    arriving = start & (np.array(t) >= warmup_s)
    return in_system_before[arriving]


def run_one(scenario: Scenario, seed: int, duration_s: float, warmup_s: float,
            p_wait_of: Optional[tuple[str, int]] = None) -> dict:
    """One replication; returns the figures the tests need as plain floats.

    ``p_wait_of = (service, workers)`` also measures P(wait) at that service from the
    event log (the log is then kept, which costs memory and a little time).
    """
    sc = scenario.with_run(seed=seed, duration_s=duration_s, warmup_s=warmup_s)
    r = simulate(sc, keep_events=p_wait_of is not None)
    assert r.unfinished_requests == 0, "a request did not finish within the drain time"
    ep = r.endpoints.loc["req"]
    out: dict[str, Any] = {
        "seed": seed,
        "total": int(ep["total"]),
        "ok": int(ep["ok"]),
        "rejected": int(ep["rejected"]),
        "error": int(ep["error"]),
        "timeout": int(ep["timeout"]),
        "mean_ms": float(ep["mean_ms"]),
        "services": {
            name: {
                "utilisation": float(row["utilisation"]),
                "mean_queue": float(row["mean_queue"]),
                "mean_wait_ms": float(row["mean_wait_ms"]),
                "p_wait": float(row["p_wait"]),
                "wait_p99_ms": float(row["wait_p99_ms"]),
                "mean_ms": float(row["mean_ms"]),
                "served": int(row["served"]),
            }
            for name, row in r.services.iterrows()
        },
    }
    if p_wait_of is not None:
        service, workers = p_wait_of
        n_before = _in_system_at_arrivals(r, service, warmup_s)
        out["p_wait"] = float(np.mean(n_before >= workers))
    return out


def make_pool() -> Optional[Executor]:
    """A process pool for replications (spawned, so no fork-with-threads hazards), or
    None to run them in this process. Results do not depend on it: a replication is a
    pure function of (scenario, seed)."""
    n = min(4, os.cpu_count() or 1)
    if n < 2:
        return None
    return ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))


def replicate(pool: Optional[Executor], scenario: Scenario, seeds: Iterable[int], *,
              duration_s: float, warmup_s: float,
              p_wait_of: Optional[tuple[str, int]] = None) -> list[dict]:
    """Independent replications of ``scenario``, one per seed, in seed order."""
    seeds = list(seeds)
    args = [(scenario, s, duration_s, warmup_s, p_wait_of) for s in seeds]
    if pool is None:
        return [run_one(*a) for a in args]
    return list(pool.map(run_one, *zip(*args)))


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Interval:
    """A two-sided Student-t confidence interval for the mean of i.i.d. replications."""

    mean: float
    half_width: float
    level: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def __contains__(self, x: float) -> bool:
        return self.low <= x <= self.high

    def relative_half_width(self, reference: float) -> float:
        return self.half_width / abs(reference)

    def __str__(self) -> str:
        return (f"{self.mean:.6g} ± {self.half_width:.3g} "
                f"({self.level:.1%}, n={self.n})")


def t_interval(values: Sequence[float], level: float) -> Interval:
    """``mean ± t_{n-1, (1+level)/2} * s / sqrt(n)`` over ``values`` (one per replication)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        raise ValueError("a t-interval needs at least two replications")
    s = float(np.std(x, ddof=1))
    q = float(stats.t.ppf((1 + level) / 2, n - 1))
    return Interval(float(np.mean(x)), q * s / math.sqrt(n), level, n)


# --------------------------------------------------------------------------- theory


def erlang_c(c: int, a: float) -> float:
    """Erlang C: the probability an arrival must wait in M/M/c with offered load ``a = lambda/mu``
    (needs a < c). Computed through the Erlang B recursion, which is numerically stable."""
    if not a < c:
        raise ValueError("M/M/c is stable only for a < c")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho + rho * b)


def mm1k(rho: float, k: int) -> dict[str, float]:
    """M/M/1/K (K = capacity including the one in service) with ``rho = lambda/mu``:
    stationary probabilities, blocking probability P_K, L and Lq."""
    p = np.array([rho**n for n in range(k + 1)], dtype=float)
    p /= p.sum()
    n = np.arange(k + 1)
    L = float((n * p).sum())
    return {"p0": float(p[0]), "p_block": float(p[k]), "L": L, "Lq": L - (1 - float(p[0]))}

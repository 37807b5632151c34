"""Replications and confidence intervals.

Independent replications (the same scenario under different seeds) give independent,
identically distributed estimates of any run-level figure; their mean and a Student-t
interval are the standard way to report a simulation output (Law, *Simulation Modeling and
Analysis*, 5th ed., section 9.4.1, "fixed-sample-size procedure"). One long run can be cut
into batches instead (batch means, Law section 9.5.3): the batch means are nearly
independent when the batches are much longer than the output's correlation time.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from hailan_sim.models.scenario import Scenario
from hailan_sim.sim.result import Result

__all__ = ["batch_means", "erlang_c", "instances_for_objective", "mean_ci", "mmc_wait_quantile", "replicate",
           "summarise"]


def _t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the sample mean of the finite values and its two-sided
    Student-t confidence interval, ``mean +- t_{1-a/2, n-1} * s / sqrt(n)``. With one value
    the interval is unknown (NaN); with none the mean is NaN too."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(x.mean())
    if n == 1:
        return m, math.nan, math.nan, 1
    half = _t_quantile(0.5 + confidence / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half, n


def summarise(table: pd.DataFrame, by: Sequence[str], metrics: Optional[Sequence[str]] = None,
              confidence: float = 0.95) -> pd.DataFrame:
    """Per group of ``by``: for every metric its mean, CI bounds and the number of
    replications, as columns ``<metric>``, ``<metric>.low``, ``<metric>.high``, ``<metric>.n``.
    ``metrics`` defaults to every numeric column not in ``by``."""
    if metrics is None:
        skip = {*by, "run", "point", "replication", "seed"}
        metrics = [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])]
    rows = []
    groups = table.groupby(list(by), sort=True, dropna=False) if by else [((), table)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for m in metrics:
            mean, lo, hi, n = mean_ci(group[m].to_numpy(dtype=float), confidence)
            row[m] = mean
            row[f"{m}.low"] = lo
            row[f"{m}.high"] = hi
            row[f"{m}.n"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def batch_means(series: Sequence[float], batches: int = 10, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and CI of one long run's series (e.g. per-window success ratios after the
    warm-up) by non-overlapping batch means: the series is cut into ``batches`` equal
    batches (the remainder at the start is dropped) and :func:`mean_ci` is applied to the
    batch means. Law recommends 10 to 30 batches."""
    x = np.asarray(series, dtype=float)
    x = x[np.isfinite(x)]
    if batches < 2:
        raise ValueError(f"{batches=} must be >= 2")
    size = len(x) // batches
    if size == 0:
        raise ValueError(f"{len(x)} values cannot make {batches} batches")
    x = x[len(x) - size * batches:]
    return mean_ci(x.reshape(batches, size).mean(axis=1), confidence)


def replicate(scenario: Scenario, seeds: Iterable[int], *,
              metrics: Optional[Callable[[Result], dict]] = None, workers: int = 1) -> pd.DataFrame:
    """Run ``scenario`` once per seed: one row per seed, ``seed`` then ``metrics(result)``
    (default :func:`hailan_sim.sim.sweep.summary_metrics`); ``summarise(table, by=[])``
    gives every column's mean and confidence interval."""
    from hailan_sim.sim.sweep import summary_metrics, sweep

    table = sweep({"_": scenario}, seeds=list(seeds), metrics=metrics or summary_metrics,
                  workers=workers, progress=False)
    return table.drop(columns=["point"])


# --------------------------------------------------------------------------- Erlang C (M/M/c)


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with ``servers`` servers and
    ``offered`` load a = lambda / mu (Erlangs); 1.0 when a >= c (no steady state).

    Computed through the Erlang B recursion B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1)),
    then C = c B / (c - a (1 - B)), which never overflows (Tijms, *A First Course in
    Stochastic Models*, 2003, section 5.2; Gross & Harris, *Fundamentals of Queueing
    Theory*, eq. 2.33)."""
    if servers < 1:
        raise ValueError(f"{servers=} must be >= 1")
    if offered < 0:
        raise ValueError(f"{offered=} must be >= 0")
    if offered >= servers:
        return 1.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return servers * b / (servers - offered * (1 - b))


def mmc_wait_quantile(servers: int, rate: float, mean_service_s: float, q: float) -> float:
    """The q-quantile of the wait for a server in M/M/c (seconds): P(W > t) = C e^{-(c mu -
    lambda) t}, so t_q = ln(C / (1 - q)) / (c mu - lambda), or 0 when C <= 1 - q; inf when
    unstable."""
    mu = 1.0 / mean_service_s
    if rate >= servers * mu:
        return math.inf
    c = erlang_c(servers, rate / mu)
    if c <= 1 - q:
        return 0.0
    return math.log(c / (1 - q)) / (servers * mu - rate)


def instances_for_objective(rate: float, mean_service_s: float, workers: int, objective_s: float,
                            q: float = 0.99, max_instances: int = 1000) -> Optional[int]:
    """The fewest instances of ``workers`` workers each, behind a random balancer (which
    splits Poisson arrivals into independent Poisson streams of rate/n), for which the
    M/M/workers estimate of the q-quantile of the time in service, mean service time plus
    the q-quantile of the wait, is within ``objective_s``. An estimate: exponential service
    times and no downstream calls are assumed; the simulation says what really happens."""
    for n in range(1, max_instances + 1):
        if mean_service_s + mmc_wait_quantile(workers, rate / n, mean_service_s, q) <= objective_s:
            return n
    return None

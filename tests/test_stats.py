"""Statistics people need: replications, t-intervals, batch means, Erlang C, per-outcome latency."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hailan_sim import simulate
from hailan_sim.sim.metrics import Recorder
from hailan_sim.sim.stats import (
    batch_means, erlang_c, instances_for_objective, mean_ci, mmc_wait_quantile, replicate, summarise,
)


def _coverage(hits: int, trials: int, p: float = 0.95) -> None:
    # binomial standard error of the coverage estimate; 4 of them is a 1-in-15,000 miss
    se = math.sqrt(p * (1 - p) / trials)
    assert abs(hits / trials - p) < 4 * se, (hits, trials)


def test_t_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    trials = 2000
    hits = 0
    for _ in range(trials):
        m, lo, hi, n = mean_ci(rng.normal(3.0, 2.0, size=5))
        hits += lo <= 3.0 <= hi
    _coverage(hits, trials)
    # and the interval is the textbook one: 1..5 -> 3 +- t(0.975, 4) * s / sqrt(5)
    m, lo, hi, n = mean_ci([1, 2, 3, 4, 5])
    assert (m, n) == (3.0, 5)
    assert hi - m == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert mean_ci([4.0])[:3] == (4.0, *(mean_ci([4.0])[1:3])) and math.isnan(mean_ci([4.0])[1])
    assert mean_ci([1.0, float("nan"), 3.0])[3] == 2


def test_batch_means_cover_the_mean_of_a_correlated_series():
    """AR(1) with phi 0.5: plain t-intervals of the raw values under-cover; batch means of
    long batches cover at about the nominal rate."""
    rng = np.random.default_rng(3)
    trials, n, phi = 600, 2000, 0.5
    hits = 0
    for _ in range(trials):
        e = rng.normal(size=n)
        x = np.empty(n)
        x[0] = e[0] / math.sqrt(1 - phi**2)
        for i in range(1, n):
            x[i] = phi * x[i - 1] + e[i]
        _, lo, hi, _ = batch_means(x + 10.0, batches=10)
        hits += lo <= 10.0 <= hi
    _coverage(hits, trials)
    with pytest.raises(ValueError):
        batch_means([1.0, 2.0], batches=10)


def test_erlang_c_known_values_and_m_m_c_quantile():
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # Erlang C from its closed form for c = 5, a = 3.5
    c, a = 5, 3.5
    top = a**c / math.factorial(c) * c / (c - a)
    assert erlang_c(c, a) == pytest.approx(top / (sum(a**k / math.factorial(k) for k in range(c)) + top))
    assert erlang_c(3, 3.0) == 1.0
    # M/M/1, rho 0.5, mean service 1: P(W > t) = 0.5 e^{-0.5 t}; the 0.99 quantile is ln(50) / 0.5
    assert mmc_wait_quantile(1, 0.5, 1.0, 0.99) == pytest.approx(math.log(50) / 0.5)
    assert mmc_wait_quantile(4, 0.1, 1.0, 0.99) == 0.0
    assert instances_for_objective(10.0, 1.0, 2, objective_s=1.5) == next(
        n for n in range(1, 100) if 1.0 + mmc_wait_quantile(2, 10.0 / n, 1.0, 0.99) <= 1.5)


def test_replicate_is_simulate_per_seed(small):
    sc = small.with_run(duration_s=6, warmup_s=1)
    table = replicate(sc, [3, 4])
    assert list(table["seed"]) == [3, 4]
    assert table.loc[1, "requests"] == sum(simulate(sc.with_run(seed=4)).requests.values())
    s = summarise(table, [], ["requests"])
    assert s.loc[0, "requests"] == table["requests"].mean() and s.loc[0, "requests.n"] == 2


def test_summarise_groups():
    t = pd.DataFrame({"g": ["a", "a", "b", "b"], "v": [1.0, 3.0, 5.0, 5.0]})
    s = summarise(t, ["g"])
    assert list(s["g"]) == ["a", "b"] and list(s["v"]) == [2.0, 5.0]
    assert s.loc[1, "v.low"] == s.loc[1, "v.high"] == 5.0


def test_rejected_calls_do_not_pull_down_the_served_mean():
    rec = Recorder(["e"], 1.0)
    for t, out, lat in [(1, 0, 0.010), (2, 0, 0.030), (3, 3, 0.0), (4, 3, 0.0), (5, 1, 0.5)]:
        rec.buf.extend((t, 0, out, lat, 1.0))
    rec.flush(None)
    s = rec.summary(0)
    assert s["mean_ms"] == pytest.approx(540 / 5)
    assert s["ok_mean_ms"] == pytest.approx(20.0)
    assert s["rejected_mean_ms"] == 0.0 and s["rejected_p99_ms"] == 0.0
    assert s["error_mean_ms"] == pytest.approx(500.0)
    assert s["timeout_mean_ms"] is None
    assert s["ok_p99_ms"] == pytest.approx(30.0, rel=0.01)


def test_per_outcome_means_match_the_event_log(small):
    """With rejections (a tiny queue under heavy load), each outcome's mean latency equals
    the one computed from the event log's request_start/request_end rows."""
    data = small.model_dump(mode="python", exclude_unset=True)
    for s in data["services"]:
        if s["name"] == "back":
            s["queue_limit"] = 1
    from hailan_sim import Scenario

    sc = Scenario.model_validate(data).with_run(duration_s=8, warmup_s=1).with_load(3.0)
    r = simulate(sc, keep_events=True)
    ev = r.events()
    start = ev[ev.event == "request_start"].set_index("request")["t"]
    end = ev[ev.event == "request_end"].set_index("request")
    lat = (end["t"] - start.reindex(end.index)) * 1000
    tracked = start.reindex(end.index) >= sc.run.warmup_s
    row = r.endpoints.loc["home"]
    assert row["error"] > 0
    for outcome in ("ok", "error"):
        sel = lat[tracked & (end["outcome"] == outcome)]
        assert row[f"{outcome}_mean_ms"] == pytest.approx(sel.mean(), rel=1e-9)

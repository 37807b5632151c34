"""Distributions, samplers and arrival schedules, tested alone (no engine)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hailan_sim.models.arrivals import RateSchedule
from hailan_sim.models.distributions import (
    Constant, Discrete, Empirical, Exponential, Gamma, LogNormal, Poisson, Sampler, Uniform, UniformInt,
)
from hailan_sim.models.scenario import PiecewiseArrival, PoissonArrival, Scenario
from hailan_sim.sim.rng import Streams

DISTS = [
    Exponential(dist="exponential", mean=8.0),
    Constant(dist="constant", value=3.0),
    Uniform(dist="uniform", low=1.0, high=5.0),
    LogNormal(dist="lognormal", median=4.0, sigma=0.6),
    Gamma(dist="gamma", shape=2.0, scale=1.5),
    Empirical(dist="empirical", quantiles=[(0, 1.0), (0.5, 2.0), (0.9, 6.0), (1, 20.0)]),
    Poisson(dist="poisson", mean=2.5),
    UniformInt(dist="uniform_int", low=0, high=4),
    Discrete(dist="discrete", weights=[(1, 1.0), (3, 3.0)]),
]


@pytest.mark.parametrize("dist", DISTS, ids=lambda d: d.dist)
def test_sample_mean_matches_the_stated_mean(dist):
    n = 50_000
    sample = Sampler(dist, np.random.default_rng(11))
    xs = np.array([sample() for _ in range(n)])
    se = xs.std(ddof=1) / math.sqrt(n)
    # 4.4 standard errors: ~1e-5 chance of a false alarm for a correct sampler.
    assert abs(xs.mean() - dist.expected()) <= max(4.4 * se, 1e-12)


def test_lognormal_median_is_the_median():
    d = LogNormal(dist="lognormal", median=4.0, sigma=0.6)
    xs = d.draw(np.random.default_rng(3), 40_000)
    # the sample median's standard error for a lognormal: 1/(2 f(m) sqrt(n))
    f_m = 1 / (4.0 * 0.6 * math.sqrt(2 * math.pi))
    assert abs(np.median(xs) - 4.0) < 4.4 / (2 * f_m * math.sqrt(len(xs)))


def test_empirical_quantiles_are_reproduced():
    d = Empirical(dist="empirical", quantiles=[(0, 1.0), (0.5, 2.0), (0.9, 6.0), (1, 20.0)])
    n = 100_000
    xs = d.draw(np.random.default_rng(5), n)
    # The CDF at each stated quantile value is the stated probability, within a binomial interval.
    for p, x in ((0.5, 2.0), (0.9, 6.0)):
        assert abs((xs <= x).mean() - p) < 4.4 * math.sqrt(p * (1 - p) / n)
    assert xs.min() >= 1.0 and xs.max() <= 20.0


def test_sampler_scale_converts_units():
    s = Sampler(Constant(dist="constant", value=250.0), np.random.default_rng(0), 1e-3)
    assert s() == 0.25


def test_sampler_values_do_not_depend_on_the_block_boundary():
    a = Sampler(Exponential(dist="exponential", mean=1.0), np.random.default_rng(9))
    first = [a() for _ in range(3000)]
    b = Sampler(Exponential(dist="exponential", mean=1.0), np.random.default_rng(9))
    assert [b() for _ in range(3000)] == first


def test_streams_are_named_stable_and_distinct():
    a, b = Streams(1), Streams(1)
    x = a.generator("svc/a.op").random(3).tolist()
    assert b.generator("svc/a.op").random(3).tolist() == x
    assert Streams(1).generator("svc/b.op").random(3).tolist() != x
    assert Streams(2).generator("svc/a.op").random(3).tolist() != x
    with pytest.raises(ValueError, match="requested twice"):
        a.generator("svc/a.op")


def test_poisson_schedule_next_arrival():
    s = RateSchedule(PoissonArrival(kind="poisson", rate=4.0))
    assert s.next_arrival(10.0, 2.0) == 10.5


def test_piecewise_schedule_crosses_steps_exactly():
    s = RateSchedule(PiecewiseArrival(kind="piecewise", steps=[(0, 0.0), (10, 2.0)]))
    assert s.next_arrival(0.0, 1.0) == 10.5  # nothing until t=10, then rate 2
    assert s.rate_at(3.0) == 0.0 and s.rate_at(12.0) == 2.0


def test_piecewise_schedule_repeats_with_its_period_and_scale():
    s = RateSchedule(PiecewiseArrival(kind="piecewise", steps=[(0, 1.0), (5, 0.0)], period_s=10, scale=2.0))
    # from 4: 1 s at rate 2 uses 2 of the 3 units, 5..10 is idle, the last unit takes 0.5 s
    assert s.next_arrival(4.0, 3.0) == pytest.approx(10.5)
    assert s.integral(0, 30) == pytest.approx(30.0)


def test_piecewise_arrivals_in_a_run_follow_the_schedule(tmp_path):
    (tmp_path / "rates.csv").write_text("t_s,rate\n0,50\n20,200\n40,0\n")
    from hailan_sim.models import load_scenario

    (tmp_path / "s.yaml").write_text(
        "name: pw\nrun: {duration_s: 60, seed: 4}\n"
        "services: [{name: a, port: 3001, instances: 1, workers: 64, operations: {op: {service_time_ms: {dist: constant, value: 1}}}}]\n"
        "workload: {endpoints: [{name: e, entry: a.op, arrival: {kind: piecewise, csv: rates.csv, scale: 0.5}}]}\n"
    )
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.workload.endpoints[0].arrival.steps == [(0.0, 50.0), (20.0, 200.0), (40.0, 0.0)]
    from hailan_sim.sim import simulate

    w = simulate(scenario).windows
    for lo, hi, rate in ((0, 20, 25), (20, 40, 100), (40, 60, 0)):
        n = w[(w.window_start_s >= lo) & (w.window_start_s < hi)]["total"].sum()
        expected = rate * (hi - lo)
        assert abs(n - expected) <= 4.4 * math.sqrt(expected) if expected else n == 0


def test_scenario_round_trips_through_json():
    from hailan_sim.models import default_scenario

    s = default_scenario()
    assert Scenario.model_validate_json(s.model_dump_json()) == s


def test_policy_edges_must_name_services():
    from hailan_sim.models import ScenarioError, parse_scenario

    text = (Path(__file__).parent / "scenarios" / "small.yaml").read_text()
    with pytest.raises(ScenarioError, match=r"policies.edges\[0\].callee: 'db' is an infrastructure component"):
        parse_scenario(text + "policies: {edges: [{callee: db, timeout_s: 1}]}\n", "s.yaml")
    with pytest.raises(ScenarioError, match=r"'nobody' is an unknown service"):
        parse_scenario(text + "policies: {edges: [{caller: nobody, timeout_s: 1}]}\n", "s.yaml")

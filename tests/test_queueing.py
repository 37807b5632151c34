"""The engine against queueing theory, within confidence intervals computed from the runs.

What is checked
---------------
* M/M/1: mean wait for a worker Wq = rho/(mu - lambda), mean sojourn W = 1/(mu - lambda),
  utilisation = rho, time-average queue Lq = rho^2/(1 - rho).
* M/M/c (c = 3 and c = 8): P(wait) = Erlang C(c, a), Wq = C/(c mu - lambda), W = Wq + 1/mu,
  utilisation = rho and Lq = C rho/(1 - rho).
* Three exponential services in series (a Jackson network): end-to-end sojourn
  sum_i 1/(mu_i - lambda), each station's own Wq, and each service's call latency as its
  caller sees it (its own sojourn plus everything downstream).
* M/D/1 (constant service time), Pollaczek-Khinchine: Wq = rho/(2 mu (1 - rho)).
* M/M/1/K (``queue_limit = K - 1``): the fraction of requests rejected equals the blocking
  probability P_K = (1 - rho) rho^K / (1 - rho^(K+1)) (PASTA), also with rho > 1; accepted
  requests wait Lq / (lambda (1 - P_K)).

Every scenario has no gateway, no network latency and no timeouts, so a request is exactly
one call per service visited and nothing is abandoned.

Statistical method
------------------
Each configuration is run as n independent replications (10-20 fixed seeds, chosen before
looking at any result, so the tests are deterministic). Each replication starts empty and
idle, discards a warm-up of 10 s of simulated time (the relaxation time of the busiest
queue here, about 1/(mu (1 - sqrt(rho))^2), is under 0.3 s for rho <= 0.8: the
initialisation bias left is far below the noise) and then measures 20,000-40,000 arrivals.
A replication yields one number per quantity: its mean sojourn, its mean wait, its
fraction of rejected requests, its time-average queue length, ... Those n numbers are
independent and, each being an average of many observations, close to normal, so

    mean +- t_{n-1, (1+level)/2} * s / sqrt(n)        (scipy.stats.t, s: sample std dev)

is an honest confidence interval for the steady-state value whatever the autocorrelation
inside a run. (That is why replications are used rather than the per-customer standard
error of one long run: successive sojourns in a queue are strongly correlated, and the
naive interval would be several times too narrow.) The theory value must lie in it.

Why these tolerances
--------------------
* Level 99.9% per check. The default run makes 35 theory-in-interval checks; at 99% a
  correct engine would fail one of them with probability 1 - 0.99^35 ~ 30% each time
  something re-shuffles the random numbers (a new stream, a changed draw order). At 99.9%
  that chance is ~3.5%, for intervals ~40% wider (t_{11} quantile 4.44 instead of 3.11).
* No vacuous passes: every interval must also be tight, its half-width at most a fixed
  fraction of the theory value: 5% for sojourn times, call latencies, P(wait) and P(block);
  2.5% for utilisation; 10% for Wq and Lq (small differences of large quantities: their
  relative noise is 1.5-4 times the sojourn's); 15% for Wq at the lightly loaded tandem
  stations and 20% for Wq and Lq in M/M/8, where waiting is a small part of the sojourn.
  The sample sizes were chosen so that the half-widths they give are at most ~2/3 of
  these limits (measured when the tests were written: typically 2.5-3.5% for sojourns,
  ~10% for M/M/8's Wq), so the sampling noise of s itself does not trip the limits.
* Power: the same intervals exclude the theory for a neighbouring arrival rate
  (lambda x 1.1) in every configuration, and the M/M/1 and M/D/1 intervals each exclude
  the other's theory (same mean service time, different shape), so an engine that got
  the arrival rate, the service-time scale or the service-time distribution wrong by 10%
  fails. The ``slow`` variants go further: a 3% rate error is rejected, and a simulated
  wrong engine (arrivals 5% too fast) fails the M/M/1 checks.

Runtime: about 3 million calls (~60 s of CPU) in the default run, spread over a small
process pool (results do not depend on it: a replication is a pure function of scenario
and seed). The ``slow`` variants (rho = 0.9, a tandem with a rho = 0.85 bottleneck, a
five times longer M/M/8, the simulated wrong engine) take several CPU minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pytest

from hailan_sim.models.scenario import Scenario
from tests._queueing_helpers import (
    Interval,
    erlang_c,
    make_pool,
    mm1k,
    replicate,
    single_station,
    t_interval,
    tandem,
)

LEVEL = 0.999
RATE = 100.0  # arrivals per second, every configuration
WARMUP_S = 10.0

# Tightness bounds: the largest half-width allowed, as a fraction of the theory value.
TIGHT_W = 0.05  # mean sojourn / call latency
TIGHT_P = 0.05  # P(wait), P(blocked)
TIGHT_U = 0.025  # utilisation
TIGHT_WQ = 0.10  # Wq and Lq
TIGHT_WQ_TANDEM = 0.15  # Wq at tandem stations with rho 0.3-0.6
TIGHT_WQ_MM8 = 0.20  # Wq and Lq in M/M/8, a small part of the sojourn there


def exp_ms(mean: float) -> dict:
    return {"dist": "exponential", "mean": mean}


def const_ms(value: float) -> dict:
    return {"dist": "constant", "value": value}


@dataclass(frozen=True)
class Case:
    """One configuration and how it is replicated."""

    scenario: Scenario
    reps: int
    arrivals: int  # measured arrivals per replication (on average)
    warmup_s: float = WARMUP_S
    p_wait_of: Optional[tuple[str, int]] = None  # (service, workers): measure P(wait)
    seed0: int = 0

    @property
    def seeds(self) -> range:
        return range(self.seed0, self.seed0 + self.reps)

    @property
    def duration_s(self) -> float:
        return self.warmup_s + self.arrivals / RATE


# Service times (ms) at RATE = 100/s give these loads.
MM1_S = 7.0  # rho = 0.7
MM3_S = 22.5  # rho = 0.75
MM8_S = 64.0  # rho = 0.8
TANDEM_S = (4.0, 6.0, 3.0)  # rho = 0.4, 0.6, 0.3
MD1_S = 7.0  # rho = 0.7
MM1K = {"rho0.9-K4": (9.0, 4), "rho1.25-K4": (12.5, 4)}  # (service ms, K)

CASES: dict[str, Case] = {
    "mm1": Case(single_station(RATE, exp_ms(MM1_S)), reps=12, arrivals=40_000),
    "mm3": Case(single_station(RATE, exp_ms(MM3_S), workers=3), reps=14, arrivals=40_000,
                p_wait_of=("server", 3)),
    "mm8": Case(single_station(RATE, exp_ms(MM8_S), workers=8), reps=20, arrivals=30_000,
                p_wait_of=("server", 8)),
    "tandem": Case(tandem(RATE, TANDEM_S), reps=12, arrivals=20_000),
    "md1": Case(single_station(RATE, const_ms(MD1_S)), reps=10, arrivals=20_000),
    "mm1k-rho0.9-K4": Case(single_station(RATE, exp_ms(9.0), queue_limit=3), reps=12,
                           arrivals=25_000),
    "mm1k-rho1.25-K4": Case(single_station(RATE, exp_ms(12.5), queue_limit=3), reps=10,
                            arrivals=20_000),
}


# --------------------------------------------------------------------------- theory
# Every formula takes the arrival rate, so the power tests can ask for a neighbouring one.


def mm1_theory(lam: float, s_ms: float) -> dict[str, float]:
    mu = 1000.0 / s_ms
    rho = lam / mu
    return {
        "W_ms": 1000.0 / (mu - lam),
        "Wq_ms": 1000.0 * rho / (mu - lam),
        "utilisation": rho,
        "Lq": rho**2 / (1 - rho),
        # The wait for a worker: P(Wq > t) = rho e^{-(mu - lambda) t} (Kleinrock, Queueing
        # Systems I, 1975, eq. 3.28), so P(wait) = rho and the 99th percentile solves it at 0.01.
        "P_wait_engine": rho,
        "Wq_p99_ms": 1000.0 * math.log(rho / 0.01) / (mu - lam),
    }


def mmc_theory(lam: float, s_ms: float, c: int) -> dict[str, float]:
    mu = 1000.0 / s_ms
    a = lam / mu
    rho = a / c
    C = erlang_c(c, a)
    wq = C / (c * mu - lam)
    return {
        "P_wait": C,
        # The engine's own count of calls that waited for a worker (not PASTA from the log).
        "P_wait_engine": C,
        # P(Wq > t) = C e^{-(c mu - lambda) t} (Kleinrock 1975, eq. 3.40); meaningful where C > 0.01.
        "Wq_p99_ms": 1000.0 * math.log(C / 0.01) / (c * mu - lam) if C > 0.01 else 0.0,
        "Wq_ms": 1000.0 * wq,
        "W_ms": 1000.0 * (wq + 1 / mu),
        "utilisation": rho,
        "Lq": C * rho / (1 - rho),
    }


def tandem_theory(lam: float, means_ms: tuple[float, ...]) -> dict[str, float]:
    mus = [1000.0 / m for m in means_ms]
    sojourn = [1000.0 / (mu - lam) for mu in mus]
    out = {"W_ms": sum(sojourn)}
    for i, mu in enumerate(mus):
        out[f"s{i}.Wq_ms"] = 1000.0 * (lam / mu) / (mu - lam)
        out[f"s{i}.mean_ms"] = sum(sojourn[i:])  # own sojourn plus everything downstream
    return out


def md1_theory(lam: float, s_ms: float) -> dict[str, float]:
    mu = 1000.0 / s_ms
    rho = lam / mu
    wq = rho / (2 * mu * (1 - rho))
    return {
        "Wq_ms": 1000.0 * wq,
        "W_ms": 1000.0 * (wq + 1 / mu),
        "utilisation": rho,
        "Lq": lam * wq,
    }


def mm1k_theory(lam: float, s_ms: float, k: int) -> dict[str, float]:
    mu = 1000.0 / s_ms
    m = mm1k(lam / mu, k)
    lam_eff = lam * (1 - m["p_block"])
    return {
        "P_block": m["p_block"],
        "Wq_ms": 1000.0 * m["Lq"] / lam_eff,  # accepted requests (rejected never wait)
        # Rejected requests end at once with latency 0, so the mean over all requests is
        # (1 - P_K) * W_accepted = L / lambda.
        "mean_all_ms": 1000.0 * m["L"] / lam,
        "utilisation": 1 - m["p0"],
        "Lq": m["Lq"],
    }


THEORY: dict[str, Callable[[float], dict[str, float]]] = {
    "mm1": lambda lam: mm1_theory(lam, MM1_S),
    "mm3": lambda lam: mmc_theory(lam, MM3_S, 3),
    "mm8": lambda lam: mmc_theory(lam, MM8_S, 8),
    "tandem": lambda lam: tandem_theory(lam, TANDEM_S),
    "md1": lambda lam: md1_theory(lam, MD1_S),
    **{
        f"mm1k-{name}": (lambda lam, s=s, k=k: mm1k_theory(lam, s, k))
        for name, (s, k) in MM1K.items()
    },
}


# --------------------------------------------------------------------------- measurement


def measure(case_name: str, reps: list[dict]) -> dict[str, np.ndarray]:
    """Per-replication estimates of every quantity THEORY[case_name] predicts."""

    def col(f) -> np.ndarray:
        return np.array([f(r) for r in reps], dtype=float)

    svc = lambda r, name="server": r["services"][name]  # noqa: E731
    if case_name == "tandem":
        out = {"W_ms": col(lambda r: r["mean_ms"])}
        for i in range(len(TANDEM_S)):
            out[f"s{i}.Wq_ms"] = col(lambda r, i=i: svc(r, f"s{i}")["mean_wait_ms"])
            out[f"s{i}.mean_ms"] = col(lambda r, i=i: svc(r, f"s{i}")["mean_ms"])
        return out
    out = {
        "Wq_ms": col(lambda r: svc(r)["mean_wait_ms"]),
        "utilisation": col(lambda r: svc(r)["utilisation"]),
        "Lq": col(lambda r: svc(r)["mean_queue"]),
    }
    if case_name.startswith("mm1k"):
        out["P_block"] = col(lambda r: r["rejected"] / r["total"])
        out["mean_all_ms"] = col(lambda r: r["mean_ms"])
    else:
        out["W_ms"] = col(lambda r: r["mean_ms"])
    if "p_wait" in reps[0]:
        out["P_wait"] = col(lambda r: r["p_wait"])
    if case_name in ("mm1", "mm3", "mm8"):
        out["P_wait_engine"] = col(lambda r: svc(r)["p_wait"])
        out["Wq_p99_ms"] = col(lambda r: svc(r)["wait_p99_ms"])
    return out


def tightness(quantity: str, case_name: str) -> float:
    """The largest half-width, as a fraction of the theory value, that ``quantity``'s
    interval may have in ``case_name`` (see the module docstring)."""
    if quantity in ("P_wait", "P_wait_engine", "P_block"):
        return TIGHT_P
    if quantity == "Wq_p99_ms":
        return TIGHT_WQ
    if quantity == "utilisation":
        return TIGHT_U
    if quantity.endswith("Wq_ms") or quantity == "Lq":
        if case_name == "mm8":
            return TIGHT_WQ_MM8
        return TIGHT_WQ_TANDEM if case_name == "tandem" else TIGHT_WQ
    return TIGHT_W  # sojourn times, call latencies


def check(label: str, values: np.ndarray, theory: float, max_rel_half_width: float) -> Interval:
    """Assert the t-interval of ``values`` is tight and contains ``theory``."""
    iv = t_interval(values, LEVEL)
    rel = iv.relative_half_width(theory)
    assert rel < max_rel_half_width, (
        f"{label}: interval {iv} too wide to say anything "
        f"(half-width {rel:.1%} of theory {theory:.6g}, limit {max_rel_half_width:.0%})"
    )
    assert theory in iv, f"{label}: theory {theory:.6g} outside {iv}"
    return iv


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pool():
    p = make_pool()
    yield p
    if p is not None:
        p.shutdown()


@pytest.fixture(scope="module")
def runs(pool):
    """``runs(name)``: the replications of CASES[name], run once per module."""
    cache: dict[str, list[dict]] = {}

    def get(name: str) -> list[dict]:
        if name not in cache:
            case = CASES[name]
            reps = replicate(pool, case.scenario, case.seeds, duration_s=case.duration_s,
                             warmup_s=case.warmup_s, p_wait_of=case.p_wait_of)
            for r in reps:
                # Sanity: nothing may fail in these scenarios except rejection by a full queue.
                assert r["error"] == 0 and r["timeout"] == 0, r
                assert r["total"] > 0.9 * case.arrivals, r
                if not name.startswith("mm1k"):
                    assert r["rejected"] == 0, r
            cache[name] = reps
        return cache[name]

    return get


def check_case(name: str, reps: list[dict], quantities: list[str]) -> None:
    theory = THEORY[name](RATE)
    measured = measure(name, reps)
    for q in quantities:
        check(f"{name} {q}", measured[q], theory[q], tightness(q, name))


# --------------------------------------------------------------------------- the tests


def test_mm1_wait_and_sojourn(runs):
    check_case("mm1", runs("mm1"), ["Wq_ms", "W_ms"])


@pytest.mark.parametrize("name", ["mm3", "mm8"])
def test_mmc_erlang_c(runs, name):
    check_case(name, runs(name), ["P_wait", "Wq_ms", "W_ms"])


@pytest.mark.parametrize("name", ["mm1", "mm3"])
def test_wait_for_a_worker_p_wait_and_p99(runs, name):
    """Result.services' p_wait and wait_p99_ms against the M/M/c waiting-time distribution.
    The p99 comes from 1%-wide buckets (within 0.5% of the order statistic), so the
    interval is widened by that much on each side before the theory must lie in it."""
    theory = THEORY[name](RATE)
    measured = measure(name, runs(name))
    check(f"{name} P_wait_engine", measured["P_wait_engine"], theory["P_wait_engine"], TIGHT_P)
    iv = t_interval(measured["Wq_p99_ms"], LEVEL)
    assert iv.relative_half_width(theory["Wq_p99_ms"]) < TIGHT_WQ, iv
    assert iv.low * 0.995 <= theory["Wq_p99_ms"] <= iv.high * 1.005, (iv, theory["Wq_p99_ms"])


def test_tandem_is_a_jackson_network(runs):
    quantities = ["W_ms"]
    for i in range(len(TANDEM_S)):
        quantities += [f"s{i}.Wq_ms", f"s{i}.mean_ms"]
    check_case("tandem", runs("tandem"), quantities)


def test_md1_pollaczek_khinchine(runs):
    check_case("md1", runs("md1"), ["Wq_ms", "W_ms"])


@pytest.mark.parametrize("name", [f"mm1k-{k}" for k in MM1K])
def test_mm1k_blocking_probability(runs, name):
    check_case(name, runs(name), ["P_block", "Wq_ms", "mean_all_ms"])


@pytest.mark.parametrize("name", ["mm1", "mm3", "mm8", "md1", *(f"mm1k-{k}" for k in MM1K)])
def test_time_averages_utilisation_and_queue_length(runs, name):
    """Time averages over the measured period (a different code path from the per-call
    means): utilisation = busy workers / workers, Lq = mean number waiting."""
    check_case(name, runs(name), ["utilisation", "Lq"])


# --------------------------------------------------------------------------- power
# An interval that contained everything would make every test above pass. These show the
# same intervals reject plausible wrong answers.

POWER_QUANTITY = {
    "mm1": ["W_ms", "Wq_ms"],
    "mm3": ["W_ms", "P_wait"],
    "mm8": ["W_ms", "P_wait"],
    "tandem": ["W_ms"],
    "md1": ["W_ms", "Wq_ms"],
    **{f"mm1k-{k}": ["P_block"] for k in MM1K},
}


@pytest.mark.parametrize("name", list(POWER_QUANTITY))
def test_power_a_neighbouring_arrival_rate_is_rejected(runs, name):
    """The theory for lambda x 1.1 (what an engine that drew arrivals 10% too fast, or
    service times ~10% too long, would match) lies outside the interval."""
    measured = measure(name, runs(name))
    wrong = THEORY[name](RATE * 1.1)
    for q in POWER_QUANTITY[name]:
        iv = t_interval(measured[q], LEVEL)
        assert wrong[q] not in iv, (
            f"{name} {q}: interval {iv} also contains the lambda x 1.1 value {wrong[q]:.6g}"
        )


def test_power_service_time_shape_is_distinguished(runs):
    """M/D/1 and M/M/1 with the same mean service time differ by a factor 2 in Wq
    (Pollaczek-Khinchine); each interval rejects the other's theory."""
    mm1 = t_interval(measure("mm1", runs("mm1"))["Wq_ms"], LEVEL)
    md1 = t_interval(measure("md1", runs("md1"))["Wq_ms"], LEVEL)
    assert MM1_S == MD1_S
    assert mm1_theory(RATE, MD1_S)["Wq_ms"] not in md1
    assert md1_theory(RATE, MM1_S)["Wq_ms"] not in mm1


# --------------------------------------------------------------------------- slow variants


SlowCase = tuple[Case, Callable[[float], dict[str, float]], dict[str, float]]

# name -> (case, theory as a function of lambda, {quantity: tightness limit}). The first
# quantity is also used for the power check.
SLOW_CASES: dict[str, SlowCase] = {
    # Heavy traffic: the relaxation time is ~3.5 s, so a 100 s warm-up; the noise grows as
    # 1/(1-rho)^2, so this needs 4 million arrivals for the default run's tightness.
    "mm1-rho0.9": (
        Case(single_station(RATE, exp_ms(9.0)), reps=20, arrivals=200_000, warmup_s=100.0,
             seed0=1000),
        lambda lam: mm1_theory(lam, 9.0),
        {"W_ms": 0.05, "Wq_ms": 0.06, "utilisation": 0.01, "Lq": 0.06},
    ),
    # M/M/8 five times longer: bounds 2-4 times tighter than the default run's.
    "mm8-long": (
        Case(single_station(RATE, exp_ms(MM8_S), workers=8), reps=20, arrivals=150_000,
             seed0=1000, p_wait_of=("server", 8)),
        lambda lam: mmc_theory(lam, MM8_S, 8),
        {"P_wait": 0.02, "Wq_ms": 0.06, "W_ms": 0.02, "utilisation": 0.01, "Lq": 0.06},
    ),
    # A tandem whose middle station is the bottleneck (rho = 0.5, 0.85, 0.2).
    "tandem-bottleneck": (
        Case(tandem(RATE, (5.0, 8.5, 2.0)), reps=16, arrivals=100_000, warmup_s=50.0,
             seed0=1000),
        lambda lam: tandem_theory(lam, (5.0, 8.5, 2.0)),
        {"W_ms": 0.05, "s1.mean_ms": 0.06, "s2.mean_ms": 0.02, "s1.Wq_ms": 0.07},
    ),
}


def _slow_measure(reps: list[dict], quantities: list[str]) -> dict[str, np.ndarray]:
    svc = lambda r, name="server": r["services"][name]  # noqa: E731
    get = {
        "W_ms": lambda r: r["mean_ms"],
        "Wq_ms": lambda r: svc(r)["mean_wait_ms"],
        "utilisation": lambda r: svc(r)["utilisation"],
        "Lq": lambda r: svc(r)["mean_queue"],
        "P_wait": lambda r: r["p_wait"],
        **{f"s{i}.mean_ms": (lambda r, i=i: svc(r, f"s{i}")["mean_ms"]) for i in range(3)},
        **{f"s{i}.Wq_ms": (lambda r, i=i: svc(r, f"s{i}")["mean_wait_ms"]) for i in range(3)},
    }
    return {q: np.array([get[q](r) for r in reps]) for q in quantities}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_slow_heavier_and_tighter_variants(pool, name):
    case, theory_of, limits = SLOW_CASES[name]
    reps = replicate(pool, case.scenario, case.seeds, duration_s=case.duration_s,
                     warmup_s=case.warmup_s, p_wait_of=case.p_wait_of)
    measured = _slow_measure(reps, list(limits))
    theory = theory_of(RATE)
    for q, limit in limits.items():
        check(f"{name} {q}", measured[q], theory[q], limit)
    # Power: the theory for a 3% faster arrival rate is already rejected.
    q = next(iter(limits))
    wrong = theory_of(RATE * 1.03)[q]
    assert wrong not in t_interval(measured[q], LEVEL), (name, q, wrong)


@pytest.mark.slow
def test_slow_power_a_wrong_engine_is_caught(pool):
    """Simulate a 'wrong engine' (arrivals 5% too fast) and apply the M/M/1 check with the
    theory of the intended rate: the test must fail, for W, Wq, utilisation and Lq."""
    case = CASES["mm1"]
    wrong = single_station(RATE * 1.05, exp_ms(MM1_S))
    reps = replicate(pool, wrong, range(2000, 2000 + case.reps),
                     duration_s=case.duration_s, warmup_s=case.warmup_s)
    measured = measure("mm1", reps)
    theory = mm1_theory(RATE, MM1_S)
    for q in ["W_ms", "Wq_ms", "utilisation", "Lq"]:
        iv = t_interval(measured[q], LEVEL)
        assert iv.relative_half_width(theory[q]) < tightness(q, "mm1")
        assert theory[q] not in iv, f"{q}: a 5% rate error went unnoticed: {iv} ∋ {theory[q]:.6g}"
        # ... while the theory of the rate actually simulated is accepted.
        assert mm1_theory(RATE * 1.05, MM1_S)[q] in iv, (q, iv)

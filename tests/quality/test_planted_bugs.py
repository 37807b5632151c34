"""Quality tests: the checker finds a planted bug and shrinks it to a small schedule.

As Hypothesis's own ``quality/`` tests do, each test plants a known bug and asserts that the
search (:func:`hailan_sim.properties.checker.check`) *finds* it and *shrinks* it. The bugs are planted
with ``monkeypatch`` on the model classes, so the engine runs the broken behaviour in-process.

Every test runs the same scenario twice with the same budget and seed: once with the correct
model, which must hold the invariant (and must have exercised the mechanism, so the pass is
not vacuous), and once with the bug, which must violate it. The checker must tell the two
apart; a test that cannot fail proves nothing.

The scenario (:func:`_scenario`): ``client -> a.op -> b.op``, one ``a`` instance, two ``b``
instances (``b-0``, ``b-1``), a Consul registry, discovery of passing instances only, cached
for 5 s, health checks every 2 s with a 1 s timeout. Faults may only name ``b`` (the callee
whose failures the planted mechanism must handle): a fault on the lone ``a`` instance breaks
every model alike, and the shrinker would happily trade the bug for it.

The planted bugs, and what the checker is expected to find (with this file's budget and
seed; every search is deterministic):

1. **A breaker that never closes.** ``SlidingWindowBreaker._to_closed`` does nothing: a
   half-open breaker whose probes succeed stays half-open, its permits used up, and
   short-circuits every later call. Policy: a service-scoped resilience4j breaker (count
   window of 10, 50 %, 2 s open, 3 probes). Expected: ``bounded_recovery`` violated, shrunk to
   one crash of ``b-0`` just long enough to open the breaker (1.424 s, restarting): ``a.op``
   succeeds 0 % in every window after ``R`` and never recovers. The correct breaker closes
   again and ``a.op`` recovers.

2. **A balancer that ignores health.** ``DiscoveryView._query`` asks the registry for every
   registered instance (``agent_list``) whatever the policy's ``health_passing`` path says,
   so a dead ``b`` instance stays in the balancer's list until Consul reaps it (>= 60 s).
   Expected: ``no_traffic_to_dead_instances`` violated: a call to ``b-0`` more than the 8 s
   bound (3 s detection + 5 s cache) after it died. Shrunk to crashes of ``b-0`` that keep it
   dead just over 8 s; today two faults, one of them needless (see
   ``test_every_fault_of_the_shrunk_schedule_is_needed``). The correct view hides ``b-0`` once
   its check fails.

3. **A retry loop without backoff.** ``RetryPolicy.should_retry`` ignores ``max_attempts``
   (the loop gives up only after a hard-coded 20 tries), ``retry_on`` and ``idempotent_only``
   (every failure is retried), and ``RetryPolicy.delay`` is 0 s whatever the backoff says. Policy: 3 attempts with AWS full
   jitter, no budget, so the only bound on retries is the policy itself. Expected:
   ``bounded_retry_amplification`` violated, shrunk to one crash of ``b-0`` that does not
   restart: callers retry at once into the dead instance the cached list still names, up to
   8 calls to ``b`` for one request (limit 3x). The correct policy makes at most 3 attempts.

   The invariant's factor is the objective (``objectives.max_attempts``: 3 here, the SRE
   book's), not the policy's ``max_attempts``: a policy configured with 20 attempts would
   break it too, but this test keeps the correct policy at 3 so that only the loop that does
   not honour its policy differs.

The scenario states its own objectives (``OBJECTIVES``): 8 s of traffic to a dead instance
(what its 3 s detection and 5 s cache deliver), recovery within 25 s, 3 attempts.

For each, ``test_the_checker_finds_the_planted_bug_and_shrinks_it`` asserts that the correct
model holds (and its runs exercised the mechanism), that the planted one is violated, that the
shrunk schedule has at most two faults although up to three were searched (``max_faults=3``),
each a crash of a ``b`` instance (the simplest kind), and that the very same schedule holds
under the correct model, not vacuously (so it is the bug that was found, not a schedule that
breaks every model). ``test_every_fault_of_the_shrunk_schedule_is_needed`` asks more of the
shrinker: dropping any one fault makes the violation go away.

Faults end by 30 s and arrivals run until 70 s: the last fault's end plus ``R`` (at most
25 s here: a crash that leaves ``b-0`` dead under the breaker policy) leaves full windows to
judge recovery. With the default horizon
(``fault_horizon``: up to ``duration - R``), a schedule shrunk to its latest start ends at
``duration - R``, leaving ``bounded_recovery`` at most a sliver of a window to judge.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import pytest

from hailan_sim.models.breakers import SlidingWindowBreaker
from hailan_sim.models.registry import DiscoveryView
from hailan_sim.models.retry import RetryPolicy
from hailan_sim.models.scenario import Scenario
from hailan_sim.properties.checker import CheckReport, InvariantReport, check
from hailan_sim.properties.invariants import Record, default_recovery_s, get
from hailan_sim.properties.strategies import with_faults
from tests._build import build, const, endpoint, op, svc

REGISTRY = {"name": "consul", "kind": "registry", "port": 8500, "capacity": 8, "latency_ms": const(0.5)}
CALLEE = ["b", "b-0", "b-1"]  # what faults may name
WARMUP_S, DURATION_S, HORIZON = 5.0, 70.0, (5.0, 30.0)
# The budget: explicit and small, the same for the correct and the planted model.
# cover=False: these tests are about Hypothesis's search and shrinking; the checker's cover
# phase (one fault per kind, shortened by a fixed ladder) is tested in tests/test_checker.py.
BUDGET = {"max_examples": 10, "max_faults": 3, "seed": 0, "n_seeds": 1, "targets": CALLEE, "horizon": HORIZON,
          "cover": False}

# retry_extra_load: this file tests the per-request clause; without a retry budget the correct
# policy's retries add about 10% to a's calls during a crash, which the aggregate clause judges
# (tests/properties/test_invariants.py).
OBJECTIVES = {"dead_instance_s": 8, "rto_s": 25, "max_attempts": 3, "retry_extra_load": 0.5}

BREAKER = {
    "kind": "sliding_window", "window_type": "count_based", "window_size": 10, "minimum_calls": 10,
    "failure_rate_threshold": 50, "permitted_calls_in_half_open": 3, "wait_in_open_s": 2,
    "max_wait_in_half_open_s": 0,
}
RETRY = {
    "max_attempts": 3, "backoff": {"kind": "exponential_full_jitter", "base_s": 0.025, "cap_s": 0.25},
    "retry_on": ["error", "timeout", "rejected"], "idempotent_only": True,
}


def _scenario(**policies) -> Scenario:
    """client -> a.op (1 ms) -> b.op (5 ms, idempotent); two b instances; 10 requests/s."""
    return build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
            svc("b", 3002, {"op": op(5, idempotent=True)}, instances=2, workers=16),
        ],
        [endpoint("a.op", {"kind": "poisson", "rate": 10})],
        infrastructure=[REGISTRY],
        policies={
            "timeout_s": 0.5,
            "discovery": {"path": "health_passing", "timing": "cached", "ttl_s": 5},
            "health_check": {"interval_s": 2, "timeout_s": 1, "content": "shallow"},
            **policies,
        },
        duration_s=DURATION_S,
        run={"warmup_s": WARMUP_S},
        # This small system's objectives: what its users need, as tight as its policies can
        # deliver (3 s detection + 5 s cache; recovery within 25 s; the SRE book's 3 attempts).
        objectives=OBJECTIVES,
    )


# --------------------------------------------------------------------------- the planted bugs


def _plant_breaker_that_never_closes(mp: pytest.MonkeyPatch) -> None:
    # The HALF_OPEN -> CLOSED edge is missing: the breaker stays half-open, permits spent.
    mp.setattr(SlidingWindowBreaker, "_to_closed", lambda self, now: None)


def _plant_balancer_that_ignores_health(mp: pytest.MonkeyPatch) -> None:
    def every_registered_instance(self, registry, service):
        self.queries += 1
        result = registry.agent_list(service)  # not registry.query(self.config.path, ...)
        if result is None:
            self.failures += 1
        return result

    mp.setattr(DiscoveryView, "_query", every_registered_instance)


def _plant_retry_loop_without_backoff(mp: pytest.MonkeyPatch) -> None:
    # for attempt in range(20): try: return call() except: continue
    mp.setattr(RetryPolicy, "should_retry", lambda self, attempt, outcome, idempotent: attempt < 20)
    mp.setattr(RetryPolicy, "delay", lambda self, attempt, prev, u: 0.0)


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Bug:
    scenario: Callable[[], Scenario]
    invariant: str
    kinds: tuple[str, ...]  # the fault kinds searched
    plant: Callable[[pytest.MonkeyPatch], None]
    control_witnesses: tuple[str, ...]  # mechanisms the correct model's runs must exercise
    explanation: tuple[str, ...]  # what the violation's explanation must say


BUGS = {
    "breaker_never_closes": Bug(
        lambda: _scenario(breaker=BREAKER, breaker_scope="service"), "bounded_recovery",
        ("crash_instance", "error_rate"), _plant_breaker_that_never_closes,
        ("breaker_opened", "breaker_closed_again"),
        ("succeeded 0.0% vs 100.0%",),  # not a slow recovery but none: every call short-circuited
    ),
    "balancer_ignores_health": Bug(
        _scenario, "no_traffic_to_dead_instances", ("crash_instance", "hang"),
        _plant_balancer_that_ignores_health, ("instance_down",),
        ("a-0 sent a call to b-", "the objective is 8 s"),
    ),
    "retry_loop_without_backoff": Bug(
        lambda: _scenario(retry=RETRY), "bounded_retry_amplification", ("crash_instance", "error_rate"),
        _plant_retry_loop_without_backoff, ("retry_made",),
        ("calls to b.op,", "the objective is 3x"),
    ),
}


@functools.cache
def _search(bug: str, planted: bool) -> tuple[InvariantReport, CheckReport]:
    """The checker's search for ``BUGS[bug]``, with or without the bug (once per session:
    every search is deterministic)."""
    case = BUGS[bug]
    with pytest.MonkeyPatch.context() as mp:
        if planted:
            case.plant(mp)
        report = check(case.scenario(), invariants=[case.invariant], kinds=case.kinds, **BUDGET)
    (only,) = report.invariants
    return only, report


def _verdict(bug: str, faults: list, seed: int, *, planted: bool):
    """One invariant's verdict on one schedule, with or without the bug."""
    case = BUGS[bug]
    with pytest.MonkeyPatch.context() as mp:
        if planted:
            case.plant(mp)
        record = Record.from_scenario(with_faults(case.scenario(), faults).with_run(seed=seed), rerun=False)
        return get(case.invariant)(record)


def _shown(faults: list) -> list[dict]:
    return [f.model_dump(mode="json") for f in faults]


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("bug", list(BUGS))
def test_the_checker_finds_the_planted_bug_and_shrinks_it(bug):
    case = BUGS[bug]
    # The correct model holds, with the same budget and seed, and not vacuously.
    control, control_report = _search(bug, planted=False)
    assert control.status == "held", f"the correct model violates {case.invariant}: {control.explanation}"
    assert control.examples >= BUDGET["max_examples"]
    for mechanism in case.control_witnesses:
        assert control_report.witnessed.get(mechanism, 0) > 0, (
            f"the correct model's runs never witnessed {mechanism}: {control_report.witnessed}")

    found, _ = _search(bug, planted=True)
    assert found.status == "violated", f"the checker missed the planted bug in {found.examples} examples"
    for words in case.explanation:
        assert words in found.explanation, found.explanation
    # Shrunk: up to three faults were searched; at most two remain, each a crash of a b
    # instance (the simplest kind: crash_instance comes first in KINDS_SIMPLEST_FIRST).
    faults = found.faults
    assert 1 <= len(faults) <= 2, _shown(faults)
    assert all(f.kind == "crash_instance" and f.instance in CALLEE for f in faults), _shown(faults)
    # The same schedule under the correct model holds: what was found is the bug.
    again = _verdict(bug, faults, found.seed, planted=False)
    assert again.holds, f"{_shown(faults)} also breaks the correct model: {again.explanation}"
    assert again.details["checked"] > 0, again.explanation  # it compared something


@pytest.mark.parametrize("bug", [
    "breaker_never_closes",
    "balancer_ignores_health",
    "retry_loop_without_backoff",
])
def test_every_fault_of_the_shrunk_schedule_is_needed(bug):
    """1-minimal: dropping any one fault of the shrunk schedule makes the violation go away."""
    found, _ = _search(bug, planted=True)
    assert found.status == "violated"
    faults = found.faults
    for i in range(len(faults)):
        rest = faults[:i] + faults[i + 1:]
        assert _verdict(bug, rest, found.seed, planted=True).holds, (
            f"fault {i} of {_shown(faults)} is not needed: the shrinker left it in")


def test_the_horizon_leaves_room_to_judge_recovery():
    """Guards the constants above: after the latest fault end and the largest R these
    scenarios can have (a crash that leaves an instance dead), two 5 s windows remain."""
    for case in BUGS.values():
        worst = with_faults(case.scenario(), [{"kind": "crash_instance", "instance": "b-0", "restart": False,
                                               "start_s": HORIZON[1] - 1, "duration_s": 1}])
        assert HORIZON[1] + default_recovery_s(worst) + 10 <= DURATION_S

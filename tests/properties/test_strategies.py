"""properties.strategies: fault schedules built from the scenario's own topology, seeds and
policy settings; what they generate, what they refuse, and which way they shrink.

Shrink direction is shown with ``hypothesis.find``: the example it returns is the minimal one
that satisfies a predicate, so asserting it exactly pins what the strategy shrinks towards.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from pydantic import ValidationError

import hailan_sim.properties.strategies as strategies
from hailan_sim.models import default_scenario, load_scenario
from hailan_sim.models.balancers import RandomConfig
from hailan_sim.models.breakers import SlidingWindowConfig, SpecBreakerConfig
from hailan_sim.models.faults import FAULT_KINDS
from hailan_sim.models.policies import EdgePolicy, profile_policies
from hailan_sim.models.retry import RetryPolicy
from hailan_sim.properties.strategies import (
    KINDS_SIMPLEST_FIRST,
    balancers,
    fault_schedules,
    retry_policies,
    seeds,
    sliding_window_breakers,
    spec_breakers,
    with_faults,
    with_policies,
)

DEFAULT = default_scenario()
SMALL = load_scenario(Path(__file__).parents[1] / "scenarios" / "small.yaml")
SCENARIOS = {"default": DEFAULT, "small": SMALL}

# find(): generate until the predicate holds, then shrink. No explain phase (it only words
# a report) and no database, so the minimal example depends on nothing but the code.
FIND = settings(
    derandomize=True, database=None, deadline=None, max_examples=2000,
    phases=[Phase.generate, Phase.shrink],
)

# What each fault names (registry_outage: the registry; key_rotation: nothing).
NAME_FIELDS = ("instance", "service", "node", "zone", "target", "component", "endpoint", "a", "b")


def named(fault, scenario) -> set[str]:
    names = {getattr(fault, f) for f in NAME_FIELDS if hasattr(fault, f)}
    if fault.kind == "registry_outage":
        names |= {c.name for c in scenario.infrastructure if c.kind == "registry"}
    return names


def window(scenario) -> tuple[float, float]:
    return scenario.run.warmup_s, scenario.run.duration_s


# =========================================================================== validity


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_every_schedule_validates_and_fits_the_run_after_warmup(name, data):
    scenario = SCENARIOS[name]
    schedule = data.draw(fault_schedules(scenario))
    lo, hi = window(scenario)
    assert len(schedule) <= 3
    for f in schedule:
        assert f.duration_s is not None, "not permanent by default: recovery must be observable"
        assert f.duration_s >= 1.0
        assert lo <= f.start_s < hi
        assert f.end_s() <= hi
    copy = with_faults(scenario, schedule)  # validates against the topology
    assert copy.faults == schedule
    assert copy.services == scenario.services


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_options_are_respected(data):
    horizon = (12.5, 27.25)
    schedule = data.draw(
        fault_schedules(
            SMALL, min_faults=2, max_faults=5, horizon=horizon, min_duration_s=0.25,
            max_duration_s=4.0, kinds=["slow", "partition", "crash_node", "load_spike"],
        )
    )
    assert 2 <= len(schedule) <= 5
    for f in schedule:
        assert f.kind in {"slow", "partition", "crash_node", "load_spike"}
        assert 0.25 <= f.duration_s <= 4.0
        assert horizon[0] <= f.start_s < horizon[1]
        assert f.end_s() <= horizon[1]
    with_faults(SMALL, schedule)


TARGETS = {"order-service", "user-service", "order-service-1", "consul", "mysql", "node-a1", "zone-b", "login"}


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_targets_restrict_every_name_a_fault_uses(data):
    schedule = data.draw(fault_schedules(DEFAULT, targets=TARGETS, max_faults=4))
    for f in schedule:
        assert f.kind != "key_rotation"  # names nothing, so it cannot be restricted
        assert named(f, DEFAULT) and named(f, DEFAULT) <= TARGETS
    with_faults(DEFAULT, schedule)


@pytest.mark.parametrize(
    "kind, expect",
    [
        ("partition", {"a": "order-service", "b": "user-service"}),  # both ends listed
        ("crash_zone", {"zone": "zone-b"}),
        ("registry_outage", {}),
        ("infra_outage", {"component": "mysql"}),
        ("load_spike", {"endpoint": "login"}),
    ],
)
def test_targets_still_reach_each_kind_they_allow(kind, expect):
    found = find(fault_schedules(DEFAULT, targets=TARGETS), lambda s: any(f.kind == kind for f in s), settings=FIND)
    assert len(found) == 1
    assert {k: v for k, v in found[0].model_dump().items() if k in expect} == expect


@settings(deadline=None, max_examples=50)
@given(data=st.data())
def test_permanent_faults_only_when_allowed(data):
    schedule = data.draw(fault_schedules(SMALL, allow_permanent=True, max_faults=4))
    lo, hi = window(SMALL)
    for f in schedule:
        assert lo <= f.start_s < hi
        if f.duration_s is not None:
            assert f.end_s() <= hi
    with_faults(SMALL, schedule)


def test_permanent_faults_are_reachable_and_shrink_to_finite():
    strategy = fault_schedules(DEFAULT, allow_permanent=True)
    permanent = find(strategy, lambda s: any(f.duration_s is None for f in s), settings=FIND)
    assert [(f.kind, f.start_s, f.duration_s) for f in permanent] == [("crash_instance", 299.0, None)]
    any_fault = find(strategy, lambda s: len(s) > 0, settings=FIND)
    assert any_fault[0].duration_s == 1.0


def test_max_faults_zero_generates_only_the_empty_schedule():
    with pytest.raises(NoSuchExample):
        find(fault_schedules(DEFAULT, max_faults=0), lambda s: len(s) > 0, settings=FIND)


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_bounds_hold_as_floats_at_awkward_horizons(data):
    # 0.1 + 0.2 > 0.3 in floats; the promises must hold for the floats themselves.
    lo, hi = 0.1, data.draw(st.sampled_from([0.3, 0.7, 1.1, 12.3]))
    schedule = data.draw(fault_schedules(SMALL, horizon=(lo, hi), min_duration_s=0.1, max_faults=2))
    for f in schedule:
        assert lo <= f.start_s and f.start_s + f.duration_s <= hi and f.duration_s >= 0.1


def test_an_end_that_rounds_past_the_horizon_is_pulled_in_by_an_ulp():
    strategy = fault_schedules(
        SMALL, horizon=(0.1, 0.3), min_duration_s=0.199, max_duration_s=0.2, min_faults=1, max_faults=1
    )
    [f] = find(strategy, lambda s: s[0].start_s == 0.1 and s[0].duration_s > 0.1995, settings=FIND)
    assert (f.start_s, f.duration_s) == (0.1, math.nextafter(0.2, 0.0))
    assert f.start_s + f.duration_s <= 0.3
    with pytest.raises(ValueError, match="min_duration_s=0.2 leaves no duration"):
        fault_schedules(SMALL, horizon=(0.1, 0.3), min_duration_s=0.2)  # 0.1 + 0.2 > 0.3


# =========================================================================== reachability + shrinking

INSTANCE0 = DEFAULT.placements()[0].instance
SERVICE0 = DEFAULT.services[0].name
NODE0 = DEFAULT.placements()[0].node
PAIR0 = next((s.name, d) for s in DEFAULT.services for d in s.depends_on if d in {x.name for x in DEFAULT.services})
COMPONENT0 = next(c.name for c in DEFAULT.infrastructure if c.kind != "registry")

# The minimal fault of each kind: the first name the scenario offers and the mildest
# parameters, ending exactly at the end of the run, 1 s long.
MINIMAL = {
    "crash_instance": {"instance": INSTANCE0, "restart": True},
    "drain_instance": {"instance": INSTANCE0},
    "hang": {"instance": INSTANCE0},
    "error_rate": {"target": INSTANCE0, "fraction": 0.05},
    "slow": {"target": INSTANCE0, "factor": 2.0},
    "crash_service": {"service": SERVICE0, "restart": True},
    "crash_node": {"node": NODE0, "restart": True},
    "crash_zone": {"zone": DEFAULT.nodes[0].zone, "restart": True},
    "partition": {"a": PAIR0[0], "b": PAIR0[1]},
    "link_latency": {"a": PAIR0[0], "b": PAIR0[1], "added_ms": 10.0, "loss": 0.0},
    "infra_outage": {"component": COMPONENT0},
    "registry_outage": {},
    "load_spike": {"endpoint": DEFAULT.workload.endpoints[0].name, "factor": 2.0},
    "clock_skew": {"node": NODE0, "skew_s": 1.0},
    "key_rotation": {},
}


def test_kind_order_covers_every_kind_once():
    assert sorted(KINDS_SIMPLEST_FIRST) == sorted(FAULT_KINDS)
    assert set(MINIMAL) == set(FAULT_KINDS)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_kind_is_reachable_and_shrinks_to_its_simplest_form(kind):
    found = find(fault_schedules(DEFAULT), lambda s: any(f.kind == kind for f in s), settings=FIND)
    assert [f.model_dump() for f in found] == [
        {"kind": kind, "start_s": 299.0, "duration_s": 1.0, **MINIMAL[kind]}
    ]


def test_shrinks_to_one_crash_of_the_first_instance_at_the_latest_start():
    found = find(
        fault_schedules(DEFAULT),
        lambda s: any(f.kind == "crash_instance" and f.instance.startswith("order-service-") for f in s),
        settings=FIND,
    )
    assert [f.model_dump() for f in found] == [
        {"kind": "crash_instance", "instance": "order-service-0", "restart": True,
         "start_s": 299.0, "duration_s": 1.0}
    ]


def test_shrinks_to_the_horizon_end_and_minimum_duration_given():
    found = find(
        fault_schedules(DEFAULT, horizon=(50.0, 100.0), min_duration_s=2.5),
        lambda s: any(f.kind == "hang" for f in s),
        settings=FIND,
    )
    assert [(f.kind, f.start_s, f.duration_s) for f in found] == [("hang", 97.5, 2.5)]


def test_starts_shrink_late_and_durations_short():
    early = find(fault_schedules(DEFAULT), lambda s: any(f.start_s < 100 for f in s), settings=FIND)
    assert [(f.kind, f.start_s, f.duration_s) for f in early] == [("crash_instance", 99.999, 1.0)]
    long = find(fault_schedules(DEFAULT), lambda s: any(f.duration_s >= 10 for f in s), settings=FIND)
    assert [(f.kind, f.start_s, f.duration_s) for f in long] == [("crash_instance", 290.0, 10.0)]


def test_fewer_faults_and_milder_parameters():
    two = find(fault_schedules(DEFAULT), lambda s: len(s) >= 2, settings=FIND)
    assert len(two) == 2 and {f.kind for f in two} == {"crash_instance"}
    harsh = find(
        fault_schedules(DEFAULT),
        lambda s: any(f.kind == "slow" and f.factor >= 10 for f in s),
        settings=FIND,
    )
    assert [(f.kind, f.target, f.factor) for f in harsh] == [("slow", INSTANCE0, 10.0)]
    no_restart = find(
        fault_schedules(DEFAULT),
        lambda s: any(getattr(f, "restart", True) is False for f in s),
        settings=FIND,
    )
    assert [(f.kind, f.restart) for f in no_restart] == [("crash_instance", False)]


def test_kinds_given_in_any_order_still_shrink_simplest_first():
    found = find(fault_schedules(DEFAULT, kinds=["key_rotation", "slow", "crash_zone"]), lambda s: len(s) > 0,
                 settings=FIND)
    assert [f.kind for f in found] == ["slow"]


def test_registry_kinds_need_a_registry():
    # small.yaml has no registry (so no registry outage or instance<->registry partition is
    # drawn: test_every_schedule_validates... would fail on one), and asking for one says why.
    with pytest.raises(ValueError, match="no registry component"):
        fault_schedules(SMALL, kinds=["registry_outage"])
    # A partition needs both of its ends among the targets.
    with pytest.raises(ValueError, match=r"targets=\['consul'\] names nothing"):
        fault_schedules(DEFAULT, kinds=["partition"], targets=["consul"])
    fault_schedules(DEFAULT, kinds=["partition"], targets=["consul", "order-service-0"])


# =========================================================================== bad options


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_faults": -1}, ValueError, r"max_faults=-1 must be >= 0"),
        ({"max_faults": 1.5}, TypeError, r"max_faults=1.5 must be an int"),
        ({"min_faults": 4}, ValueError, r"min_faults=4 must be between 0 and max_faults \(3\)"),
        ({"kinds": ["crash"]}, ValueError, r"kinds=\['crash'\] contains unknown kind 'crash'"),
        ({"kinds": "crash_instance"}, TypeError, r"kinds='crash_instance' must be a collection"),
        ({"kinds": []}, ValueError, r"kinds=\[\] is empty"),
        ({"targets": ["nope"]}, ValueError, r"targets=\['nope'\] contains 'nope', which scenario 'small'"),
        ({"targets": "front"}, TypeError, r"e.g. targets=\['front'\]"),
        ({"targets": ["home"], "kinds": ["crash_instance"]}, ValueError, r"'crash_instance'.*names nothing"),
        ({"targets": ["front"], "kinds": ["key_rotation"]}, ValueError, r"names no target"),
        ({"horizon": (10,)}, ValueError, r"horizon=\(10,\) must be a pair"),
        ({"horizon": (0, math.inf)}, ValueError, r"must be a pair \(start_s, end_s\) of finite numbers"),
        ({"horizon": (-1, 10)}, ValueError, r"horizon=\(-1, 10\) starts before 0"),
        ({"horizon": (5, 5)}, ValueError, r"horizon=\(5, 5\) must end after it starts"),
        ({"min_duration_s": 0}, ValueError, r"min_duration_s=0 must be a finite number > 0"),
        ({"max_duration_s": 0.5}, ValueError, r"max_duration_s=0.5 must be a finite number >= min_duration_s"),
        ({"max_duration_s": 26}, ValueError, r"max_duration_s=26 exceeds the horizon \[5, 30\)"),
        ({"min_duration_s": 40}, ValueError, r"min_duration_s=40 leaves no duration"),
        ({"allow_permanent": "yes"}, TypeError, r"allow_permanent='yes' must be True or False"),
    ],
)
def test_bad_options_are_refused_eagerly_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        fault_schedules(SMALL, **kwargs)


def test_scenario_must_be_a_scenario():
    with pytest.raises(TypeError, match="scenario must be a hailan_sim.models.Scenario"):
        fault_schedules(SMALL.model_dump())


def test_with_faults_validates_against_the_topology():
    with pytest.raises(ValidationError, match="no instance 'front-9'"):
        with_faults(SMALL, [{"kind": "crash_instance", "instance": "front-9", "start_s": 10, "duration_s": 1}])


# =========================================================================== seeds


@settings(deadline=None, max_examples=50)
@given(seed=seeds())
def test_seeds_are_run_seeds(seed):
    assert 0 <= seed < 2**32
    assert SMALL.with_run(seed=seed).run.seed == seed


def test_seeds_shrink_to_zero_and_reach_the_top():
    assert find(seeds(), lambda s: True, settings=FIND) == 0
    assert find(seeds(), lambda s: s >= 2**32 - 1, settings=FIND) == 2**32 - 1


# =========================================================================== policies


POLICY_STRATEGIES = {
    "spec_breakers": (spec_breakers, SpecBreakerConfig),
    "sliding_window_breakers": (sliding_window_breakers, SlidingWindowConfig),
    "retry_policies": (retry_policies, RetryPolicy),
}


@pytest.mark.parametrize("name", sorted(POLICY_STRATEGIES))
@settings(deadline=None, max_examples=60)
@given(data=st.data())
def test_policy_strategies_give_valid_configs_a_scenario_accepts(name, data):
    make, model = POLICY_STRATEGIES[name]
    config = data.draw(make())
    assert isinstance(config, model)
    assert model.model_validate(config.model_dump()) == config
    field = "retry" if model is RetryPolicy else "breaker"
    assert getattr(with_policies(SMALL, **{field: config}).policies, field) == config


@settings(deadline=None, max_examples=60)
@given(balancer=balancers())
def test_balancers_are_accepted(balancer):
    assert with_policies(SMALL, balancer=balancer).policies.balancer == balancer


def test_policy_strategies_shrink_to_reference_settings():
    seed_breaker = SpecBreakerConfig.model_validate(profile_policies("seed")["breaker"])
    assert find(spec_breakers(), lambda c: True, settings=FIND) == seed_breaker
    assert find(sliding_window_breakers(), lambda c: True, settings=FIND) == SlidingWindowConfig()
    assert find(retry_policies(), lambda c: True, settings=FIND) == RetryPolicy()
    assert find(balancers(), lambda c: True, settings=FIND) == RandomConfig()
    # ... and the first setting past a threshold is exactly that threshold.
    assert find(spec_breakers(), lambda c: c.failure_threshold >= 8, settings=FIND).failure_threshold == 8
    assert find(retry_policies(), lambda c: c.max_attempts > 1, settings=FIND).max_attempts == 2


@pytest.mark.parametrize(
    "kind",
    ["random", "round_robin", "least_connections", "weighted_random", "p2c_least_request", "peak_ewma", "ring_hash"],
)
def test_every_balancer_kind_is_reachable(kind):
    assert find(balancers(), lambda b: b.kind == kind, settings=FIND).kind == kind


@pytest.mark.parametrize("kind", ["constant", "exponential_full_jitter", "equal_jitter", "decorrelated"])
def test_every_backoff_kind_is_reachable(kind):
    found = find(retry_policies(), lambda r: r.backoff.kind == kind, settings=FIND)
    assert found.backoff.kind == kind


def test_windows_of_both_types_and_ignored_outcomes_are_reachable():
    assert find(sliding_window_breakers(), lambda c: c.window_type == "time_based", settings=FIND)
    assert find(sliding_window_breakers(), lambda c: c.ignore_on != (), settings=FIND).ignore_on


@settings(deadline=None, max_examples=30)
@given(
    spec=spec_breakers(enforce_half_open_limit=True, failure_threshold=st.integers(2, 3)),
    window=sliding_window_breakers(window_type="time_based"),
    retry=retry_policies(max_attempts=3),
)
def test_fixed_fields_hold(spec, window, retry):
    assert spec.enforce_half_open_limit and spec.failure_threshold in (2, 3)
    assert window.window_type == "time_based"
    assert retry.max_attempts == 3


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (spec_breakers, {"threshold": 3}, r"threshold= is not a field of SpecBreakerConfig"),
        (spec_breakers, {"failure_threshold": 0}, r"not a valid SpecBreakerConfig.*failure_threshold"),
        (sliding_window_breakers, {"kind": "spec"}, r"kind= is fixed by the strategy"),
        (retry_policies, {"max_attempts": 0}, r"not a valid RetryPolicy"),
    ],
)
def test_bad_fixed_fields_are_refused_eagerly(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_with_policies_replaces_whole_configs_even_under_a_profile():
    hardened = DEFAULT.with_profile("hardened")
    window = SlidingWindowConfig(window_size=20, minimum_calls=5)  # hardened's kind, other settings
    spec = SpecBreakerConfig(failure_threshold=2, success_threshold=1, timeout_s=5.0, half_open_max_calls=1)
    retry = RetryPolicy(max_attempts=2)
    for breaker in (window, spec):
        out = with_policies(hardened, breaker=breaker, retry=retry, bulkhead=None)
        assert out.policies.breaker == breaker  # none of hardened's breaker settings leak in
        assert out.policies.retry == retry
        assert out.policies.bulkhead is None
        assert out.profile == "hardened"
        assert out.policies.balancer == hardened.policies.balancer  # the rest of the profile stays
        assert out.policies.edges == hardened.policies.edges


def test_with_policies_keeps_an_edge_to_the_fields_it_sets():
    # A field an edge leaves out is inherited, so it must not come back as an explicit null.
    edge = EdgePolicy(caller="order-service", callee="payment-service", timeout_s=1.0)
    out = with_policies(DEFAULT.with_profile("hardened"), edges=[edge])
    assert [e.overrides() for e in out.policies.edges] == [{"timeout_s": 1.0}]
    again = with_policies(out, bulkhead=3)
    assert again.policies.edges == out.policies.edges and again.policies.bulkhead == 3


def test_with_policies_refuses_unknown_fields_and_bad_values():
    with pytest.raises(ValueError, match=r"breakers= is not a policies field"):
        with_policies(SMALL, breakers=None)
    with pytest.raises(ValidationError):
        with_policies(SMALL, bulkhead=0)


# =========================================================================== docs


@pytest.mark.parametrize("name", [n for n in strategies.__all__ if callable(getattr(strategies, n))])
def test_public_functions_are_documented_and_strategies_say_what_they_shrink_towards(name):
    doc = inspect.getdoc(getattr(strategies, name))
    assert doc
    if name not in ("with_faults", "with_policies"):
        assert doc.split("\n\n")[-1].startswith("Shrinks towards"), name


# --------------------------------------------------------------------------- token renewals


def test_token_renewals_are_what_the_engine_does():
    """sim.client.held_tokens / token_renewals_s compute, without simulating, the tokens the
    engine gives each caller at its first call (token_held rows): same exp, same signer."""
    from hailan_sim.sim import simulate
    from hailan_sim.sim.client import held_tokens, token_renewals_s

    for profile in ("seed", "hardened"):
        sc = default_scenario().with_profile(profile).with_run(duration_s=4, warmup_s=1, seed=3)
        ev = simulate(sc, keep_events=True).events()
        rows = ev[ev.event == "token_held"]
        held = held_tokens(sc)
        assert len(rows) > 5
        for src, exp in zip(rows.source, rows.outcome):
            assert held[src].exp == int(exp), (profile, src)
        margin = 300 if profile == "hardened" else 0
        assert token_renewals_s(sc) == sorted(float(t.exp) - margin for t in held.values())
    # fresh first tokens: nothing held, nothing to place faults around
    fresh = strategies.with_policies(default_scenario().with_profile("seed"), tokens={"first_token": "fresh"})
    assert held_tokens(fresh) == {} and token_renewals_s(fresh) == []


def test_token_faults_are_placed_around_token_renewals():
    """Under seed (steady-state tokens), generated clock skews and key rotations start at or
    up to their duration before a renewal inside the horizon; other kinds are not moved."""
    from hailan_sim.sim.client import token_renewals_s

    sc = default_scenario().with_profile("seed").with_run(duration_s=240, warmup_s=10, seed=1)
    horizon = (10.0, 130.0)
    renewals = [t for t in token_renewals_s(sc) if horizon[0] <= t < horizon[1]]
    assert renewals, "seed 1 has renewals at 21 and 77 s"
    seen = {"covering": 0, "exact": 0, "token_kinds": 0}

    @settings(max_examples=80, database=None, derandomize=True)
    @given(fault_schedules(sc, max_faults=2, kinds=["clock_skew", "key_rotation", "crash_instance"], horizon=horizon))
    def run(faults):
        for f in faults:
            if f.kind == "crash_instance":
                continue
            seen["token_kinds"] += 1
            end = f.start_s + f.duration_s
            seen["covering"] += any(f.start_s <= t <= end for t in renewals)
            seen["exact"] += any(abs(f.start_s - t) < 1e-3 for t in renewals)

    run()
    assert seen["token_kinds"] > 20
    assert seen["covering"] >= 0.4 * seen["token_kinds"], seen
    # Placed on a renewal exactly (lead 0) is reachable; a chance placement on the 1 ms grid
    # practically never is. Searched for rather than counted among the 80 examples above:
    # which of those land exactly depends on Hypothesis' generation, and that differs with
    # how hailan_sim is installed (Hypothesis mines constants from source outside
    # site-packages, so an editable install and the wheel draw differently).
    exact = find(
        fault_schedules(sc, max_faults=2, kinds=["clock_skew", "key_rotation", "crash_instance"], horizon=horizon),
        lambda fs: any(f.kind != "crash_instance" and any(abs(f.start_s - t) < 1e-3 for t in renewals)
                       for f in fs),
        settings=settings(max_examples=500, database=None, derandomize=True),
    )
    assert exact

"""Golden traces for models.registry, written from the rules they cite.

"ref 4" is /work/shared/reference/resilience-semantics.md section 4 (Consul); "spec" is
/work/shared/spec/074-microservice-internal-calls.md. No Python oracle exists for Consul
(ref 7), so every expected value below is derived by hand from the cited rule.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hailan_sim.models.registry import (
    CHECK_DEREGISTER_INTERVAL_MIN_S,
    CHECK_REAP_INTERVAL_S,
    CachedView,
    DiscoveryConfig,
    HealthCheckConfig,
    PerCallView,
    Registry,
    WatchView,
    deep_check_passes,
    make_view,
)

TOL = 1e-9  # float rounding of sums of simulated times


def const(x):
    return lambda: x


def events_of(reg, kind, instance=None):
    """(time, detail) of every logged event of ``kind`` (for ``instance`` if given)."""
    return [
        (t, ev[1])
        for t, inst, ev in reg.log
        if ev[0] == kind and (instance is None or inst == instance)
    ]


# --------------------------------------------------------------------------- config


def test_config_defaults_are_the_spec_then_consul():
    """spec 3.2.1: interval 10s, timeout 5s, deregistercriticalserviceafter 30s; ref 4:
    thresholds default 0, a new check is critical; check_deregister_interval_min 1m and
    check_reap_interval 30s are Consul constants (agent/config/default.go NonUserSource)."""
    c = HealthCheckConfig()
    assert (c.interval_s, c.timeout_s, c.deregister_critical_after_s) == (10.0, 5.0, 30.0)
    assert (c.success_before_passing, c.failures_before_critical) == (0, 0)
    assert c.initial_status == "critical"
    assert c.deregister_timing == "consul"
    assert (CHECK_DEREGISTER_INTERVAL_MIN_S, CHECK_REAP_INTERVAL_S) == (60.0, 30.0)
    # ref 4: "Your 30 s is clamped to 60 s"; exact timing keeps it; None never reaps.
    assert c.effective_deregister_after_s() == 60.0
    assert HealthCheckConfig(deregister_timing="exact").effective_deregister_after_s() == 30.0
    assert HealthCheckConfig(deregister_critical_after_s=90).effective_deregister_after_s() == 90
    never = HealthCheckConfig(deregister_critical_after_s=None)
    assert never.effective_deregister_after_s() is None
    with pytest.raises(ValidationError):
        HealthCheckConfig(intervl_s=10)  # extra="forbid"
    with pytest.raises(ValidationError):
        HealthCheckConfig(interval_s=0)
    with pytest.raises(ValidationError):
        c.interval_s = 3  # frozen
    with pytest.raises(ValidationError):
        DiscoveryConfig(timing="sometimes")


def test_clamp_logs_a_warn_only_when_it_clamps():
    """ref 4 / agent.go addCheck: a deregister timeout below 1m is raised to 1m with a WARN
    ("check has deregister interval below minimum"); nothing is clamped with exact timing."""
    reg = Registry()
    reg.register(0, "a-1", "a")
    reg.register(0, "a-2", "a", check=HealthCheckConfig(deregister_critical_after_s=60))
    reg.register(0, "a-3", "a", check=HealthCheckConfig(deregister_timing="exact"))
    warns = [inst for _, inst, ev in reg.log if ev[0] == "warn"]
    assert warns == ["a-1"]
    assert [reg.deregister_after_s(i) for i in ("a-1", "a-2", "a-3")] == [60.0, 60.0, 30.0]


# --------------------------------------------------------------------------- checks


def test_first_check_is_staggered_uniformly_in_the_interval():
    """ref 4 / agent/checks/check.go run(): the first run is after
    lib.RandomStagger(interval), uniform in [0, interval)."""
    reg = Registry()
    for i, u in enumerate([0.0, 0.25, 0.999999]):
        reg.register(100.0, f"a-{i}", "a")
        assert reg.schedule_first_check(100.0, f"a-{i}", const(u)) == 100.0 + 10.0 * u
        assert reg.next_check(f"a-{i}") == 100.0 + 10.0 * u
    reg.register(100.0, "bad", "a")
    with pytest.raises(ValueError):
        reg.schedule_first_check(100.0, "bad", const(1.0))  # the interval end is excluded
    with pytest.raises(ValueError):
        reg.schedule_first_check(100.0, "a-0", const(0.5))  # already scheduled

    # Fed a seeded uniform stream the staggers are U[0, 10): mean 5, sd 10/sqrt(12).
    rng = random.Random(74)
    reg = Registry()
    n = 2000
    firsts = []
    for i in range(n):
        reg.register(0.0, f"s-{i}", "s")
        firsts.append(reg.schedule_first_check(0.0, f"s-{i}", rng.random))
    assert all(0.0 <= t < 10.0 for t in firsts)
    se = (10 / math.sqrt(12)) / math.sqrt(n)
    assert abs(sum(firsts) / n - 5.0) < 5 * se  # 5 standard errors: p ~ 6e-7
    assert min(firsts) < 10.0 * 20 / n and max(firsts) > 10.0 - 10.0 * 20 / n  # P(miss) ~ e^-20


def test_next_check_is_interval_after_the_previous_one_ends():
    """ref 4 / check.go CheckHTTP.run: ``c.check(); next = time.After(c.Interval)`` -- the
    interval runs from the end of a check, so a check that times out (5 s) makes the
    period 15 s; start_check's deadline is the HTTP client Timeout."""
    reg = Registry()
    reg.register(0, "a-1", "a")
    reg.schedule_first_check(0, "a-1", const(0.3))  # 3.0
    assert reg.start_check(3.0, "a-1") == 8.0
    assert reg.next_check("a-1") is None  # in flight
    reg.record_check(3.2, "a-1", True)
    assert reg.next_check("a-1") == pytest.approx(13.2)
    assert reg.start_check(13.2, "a-1") == pytest.approx(18.2)
    reg.record_check(18.2, "a-1", False)  # no answer: fails at the deadline
    assert reg.next_check("a-1") == pytest.approx(28.2)
    with pytest.raises(ValueError):
        reg.record_check(20.0, "a-1", True)  # nothing due or running at 20
    reg.start_check(28.2, "a-1")
    with pytest.raises(ValueError):
        reg.record_check(33.3, "a-1", True)  # after the 5 s deadline


def test_a_new_check_is_critical_until_it_passes_but_is_not_reaped_before_failing():
    """ref 4: a new check is critical until its first pass unless status is set. Consul's
    reaper only looks at CriticalCheckStates, i.e. checks with a CriticalTime, which only
    State.UpdateCheck sets (agent/local/state.go): an instance never checked is not reaped."""
    reg = Registry()
    reg.register(0, "a-1", "a")
    reg.register(0, "a-2", "a", check=HealthCheckConfig(initial_status="passing"))
    assert reg.status("a-1") == "critical" and reg.critical_since("a-1") is None
    assert reg.health_passing("a") == ["a-2"]
    assert reg.agent_list("a") == ["a-1", "a-2"]
    assert reg.next_timer(0) is None
    assert reg.tick(10_000.0) == []
    assert reg.instances() == ["a-1", "a-2"]
    # The first failing result starts the critical clock without a status change...
    reg.schedule_first_check(10_000.0, "a-1", const(0.0))
    assert reg.record_check(10_000.0, "a-1", False) == [("a-1", ("critical_since", 10_000.0))]
    # ...and the first pass makes it passing at once (threshold 0).
    assert reg.record_check(10_010.0, "a-1", True) == [("a-1", ("status", "passing"))]
    assert reg.critical_since("a-1") is None
    assert reg.health_passing("a") == ["a-1", "a-2"]


def test_status_handler_counters_start_at_their_thresholds():
    """ref 4 / check.go NewStatusHandler + updateCheck: counters start at the thresholds, so
    the first result applies at once; afterwards a pass zeroes the failure counter (and a
    failure the success counter) and N consecutive results are needed."""
    cfg = HealthCheckConfig(success_before_passing=3, failures_before_critical=2)
    reg = Registry(cfg)
    reg.register(0, "a-1", "a")
    t = reg.schedule_first_check(0, "a-1", const(0.0))
    trace = []
    for passing in [True, False, True, False, False, True, True, False, True, True, True]:
        evs = reg.record_check(t, "a-1", passing)
        trace.append((passing, [ev for _, ev in evs], reg.status("a-1")))
        t = reg.next_check("a-1")
    assert trace == [
        (True, [("status", "passing")], "passing"),  # success counter 4 >= 3: at once
        (False, [("below_threshold", "critical 1/2")], "passing"),
        # Consul logs "passed but has not reached success threshold" even though the
        # status is already passing: UpdateCheck is not called.
        (True, [("below_threshold", "passing 1/3")], "passing"),
        (False, [("below_threshold", "critical 1/2")], "passing"),
        (False, [("status", "critical"), ("critical_since", 40.0)], "critical"),
        (True, [("below_threshold", "passing 1/3")], "critical"),
        (True, [("below_threshold", "passing 2/3")], "critical"),
        (False, [("below_threshold", "critical 1/2")], "critical"),  # resets successes
        (True, [("below_threshold", "passing 1/3")], "critical"),
        (True, [("below_threshold", "passing 2/3")], "critical"),
        (True, [("status", "passing")], "passing"),
    ]


def test_default_thresholds_apply_every_result():
    """ref 4: with the default thresholds (0) every result is applied; critical_since is the
    first critical result and is not moved by later ones (state.go: set only if
    !c.Critical()); a pass clears it."""
    reg = Registry()
    reg.register(0, "a-1", "a", check=HealthCheckConfig(initial_status="passing"))
    t = reg.schedule_first_check(0, "a-1", const(0.0))
    for passing in [False, False, False]:
        reg.record_check(t, "a-1", passing)
        t = reg.next_check("a-1")
    assert reg.status("a-1") == "critical" and reg.critical_since("a-1") == 0.0
    assert reg.removal_due("a-1") == 90.0  # 60 is not > 60: the 90 s pass reaps
    reg.record_check(t, "a-1", True)
    assert reg.status("a-1") == "passing" and reg.critical_since("a-1") is None
    assert reg.removal_due("a-1") is None and reg.next_timer(t) is None


# --------------------------------------------------------------------------- reaping


def test_reaper_golden_trace_consul_and_exact():
    """ref 4: the reaper runs every check_reap_interval (30 s, from the agent's start at
    t=0 -- our choice of phase) and removes when CriticalFor() > the clamped 60 s timeout
    (strictly, agent.go reapServicesInternal). Exact timing removes at critical_since + 30.

    Trace: registered at 0, stagger 2.5, healthy checks answer at once at 2.5, 12.5, 22.5;
    the instance crashes at 30 (stops answering); the check started at 32.5 times out at
    37.5 -> critical_since 37.5. Consul: passes at 60 (22.5 s), 90 (52.5 s) do not reap,
    120 (82.5 s > 60) does. Exact: 67.5."""
    for timing, removed_at in [("consul", 120.0), ("exact", 67.5)]:
        reg = Registry(HealthCheckConfig(deregister_timing=timing))
        reg.register(0.0, "a-1", "a", meta={"version": "1"})
        t = reg.schedule_first_check(0.0, "a-1", const(0.25))
        while t < 30.0:
            reg.start_check(t, "a-1")
            reg.record_check(t, "a-1", True)
            t = reg.next_check("a-1")
        assert t == 32.5
        deadline = reg.start_check(t, "a-1")
        assert reg.record_check(deadline, "a-1", False) == [
            ("a-1", ("status", "critical")),
            ("a-1", ("critical_since", 37.5)),
        ]
        assert reg.next_timer(37.5) == removed_at
        # Further failures (every 15 s) do not move the clock.
        t = reg.next_check("a-1")
        while t + 5.0 < removed_at:
            reg.record_check(reg.start_check(t, "a-1"), "a-1", False)
            t = reg.next_check("a-1")
        assert reg.critical_since("a-1") == 37.5
        assert reg.tick(removed_at - 1e-6) == []
        assert reg.tick(removed_at) == [("a-1", ("deregistered", "critical_timeout"))]
        assert events_of(reg, "deregistered") == [(removed_at, "critical_timeout")]
        assert reg.agent_list("a") == [] and reg.next_timer(removed_at) is None


def test_reaper_boundary_is_strict():
    """ref 4 / agent.go: ``cs.CriticalFor() > timeout``: critical at exactly 30 is 60 s
    critical at the 90 s pass -- not more -- so it is reaped at 120."""
    reg = Registry()
    reg.register(0, "a-1", "a")
    reg.schedule_first_check(0, "a-1", const(0.0))
    reg.record_check(0.0, "a-1", True)
    for t in (10.0, 20.0):
        reg.record_check(t, "a-1", True)
    reg.record_check(30.0, "a-1", False)
    assert reg.critical_since("a-1") == 30.0
    assert reg.removal_due("a-1") == 120.0


def test_a_late_engine_gets_removals_at_their_own_times_before_its_call():
    """Every mutating call first runs the removals due by then, logged at their due time
    (our ordering rule: timers before a call at the same instant)."""
    reg = Registry(HealthCheckConfig(deregister_timing="exact"))
    for i in (1, 2, 3):
        reg.register(0, f"a-{i}", "a")
        reg.schedule_first_check(0, f"a-{i}", const(0.0))
    reg.record_check(0.0, "a-2", False)  # due 30
    reg.record_check(0.0, "a-3", False)  # due 30
    reg.record_check(0.0, "a-1", False)  # due 30
    evs = reg.register(45.0, "b-1", "b")
    assert evs[:3] == [(f"a-{i}", ("deregistered", "critical_timeout")) for i in (1, 2, 3)]
    assert [t for t, _ in events_of(reg, "deregistered")] == [30.0, 30.0, 30.0]
    with pytest.raises(ValueError):
        reg.tick(44.0)  # time never goes backwards


def _crash_run(reg_at: float, u: float, crash_after: float, mode: str, timing: str):
    """Drive one instance the way the engine will: checks answer at once while the instance
    is up; after ``crash_at`` a check fails at once ("refused": the port is closed) or at
    its 5 s deadline ("hang": nothing answers). Timers run before a check starting at the
    same time. Returns (crash_at, critical_since, removed_at)."""
    reg = Registry(HealthCheckConfig(deregister_timing=timing))
    crash_at = reg_at + crash_after
    reg.register(reg_at, "svc-1", "svc")
    reg.schedule_first_check(reg_at, "svc-1", const(u))
    now = reg_at
    while reg.is_registered("svc-1"):
        start = reg.next_check("svc-1")
        timer = reg.next_timer(now)
        if timer is not None and timer <= start:
            reg.tick(timer)
            now = timer
            continue
        deadline = reg.start_check(start, "svc-1")
        if start < crash_at:
            end, ok = start, True
        elif mode == "refused":
            end, ok = start, False
        else:
            end, ok = deadline, False
        timer = reg.next_timer(start)
        if timer is not None and timer < end:
            reg.tick(timer)  # reaped while the check runs: its result is ignored
        reg.record_check(end, "svc-1", ok)
        now = end
    (critical_since,) = [t for t, _ in events_of(reg, "critical_since")]
    ((removed_at, reason),) = events_of(reg, "deregistered")
    assert reason == "critical_timeout"
    return crash_at, critical_since, removed_at


@given(
    reg_at=st.floats(0, 100),
    u=st.floats(0, 1, exclude_max=True),
    crash_after=st.floats(0, 200),
    mode=st.sampled_from(["refused", "hang"]),
)
def test_crash_to_removal_stays_within_the_reference_bounds(reg_at, u, crash_after, mode):
    """ref 4: "With interval 10 s and timeout 5 s, a crash becomes critical after about
    0-15 s and the service is removed 60-90 s after that, so about 60-105 s in total."
    Derived exactly: the first check starting at or after the crash does so within one
    interval [0, 10); it fails at once (refused) or after the 5 s timeout (hang), so
    critical in [0, 10) or [5, 15). Removal is the first 30 s pass with CriticalFor() > 60:
    in (60, 90] after, at a multiple of 30. Exact timing: exactly 30 s after."""
    crash_at, cs, removed = _crash_run(reg_at, u, crash_after, mode, "consul")
    lo = 0.0 if mode == "refused" else 5.0
    assert lo - TOL <= cs - crash_at < lo + 10.0 + TOL
    assert 60.0 < removed - cs <= 90.0 + TOL
    assert removed / 30.0 == round(removed / 30.0)
    assert 60.0 < removed - crash_at <= 105.0 + TOL  # the reference's 60-105 s
    crash_at, cs, removed = _crash_run(reg_at, u, crash_after, mode, "exact")
    assert removed == cs + 30.0
    assert lo - TOL <= cs - crash_at < lo + 10.0 + TOL


def test_crash_to_removal_reaches_both_ends_of_the_reference_range():
    """ref 4's 60-105 s range is attained at both ends. Total = 60 + a + w (+5 if the check
    hangs), a = check phase after the crash ~ U[0, 10), w = wait for the reaper pass after
    60 s ~ U(0, 30] (the registration time, hence the critical time, is uniform mod 30) and
    independent. Near an end P(a + w < e) = e^2 / (2*10*30); with N draws the closest one is
    farther than e with probability exp(-N e^2 / 600) -- e below makes that 1e-9."""
    rng = random.Random(20260126)
    n = 4000
    eps = math.sqrt(600 * math.log(1e9) / n)  # ~1.76 s
    totals = {"refused": [], "hang": []}
    for mode in totals:
        for _ in range(n):
            crash_at, _, removed = _crash_run(
                rng.uniform(0, 30), rng.random(), rng.uniform(0, 60), mode, "consul"
            )
            totals[mode].append(removed - crash_at)
    assert min(totals["refused"]) < 60.0 + eps and max(totals["refused"]) > 100.0 - eps
    assert min(totals["hang"]) < 65.0 + eps and max(totals["hang"]) > 105.0 - eps
    everything = totals["refused"] + totals["hang"]
    assert 60.0 < min(everything) < 60.0 + eps and 105.0 - eps < max(everything) <= 105.0 + TOL


# --------------------------------------------------------------------------- queries


def _registry_with_one_critical():
    reg = Registry(HealthCheckConfig(initial_status="passing"))
    for inst in ("b-2", "a-9", "c-1"):  # deliberately not in sorted order
        reg.register(0, inst, "pay")
        reg.schedule_first_check(0, inst, const(0.5))
    reg.register(0, "x-1", "other")
    reg.record_check(5.0, "a-9", False)
    return reg


def test_agent_list_ignores_health_and_health_passing_filters_it():
    """ref 4 "Query paths": /v1/agent/services (the spec's agent.service.list()) ignores
    health; /v1/health/service?passing keeps passing checks only, in registration order.
    The agent list is a JSON object keyed by service ID, which Go's encoding/json writes
    sorted and Object.entries reads in that order: sorted by ID as a string."""
    reg = _registry_with_one_critical()
    assert reg.agent_list("pay") == ["a-9", "b-2", "c-1"]
    assert reg.health_passing("pay") == ["b-2", "c-1"]
    assert reg.query("agent_list", "pay") == reg.agent_list("pay")
    assert reg.query("health_passing", "nobody") == []
    assert reg.instances() == ["b-2", "a-9", "c-1", "x-1"]
    assert reg.meta("b-2") == {} and reg.service_of("x-1") == "other"


def test_registration_order_survives_removal_and_reregistration():
    """Our choice (the reference is silent): a restart that re-registers a still-registered
    instance keeps its place and gets a fresh check (initial status, no critical clock);
    a removed instance registering again goes to the end."""
    reg = _registry_with_one_critical()
    evs = reg.register(6.0, "a-9", "pay", {"version": "2"})
    assert evs == [("a-9", ("reregistered", "pay")), ("a-9", ("warn", evs[1][1][1]))]
    # (health_passing shows the registration order: a fresh check starts passing here)
    assert reg.health_passing("pay") == ["b-2", "a-9", "c-1"]
    assert reg.status("a-9") == "passing" and reg.critical_since("a-9") is None
    assert reg.next_check("a-9") is None and reg.meta("a-9") == {"version": "2"}
    assert reg.deregister(7.0, "b-2") == [("b-2", ("deregistered", "graceful"))]
    reg.register(8.0, "b-2", "pay")
    assert reg.health_passing("pay") == ["a-9", "c-1", "b-2"]
    assert reg.agent_list("pay") == ["a-9", "b-2", "c-1"]  # the agent's JSON: sorted by ID
    # Re-registered under another service: it leaves the old list and joins the new one in
    # registration order (x-1 was registered after a-9).
    reg.register(9.0, "a-9", "other")
    assert reg.health_passing("pay") == ["c-1", "b-2"]
    assert reg.health_passing("other") == ["a-9", "x-1"]


def test_outage_fails_queries_and_api_calls_but_not_the_agent():
    """Our outage model: callers cannot reach the registry API -- every query returns None
    (the spec's discoverService throws), register/deregister fail -- while the agent keeps
    checking and reaping. Unknown deregistration fails too (Consul: "Unknown service ID")."""
    reg = _registry_with_one_critical()
    assert reg.set_registry_up(10.0, False) == [(None, ("registry", "down"))]
    assert not reg.registry_up
    assert reg.agent_list("pay") is None and reg.health_passing("pay") is None
    assert reg.register(11.0, "d-1", "pay") == [
        ("d-1", ("register_failed", "registry unreachable"))
    ]
    assert not reg.is_registered("d-1")
    assert reg.deregister(12.0, "b-2") == [("b-2", ("deregister_failed", "registry unreachable"))]
    assert reg.is_registered("b-2")
    # The agent still reaps a-9 (critical since 5.0, reaped at the 90 s pass).
    assert reg.tick(90.0) == [("a-9", ("deregistered", "critical_timeout"))]
    reg.set_registry_up(100.0, True)
    assert reg.agent_list("pay") == ["b-2", "c-1"]
    assert reg.deregister(101.0, "a-9") == [("a-9", ("deregister_failed", "unknown service"))]
    # A result for a removed instance is ignored (Consul stops the check with the service).
    assert reg.record_check(102.0, "a-9", True) == [("a-9", ("check_ignored", "not registered"))]


# --------------------------------------------------------------------------- views


def test_per_call_view_queries_every_call_and_fails_during_an_outage():
    """spec 3.3.1 selectServiceInstance: discoverService on every call; it throws (None
    here) when the registry cannot be reached."""
    reg = _registry_with_one_critical()
    view = make_view(DiscoveryConfig())
    assert isinstance(view, PerCallView)
    assert view.instances(6.0, "pay", reg) == ["a-9", "b-2", "c-1"]  # health ignored, sorted by ID
    hp = make_view(DiscoveryConfig(path="health_passing"))
    assert hp.instances(6.0, "pay", reg) == ["b-2", "c-1"]
    reg.set_registry_up(7.0, False)
    assert view.instances(7.0, "pay", reg) is None
    assert (view.queries, view.failures) == (2, 1)
    assert view.next_timer(7.0) is None and view.tick(7.0) == []


def test_cached_view_ttl_refresh_and_stale_on_error_without_extending_the_ttl():
    """Our cached model: a list fetched at t serves calls with now < t + ttl; the first call
    at or after that refreshes; if the refresh fails the stale list is served and the TTL is
    not extended (the next call retries); nothing cached + failure = None."""
    reg = Registry(HealthCheckConfig(initial_status="passing"))
    reg.register(0.0, "a-1", "a")
    view = make_view(DiscoveryConfig(timing="cached", ttl_s=30.0))
    assert isinstance(view, CachedView)
    assert view.instances(0.0, "a", reg) == ["a-1"]
    reg.register(5.0, "a-2", "a")
    assert view.instances(29.9, "a", reg) == ["a-1"]  # cached, no query
    assert view.instances(30.0, "a", reg) == ["a-1", "a-2"]  # expired at exactly t + ttl
    assert view.queries == 2 and view.fetched_at("a") == 30.0
    reg.set_registry_up(40.0, False)
    assert view.instances(59.0, "a", reg) == ["a-1", "a-2"]  # still fresh: no query
    assert view.queries == 2
    assert view.instances(60.0, "a", reg) == ["a-1", "a-2"]  # stale on error
    assert view.instances(61.0, "a", reg) == ["a-1", "a-2"]  # retried: TTL not extended
    assert (view.queries, view.failures, view.stale_served) == (4, 2, 2)
    assert view.fetched_at("a") == 30.0
    assert view.instances(62.0, "never-seen", reg) is None
    reg.set_registry_up(70.0, True)
    reg.deregister(71.0, "a-2")
    assert view.instances(72.0, "a", reg) == ["a-1"]
    assert view.fetched_at("a") == 72.0


def test_watch_view_sees_every_change_after_the_delay():
    """Our watch model of Consul blocking queries (ref 4): each change of the list is
    delivered watch_delay_s later, in order; a first call bootstraps with a direct query
    (index 0 returns at once); calls between deliveries make no query."""
    reg = Registry(HealthCheckConfig(initial_status="passing"))
    reg.register(0.0, "a-1", "a")
    view = make_view(DiscoveryConfig(timing="watch", watch_delay_s=2.0))
    assert isinstance(view, WatchView)
    assert view.instances(0.5, "a", reg) == ["a-1"]  # bootstrap query, subscribes
    reg.register(10.0, "a-2", "a")
    reg.register(10.5, "a-3", "a")
    assert view.next_timer(10.5) == 12.0
    assert view.instances(11.9, "a", reg) == ["a-1"]
    assert view.tick(12.0) == [("a", ("view_updated", ("a-1", "a-2")))]
    assert view.next_timer(12.0) == 12.5
    assert view.instances(12.5, "a", reg) == ["a-1", "a-2", "a-3"]
    assert view.queries == 1
    # A health-only change is invisible on the agent path (nothing is pushed)...
    reg.schedule_first_check(13.0, "a-1", const(0.0))
    reg.record_check(13.0, "a-1", False)
    assert view.next_timer(13.0) is None
    # ...and visible on the health path.
    hp = WatchView(DiscoveryConfig(path="health_passing", timing="watch", watch_delay_s=2.0))
    hp.attach(reg)
    reg.record_check(23.0, "a-1", True)
    assert hp.next_timer(23.0) == 25.0
    reg.record_check(33.0, "a-1", False)
    assert hp.instances(34.0, "a", reg) == ["a-1", "a-2", "a-3"]  # delivered at 25
    assert hp.instances(35.0, "a", reg) == ["a-2", "a-3"]  # delivered at 35


def test_watch_view_keeps_its_list_through_an_outage_and_resyncs_after():
    """Our watch model under an outage: nothing is delivered while the registry is down
    (the view keeps its last list); on recovery the current list is pushed and delivered
    watch_delay_s later. A first call during the outage fails (None)."""
    reg = Registry(HealthCheckConfig(initial_status="passing"))
    for i in (1, 2):
        reg.register(0.0, f"a-{i}", "a")
        reg.schedule_first_check(0.0, f"a-{i}", const(0.0))
    view = make_view(DiscoveryConfig(path="health_passing", timing="watch", watch_delay_s=1.0))
    assert view.instances(0.0, "a", reg) == ["a-1", "a-2"]
    reg.set_registry_up(20.0, False)
    reg.record_check(25.0, "a-2", False)  # the agent still checks: a-2 goes critical
    assert view.next_timer(25.0) is None
    assert view.instances(30.0, "a", reg) == ["a-1", "a-2"]  # stale, not None
    assert view.instances(30.0, "b", reg) is None
    reg.set_registry_up(50.0, True)
    assert view.next_timer(50.0) == 51.0
    assert view.instances(50.5, "a", reg) == ["a-1", "a-2"]
    assert view.instances(51.0, "a", reg) == ["a-1"]


# --------------------------------------------------------------------------- deep check


def test_deep_check_follows_the_spec_and_its_quirk():
    """spec 3.2.2 checkHealth: UP iff database, redis and >= 1 discovered instance of each
    of auth-service and payment-service; a throwing discovery is false. Quirk: discovery
    is agent.service.list(), so a dead but registered auth-service still counts."""
    reg = Registry(HealthCheckConfig(initial_status="passing"))
    reg.register(0, "auth-1", "auth-service")
    reg.register(0, "pay-1", "payment-service")
    assert deep_check_passes(True, True, reg.agent_list)
    assert not deep_check_passes(False, True, reg.agent_list)
    assert not deep_check_passes(True, False, reg.agent_list)
    reg.schedule_first_check(0, "auth-1", const(0.0))
    reg.record_check(0.0, "auth-1", False)  # auth-1 is dead: critical, still registered
    assert deep_check_passes(True, True, reg.agent_list)  # the quirk
    assert not deep_check_passes(True, True, reg.health_passing)

    def boom(service):
        raise ConnectionError(service)

    assert not deep_check_passes(True, True, boom)
    asked = []
    assert not deep_check_passes(False, True, lambda s: asked.append(s) or ["x"])
    assert asked == ["auth-service", "payment-service"]  # every part is evaluated
    reg.set_registry_up(1.0, False)
    assert not deep_check_passes(True, True, reg.agent_list)  # outage: throws -> false
    reg.set_registry_up(2.0, True)
    reg.tick(90.0)  # auth-1 reaped (critical since 0, 90 s pass)
    assert reg.agent_list("auth-service") == []
    assert not deep_check_passes(True, True, reg.agent_list)


def _drive(reg, until, outcome):
    """A minimal engine: check starts, check ends and registry timers in time order (timers
    first, then ends, then starts; instances in registration order). ``outcome(instance,
    start)`` -> (passing, duration)."""
    inflight = {}
    now = 0.0
    while True:
        cands = []
        t = reg.next_timer(now)
        if t is not None:
            cands.append((t, 0, 0, None))
        for i, inst in enumerate(reg.instances()):
            if inst in inflight:
                cands.append((inflight[inst][0], 1, i, inst))
            elif (s := reg.next_check(inst)) is not None:
                cands.append((s, 2, i, inst))
        for inst in [k for k in inflight if not reg.is_registered(k)]:
            del inflight[inst]
        if not cands or min(cands)[0] > until:
            return
        t, kind, _, inst = min(cands)
        now = t
        if kind == 0:
            reg.tick(t)
        elif kind == 1:
            _, ok = inflight.pop(inst)
            reg.record_check(t, inst, ok)
        else:
            reg.start_check(t, inst)
            ok, dur = outcome(inst, t)
            inflight[inst] = (t + dur, ok)


def test_deep_checks_turn_one_dead_dependency_into_every_service_deregistered():
    """spec 3.2.1 + 3.2.2 + ref 4 together. auth-service dies at 100: discovery ignores
    health, so the others' deep checks keep passing until auth-1 is reaped (critical in
    [105, 115), reaped 60-90 s later at a 30 s pass). From then on every deep check
    fails (no auth-service instance), so payment and order go critical within one period
    and are reaped 60-90 s later; registration happens only at start-up, so nothing
    comes back even though payment-1 and order-1 never stopped working."""
    reg = Registry(HealthCheckConfig(initial_status="passing"))
    staggers = {"auth-1": 0.1, "pay-1": 0.4, "order-1": 0.7}
    for inst, svc in [("auth-1", "auth-service"), ("pay-1", "payment-service"),
                      ("order-1", "order-service")]:
        reg.register(0.0, inst, svc)
        reg.schedule_first_check(0.0, inst, const(staggers[inst]))

    def outcome(inst, start):
        if inst == "auth-1" and start >= 100.0:
            return False, 5.0  # dead: nothing answers before the timeout
        return deep_check_passes(True, True, reg.agent_list), 0.01

    _drive(reg, 1000.0, outcome)
    removed = {inst: t for t, inst, ev in reg.log if ev == ("deregistered", "critical_timeout")}
    # auth-1: checks at 1, 11.01, ..., first start >= 100 is ~101.09 -> critical ~106.09,
    # reaped at the first pass > 166.09: 180.
    assert removed["auth-1"] == 180.0
    first_fail = {
        inst: min(t for t, i, ev in reg.log if i == inst and ev[0] == "critical_since")
        for inst in ("pay-1", "order-1")
    }
    for inst in ("pay-1", "order-1"):
        assert 180.0 <= first_fail[inst] < 190.0 + 0.01  # next deep check after 180
        assert removed[inst] == 270.0  # first pass with > 60 s critical
        # Until auth-1 was reaped the dead dependency counted as available.
        assert all(ev != ("status", "critical") for t, i, ev in reg.log if i == inst and t < 180)
    assert reg.instances() == []


# --------------------------------------------------------------------------- determinism


def test_same_inputs_same_log():
    """Determinism: the same calls (and the same u stream) give the same event log."""

    def run():
        rng = random.Random(5)
        logs = []
        for _ in range(20):
            logs.append(_crash_run(rng.uniform(0, 30), rng.random(), rng.uniform(0, 60),
                                   "hang", "consul"))
        return logs

    assert run() == run()

"""Faults applied by the engine: each kind alone, on small scenarios with known timings."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from hailan_sim.models.scenario import Scenario
from hailan_sim.sim import simulate
from tests._build import build, const, endpoint, op, svc, trace

REGISTRY = {"name": "consul", "kind": "registry", "port": 8500, "capacity": 8, "latency_ms": const(0.5)}


def _pair(faults: list, *, policies=None, b_kw=None, arrivals=None, duration_s=10.0, **extra) -> Scenario:
    """client -> a.op (1 ms) -> b.op (10 ms); b has two instances, one request every 10 ms."""
    return build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
            svc("b", 3002, {"op": op(10)}, **{"instances": 2, "workers": 64, **(b_kw or {})}),
        ],
        [endpoint("a.op", arrivals or trace(*[i * 0.01 for i in range(int(duration_s * 100) - 100)]))],
        policies={"timeout_s": 0.5, **(policies or {})},
        faults=faults,
        duration_s=duration_s,
        **extra,
    )


def _ends(r, target="b"):
    ev = r.events()
    return ev[(ev.event == "call_end") & (ev.target == target)]


def test_fault_start_and_end_are_logged():
    r = simulate(_pair([{"kind": "slow", "target": "b", "factor": 2, "start_s": 2, "duration_s": 3}]), keep_events=True)
    ev = r.events()
    marks = ev[ev.event.isin(["fault_start", "fault_end"])][["t", "event", "target", "operation", "outcome"]]
    assert marks.values.tolist() == [[2.0, "fault_start", "b", "slow", "0"], [5.0, "fault_end", "b", "slow", "0"]]


def test_crash_loses_in_flight_work_and_restart_pays_startup():
    r = simulate(_pair([{"kind": "crash_instance", "instance": "b-0", "start_s": 2.005, "duration_s": 3}],
                       b_kw={"startup_s": 1.0}), keep_events=True)
    ev = r.events()
    down = ev[(ev.event == "instance_down")]["t"].tolist()
    up = ev[(ev.event == "instance_up") & (ev.instance == "b-0")]["t"].tolist()
    assert down == [2.005] and up == [6.005]  # restarted at 5.005, up after its 1 s start-up
    b0 = _ends(r)
    b0 = b0[b0.instance == "b-0"]
    # calls b-0 held when it died were reset: errors at the crash instant
    assert (b0[(b0.t == 2.005)]["outcome"] == "error").sum() >= 1
    # while it was down, nothing reached b-0 (the oracle discovery skips down instances)
    assert b0[(b0.t > 2.005) & (b0.t < 6.005)].empty
    assert not b0[b0.t > 6.005].empty


def test_a_hung_instance_times_callers_out():
    r = simulate(_pair([{"kind": "hang", "instance": "b-1", "start_s": 2, "duration_s": 2}]), keep_events=True)
    b = _ends(r)
    during = b[(b.instance == "b-1") & (b.t > 2.5) & (b.t < 4.0)]
    assert len(during) > 0 and set(during["outcome"]) == {"timeout"}
    after = b[(b.instance == "b-1") & (b.t > 5.0)]
    assert set(after["outcome"]) == {"ok"}


def test_slow_multiplies_service_time_during_the_fault_only():
    r = simulate(_pair([{"kind": "slow", "target": "b-0", "factor": 5, "start_s": 3, "duration_s": 3}]), keep_events=True)
    ev = r.events()
    starts = ev[ev.event == "call_start"].set_index("call")["t"]
    b = _ends(r)
    lat = (b.set_index("call")["t"] - starts.reindex(b["call"]).values)
    b = b.assign(lat=lat.values)
    inside = b[(b.instance == "b-0") & (b.t > 3.1) & (b.t < 6)]["lat"]
    outside = b[(b.instance == "b-0") & (b.t > 6.1)]["lat"]
    assert inside.round(9).unique().tolist() == [0.05]
    assert outside.round(9).unique().tolist() == [0.01]


def test_error_rate_fails_the_stated_fraction():
    r = simulate(_pair([{"kind": "error_rate", "target": "b", "fraction": 0.3, "start_s": 1, "duration_s": 8}],
                       duration_s=10), keep_events=True)
    b = _ends(r)
    inside = b[(b.t > 1.02) & (b.t < 9)]
    n = len(inside)
    rate = (inside.outcome == "error").mean()
    assert abs(rate - 0.3) < 4.4 * math.sqrt(0.3 * 0.7 / n)


def test_a_partition_drops_calls_until_it_heals():
    r = simulate(_pair([{"kind": "partition", "a": "a", "b": "b", "start_s": 2, "duration_s": 2}]), keep_events=True)
    ev = r.events()
    sent = ev[ev.event == "call_start"].set_index("call")["t"]
    b = _ends(r)
    b = b.assign(sent=sent.reindex(b["call"]).values)
    # a call sent during the partition never arrives, and an answer sent during it is lost:
    # either way its caller times out 0.5 s later
    assert set(b[(b.sent >= 2) & (b.sent < 4)]["outcome"]) == {"timeout"}
    assert set(b[(b.sent >= 1.989) & (b.sent < 2)]["outcome"]) == {"timeout"}  # answer lost
    assert set(b[(b.sent < 1.988) | (b.sent >= 4)]["outcome"]) == {"ok"}


def test_link_latency_adds_to_every_hop_both_ways():
    r = simulate(_pair([{"kind": "link_latency", "a": "a", "b": "b", "added_ms": 20, "start_s": 0, "duration_s": 5}]),
                 keep_events=True)
    ev = r.events()
    req = ev[ev.event == "request_end"]
    starts = ev[ev.event == "request_start"].set_index("request")["t"]
    lat = (req.set_index("request")["t"] - starts).round(9)
    assert lat[req.set_index("request")["t"] < 4].unique().tolist() == [0.051]  # 1 + 20 + 10 + 20 ms
    assert lat[req.set_index("request")["t"] > 6].unique().tolist() == [0.011]


def test_link_latency_from_a_gateway_counts_once():
    # A gateway's calls carry its component name as both the sender and the sender's
    # service: the link fault must still be applied once per hop, not once per name.
    s = build(
        [svc("a", 3001, {"op": op(1)}, workers=8)],
        [endpoint("a.op", trace(*[i * 0.1 for i in range(40)]))],
        infrastructure=[{"name": "gw", "kind": "gateway", "capacity": 64, "latency_ms": const(1)}],
        faults=[{"kind": "link_latency", "a": "gw", "b": "a", "added_ms": 20, "start_s": 0, "duration_s": 2}],
    )
    ev = simulate(s, keep_events=True).events()
    calls = ev[(ev.event.isin(["call_start", "call_end"])) & (ev.target == "a")]
    dur = calls.groupby("call")["t"].agg(lambda t: t.max() - t.min()).round(9)
    sent = calls[calls.event == "call_start"].set_index("call")["t"]
    assert dur[sent[sent < 1.9].index].unique().tolist() == [0.041]  # 20 + 1 + 20 ms, not 81
    assert dur[sent[sent > 2.1].index].unique().tolist() == [0.001]  # the fault is over


def test_infra_outage_refuses_calls_at_once():
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "redis"})}, depends_on=["redis"], workers=8)],
        [endpoint("a.op", trace(*[i * 0.1 for i in range(50)]))],
        infrastructure=[{"name": "redis", "kind": "cache", "capacity": 8, "latency_ms": const(1)}],
        faults=[{"kind": "infra_outage", "component": "redis", "start_s": 1, "duration_s": 2}],
    )
    ev = simulate(s, keep_events=True).events()
    ends = ev[(ev.event == "request_end")]
    assert set(ends[(ends.t > 1) & (ends.t < 3)]["outcome"]) == {"error"}
    assert set(ends[ends.t > 3.1]["outcome"]) == {"ok"}


def test_registry_outage_fails_per_call_discovery_and_cached_serves_stale():
    def run(timing: str):
        return simulate(_pair([{"kind": "registry_outage", "start_s": 3, "duration_s": 2}],
                              policies={"discovery": {"timing": timing, "ttl_s": 1}},
                              infrastructure=[REGISTRY]))

    per_call, cached = run("per_call"), run("cached")
    # one call every 10 ms for 2 s: ~200 failed lookups per call, none with a cache
    assert 190 <= per_call.mechanisms["discovery_errors"] <= 201
    assert per_call.requests["error"] == per_call.mechanisms["discovery_errors"]
    assert cached.requests["error"] == 0


def test_crashed_instances_stay_registered_until_consul_reaps_them():
    r = simulate(_pair([{"kind": "crash_instance", "instance": "b-1", "start_s": 5, "restart": False}],
                       infrastructure=[REGISTRY], duration_s=150,
                       arrivals=trace(*[i * 0.1 for i in range(1400)])), keep_events=True)
    ev = r.events()
    reaped = ev[(ev.event == "registry") & (ev.operation == "deregistered") & (ev.instance == "b-1")]["t"]
    assert len(reaped) == 1
    # reference (Consul): critical within 0-15 s of the crash, then removed 60-90 s later
    assert 5 + 60 < reaped.iloc[0] <= 5 + 105
    # the spec's agent_list discovery keeps sending to the dead instance until then
    b1 = _ends(r)
    b1 = b1[(b1.instance == "b-1") & (b1.t > 5)]
    assert set(b1["outcome"]) == {"error"} and b1["t"].max() < reaped.iloc[0] + 0.1


def test_a_restart_inside_a_registry_outage_keeps_the_old_registration():
    """b-1 crashes at 3 s and restarts at 4 s, inside a registry outage (3.5-6 s), long before
    Consul would reap it. Its re-registration fails; its old entry and the check the agent
    kept running stay, so it passes again and serves (this raised "its check is already
    scheduled" before: found by the hardened property test)."""
    r = simulate(_pair([{"kind": "crash_instance", "instance": "b-1", "start_s": 3, "duration_s": 1},
                        {"kind": "registry_outage", "start_s": 3.5, "duration_s": 2.5}],
                       infrastructure=[REGISTRY], duration_s=40,
                       arrivals=trace(*[i * 0.1 for i in range(380)])), keep_events=True)
    ev = r.events()
    reg = ev[(ev.event == "registry") & (ev.instance == "b-1")]
    assert list(reg[reg.t > 3]["operation"])[:1] == ["register_failed"]
    assert "deregistered" not in set(reg["operation"])
    served = _ends(r)
    assert ((served.instance == "b-1") & (served.t > 25) & (served.outcome == "ok")).any()


def test_clock_skew_on_the_verifier_rejects_tokens_early():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b", "auth"], placement=["n1"]),
            svc("b", 3002, {"op": op(1)}, placement=["n2"], workers=8),
            svc("auth", 3003, {"issue_token": op(1)}, placement=["n1"]),
        ],
        [endpoint("a.op", trace(*[i * 0.1 for i in range(300)]))],
        nodes=[{"name": "n1", "zone": "z"}, {"name": "n2", "zone": "z"}],
        policies={"tokens": {"enabled": True, "signing": "issuer", "issuer": "auth.issue_token", "ttl_s": 10}},
        faults=[{"kind": "clock_skew", "node": "n2", "skew_s": 4, "start_s": 0, "duration_s": 30}],
        duration_s=30,
    )
    r = simulate(s, keep_events=True)
    ev = r.events()
    verdicts = ev[ev.event == "auth_401"]["outcome"]
    # b's clock runs 4 s ahead: the last 4 s of each 10 s token are expired to it
    assert set(verdicts) == {"expired"}
    assert 100 <= len(verdicts) <= 125  # 3 lifetimes x ~40 calls each


def test_a_load_spike_adds_arrivals_and_keeps_the_baselines():
    base = _pair([], arrivals={"kind": "poisson", "rate": 50}, duration_s=60)
    spiked = _pair([{"kind": "load_spike", "endpoint": "ep", "factor": 3, "start_s": 20, "duration_s": 20}],
                   arrivals={"kind": "poisson", "rate": 50}, duration_s=60)
    a, b = simulate(base, keep_events=True).events(), simulate(spiked, keep_events=True).events()
    ta = a[a.event == "request_start"]["t"]
    tb = b[b.event == "request_start"]["t"]
    assert set(ta) <= set(tb)  # common random numbers: every baseline arrival is still there
    extra = len(tb) - len(ta)
    expected = 2 * 50 * 20  # (factor - 1) x rate x duration
    assert abs(extra - expected) < 4.4 * math.sqrt(expected)
    assert tb[~tb.isin(ta)].between(20, 40).all()


def test_drain_deregisters_finishes_its_work_and_comes_back():
    r = simulate(_pair([{"kind": "drain_instance", "instance": "b-0", "start_s": 2.005, "duration_s": 2}],
                       infrastructure=[REGISTRY], b_kw={"startup_s": 0.5}), keep_events=True)
    ev = r.events()
    b0 = ev[ev.instance == "b-0"]
    assert b0[b0.event == "instance_drain"]["t"].tolist() == [2.005]
    dereg = b0[(b0.event == "registry") & (b0.operation == "deregistered")]["t"].tolist()
    assert dereg == [2.005]
    stop = b0[b0.event == "instance_stop"]["t"].iloc[0]
    assert 2.005 <= stop <= 2.016  # finished the calls it held (10 ms each), then stopped
    held = _ends(r)
    assert (held[(held.instance == "b-0") & (held.t <= stop)]["outcome"] == "ok").all()
    assert b0[(b0.event == "instance_up")]["t"].tolist() == [4.505]
    assert r.requests["error"] == 0


def test_a_zone_crash_takes_every_instance_in_it():
    s = _pair([{"kind": "crash_zone", "zone": "zb", "start_s": 1, "duration_s": 1}],
              nodes=[{"name": "n1", "zone": "za"}, {"name": "n2", "zone": "zb"}])
    ev = simulate(s, keep_events=True).events()
    down = sorted(ev[ev.event == "instance_down"]["instance"])
    assert down == ["b-1"]  # a has one instance (on n1); b's second is on n2, zone zb


@pytest.mark.parametrize("profile", ["seed", "hardened"])
def test_faults_keep_runs_deterministic(profile):
    from hailan_sim.models import default_scenario

    s = default_scenario().with_profile(profile).with_run(duration_s=60, warmup_s=5)
    data = s.model_dump(mode="python", exclude_unset=True)
    data["faults"] = [
        {"kind": "crash_instance", "instance": "auth-service-0", "start_s": 10, "duration_s": 20},
        {"kind": "partition", "a": "order-service", "b": "payment-service", "start_s": 15, "duration_s": 10},
        {"kind": "link_latency", "a": "product-service", "b": "inventory-service", "added_ms": 50,
         "loss": 0.1, "start_s": 20, "duration_s": 10},
    ]
    f = Scenario.model_validate(data)
    a, b = simulate(f), simulate(f)
    assert a.event_log_sha256 == b.event_log_sha256
    assert a.event_log_sha256 != simulate(s).event_log_sha256
    pd.testing.assert_frame_equal(a.windows, b.windows)

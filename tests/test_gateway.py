"""The API gateway's retries and outlier ejection (policies.gateway; models/gateway.py,
sim/gateway.py): a dead entry instance stops costing requests.

client -> gw -> a (two instances, or three); a-0 crashes for good at 2 s and stays in
Consul's DNS list until its health check fails (first check of a-0 is drawn in [0, 10) s,
then every 10 s, so for some seconds after the crash the gateway still routes to it).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hailan_sim.models.gateway import GatewayPolicy, GatewayRetry, envoy_backoff_s
from hailan_sim.models.scenario import Scenario
from hailan_sim.sim import simulate
from tests._build import build, const, endpoint, op, svc, trace

REGISTRY = {"name": "consul", "kind": "registry", "port": 8500, "capacity": 8, "latency_ms": const(0.5)}
GATEWAY = {"name": "gw", "kind": "gateway", "port": 8080, "capacity": 64, "latency_ms": const(0.5)}
CRASH = {"kind": "crash_instance", "instance": "a-0", "start_s": 2.0, "restart": False}


def _gw(gateway=None, *, instances=2, ms=1.0, arrivals=None, timeout_s=None, network=None, faults=(CRASH,),
        duration_s=10.0, health=None):
    policies = {"timeout_s": 5.0, "health_check": health or {"interval_s": 10, "timeout_s": 5}}
    if gateway is not None:
        policies["gateway"] = gateway
    extra = {}
    if network is not None:
        extra["network"] = network
    s = build([svc("a", 3001, {"op": op(ms)}, instances=instances, workers=64)],
              [endpoint("a.op", arrivals or trace(*[i * 0.01 for i in range(int(duration_s * 100))]),
                        timeout_s=timeout_s)],
              infrastructure=[GATEWAY, REGISTRY], faults=list(faults), duration_s=duration_s, **extra)
    data = s.model_dump(exclude_unset=True, mode="json")
    data["policies"] = policies
    return simulate(Scenario.model_validate(data), keep_events=True)


def _calls_to(ev, inst):
    return ev[(ev.event == "call_end") & (ev.source == "gw") & (ev.instance == inst)]


def test_without_a_gateway_policy_requests_fail_at_the_dead_instance():
    r = _gw(None)
    ev = r.events()
    dead = _calls_to(ev, "a-0")
    dead = dead[dead.t > 2.0]
    assert len(dead) > 50 and set(dead.outcome) == {"error"}
    assert r.requests["error"] == len(dead)  # each such request failed: nothing retried it
    assert not ev.event.str.startswith("gateway_").any()
    assert r.mechanisms["gateway_retries"] == 0


def test_connect_failure_is_retried_on_another_instance():
    for retry in ({}, {"num_retries": 2, "host_selection_retry_max_attempts": 3}):
        r = _gw({"retry": {"retry_on": ["connect-failure"], **retry}})
        n = retry.get("num_retries", 1)
        ev = r.events()
        retries = ev[ev.event == "gateway_retry"]
        assert set(retries.outcome) == {"connect-failure"} and set(retries.instance) == {"a-0"}
        refused = _calls_to(ev, "a-0")
        refused = refused[refused.t > 2.0]
        assert len(refused) > 50
        # Every refused attempt is retried unless it was the request's last allowed one (or
        # more than max_retries, 3, were waiting in backoff then).
        per_req = refused.groupby("request").size()
        overflows = (ev.event == "gateway_retry_overflow").sum()
        assert len(retries) + overflows == sum(min(k, n) for k in per_req)
        failed = set(ev[(ev.event == "request_end") & (ev.outcome != "ok")].request)
        assert failed == set(per_req[per_req == n + 1].index) | set(ev[ev.event == "gateway_retry_overflow"].request)
        # previous_hosts with two instances: a retry goes back to a-0 only if every re-pick
        # (1 by default, 3 here) drew it again: (1/2)^2 or (1/2)^4 of the retries.
        p = 0.5 ** (1 + retry.get("host_selection_retry_max_attempts", 1))
        back = len(refused) - len(per_req)
        sd = (len(retries) * p * (1 - p)) ** 0.5
        assert abs(back - len(retries) * p) < 3 * sd + 1, (back, len(retries), p)
    assert r.requests["error"] <= 5 and r.requests["ok"] > 700


def test_retry_on_reset_only_retries_calls_the_crash_cut_off():
    # 500 ms of work per call: about 25 calls are in progress at a-0 when it crashes.
    kw = dict(ms=500.0, arrivals=trace(*[i * 0.02 for i in range(400)]), health={"interval_s": 1, "timeout_s": 1})
    # (max_retries 100: Envoy's default 3 would let only 3 of the simultaneous resets retry)
    reset = _gw({"retry": {"retry_on": ["reset"], "max_retries": 100}}, **kw)
    connect = _gw({"retry": {"retry_on": ["connect-failure"], "max_retries": 100}}, **kw)
    ev = reset.events()
    cut = ev[(ev.event == "work_end") & (ev.instance == "a-0") & (ev.t == 2.0) & (ev.outcome == "error")]
    assert len(cut) > 5
    r_reset = ev[ev.event == "gateway_retry"]
    assert set(r_reset.outcome) == {"reset"} and set(r_reset.call) == set(cut.call)
    ev2 = connect.events()
    assert set(ev2[ev2.event == "gateway_retry"].outcome) <= {"connect-failure"}
    assert not (ev2[ev2.event == "gateway_retry"].call.isin(cut.call)).any()
    # Each run fails exactly the requests whose failure it does not retry: with reset only,
    # those refused at the dead a-0; with connect-failure only, those the crash cut off
    # (and any whose retry was refused again).
    def failed(ev):
        return set(ev[(ev.event == "request_end") & (ev.outcome != "ok")].request)

    def refused(ev):
        calls = _calls_to(ev, "a-0")
        return set(calls[(calls.t > 2.0) & ~calls.call.isin(cut.call)].request)

    assert failed(ev) == refused(ev) and refused(ev)
    calls = _calls_to(ev2, "a-0")
    twice = calls[(calls.t > 2.0) & ~calls.call.isin(cut.call)].groupby("request").size()
    assert failed(ev2) == set(cut.request) | set(twice[twice == 2].index)
    assert refused(ev2) == set(ev2[ev2.event == "gateway_retry"].request)


def test_outlier_detection_ejects_the_dead_instance_after_five_failures():
    r = _gw({"outlier": {"failure_on": ["timeout", "rejected"]}})
    ev = r.events()
    dead = _calls_to(ev, "a-0")
    dead = dead[dead.t > 2.0]
    # consecutive_5xx 5: the fifth connect failure (fed as 503) ejects a-0 for 30 s, longer than the run
    assert len(dead) == 5 and r.requests["error"] == 5
    ej = ev[ev.event == "gateway_eject"]
    assert list(ej.instance) == ["a-0"] and list(ej.target) == ["a"] and list(ej.outcome) == ["30.0"]
    assert ej.t.iloc[0] == dead.t.max()
    assert r.mechanisms["gateway_ejections"] == 1


def test_outlier_ejection_ends_with_the_sweep_after_its_time():
    # 60 s: a-0 is ejected at ~2 s for 30 s and un-ejected at the first sweep (every 10 s
    # from the detector's start at the first request) after that. The health check (every
    # 100 s) never notices, so the gateway tries a-0 again and ejects it anew (60 s now).
    r = _gw({"outlier": {}}, duration_s=60.0, arrivals=trace(*[i * 0.05 for i in range(1200)]),
            health={"interval_s": 100, "timeout_s": 5})
    ev = r.events()
    ej, un = ev[ev.event == "gateway_eject"], ev[ev.event == "gateway_uneject"]
    assert len(un) == 1 and len(ej) == 2
    start = ev[(ev.event == "call_start") & (ev.source == "gw")].t.min()  # the detector starts at its first use
    t_ej = ej.t.iloc[0]
    assert un.t.iloc[0] >= t_ej + 30.0 and un.t.iloc[0] < t_ej + 40.0
    assert (un.t.iloc[0] - start) == pytest.approx(round((un.t.iloc[0] - start) / 10) * 10, abs=1e-6)
    assert list(ej.outcome) == ["30.0", "60.0"]  # Envoy: base x the number of ejections


def test_the_route_timeout_includes_the_retries():
    # 0.4 s each way between gw and a: a refused first attempt comes back at +0.8 s; the
    # retry would need 0.8 s more, but the endpoint's 1 s timeout bounds the request whole.
    net = {"latency_ms": const(0.0), "links": [{"src": "gw", "dst": "a", "latency_ms": const(400)},
                                                 {"src": "a", "dst": "gw", "latency_ms": const(400)}]}
    r = _gw({"retry": {}}, network=net, timeout_s=1.0, arrivals=trace(*[2.0 + i * 0.1 for i in range(40)]))
    ev = r.events()
    retried = set(ev[ev.event == "gateway_retry"].request)
    assert retried
    ends = ev[(ev.event == "request_end") & ev.request.isin(retried)]
    starts = ev[(ev.event == "call_start") & (ev.source == "gw")].groupby("request").t.min()
    assert set(ends.outcome) == {"timeout"}
    for rq, t in zip(ends.request, ends.t):
        assert t == pytest.approx(starts[rq] + 1.0, abs=1e-9)  # not 1.6 s: the timeout spans both attempts


def test_max_retries_bounds_the_retries_in_backoff():
    r = _gw({"retry": {"max_retries": 0}})
    ev = r.events()
    assert r.mechanisms["gateway_retries"] == 0 and r.mechanisms["gateway_retry_overflows"] > 50
    assert (ev.event == "gateway_retry_overflow").sum() == r.mechanisms["gateway_retry_overflows"]
    assert r.requests["error"] == r.mechanisms["gateway_retry_overflows"]


def test_previous_hosts_keeps_retries_off_the_hosts_tried():
    def retried_to_a0(predicate):
        r = _gw({"retry": {"retry_host_predicate": predicate, "host_selection_retry_max_attempts": 5,
                           "num_retries": 1}}, instances=3)
        ev = r.events()
        retried = ev[ev.event == "gateway_retry"].request
        calls = ev[(ev.event == "call_start") & (ev.source == "gw") & ev.request.isin(retried)]
        second = calls.groupby("request").call.max()
        ends = ev[(ev.event == "call_end") & ev.call.isin(second)]
        return (ends.instance == "a-0").sum(), len(ends)

    with_pred, n1 = retried_to_a0("previous_hosts")
    without, n2 = retried_to_a0(None)
    assert n1 > 50 and n2 > 50
    # with the predicate a retry re-picks up to 5 times: P(a-0 again) = (1/3)^6 per retry
    assert with_pred <= 1
    # without it, a third of the retries go back to the dead host: 3-sigma band
    sd = (n2 * (1 / 3) * (2 / 3)) ** 0.5
    assert abs(without - n2 / 3) < 3 * sd


def test_envoy_backoff_bounds():
    # JitteredExponentialBackOffStrategy: U[0, (2^n - 1) * base), capped at max
    assert envoy_backoff_s(1, 0.025, 0.25, 0.999999) == pytest.approx(0.025, rel=1e-5)
    assert envoy_backoff_s(2, 0.025, 0.25, 0.5) == pytest.approx(0.0375)
    assert envoy_backoff_s(5, 0.025, 0.25, 0.5) == pytest.approx(0.125)  # 31 x 25 ms capped at 250 ms
    assert envoy_backoff_s(1, 0.025, 0.25, 0.0) == 0.0
    with pytest.raises(ValueError):
        envoy_backoff_s(0, 0.025, 0.25, 0.5)
    assert GatewayRetry().cap_s() == pytest.approx(0.25)  # Envoy: max_interval = 10 x base


def test_gateway_policy_validation():
    assert GatewayRetry().num_retries == 1 and GatewayRetry().retry_on == ("connect-failure",)
    for bad in ({"retry_on": ["5xx"]}, {"retry_on": []}, {"retry_on": ["reset", "reset"]},
                {"num_retries": -1}, {"base_interval_s": 0.1, "max_interval_s": 0.05}, {"bogus": 1}):
        with pytest.raises(ValidationError):
            GatewayRetry.model_validate(bad)
    with pytest.raises(ValidationError):
        GatewayPolicy.model_validate({"outlier": {"consecutive_5xx": -1}})

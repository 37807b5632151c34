"""Tests that pin engine mechanisms the planted mutants of tools/mutants.yaml showed unpinned.

Each test names the mutant it kills (``python tools/mutate.py --list``). They were written
after a mutation run let those mutants survive the engine's tests (docs/mutation.md); each
was checked to fail with its mutant planted.
"""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest

from hailan_sim.sim import simulate
from hailan_sim.sim.messages import MessagingMixin
from tests._build import build, const, endpoint, op, svc, trace


def _events(s):
    return simulate(s, keep_events=True).events()


def _ends(ev, target):
    return ev[(ev.event == "call_end") & (ev.target == target)]


# ----------------------------------------------------------------- call-site-timeout-ignored


def test_a_call_sites_own_timeout_wins_over_the_edges():
    """a.op calls b.op with timeout_s 0.5 at the call site; the policies say 5 s; b takes 2 s."""
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op", "timeout_s": 0.5})}, depends_on=["b"]),
         svc("b", 3002, {"op": op(2000)})],
        [endpoint("a.op", trace(1.0), timeout_s=60)],
    )
    ev = _events(s)
    b = _ends(ev, "b")
    assert list(b.outcome) == ["timeout"]
    start = ev[(ev.event == "call_start") & (ev.target == "b")]["t"].iloc[0]
    assert b["t"].iloc[0] - start == pytest.approx(0.5, abs=1e-9)


# ----------------------------------------------------------------- partition-naming-an-instance-ignored


def test_a_partition_that_names_an_instance_cuts_only_that_instance():
    """b has two instances; a partition between a and b-0 times out exactly the calls to b-0."""
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
         svc("b", 3002, {"op": op(1)}, instances=2, workers=64)],
        [endpoint("a.op", trace(*[1 + i * 0.01 for i in range(200)]), timeout_s=60)],
        policies={"timeout_s": 0.5},
        faults=[{"kind": "partition", "a": "a", "b": "b-0", "start_s": 0.5, "duration_s": 10}],
    )
    b = _ends(_events(s), "b")
    to_b0, to_b1 = b[b.instance == "b-0"], b[b.instance == "b-1"]
    assert len(to_b0) > 50 and len(to_b1) > 50
    assert set(to_b0.outcome) == {"timeout"} and set(to_b1.outcome) == {"ok"}


# ----------------------------------------------------------------- crash-drops-queued-calls


def test_a_crash_resets_the_calls_waiting_in_its_queue():
    """b has one worker and a queue; it crashes while five calls wait: each caller gets an
    error at once (connection reset), none waits for its timeout."""
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
         svc("b", 3002, {"op": op(1000)}, queue_limit=100)],
        [endpoint("a.op", trace(*[1 + i * 0.01 for i in range(6)]), timeout_s=60)],
        faults=[{"kind": "crash_instance", "instance": "b-0", "start_s": 1.5, "duration_s": 5}],
    )
    b = _ends(_events(s), "b")
    assert len(b) == 6
    assert set(b.outcome) == {"error"}
    assert b["t"].max() < 1.6  # at the crash (plus a hop), not at the 5 s timeout


# ----------------------------------------------------------------- deadline-takes-the-larger


def test_a_propagated_deadline_shortens_a_longer_timeout():
    """a -> b (a's call times out after 1 s) -> c (b's edge allows 5 s); with deadlines
    propagated, b's call to c ends when a's deadline does, not after c's 3 s."""
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op", "timeout_s": 1.0})}, depends_on=["b"]),
         svc("b", 3002, {"op": op(1, {"call": "c.op"})}, depends_on=["c"]),
         svc("c", 3003, {"op": op(3000)})],
        [endpoint("a.op", trace(1.0), timeout_s=60)],
        policies={"timeout_s": 5.0, "deadline_propagation": True},
    )
    ev = _events(s)
    c = _ends(ev, "c")
    assert list(c.outcome) == ["timeout"]
    a_start = ev[(ev.event == "call_start") & (ev.target == "b")]["t"].iloc[0]
    assert c["t"].iloc[0] == pytest.approx(a_start + 1.0, abs=1e-9)


# ----------------------------------------------------------------- backoff-uses-next-attempt


def test_the_first_retry_waits_the_first_backoff():
    """Equal jitter, base 0.1 s: the wait before retry 1 is in [v/2, v] with v = 0.2 s (AWS's
    n = 1 for the first retry), never the second retry's [0.2, 0.4]."""
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
         svc("b", 3002, {"op": op(1, error_probability=1.0, idempotent=True)}, workers=64)],
        [endpoint("a.op", trace(*[1 + i for i in range(20)]), timeout_s=60)],
        policies={"retry": {"max_attempts": 2, "backoff": {"kind": "equal_jitter", "base_s": 0.1, "cap_s": 10}}},
        duration_s=30,
    )
    ev = _events(s)
    starts = ev[(ev.event == "call_start") & (ev.target == "b")].groupby("request")["t"].apply(list)
    ends = _ends(ev, "b").groupby("request")["t"].apply(list)
    waits = [st[1] - en[0] for st, en in zip(starts, ends)]
    assert len(waits) == 20
    assert all(0.1 - 1e-9 <= w <= 0.2 + 1e-9 for w in waits), waits


# ----------------------------------------------------------------- budget-denies-every-retry


def test_a_finagle_budget_allows_its_reserve_of_retries():
    """min_retries_per_s 10 over a 10 s ttl: a reserve of 100 retries, and 20% of requests;
    200 failing requests over 2 s get retries, but not one per request."""
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
         svc("b", 3002, {"op": op(1, error_probability=1.0, idempotent=True)}, workers=64)],
        [endpoint("a.op", trace(*[1 + i * 0.01 for i in range(200)]), timeout_s=60)],
        policies={"retry": {"max_attempts": 2, "backoff": {"kind": "constant", "delay_s": 0.001}},
                  "retry_budget": {"kind": "finagle", "ttl_s": 10, "min_retries_per_s": 10,
                                   "percent_can_retry": 0.2}},
    )
    r = simulate(s)
    assert 100 <= r.mechanisms["retries"] < 200


# ----------------------------------------------------------------- round-robin-ignores-skipped-consumers


def test_queue_round_robin_continues_after_the_consumer_that_got_the_message():
    """RabbitMQ delivers round robin among consumers with prefetch credit: a consumer at its
    limit is skipped, and the next message goes to the one after the consumer that got the
    last one. Consumers 0 (full), 1, 2 (free), prefetch 2: two messages go to 1, then 2."""
    got = []
    insts = [SimpleNamespace(name=f"c-{i}", credit=c) for i, c in enumerate((2, 0, 0))]
    q = SimpleNamespace(ready=deque([(1, None, None), (2, None, None)]), rr=0, inflight=0,
                        op=SimpleNamespace(svc=SimpleNamespace(up=insts)),
                        broker=SimpleNamespace(infra=SimpleNamespace(prefetch=2)))
    eng = SimpleNamespace(_deliver_message=lambda q, inst, *msg: got.append(inst.name))
    MessagingMixin._dispatch(eng, q)
    assert got == ["c-1", "c-2"]


def test_a_consumer_at_its_prefetch_limit_gets_no_more_messages():
    """Every consumer holds `prefetch` unacknowledged messages: the next one waits."""
    got = []
    insts = [SimpleNamespace(name=f"c-{i}", credit=2) for i in range(3)]
    q = SimpleNamespace(ready=deque([(1, None, None)]), rr=0, inflight=0,
                        op=SimpleNamespace(svc=SimpleNamespace(up=insts)),
                        broker=SimpleNamespace(infra=SimpleNamespace(prefetch=2)))
    eng = SimpleNamespace(_deliver_message=lambda q, inst, *msg: got.append(inst.name))
    MessagingMixin._dispatch(eng, q)
    assert got == [] and len(q.ready) == 1


# ----------------------------------------------------------------- expired-deadline-not-fail-fast


def test_a_call_whose_deadline_has_passed_is_not_sent():
    """a gives b 1 s; b works 1.5 s, then calls c: with deadline propagation that call fails
    at once as a timeout, and c never sees it."""
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op", "timeout_s": 1.0})}, depends_on=["b"]),
         svc("b", 3002, {"op": op(1500, {"call": "c.op"})}, depends_on=["c"]),
         svc("c", 3003, {"op": op(1)})],
        [endpoint("a.op", trace(1.0), timeout_s=60)],
        policies={"timeout_s": 5.0, "deadline_propagation": True},
    )
    ev = _events(s)
    c = _ends(ev, "c")
    assert list(c.outcome) == ["timeout"]
    assert not ((ev.event == "work_end") & (ev.target == "c")).any()


# ----------------------------------------------------------------- control plane

REGISTRY = {"name": "consul", "kind": "registry", "port": 8500, "capacity": 8, "latency_ms": const(0.5)}
FAST_CHECKS = {"interval_s": 1.0, "timeout_s": 0.5, "deregister_critical_after_s": 600, "content": "shallow",
               "initial_status": "passing"}


def _registry_rows(ev, instance, kind, detail):
    return ev[(ev.event == "registry") & (ev.instance == instance) & (ev.operation == kind)
              & (ev.outcome == detail)]


def test_a_hung_instance_fails_its_health_checks():
    s = build(
        [svc("a", 3001, {"op": op(1)}, instances=2)],
        [endpoint("a.op", trace(*[1 + i * 0.1 for i in range(50)]), timeout_s=60)],
        infrastructure=[REGISTRY],
        policies={"health_check": FAST_CHECKS},
        faults=[{"kind": "hang", "instance": "a-0", "start_s": 2.0, "duration_s": 20}],
    )
    ev = _events(s)
    critical = _registry_rows(ev, "a-0", "status", "critical")
    assert len(critical) >= 1 and 2.0 < critical["t"].min() < 4.0
    assert _registry_rows(ev, "a-1", "status", "critical").empty


def test_the_deep_health_check_fails_when_a_dependency_is_down():
    """The spec's checkHealth (3.2.2) checks the database: a database outage makes every
    instance critical; the shallow check does not."""
    def run(content):
        s = build(
            [svc("a", 3001, {"op": op(1)}, instances=2)],
            [endpoint("a.op", trace(*[1 + i * 0.1 for i in range(50)]), timeout_s=60)],
            infrastructure=[REGISTRY, {"name": "db", "kind": "database", "port": 3306, "capacity": 8,
                                       "latency_ms": const(0.5)}],
            policies={"health_check": {**FAST_CHECKS, "content": content}},
            faults=[{"kind": "infra_outage", "component": "db", "start_s": 2.0, "duration_s": 5}],
        )
        ev = _events(s)
        return {i for i in ("a-0", "a-1") if not _registry_rows(ev, i, "status", "critical").empty}

    assert run("deep") == {"a-0", "a-1"}
    assert run("shallow") == set()


def test_the_gateway_routes_only_to_instances_passing_their_checks():
    """a-0 crashes for good at 2 s; Consul's DNS (the gateway's view) drops it at its first
    failed check, long before it is reaped, so later requests all succeed."""
    s = build(
        [svc("a", 3001, {"op": op(1)}, instances=2, workers=8)],
        [endpoint("a.op", trace(*[1 + i * 0.02 for i in range(500)]), timeout_s=60)],
        infrastructure=[REGISTRY, {"name": "gw", "kind": "gateway", "capacity": 64, "latency_ms": const(0.1)}],
        policies={"health_check": FAST_CHECKS},
        faults=[{"kind": "crash_instance", "instance": "a-0", "start_s": 2.0, "restart": False}],
    )
    ev = _events(s)
    ends = ev[(ev.event == "request_end")]
    late = ends[ends.t > 5.0]
    assert len(late) > 100 and set(late.outcome) == {"ok"}


def test_a_crash_without_restart_stays_down():
    s = build(
        [svc("a", 3001, {"op": op(1)}, instances=2, startup_s=0.5)],
        [endpoint("a.op", trace(*[1 + i * 0.1 for i in range(50)]), timeout_s=60)],
        faults=[{"kind": "crash_instance", "instance": "a-0", "start_s": 2.0, "duration_s": 1.0, "restart": False}],
    )
    ev = _events(s)
    assert not ((ev.event == "instance_up") & (ev.instance == "a-0") & (ev.t > 2.0)).any()


# ----------------------------------------------------------------- the client pipeline


def test_the_spec_breaker_at_client_scope_short_circuits_every_callee():
    """The spec's HttpClient holds one breaker for every service it calls (3.3.1): failures
    of b open it for calls to c too; at service scope c is unaffected."""
    def run(scope):
        s = build(
            [svc("a", 3001, {"to_b": op(1, {"call": "b.op"}), "to_c": op(1, {"call": "c.op"})},
                 depends_on=["b", "c"], workers=64),
             svc("b", 3002, {"op": op(1, error_probability=1.0)}, workers=64),
             svc("c", 3003, {"op": op(1)}, workers=64)],
            [endpoint("a.to_b", trace(*[1 + i * 0.01 for i in range(20)]), name="b"),
             endpoint("a.to_c", trace(*[2 + i * 0.01 for i in range(20)]), name="c")],
            policies={"breaker": {"kind": "spec", "failure_threshold": 5, "success_threshold": 2,
                                  "timeout_s": 60, "half_open_max_calls": 3}, "breaker_scope": scope},
        )
        ev = _events(s)
        return int(((ev.event == "short_circuit") & (ev.target == "c")).sum())

    assert run("client") == 20
    assert run("service") == 0


def _three_layers(pushback: bool = True, edges: list = ()):
    """a -> b -> c, c always fails, every layer may retry (3 attempts, 1 ms apart): the
    events of 20 requests, one every 50 ms."""
    return _events(build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
         svc("b", 3002, {"op": op(1, {"call": "c.op"}, idempotent=True)}, depends_on=["c"], workers=64),
         svc("c", 3003, {"op": op(1, error_probability=1.0, idempotent=True)}, workers=64)],
        [endpoint("a.op", trace(*[1 + i * 0.05 for i in range(20)]), timeout_s=60)],
        policies={"retry": {"max_attempts": 3, "pushback": pushback,
                            "backoff": {"kind": "constant", "delay_s": 0.001}},
                  "edges": list(edges)},
    ))


def _calls_to(ev, target: str) -> int:
    return int(((ev.event == "call_start") & (ev.target == target)).sum())


def test_pushback_stops_the_callers_retries():
    """Both layers retry: with pushback b's exhausted retries tell a not to retry, so a
    calls b once per request."""
    assert _calls_to(_three_layers(pushback=True), "b") == 20
    assert _calls_to(_three_layers(pushback=False), "b") == 60


def test_a_retry_the_budget_refuses_is_pushed_back_too():
    """b's retry budget towards c is empty (Finagle, 0% and 0 a second): b makes one attempt
    and its answer must say "don't retry" as if its retries had failed (SRE book ch. 21), or
    a retries b and c gets 3 calls per request instead of 1 (found by `check --profile
    hardened`: 4 calls to auth-service.verify_token for one request)."""
    empty = {"kind": "finagle", "percent_can_retry": 0.0, "min_retries_per_s": 0}
    ev = _three_layers(edges=[{"caller": "b", "callee": "c", "retry_budget": empty}])
    assert _calls_to(ev, "c") == 20
    assert _calls_to(ev, "b") == 20


def test_a_short_circuit_is_pushed_back_too():
    """b's breaker towards c opens after its first 4 failed calls and stays open. A call b's
    breaker refuses must answer "don't retry" (b decided not to call a dependency it knows
    is down), or a retries b three times per request, each short-circuited again (found by
    `check --profile hardened`: every caller of user-service retried its breakers' short
    circuits to a partitioned auth-service)."""
    breaker = {"kind": "sliding_window", "window_type": "count_based", "window_size": 4,
               "minimum_calls": 4, "failure_rate_threshold": 50, "wait_in_open_s": 600}
    ev = _three_layers(edges=[{"caller": "b", "callee": "c", "breaker": breaker}])
    assert int((ev.event == "short_circuit").sum()) > 0
    # The first request's call to b retries c 3 times and the fourth failure (the second
    # request's) opens the breaker; from then on every request calls b once.
    assert _calls_to(ev, "b") == 20


def test_outlier_detection_ejects_a_failing_instance():
    """b-0 fails every call from 1 s; after 5 consecutive errors Envoy's detector ejects it
    for 30 s, so a stops sending it calls."""
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
         svc("b", 3002, {"op": op(1)}, instances=2, workers=64)],
        [endpoint("a.op", trace(*[1 + i * 0.01 for i in range(500)]), timeout_s=60)],
        policies={"outlier": {"kind": "outlier", "consecutive_5xx": 5, "interval_s": 1.0}},
        faults=[{"kind": "error_rate", "target": "b-0", "fraction": 1.0, "start_s": 0.5, "duration_s": 20}],
    )
    b = _ends(_events(s), "b")
    to_b0 = b[b.instance == "b-0"]
    assert 5 <= len(to_b0) <= 6  # the five that trip it (and one already in flight at most)


def test_refresh_on_failure_rebuilds_a_channel_to_a_dead_instance():
    """a's gRPC channel is bound at its first call (1 s) to b-1, the only instance up then
    (b-0 restarts at 1.1 s); b-1 dies for good at 2 s. refresh_on_failure drops the failed
    channel and the next call picks b-0; sticky_forever keeps calling the dead b-1."""
    def run(channel):
        s = build(
            [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
             svc("b", 3002, {"op": op(1)}, instances=2, workers=64)],
            [endpoint("a.op", trace(*[1 + i * 0.01 for i in range(300)]), timeout_s=60)],
            policies={"grpc_channel": channel, "edges": [{"caller": "a", "callee": "b", "protocol": "grpc"}]},
            faults=[{"kind": "crash_instance", "instance": "b-0", "start_s": 0.5, "duration_s": 0.6},
                    {"kind": "crash_instance", "instance": "b-1", "start_s": 2.0, "restart": False}],
        )
        return simulate(s).requests["error"]

    assert run("refresh_on_failure") <= 2  # the call in flight at the crash, and the one that failed
    assert run("sticky_forever") > 150


# ----------------------------------------------------------------- link-loss-ignored


def test_link_loss_drops_packets_both_ways():
    """loss 0.3 on each hop of a -> b: a call survives only if its request and its answer
    both get through, p = 0.7^2 = 0.49; the rest time out. 400 calls: 4.4 binomial sigmas."""
    import math

    n = 400
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
         svc("b", 3002, {"op": op(1)}, workers=64)],
        [endpoint("a.op", trace(*[1 + i * 0.01 for i in range(n)]), timeout_s=60)],
        policies={"timeout_s": 0.5},
        faults=[{"kind": "link_latency", "a": "a", "b": "b", "added_ms": 0.0, "loss": 0.3,
                 "start_s": 0.5, "duration_s": 20}],
    )
    b = _ends(_events(s), "b")
    ok = (b.outcome == "ok").mean()
    assert set(b.outcome) == {"ok", "timeout"}
    assert abs(ok - 0.49) < 4.4 * math.sqrt(0.49 * 0.51 / n)


# ----------------------------------------------------------------- on-401-refresh-ignored


def test_on_401_refresh_retry_refreshes_the_token_and_retries_once():
    """The caller's clock is 5 s behind, so the last 5 s of each token's life are expired to
    the verifier but not to the caller: every call then gets a 401. With refresh_retry the
    caller drops the token, signs a new one and retries: every request succeeds."""
    nodes = [{"name": "n-a", "zone": "z", "clock_skew_s": -5.0}, {"name": "n-b", "zone": "z"}]

    def run(on_401):
        s = build(
            [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], placement=["n-a"]),
             svc("b", 3002, {"op": op(1)}, placement=["n-b"], workers=8)],
            [endpoint("a.op", trace(*[i * 0.1 for i in range(400)]))],
            nodes=nodes,
            policies={"tokens": {"enabled": True, "ttl_s": 20, "on_401": on_401}},
            duration_s=40,
        )
        return simulate(s)

    log, refresh = run("log"), run("refresh_retry")
    assert log.requests["error"] > 50
    assert refresh.requests["ok"] == 400
    assert 1 <= refresh.mechanisms["auth_refresh_retries"] == refresh.mechanisms["auth_401"] <= 3


def test_a_401_refresh_and_resend_is_one_of_the_attempts():
    """hardened's bounded_retry_amplification (issue 10): the resend after a 401 is another
    request to the service, so it takes one of retry.max_attempts. The caller's clock is 5 s
    behind (the last 5 s of each token are expired to the verifier), and b fails every call
    (error_rate 1.0): a call that meets a 401 is resent with a fresh token, fails, is retried
    once more, and stops at 3 calls to b, not 4."""
    nodes = [{"name": "n-a", "zone": "z", "clock_skew_s": -5.0}, {"name": "n-b", "zone": "z"}]
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], placement=["n-a"]),
         svc("b", 3002, {"op": op(1, idempotent=True)}, placement=["n-b"], workers=8)],
        [endpoint("a.op", trace(*[i * 0.1 for i in range(400)]))],
        nodes=nodes,
        policies={"tokens": {"enabled": True, "ttl_s": 20, "on_401": "refresh_retry"},
                  "retry": {"max_attempts": 3, "retry_on": ["error"]}},
        faults=[{"kind": "error_rate", "target": "b", "fraction": 1.0, "start_s": 0.0}],
        duration_s=40,
    )
    r = simulate(s, keep_events=True)
    ev = r.events()
    assert r.mechanisms["auth_refresh_retries"] >= 1
    to_b = ev[(ev.event == "call_start") & (ev.target == "b")].groupby("request").size()
    assert to_b.max() == 3 and (to_b == 3).all()  # every request: 3 attempts, the resend among them
    refreshed = set(ev[(ev.event == "auth_401")].request)
    assert refreshed and set(to_b[to_b.index.isin(refreshed)]) == {3}

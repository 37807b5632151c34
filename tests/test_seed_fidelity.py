"""`seed` is the spec's client code (074, 3.2.1, 3.3.1, 3.3.2, 3.7.1), edge by edge.

Each test pins one place where the engine used to differ from the spec's code (issue 9):
tokens are signed locally, gRPC calls have neither the HttpClient's breaker nor its
timeout, a cached gRPC client asks the registry nothing, Consul's agent list is sorted by
service ID, and breaker timers fire on time so the event log is always in time order.
Each one also checks the other reading still works where it is a policy option.
"""

from __future__ import annotations

import pytest

from hailan_sim import default_scenario, load_scenario
from hailan_sim.models.registry import Registry
from hailan_sim.sim import simulate
from tests._build import build, const, endpoint, op, svc, trace

SPEC_BREAKER = {"kind": "spec", "failure_threshold": 5, "success_threshold": 2, "timeout_s": 60,
                "half_open_max_calls": 3}
REGISTRY = {"name": "consul", "kind": "registry", "port": 8500, "capacity": 8, "latency_ms": const(0.5)}


def _calls_to(ev, target: str) -> int:
    return int(((ev.event == "call_start") & (ev.target == target)).sum())


# --------------------------------------------------------------------------- 1. tokens


def _token_scenario(signing: str):
    """a -> b, with service tokens; the issuer operation auth.issue_token always fails."""
    return build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b", "auth"]),
            svc("b", 3002, {"op": op(1)}, workers=8),
            svc("auth", 3003, {"issue_token": op(1, error_probability=1.0)}),
        ],
        [endpoint("a.op", trace(*[i * 0.1 for i in range(100)]))],
        policies={"tokens": {"enabled": True, "signing": signing, "issuer": "auth.issue_token", "ttl_s": 3},
                  "breaker": SPEC_BREAKER},
        duration_s=12,
    )


def test_seed_signs_tokens_locally_so_a_failing_auth_service_costs_no_call():
    """ServiceAuth.generateToken (3.7.1) is jwt.sign(payload, this.privateKey): no network."""
    r = simulate(_token_scenario("local"), keep_events=True)
    ev = r.events()
    assert _calls_to(ev, "auth") == 0
    assert r.requests == {"ok": 100, "error": 0, "timeout": 0, "rejected": 0}
    # ttl 3 s over 10 s of calls: a token at 0 s, then one per expiry (the cache works)
    assert r.mechanisms["token_fetches"] == 4
    assert r.mechanisms["auth_401"] == 0


def test_the_issuer_reading_fetches_tokens_over_the_network_and_can_fail():
    """signing: issuer (3.1.2's 'auth-service: JWT generation'): every token is a call."""
    r = simulate(_token_scenario("issuer"), keep_events=True)
    ev = r.events()
    assert _calls_to(ev, "auth") > 0
    assert (ev.event == "token_error").sum() > 0
    assert r.requests["ok"] == 0  # every fetch fails; five failures open the caller's breaker
    assert r.mechanisms["short_circuits"] > 0


def test_seed_profile_signs_locally_and_hardened_uses_the_issuer():
    sc = default_scenario()
    assert sc.with_profile("seed").effective_policies().tokens.signing == "local"
    assert sc.with_profile("hardened").effective_policies().tokens.signing == "issuer"


# --------------------------------------------------------------------------- 2. gRPC: no breaker, no timeout


def _grpc_scenario(grpc_client: str, b_op: dict):
    """a calls b over gRPC and c over HTTP; the client's one (spec) breaker covers HTTP."""
    return build(
        [
            svc("a", 3001, {"op": op(1, {"seq": [{"call": "b.op"}, {"call": "c.op"}]})},
                depends_on=["b", "c"], workers=64),
            svc("b", 3002, {"op": b_op}, workers=64),
            svc("c", 3003, {"op": op(1)}, workers=64),
        ],
        [endpoint("a.op", trace(*[i * 0.05 for i in range(100)]), timeout_s=60)],
        policies={"timeout_s": 1.0, "breaker": SPEC_BREAKER, "grpc_client": grpc_client,
                  "edges": [{"caller": "a", "callee": "b", "protocol": "grpc"}]},
        duration_s=20,
    )


def test_grpc_errors_do_not_trip_the_http_clients_breaker_under_the_spec_client():
    failing = op(1, error_probability=1.0)
    spec = simulate(_grpc_scenario("spec", failing))
    assert spec.mechanisms["short_circuits"] == 0 and spec.mechanisms["breaker_transitions"] == {}
    as_http = simulate(_grpc_scenario("as_http", failing))
    assert as_http.mechanisms["short_circuits"] > 0  # the other reading: one breaker for both


def test_a_hung_grpc_callee_hangs_the_call_under_the_spec_client():
    """No deadline: the gRPC call waits as long as the callee takes (3 s > the 1 s timeout)."""
    slow = op(3000)
    spec = simulate(_grpc_scenario("spec", slow), keep_events=True)
    ev = spec.events()
    b_end = ev[(ev.event == "call_end") & (ev.target == "b")]
    assert len(b_end) == 100 and set(b_end.outcome) == {"ok"}
    as_http = simulate(_grpc_scenario("as_http", slow), keep_events=True)
    ev = as_http.events()
    assert set(ev[(ev.event == "call_end") & (ev.target == "b")].outcome) == {"timeout"}


def test_a_call_sites_own_timeout_still_bounds_a_spec_grpc_call():
    s = _grpc_scenario("spec", op(3000))
    data = s.model_dump(mode="python", exclude_unset=True)
    data["services"][0]["operations"]["op"]["calls"] = {"seq": [{"call": "b.op", "timeout_s": 0.5}, {"call": "c.op"}]}
    r = simulate(type(s).model_validate(data), keep_events=True)
    ev = r.events()
    assert set(ev[(ev.event == "call_end") & (ev.target == "b")].outcome) == {"timeout"}


# --------------------------------------------------------------------------- 3. a cached gRPC client asks no registry


def _grpc_registry_scenario(channel: str, faults=()):
    return build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
            svc("b", 3002, {"op": op(1)}, workers=64, instances=2),
        ],
        [endpoint("a.op", trace(*[1 + i * 0.05 for i in range(200)]), timeout_s=60)],
        infrastructure=[REGISTRY],
        policies={"grpc_channel": channel, "edges": [{"caller": "a", "callee": "b", "protocol": "grpc"}]},
        faults=list(faults),
        duration_s=15,
    )


def test_a_cached_grpc_client_makes_one_registry_lookup_for_its_life():
    ev = simulate(_grpc_registry_scenario("sticky_forever"), keep_events=True).events()
    assert _calls_to(ev, "consul") == 1  # getClient's first call; every later one is cached
    ev = simulate(_grpc_registry_scenario("per_call"), keep_events=True).events()
    assert _calls_to(ev, "consul") == 200  # no cache: a lookup per call


def test_a_registry_outage_fails_no_call_on_a_cached_grpc_client():
    outage = [{"kind": "registry_outage", "start_s": 3.0, "duration_s": 8.0}]
    r = simulate(_grpc_registry_scenario("sticky_forever", outage))
    assert r.requests["ok"] == 200 and r.mechanisms["discovery_errors"] == 0


# --------------------------------------------------------------------------- 4. Consul's agent list order


def test_agent_list_is_sorted_by_service_id_as_a_string():
    """Go's encoding/json sorts the agent's map keys; Object.entries keeps that order."""
    reg = Registry()
    for i in (2, 10, 0, 1):
        reg.register(0.0, f"x-{i}", "x")
    assert reg.agent_list("x") == ["x-0", "x-1", "x-10", "x-2"]


def test_a_reaped_and_reregistered_instance_keeps_its_place_in_the_agent_list():
    reg = Registry()
    for i in range(3):
        reg.register(0.0, f"x-{i}", "x")
    reg.deregister(1.0, "x-0")
    reg.register(2.0, "x-0", "x")  # registered last, listed first
    assert reg.agent_list("x") == ["x-0", "x-1", "x-2"]


# --------------------------------------------------------------------------- 5. the log is in time order


def _assert_time_order(result) -> None:
    t = result.events()["t"].to_numpy()
    back = (t[1:] < t[:-1]).nonzero()[0]
    assert len(back) == 0, f"{len(back)} rows earlier than the row before them, first at row {back[:1]}"


def _breaker_timer_scenario(breaker: dict):
    """a -> b; b fails for its first 3 s (an error-rate fault), so a's breaker opens early;
    later calls are sparse, so the breaker's timers fall between calls."""
    arrivals = [i * 0.05 for i in range(60)] + [5.0 + i for i in range(10)]
    return build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64),
            svc("b", 3002, {"op": op(1)}, workers=64),
        ],
        [endpoint("a.op", trace(*arrivals), timeout_s=60)],
        policies={"breaker": breaker, "breaker_scope": "service"},
        faults=[{"kind": "error_rate", "target": "b", "fraction": 1.0, "start_s": 0.0, "duration_s": 3.0}],
        duration_s=16,
    )


SLIDING = {"kind": "sliding_window", "window_type": "count_based", "window_size": 10, "minimum_calls": 5,
           "failure_rate_threshold": 50, "wait_in_open_s": 1.0, "permitted_calls_in_half_open": 2}


@pytest.mark.parametrize("extra", [{"automatic_transition": True}, {"max_wait_in_half_open_s": 0.5}],
                         ids=["automatic_transition", "max_wait_in_half_open"])
def test_breaker_timers_fire_on_time_and_keep_the_log_in_time_order(extra):
    r = simulate(_breaker_timer_scenario({**SLIDING, **extra}), keep_events=True)
    _assert_time_order(r)
    ev = r.events()
    br = ev[ev.event == "breaker"]
    assert "half_open" in set(br.outcome)
    if "automatic_transition" in extra:
        # OPEN -> HALF_OPEN exactly wait_in_open_s after each opening, logged then
        opened = br[br.outcome == "open"]["t"].to_numpy()
        half = br[br.outcome == "half_open"]["t"].to_numpy()
        assert len(half) >= 1 and all(any(abs(h - (o + 1.0)) < 1e-9 for o in opened) for h in half)


def test_every_run_logs_in_time_order():
    """The scenarios the tests and the docs use, with and without faults, both profiles."""
    small = load_scenario("tests/scenarios/small.yaml")
    data = small.model_dump(mode="python", exclude_unset=True)
    data["profile"] = "hardened"  # small has no auth-service to issue tokens: sign them locally
    data["policies"] = {**data.get("policies", {}), "tokens": {"signing": "local"}}
    runs = [small, small.with_profile("seed"), type(small).model_validate(data)]
    base = default_scenario().with_run(duration_s=20, warmup_s=2)
    faults = [{"kind": "crash_service", "service": "auth-service", "start_s": 3, "duration_s": 6},
              {"kind": "error_rate", "target": "inventory-service", "fraction": 0.8, "start_s": 2, "duration_s": 8}]
    for profile in ("seed", "hardened"):
        data = base.with_profile(profile).model_dump(mode="python", exclude_unset=True)
        data["faults"] = faults
        runs.append(type(base).model_validate(data))
    for sc in runs:
        _assert_time_order(simulate(sc, keep_events=True, progress=False))

"""The resilience mechanisms inside the engine, one behaviour per test.

The state machines are tested alone in tests/models/; these tests check that the engine
drives them as the policies say and that their effects show in the run's record.
"""

from __future__ import annotations

import math

import pytest

from hailan_sim.sim import simulate
from tests._build import build, const, endpoint, op, svc, trace

REGISTRY = {"name": "consul", "kind": "registry", "port": 8500, "capacity": 8, "latency_ms": const(0.5)}


def _two(callee_ops: dict, *, policies: dict, callee_kw=None, caller_kw=None, arrivals=None, **extra):
    """client -> a.op -> b.<op>; ``a`` calls ``b`` once per request."""
    callee_op = next(iter(callee_ops))
    return build(
        [
            svc("a", 3001, {"op": op(1, {"call": f"b.{callee_op}"})}, depends_on=["b"], workers=64,
                **(caller_kw or {})),
            svc("b", 3002, callee_ops, **{"workers": 64, **(callee_kw or {})}),
        ],
        [endpoint("a.op", arrivals or trace(*[i * 0.01 for i in range(300)]))],
        policies=policies,
        **extra,
    )


def test_spec_breaker_opens_short_circuits_and_logs_its_transitions():
    s = _two({"op": op(1, error_probability=1.0)}, policies={
        "breaker": {"kind": "spec", "failure_threshold": 5, "success_threshold": 1, "timeout_s": 1.0,
                    "half_open_max_calls": 1},
    })
    r = simulate(s, keep_events=True)
    m = r.mechanisms
    assert m["breaker_transitions"]["closed->open"] == 1
    # after 1 s it lets a call through (half-open), which fails and re-opens it
    assert m["breaker_transitions"]["open->half_open"] >= 2
    assert m["short_circuits"] > 200
    ev = r.events()
    b_calls = ev[(ev.event == "call_start") & (ev.target == "b")]
    assert len(b_calls) == 300 - m["short_circuits"]
    assert (ev.event == "short_circuit").sum() == m["short_circuits"]
    first_open = ev[(ev.event == "breaker") & (ev.outcome == "open")]["t"].min()
    assert first_open == pytest.approx(0.04 + 0.002, abs=1e-9)  # the fifth failure


def test_retries_follow_the_policy_and_only_for_idempotent_operations():
    def run(idempotent: bool):
        s = _two({"op": op(1, error_probability=0.5, idempotent=idempotent)}, policies={
            "retry": {"max_attempts": 3, "backoff": {"kind": "constant", "delay_s": 0.001}},
        })
        return simulate(s)

    yes, no = run(True), run(False)
    assert no.mechanisms["retries"] == 0
    n = 300
    # P(all 3 attempts fail) = 1/8; without retries 1/2. Bounds: 4.4 binomial sigmas.
    assert abs(yes.requests["error"] / n - 0.125) < 4.4 * math.sqrt(0.125 * 0.875 / n)
    assert abs(no.requests["error"] / n - 0.5) < 4.4 * math.sqrt(0.25 / n)
    # expected retries per request: 0.5 + 0.25
    assert abs(yes.mechanisms["retries"] / n - 0.75) < 4.4 * math.sqrt(0.6875 / n)


def test_a_retry_budget_caps_retries():
    s = _two({"op": op(1, error_probability=1.0, idempotent=True)}, policies={
        "retry": {"max_attempts": 5, "backoff": {"kind": "constant", "delay_s": 0.001}},
        "retry_budget": {"kind": "finagle", "ttl_s": 10, "min_retries_per_s": 0, "percent_can_retry": 0.2},
    })
    r = simulate(s)
    # without a budget: 4 retries per request; Finagle's reserve is 0 here, so about 20%
    assert r.mechanisms["retries"] <= 0.2 * 300 + 1


def test_bulkhead_rejects_beyond_its_limit():
    s = _two({"op": op(100)}, policies={"bulkhead": 2}, arrivals=trace(*[0.0] * 5))
    r = simulate(s)
    assert r.mechanisms["bulkhead_rejections"] == 3
    assert r.requests == {"ok": 2, "error": 3, "timeout": 0, "rejected": 0}


def test_fallback_turns_a_failed_call_into_a_degraded_success():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op", "fallback": True})}, depends_on=["b"]),
            svc("b", 3002, {"op": op(1, error_probability=1.0)}),
        ],
        [endpoint("a.op", trace(0.0, 1.0))],
    )
    r = simulate(s)
    assert r.requests["ok"] == 2 and r.mechanisms["fallbacks"] == 2
    assert r.services.loc["b", "error"] == 2


def test_deadline_propagation_drops_work_nobody_waits_for():
    def run(propagate: bool):
        # b serves one call at a time for 100 ms; a gives up after 150 ms
        s = _two({"op": op(100)}, policies={"timeout_s": 0.15, "deadline_propagation": propagate},
                 callee_kw={"workers": 1}, arrivals=trace(*[0.0] * 6))
        return simulate(s)

    # call 1 is served 1-101 ms; call 2 starts at 101 ms, before a gives up (151 ms), and
    # finishes for nobody; calls 3-6 would start at 201, 301, ... ms, after the deadline.
    off, on = run(False), run(True)
    assert off.services.loc["b", "orphaned_calls"] == 5  # served anyway, for nobody
    assert on.services.loc["b", "orphaned_calls"] == 1  # only the one already in service
    assert on.mechanisms["deadline_drops"] == 4


def test_load_shedding_rejects_calls_that_waited_too_long():
    s = build([svc("a", 3001, {"op": op(100)}, max_queue_wait_s=0.25)], [endpoint("a.op", trace(*[0.0] * 5))])
    r = simulate(s)
    assert r.mechanisms["shed"] == 2  # waited 0.3 s and 0.4 s
    assert r.requests == {"ok": 3, "error": 0, "timeout": 0, "rejected": 2}


def test_grpc_sticky_channel_binds_each_caller_instance_to_one_callee_instance():
    s = _two({"op": op(1)}, policies={"edges": [{"caller": "a", "callee": "b", "protocol": "grpc"}]},
             callee_kw={"instances": 4})
    ev = simulate(s, keep_events=True).events()
    used = ev[(ev.event == "call_end") & (ev.target == "b")]["instance"].unique()
    assert len(used) == 1
    http = simulate(_two({"op": op(1)}, policies={}, callee_kw={"instances": 4}), keep_events=True).events()
    assert len(http[(http.event == "call_end") & (http.target == "b")]["instance"].unique()) == 4


def test_per_call_discovery_costs_a_registry_round_trip():
    s = _two({"op": op(1)}, policies={}, infrastructure=[REGISTRY])
    r = simulate(s)
    assert r.services.loc["consul", "total"] == 300  # one agent.service.list() per call to b
    assert r.requests["ok"] == 300


def test_health_passing_discovery_hides_instances_until_their_first_check_passes():
    """A cold-started instance registers critical (Consul's default) and is only listed by
    ?passing after its first check, staggered in [0, 10 s); agent_list lists it at once."""

    def run(path: str):
        s = _two({"op": op(1)}, policies={"discovery": {"path": path}},
                 callee_kw={"startup_s": 1.0}, infrastructure=[REGISTRY],
                 run={"cold_start": True, "duration_s": 30},
                 arrivals=trace(*[1 + i * 0.001 for i in range(3000)]))
        return simulate(s, keep_events=True)

    agent, passing = run("agent_list"), run("health_passing")
    assert agent.requests["ok"] == 3000
    ev = passing.events()
    first_pass = ev[(ev.event == "registry") & (ev.operation == "status") & (ev.outcome == "passing")]["t"].min()
    assert 1.0 <= first_pass < 11.0
    failed = ev[(ev.event == "no_instance")]
    assert len(failed) > 0 and failed["t"].max() < first_pass
    assert passing.requests["error"] == len(failed)


def test_spec_token_cache_with_a_slow_caller_clock_gets_401s_then_refresh_ahead_does_not():
    nodes = [{"name": "n-a", "zone": "z", "clock_skew_s": -5.0}, {"name": "n-b", "zone": "z"}]

    def run(tokens: dict):
        s = build(
            [
                svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b", "auth"], placement=["n-a"]),
                svc("b", 3002, {"op": op(1)}, placement=["n-b"], workers=8),
                svc("auth", 3003, {"issue_token": op(1)}, placement=["n-b"]),
            ],
            [endpoint("a.op", trace(*[i * 0.1 for i in range(600)]))],
            nodes=nodes,
            policies={"tokens": {"enabled": True, "signing": "issuer", "issuer": "auth.issue_token", "ttl_s": 20, **tokens}},
            duration_s=60,
        )
        return simulate(s)

    spec = run({})
    # The caller's clock is 5 s behind: each token is still "valid" to it for 5 s after the
    # verifier has rejected it, so ~5 s of every 20 s lifetime fails: 2 expiries x ~50 calls.
    assert 80 <= spec.mechanisms["auth_401"] <= 110
    hardened = run({"cache": "refresh_ahead", "refresh_margin_s": 10, "leeway_s": 30, "on_401": "refresh_retry"})
    assert hardened.mechanisms["auth_401"] == 0
    assert hardened.requests["ok"] == 600


def _held(first_token: str, *, instances: int = 1, ttl_s: int = 20, signing: str = "local", arrivals=None,
          duration_s: float = 30, **tokens):
    """client -> a.op -> b.op with tokens; ``a`` has ``instances`` instances, each called."""
    n = arrivals or [i * 0.1 for i in range(int(duration_s * 10))]
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b", "auth"], instances=instances,
                workers=8),
            svc("b", 3002, {"op": op(1)}, workers=64),
            svc("auth", 3003, {"issue_token": op(1)}),
        ],
        [endpoint("a.op", trace(*n))],
        policies={"tokens": {"enabled": True, "signing": signing, "issuer": "auth.issue_token", "ttl_s": ttl_s,
                             "first_token": first_token, **tokens}},
        duration_s=duration_s,
    )
    return simulate(s, keep_events=True).events()


def test_fresh_first_tokens_are_issued_at_the_first_call_and_hold_no_expiry_in_the_run():
    ev = _held("fresh")
    assert (ev.event == "token_held").sum() == 0
    signed = ev[ev.event == "token_signed"]
    # one token at the first call, then one per 20 s lifetime: exps 20, 40 (then past the run)
    assert [int(x) for x in signed.outcome] == [20, 40]


@pytest.mark.parametrize("signing", ["local", "issuer"])
def test_steady_state_first_tokens_are_held_from_before_the_run_and_expire_inside_it(signing):
    """first_token: steady_state: the first call finds a token issued before the run, which
    the caller uses until it expires (spec cache) and then replaces: the first new token
    comes at the held one's exp, not at the first call."""
    ev = _held("steady_state", signing=signing)
    held = ev[ev.event == "token_held"]
    assert len(held) == 1 and held.iloc[0].source == "a-0" and held.iloc[0].operation == "k0"
    assert held.iloc[0].instance == ("a-0" if signing == "local" else "auth-0")
    exp = int(held.iloc[0].outcome)
    assert 0 <= exp <= 20
    if signing == "local":
        first_new = ev[ev.event == "token_signed"].t.min()
    else:
        first_new = ev[(ev.event == "call_start") & (ev.target == "auth")].t.min()
    assert exp <= first_new < exp + 0.1 + 1e-9  # the first call at or after exp (every 0.1 s)
    # The held token is what the calls before carried: none was refused.
    assert (ev.event == "auth_401").sum() == 0


def test_steady_state_token_ages_are_uniform_over_the_refresh_period():
    """Across 200 caller instances (each drawing from its own stream), the held tokens' exps
    are uniform over [0, period): Kolmogorov-Smirnov at the 0.1% level (D < 1.95 / sqrt(n)),
    for the spec cache (period = ttl) and refresh-ahead (period = ttl - margin, so exp is
    uniform over [margin, ttl))."""
    n = 200
    arrivals = [i * 0.001 for i in range(20 * n)]  # the gateway spreads them over a-0 .. a-199
    for tokens, lo, hi in (({}, 0.0, 3600.0),
                           ({"cache": "refresh_ahead", "refresh_margin_s": 600}, 600.0, 3600.0)):
        ev = _held("steady_state", instances=n, ttl_s=3600, arrivals=arrivals, duration_s=5, **tokens)
        held = ev[ev.event == "token_held"]
        assert held.source.nunique() == len(held) >= 0.95 * n
        x = sorted((float(e) - lo) / (hi - lo) for e in held.outcome)
        m = len(x)
        d = max(max((i + 1) / m - v, v - i / m) for i, v in enumerate(x))
        assert d < 1.95 / math.sqrt(m), (tokens, d)


def _rotation_at_15_s(**tokens):
    """a -> b with issuer-signed tokens (auth), a call every 0.1 s for 40 s, 10 s tokens, the
    issuer rotating to k1 at 15 s, verifiers caching the key set for 100 s; ``tokens`` adds
    to or overrides the token policy."""
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b", "auth"]),
            svc("b", 3002, {"op": op(1)}, workers=8),
            svc("auth", 3003, {"issue_token": op(1)}),
        ],
        [endpoint("a.op", trace(*[i * 0.1 for i in range(400)]))],
        policies={"tokens": {"enabled": True, "signing": "issuer", "issuer": "auth.issue_token", "ttl_s": 10,
                             "key_rotations_s": [15.0], "key_cache_ttl_s": 100, **tokens}},
        duration_s=40,
    )
    return simulate(s, keep_events=True)


def test_key_rotation_fails_calls_until_verifiers_refetch_keys():
    """The issuer rotates to k1 at 15 s; the first k1 token is fetched at 20 s (tokens last
    10 s). The verifier cached [k0] at ~0 s for 100 s, so a k1 token is unknown to it: with
    refetch-on-unknown-kid it refetches once PyJWKClient's 30 s cooldown since its last
    fetch is over (~30 s), without it it rejects k1 until the run ends (40 s)."""

    def run(refetch: bool):
        return _rotation_at_15_s(refetch_on_unknown_kid=refetch)

    with_refetch, without = run(True), run(False)
    for r in (with_refetch, without):
        ev = r.events()
        rejected = ev[ev.event == "auth_401"]
        assert set(rejected["outcome"]) == {"unknown_key"}
        assert rejected["t"].min() >= 20.0
    # one call every 0.1 s: ~10 s of rejections with a refetch, ~20 s without
    assert 95 <= with_refetch.mechanisms["auth_401"] <= 105
    assert 195 <= without.mechanisms["auth_401"] <= 205


def test_a_key_published_a_cache_lifetime_ahead_is_known_when_first_used():
    """The same rotation at 15 s, verifiers without refetch-on-unknown-kid and a 100 s key
    cache. With the key published 100 s ahead (tokens.key_publish_ahead_s >= the cache's
    lifetime: at -85 s, before the verifier's first fetch) no k1 token is refused; published
    14 s ahead (at 1 s, after the verifier fetched [k0] at ~0 s) it is refused until the run
    ends, as without pre-publication: publishing ahead by less than the verifiers' cache
    lifetime does not reach the caches that were already filled."""

    def run(ahead: float):
        return _rotation_at_15_s(refetch_on_unknown_kid=False, key_publish_ahead_s=ahead)

    ahead, short, none = run(100.0), run(14.0), run(0.0)
    assert ahead.mechanisms["auth_401"] == 0
    ev = ahead.events()
    b_ok = ev[(ev.event == "work_end") & (ev.target == "b") & (ev.t > 21.0)]
    assert len(b_ok) >= 150 and set(b_ok.outcome) == {"ok"}  # k1 tokens, accepted
    for r in (short, none):
        assert 195 <= r.mechanisms["auth_401"] <= 205
    assert short.event_log_sha256 == none.event_log_sha256  # nothing reached the caches


@pytest.mark.parametrize("profile", ["seed", "hardened"])
def test_profiles_run_the_default_deterministically(profile):
    from hailan_sim.models import default_scenario

    s = default_scenario().with_profile(profile).with_run(duration_s=20, warmup_s=2)
    a, b = simulate(s, keep_events=True), simulate(s)
    assert a.event_log_sha256 == b.event_log_sha256
    # Tokens are in use: held from before the run (first_token: steady_state), or fetched.
    held = (a.events().event == "token_held").sum()
    assert a.requests["ok"] > 0 and held + a.mechanisms["token_fetches"] > 0
    assert s.effective_policies().tokens.enabled


def test_profile_values_are_overridden_by_the_scenarios_own_policies():
    from hailan_sim.models import default_scenario

    s = default_scenario().with_profile("seed")
    assert s.effective_policies().breaker.kind == "spec"
    data = s.model_dump(mode="python", exclude_unset=True)
    data["policies"] = {"timeout_s": 1.5, "breaker": {"failure_threshold": 9}}
    mine = type(s).model_validate(data).effective_policies()
    assert mine.timeout_s == 1.5
    assert mine.breaker.failure_threshold == 9 and mine.breaker.success_threshold == 2  # rest from the profile
    assert mine.discovery.path == "agent_list"


def test_autoscaling_adds_instances_under_load_and_drains_them_after():
    """Load triples for 60 s: the service scales out (each new instance paying its start-up
    and registering before it counts as serving), then scales back in when load drops."""
    s = build(
        [svc("a", 3001, {"op": {"service_time_ms": {"dist": "exponential", "mean": 20}}}, instances=2, workers=1,
             startup_s=5.0, autoscaling={"scale_out_above": 0.7, "scale_in_below": 0.3, "interval_s": 10,
                                         "hold_s": 20, "min_instances": 2, "max_instances": 6})],
        [endpoint("a.op", {"kind": "piecewise", "steps": [[0, 40], [60, 120], [120, 20]]})],
        infrastructure=[REGISTRY],
        duration_s=240,
    )
    r = simulate(s, keep_events=True)
    ev = r.events()
    outs = ev[ev.event == "autoscale"]
    ups = ev[ev.event == "instance_up"]
    assert r.mechanisms["scale_out"] >= 2 and r.mechanisms["scale_in"] >= 2
    assert outs[outs.outcome.astype(str).str.startswith("-")]["t"].min() > 120  # scale-in only after the peak
    assert (ups["t"] - 5.0).isin(outs["t"]).all()  # each new instance up exactly startup_s later
    stops = ev[ev.event == "instance_stop"]
    assert len(stops) == r.mechanisms["scale_in"]
    assert r.requests["error"] == 0 and r.unfinished_requests == 0


def test_weighted_random_reads_instance_weights_from_metadata():
    n = 3000
    s = _two({"op": op(0.01)}, policies={"balancer": {"kind": "weighted_random"}},
             callee_kw={"instances": 2, "weights": [1, 3]}, arrivals=trace(*[i * 0.001 for i in range(n)]))
    ev = simulate(s, keep_events=True).events()
    share = (ev[(ev.event == "call_end") & (ev.target == "b")]["instance"] == "b-1").mean()
    assert abs(share - 0.75) < 4.4 * math.sqrt(0.75 * 0.25 / n)


def test_the_gateway_routes_around_a_dead_entry_instance_under_hardened_not_seed():
    """The spec shows no gateway code: under seed the gateway routes each request once to an
    instance Consul's DNS returns, so a dead entry instance (iot-service-0, crashed for good
    at 5 s) fails every request sent to it until its health check fails. hardened's gateway
    (policies.gateway: Envoy's retry on connect-failure with previous_hosts, and outlier
    detection) retries those on iot-service-1 and ejects iot-service-0 after 5 failures."""
    from hailan_sim.models import default_scenario
    from hailan_sim.properties import with_faults

    crash = [{"kind": "crash_instance", "instance": "iot-service-0", "start_s": 5.0, "restart": False}]
    out = {}
    for profile in ("seed", "hardened"):
        s = with_faults(default_scenario().with_profile(profile).with_run(duration_s=25, warmup_s=2), crash)
        ev = simulate(s, keep_events=True).events()
        to_dead = ev[(ev.event == "call_end") & (ev.source == "api-gateway") & (ev.instance == "iot-service-0")
                     & (ev.t >= 5.0)]
        failed = set(ev[(ev.event == "request_end") & (ev.outcome != "ok")].request)
        out[profile] = (ev, to_dead, failed)
    ev, to_dead, failed = out["seed"]
    assert s.effective_policies().gateway is not None
    assert default_scenario().with_profile("seed").effective_policies().gateway is None
    assert not ev.event.str.startswith("gateway_").any()
    assert len(to_dead) > 20 and set(to_dead.request) <= failed  # each one a failed request
    ev, to_dead, failed = out["hardened"]
    ejected = ev[ev.event == "gateway_eject"]
    assert list(ejected.instance) == ["iot-service-0"]
    assert len(to_dead) == 5 and to_dead.t.max() == ejected.t.iloc[0]  # 5 connect failures, then out
    retried = ev[ev.event == "gateway_retry"]
    assert set(retried.call) == set(to_dead.call)
    assert not set(to_dead.request) & failed  # every one retried on iot-service-1 and served


def test_hardened_rotation_refuses_no_token_because_keys_are_published_ahead():
    """docs/profiles.md's measured case, shortened: the default scenario under hardened,
    seed 1, a key rotation at 18.075 s. With keys published when first used (0 s ahead)
    verifiers that fetched the key set within PyJWKClient's 30 s cooldown refuse the new
    key's tokens (unknown_key, issuer up, clocks right); with hardened's 300 s ahead, none."""
    from hailan_sim.models import default_scenario
    from hailan_sim.models.scenario import Scenario

    base = default_scenario().with_profile("hardened").with_run(duration_s=30, warmup_s=5, seed=1)
    assert base.effective_policies().tokens.key_publish_ahead_s >= base.effective_policies().tokens.key_cache_ttl_s

    def run(ahead=None):
        d = base.model_dump(mode="python", exclude_unset=True)
        d["faults"] = [{"kind": "key_rotation", "start_s": 18.075}]
        if ahead is not None:
            d.setdefault("policies", {}).setdefault("tokens", {})["key_publish_ahead_s"] = ahead
        return simulate(Scenario.model_validate(d), keep_events=True)

    before, after = run(0.0), run()
    refused = before.events()
    refused = refused[refused.event == "auth_401"]
    assert len(refused) > 20 and set(refused.outcome) == {"unknown_key"}
    assert after.mechanisms["auth_401"] == 0

"""bounded_retry_amplification does not count discovery lookups as attempts (issue 10).

A client looks up the service of each call it makes when its cache is stale; under a
registry outage the cache stays stale, so every call of a request asks the registry again.
Those lookups are not attempts of the same request to the same service (SRE book ch. 22):
the calls they precede are, and those are judged per service.
"""

from __future__ import annotations

from hailan_sim.properties.invariants import Record, get
from tests._build import build, const, endpoint, op, svc, trace

REGISTRY = {"name": "consul", "kind": "registry", "port": 8500, "capacity": 64, "latency_ms": const(0.5)}
CALLS = 4


def _record(retry_to_b_fails: bool = False, calls: int = CALLS, fan_out: bool = False) -> Record:
    """a calls b ``calls`` (4) times in turn, one request every 0.2 s; the registry is out from 5 s to
    15 s, so each of those calls looks b up (cached discovery, stale; in the baseline one
    lookup every 2 s). With ``retry_to_b_fails`` b fails every call from 5 s and a makes 5
    attempts of each."""
    if fan_out:  # a calls b, c, d and e once each instead
        callees = ["b", "c", "d", "e"]
        tree = {"seq": [{"call": f"{x}.op"} for x in callees]}
    else:
        callees, tree = ["b"], {"repeat": {"call": "b.op"}, "count": calls}
    services = [svc("a", 3001, {"op": op(1, tree)}, depends_on=callees, workers=64)]
    services += [svc(x, 3002 + i, {"op": op(1, idempotent=True)}, workers=64) for i, x in enumerate(callees)]
    faults = [{"kind": "registry_outage", "start_s": 5, "duration_s": 10}]
    policies = {"discovery": {"path": "health_passing", "timing": "cached", "ttl_s": 2}}
    if retry_to_b_fails:
        faults.append({"kind": "error_rate", "target": "b", "fraction": 1.0, "start_s": 5, "duration_s": 10})
        policies["retry"] = {"max_attempts": 5, "backoff": {"kind": "constant", "delay_s": 0.001}}
    sc = build(services, [endpoint("a.op", trace(*[1 + i * 0.2 for i in range(90)]), timeout_s=60)],
               infrastructure=[REGISTRY], policies=policies, faults=faults, duration_s=20,
               run={"warmup_s": 0})
    return Record.from_scenario(sc)


def test_lookups_before_each_call_are_not_retries():
    record = _record()
    v = get("bounded_retry_amplification")(record)
    # Each request looked b up before each of its 4 calls during the outage (the baseline's
    # cache made at most one lookup per request): 4x the baseline's most, counted as
    # attempts before (and as repeats in the aggregate).
    assert v.details["discovery_lookups_max"] == CALLS
    assert v.holds, str(v)
    assert v.details["max_ratio"] == 1.0


def test_retries_to_one_service_are_still_judged():
    """The lookups are left out, not the calls they precede: 5 attempts to a failing b."""
    v = get("bounded_retry_amplification")(_record(retry_to_b_fails=True, calls=1))
    assert not v.holds
    assert v.details["worst"]["target"] == "b" and v.details["worst"]["calls"] == 5


def test_lookups_for_different_services_are_not_repeats_in_the_aggregate():
    """a calls four services once each: no call repeats another. During the outage its
    client looks each of them up (same parent, same registry): counted as repeats, they
    would add 27.5% to a's calls (measured), over the 10% objective."""
    v = get("bounded_retry_amplification")(_record(fan_out=True))
    assert v.holds, str(v)
    assert v.details["discovery_lookups_max"] == 4
    assert abs(v.details["retry_extra_load"]["a"]) < 0.01

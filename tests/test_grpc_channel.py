"""A cached gRPC channel notices that its instance died (``grpc_channel: refresh_on_failure``).

A process that dies on a live host has its connections closed by the host's kernel, so the
channel drops at once; a host that vanishes (node crash) sends nothing, so only an
unanswered keepalive ping (``policies.grpc_keepalive``) or the next call's failure tells.
gRPC doc/connectivity-semantics-and-api.md, doc/keepalive.md; sim/client.py
``_Logical._channel_closed``.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hailan_sim.models.policies import GrpcKeepalive
from hailan_sim.sim import simulate
from tests._build import build, endpoint, op, svc, trace

KEEPALIVE = {"time_s": 10, "timeout_s": 5, "permit_without_calls": True, "server_min_ping_interval_s": 10}


def _run(channel, fault, resume_s, keepalive=None):
    """a's channel binds at 1 s to b-1 (b-0 is down from 0.5 s to 1.1 s), the only call
    until ``resume_s``; b-1 dies for good at 2 s (``fault``: its process, or its node n1).
    Returns the events."""
    times = [1.0] + [resume_s + i * 0.5 for i in range(40)]
    policies = {"grpc_channel": channel, "edges": [{"caller": "a", "callee": "b", "protocol": "grpc"}]}
    if keepalive is not None:
        policies["grpc_keepalive"] = keepalive
    kill = ({"kind": "crash_instance", "instance": "b-1", "start_s": 2.0, "restart": False} if fault == "process"
            else {"kind": "crash_node", "node": "n1", "start_s": 2.0, "restart": False})
    s = build(
        [svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], workers=64, placement=["n0"]),
         svc("b", 3002, {"op": op(1)}, instances=2, workers=64, placement=["n0", "n1"])],
        [endpoint("a.op", trace(*times), timeout_s=60)],
        duration_s=resume_s + 30,
        nodes=[{"name": "n0", "zone": "z0"}, {"name": "n1", "zone": "z1"}],
        policies=policies,
        faults=[{"kind": "crash_instance", "instance": "b-0", "start_s": 0.5, "duration_s": 0.6}, kill],
    )
    return simulate(s, keep_events=True).events()


def _to_dead(ev):
    """Calls a sent to b-1 after it died."""
    return int(((ev.event == "call_end") & (ev.instance == "b-1") & (ev.t > 2.0)).sum())


def _closed(ev):
    return ev[ev.event == "grpc_channel_closed"]


def test_the_channel_binds_to_b1_before_the_crash():
    ev = _run("refresh_on_failure", "process", 5.0)
    assert ((ev.event == "call_end") & (ev.instance == "b-1") & (ev.t < 2.0)).sum() == 1


def test_a_process_crash_closes_the_channel_at_once():
    """The kernel resets the connections: the first call after the crash looks b up again."""
    ev = _run("refresh_on_failure", "process", 5.0)
    assert _to_dead(ev) == 0
    closed = _closed(ev)
    assert closed.outcome.tolist() == ["reset"]
    assert closed.t.iloc[0] == pytest.approx(5.0, abs=0.01)
    assert closed.instance.iloc[0] == "b-1" and closed.source.iloc[0] == "a-0"


def test_a_vanished_host_is_noticed_only_by_the_next_calls_failure_without_keepalive():
    ev = _run("refresh_on_failure", "node", 20.0)
    assert _to_dead(ev) == 1  # that call fails, and refresh_on_failure drops the channel
    assert _closed(ev).empty


def test_keepalive_closes_an_idle_channel_to_a_vanished_host():
    """Death at 2 s + time_s 10 + timeout_s 5: closed by 17 s, so a call at 20 s looks b up."""
    ev = _run("refresh_on_failure", "node", 20.0, KEEPALIVE)
    assert _to_dead(ev) == 0
    assert _closed(ev).outcome.tolist() == ["keepalive"]


def test_keepalive_has_not_fired_yet_before_time_plus_timeout():
    ev = _run("refresh_on_failure", "node", 10.0, KEEPALIVE)
    assert _to_dead(ev) == 1
    assert _closed(ev).empty


def test_keepalive_does_not_ping_idle_channels_unless_permitted():
    """GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS defaults to 0: an idle channel is not pinged."""
    ev = _run("refresh_on_failure", "node", 20.0, {**KEEPALIVE, "permit_without_calls": False})
    assert _to_dead(ev) == 1
    assert _closed(ev).empty


def test_seeds_sticky_channel_never_looks():
    """The spec's GrpcClient caches the client for ever: every call goes to the dead b-1."""
    ev = _run("sticky_forever", "process", 5.0, KEEPALIVE)
    assert _to_dead(ev) == 40
    assert _closed(ev).empty


def test_keepalive_more_frequent_than_servers_allow_is_refused():
    with pytest.raises(ValidationError, match="too_many_pings"):
        GrpcKeepalive(time_s=10)  # servers' default minimum interval: 5 min
    assert GrpcKeepalive(time_s=300).timeout_s == 20  # gRPC's default keepalive timeout


def test_hardened_closes_a_channel_to_a_vanished_host_within_the_objective():
    """hardened's keepalive pings idle channels, is allowed by the servers, and closes a
    channel to a vanished host within objectives.dead_instance_s (docs/profiles.md)."""
    from hailan_sim.models import default_scenario

    sc = default_scenario().with_profile("hardened")
    ka = sc.effective_policies().grpc_keepalive
    assert ka is not None and ka.permit_without_calls
    assert ka.time_s + ka.timeout_s < sc.objectives.dead_instance_s


class _NoScan(list):
    """A death list that refuses to be read past its length (the check must not scan)."""

    def __getitem__(self, i):
        raise AssertionError("the channel check scanned the death list")

    def __iter__(self):
        raise AssertionError("the channel check scanned the death list")

    __reversed__ = __iter__


def _channel(deaths, seen, now, keepalive=None):
    """A _Logical whose client holds a channel to b-0 (with ``deaths``) that has seen ``seen``
    of them; returns (closed?, what was logged)."""
    from types import SimpleNamespace

    from hailan_sim.sim.client import _ClientState, _Logical

    logged = []
    b0 = SimpleNamespace(deaths=deaths)
    a0 = SimpleNamespace(name="a-0")
    eng = SimpleNamespace(env=SimpleNamespace(now=now), instance_by_name={"b-0": b0}, _rec=logged.append,
                          policies=SimpleNamespace(grpc_keepalive=keepalive))
    cl = _ClientState(a0)
    cl.channels["b"] = "b-0"
    cl.channel_seen["b"] = seen
    call = _Logical.__new__(_Logical)
    call.eng, call.client, call.callee = eng, cl, "b"
    call.parent = SimpleNamespace(req=SimpleNamespace(id=1), id=2)
    return call._channel_closed(), logged, cl


def test_the_channel_check_is_o1_when_no_instance_died_since_it_opened():
    """Every cached call asks; with no death since the channel opened it reads one count."""
    closed, logged, cl = _channel(_NoScan([(1.0, False), (2.0, True)]), 2, 50.0)
    assert not closed and not logged and cl.channels == {"b": "b-0"}


def test_a_death_at_the_instant_the_channel_opened_still_closes_it():
    """A stale discovery list can hand a channel an instance that died at that very instant
    (before the call, in the event order): the channel has not seen that death, and the
    next call finds the connection reset, as when the check scanned every death at or after
    the opening time."""
    from hailan_sim.sim.client import _deaths_before

    deaths = [(1.0, False), (5.0, False)]
    assert _deaths_before(deaths, 5.0) == 1 and _deaths_before(deaths, 5.5) == 2
    assert _deaths_before([], 5.0) == 0
    closed, logged, cl = _channel(deaths, _deaths_before(deaths, 5.0), 5.0)
    assert closed and "b" not in cl.channels
    assert [r[1] for r in logged] == ["grpc_channel_closed"] and logged[0][-1] == "reset"
    # a death before the opening was seen: nothing to close
    closed, logged, _ = _channel(deaths[:1], _deaths_before(deaths[:1], 5.0), 6.0)
    assert not closed and not logged

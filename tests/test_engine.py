"""The engine's semantics, one behaviour per test, asserted on the event log.

Scenarios here use constant service times and trace arrivals, so every event's time is
known in advance and the expected log is written out by hand.
"""

from __future__ import annotations

import math

import pytest

from hailan_sim.sim import simulate
from tests._build import build, const, endpoint, log, op, svc, trace


def test_a_single_call_is_served_and_answered():
    s = build([svc("a", 3001, {"op": op(2)})], [endpoint("a.op", trace(0.5))])
    assert log(simulate(s, keep_events=True)) == [
        ("request_start", 0.5, "ep", None),
        ("call_start", 0.5, "a", None),
        ("work_end", 0.502, "a", "ok"),
        ("call_end", 0.502, "a", "ok"),
        ("request_end", 0.502, "ep", "ok"),
    ]


def test_network_hops_and_gateway_add_their_latency():
    s = build(
        [svc("a", 3001, {"op": op(2)})],
        [endpoint("a.op", trace(0.0))],
        network={"latency_ms": const(1)},
        infrastructure=[{"name": "gw", "kind": "gateway", "capacity": 4, "latency_ms": const(0.5)}],
    )
    r = simulate(s, keep_events=True)
    # client -> gw (1) + gw (0.5) + gw -> client (1); then gw -> a (1) + a (2) + a -> gw (1)
    assert log(r)[-1] == ("request_end", 0.0065, "ep", "ok")
    starts = [(t, tgt) for ev, t, tgt, _ in log(r) if ev == "call_start"]
    assert starts == [(0.0, "gw"), (0.0025, "a")]


def test_timeout_abandons_the_call_but_the_callee_keeps_working():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.slow"})}, depends_on=["b"]),
            svc("b", 3002, {"slow": op(500)}),
        ],
        [endpoint("a.op", trace(0.0))],
        timeout_s=0.1,
    )
    r = simulate(s, keep_events=True)
    assert log(r) == [
        ("request_start", 0.0, "ep", None),
        ("call_start", 0.0, "a", None),
        ("call_start", 0.001, "b", None),
        ("call_end", 0.101, "b", "timeout"),
        ("work_end", 0.101, "a", "error"),  # a's own call failed, so a answers 500
        ("call_end", 0.101, "a", "error"),
        ("request_end", 0.101, "ep", "error"),
        ("orphan_end", 0.501, "b", "ok"),  # no deadline propagation: b finished anyway
    ]
    assert r.services.loc["b", "orphaned_calls"] == 1
    assert r.services.loc["b", "orphaned_s"] == pytest.approx(0.4)
    assert r.services.loc["b", "timeout"] == 1


def test_a_full_queue_rejects_and_the_caller_turns_it_into_an_error():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"call": "b.op"})}, workers=4, depends_on=["b"]),
            svc("b", 3002, {"op": op(10)}, queue_limit=0),
        ],
        [endpoint("a.op", trace(0.0, 0.0))],
    )
    r = simulate(s, keep_events=True)
    ends = [(ev, t, tgt, out) for ev, t, tgt, out in log(r) if ev in ("work_end", "request_end")]
    assert ends == [
        ("work_end", 0.001, "b", "rejected"),
        ("work_end", 0.001, "a", "error"),
        ("request_end", 0.001, "ep", "error"),
        ("work_end", 0.011, "b", "ok"),
        ("work_end", 0.011, "a", "ok"),
        ("request_end", 0.011, "ep", "ok"),
    ]
    assert r.services.loc["b", "rejected"] == 1
    assert r.services.loc["b", "rejected_at_callee"] == 1


def test_requests_rejected_at_the_entry_are_rejected():
    s = build([svc("a", 3001, {"op": op(10)}, queue_limit=1)], [endpoint("a.op", trace(0, 0, 0))])
    r = simulate(s)
    assert r.requests == {"ok": 2, "error": 0, "timeout": 0, "rejected": 1}


def test_queued_calls_are_served_first_in_first_out():
    s = build([svc("a", 3001, {"op": op(10)})], [endpoint("a.op", trace(0, 0.001, 0.002))])
    ends = [t for ev, t, _, _ in log(simulate(s, keep_events=True)) if ev == "request_end"]
    assert ends == [0.01, 0.02, 0.03]


def test_sequence_stops_at_the_first_failure():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"seq": [{"call": "b.fail"}, {"call": "c.op"}]})}, depends_on=["b", "c"]),
            svc("b", 3002, {"fail": op(1, error_probability=1.0)}),
            svc("c", 3003, {"op": op(1)}),
        ],
        [endpoint("a.op", trace(0.0))],
    )
    r = simulate(s, keep_events=True)
    assert [tgt for ev, _, tgt, _ in log(r) if ev == "call_start"] == ["a", "b"]
    assert r.requests["error"] == 1


def test_parallel_fails_fast_like_promise_all_and_the_rest_run_on():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"par": [{"call": "b.fail"}, {"call": "c.slow"}]})}, depends_on=["b", "c"]),
            svc("b", 3002, {"fail": op(1, error_probability=1.0)}),
            svc("c", 3003, {"slow": op(100)}),
        ],
        [endpoint("a.op", trace(0.0))],
    )
    r = simulate(s, keep_events=True)
    events = log(r)
    assert ("request_end", 0.002, "ep", "error") in events
    # c was still called at the same instant and finished, unobserved, later
    assert ("call_start", 0.001, "c", None) in events
    assert events[-1] == ("call_end", 0.101, "c", "ok")


def test_parallel_waits_for_every_child_when_all_succeed():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"par": [{"call": "b.op"}, {"call": "c.op"}]})}, depends_on=["b", "c"]),
            svc("b", 3002, {"op": op(5)}),
            svc("c", 3003, {"op": op(30)}),
        ],
        [endpoint("a.op", trace(0.0))],
    )
    assert log(simulate(s, keep_events=True))[-1] == ("request_end", 0.031, "ep", "ok")


@pytest.mark.parametrize("p, expected", [(0.0, 0), (1.0, 20)])
def test_maybe_at_the_extremes(p, expected):
    s = build(
        [
            svc("a", 3001, {"op": op(0.1, {"maybe": {"call": "b.op"}, "p": p})}, depends_on=["b"], workers=20),
            svc("b", 3002, {"op": op(0.1)}, workers=20),
        ],
        [endpoint("a.op", trace(*[i * 0.01 for i in range(20)]))],
    )
    r = simulate(s)
    assert r.services.loc["b", "total"] == expected
    assert r.requests["ok"] == 20


def test_choice_follows_its_weights_within_a_binomial_interval():
    n = 4000
    s = build(
        [
            svc("a", 3001, {"op": op(0.01, {"choice": [
                {"weight": 1, "do": {"call": "b.op"}},
                {"weight": 3, "do": {"call": "c.op"}},
            ]})}, depends_on=["b", "c"], workers=50),
            svc("b", 3002, {"op": op(0.01)}, workers=50),
            svc("c", 3003, {"op": op(0.01)}, workers=50),
        ],
        [endpoint("a.op", trace(*[i * 0.001 for i in range(n)]))],
    )
    r = simulate(s)
    b = r.services.loc["b", "total"]
    assert b + r.services.loc["c", "total"] == n
    # 4.4 standard errors: a false alarm has probability ~1e-5, yet 5 points off would fail.
    se = math.sqrt(0.25 * 0.75 / n)
    assert abs(b / n - 0.25) < 4.4 * se


def test_repeat_in_sequence_and_in_parallel():
    def scenario(parallel: bool):
        return build(
            [
                svc("a", 3001, {"op": op(1, {"repeat": {"call": "b.op"}, "count": 3, "parallel": parallel})},
                    depends_on=["b"]),
                svc("b", 3002, {"op": op(10)}, workers=3),
            ],
            [endpoint("a.op", trace(0.0))],
        )

    seq = [t for ev, t, tgt, _ in log(simulate(scenario(False), keep_events=True)) if ev == "call_start" and tgt == "b"]
    par = [t for ev, t, tgt, _ in log(simulate(scenario(True), keep_events=True)) if ev == "call_start" and tgt == "b"]
    assert seq == [0.001, 0.011, 0.021]
    assert par == [0.001, 0.001, 0.001]


def test_repeat_with_a_count_distribution_has_the_right_mean():
    n = 3000
    s = build(
        [
            svc("a", 3001, {"op": op(0.01, {"repeat": {"call": "b.op"}, "count": {"dist": "poisson", "mean": 2.5},
                                            "parallel": True})}, depends_on=["b"], workers=50),
            svc("b", 3002, {"op": op(0.01)}, workers=50),
        ],
        [endpoint("a.op", trace(*[i * 0.001 for i in range(n)]))],
    )
    calls = simulate(s).services.loc["b", "total"]
    se = math.sqrt(2.5 / n)  # Poisson: variance = mean
    assert abs(calls / n - 2.5) < 4.4 * se


def test_a_long_sequential_repeat_of_instant_steps_does_not_recurse():
    s = build(
        [svc("a", 3001, {"op": op(1, {"repeat": {"maybe": {"call": "b.op"}, "p": 0.0}, "count": 1000})},
             depends_on=["b"]),
         svc("b", 3002, {"op": op(1)})],
        [endpoint("a.op", trace(0.0))],
    )
    assert simulate(s).requests["ok"] == 1


def test_blocking_calls_hold_the_worker_while_downstream_work_runs():
    def scenario(blocking: bool):
        return build(
            [
                svc("a", 3001, {"op": op(1, {"call": "b.op"})}, depends_on=["b"], blocking_calls=blocking),
                svc("b", 3002, {"op": op(100)}, workers=2),
            ],
            [endpoint("a.op", trace(0.0, 0.0))],
        )

    ends = lambda r: [t for ev, t, _, _ in log(r) if ev == "request_end"]  # noqa: E731
    assert ends(simulate(scenario(False), keep_events=True)) == [0.101, 0.102]
    assert ends(simulate(scenario(True), keep_events=True)) == [0.101, 0.202]


def test_no_instance_up_fails_at_once_and_startup_delays_service():
    s = build(
        [svc("a", 3001, {"op": op(1)}, startup_s=2.0)],
        [endpoint("a.op", trace(1.0, 3.0))],
        run={"cold_start": True},
    )
    r = simulate(s, keep_events=True)
    assert log(r) == [
        ("request_start", 1.0, "ep", None),
        ("call_start", 1.0, "a", None),
        ("call_end", 1.0, "a", "error"),  # the spec's "No available instances for service"
        ("request_end", 1.0, "ep", "error"),
        ("instance_up", 2.0, "a", None),
        ("request_start", 3.0, "ep", None),
        ("call_start", 3.0, "a", None),
        ("work_end", 3.001, "a", "ok"),
        ("call_end", 3.001, "a", "ok"),
        ("request_end", 3.001, "ep", "ok"),
    ]


def test_messages_wait_for_the_consumer_and_are_delivered_once_it_is_up():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"publish": "w.job"})}, depends_on=["mq"]),
            svc("w", 3002, {"job": op(10)}, startup_s=5.0, workers=2),
        ],
        [endpoint("a.op", trace(1.0, 2.0))],
        infrastructure=[{"name": "mq", "kind": "queue", "capacity": 8, "latency_ms": const(1)}],
        run={"cold_start": True},
    )
    r = simulate(s, keep_events=True)
    events = log(r)
    # the publisher only waits for the broker's confirm
    assert [(t, out) for ev, t, _, out in events if ev == "request_end"] == [(1.002, "ok"), (2.002, "ok")]
    assert [t for ev, t, _, _ in events if ev == "message_publish"] == [1.002, 2.002]
    assert ("instance_up", 5.0, "w", None) in events
    # both delivered when w came up, served in parallel by its two workers
    assert [(t, out) for ev, t, _, out in events if ev == "message_ack"] == [(5.01, "ok"), (5.01, "ok")]
    assert r.messages_pending == 0


def test_a_failed_delivery_is_redelivered_until_acknowledged():
    s = build(
        [
            svc("a", 3001, {"op": op(1, {"publish": "w.job"})}, depends_on=["mq"]),
            svc("w", 3002, {"job": op(1, error_probability=0.5)}),
        ],
        [endpoint("a.op", trace(*[i * 0.1 for i in range(50)]))],
        infrastructure=[{"name": "mq", "kind": "queue", "capacity": 8, "latency_ms": const(1),
                         "redelivery_delay_s": 0.5}],
    )
    r = simulate(s, keep_events=True)
    df = r.events()
    acked = df[df.event == "message_ack"]["call"]
    nacked = df[df.event == "message_nack"]["call"]
    published = df[df.event == "message_publish"]["call"]
    assert sorted(acked) == sorted(published)  # every message acknowledged exactly once
    assert len(nacked) > 0  # and some needed a redelivery
    assert r.messages_pending == 0


def test_every_request_has_exactly_one_outcome(small):
    r = simulate(small, keep_events=True)
    df = r.events()
    starts = df[df.event == "request_start"]["request"]
    ends = df[df.event == "request_end"]["request"]
    assert sorted(starts) == sorted(ends)
    assert ends.is_unique
    assert r.unfinished_requests == 0


def test_warmup_excludes_early_requests_from_summaries_but_not_from_windows():
    s = build([svc("a", 3001, {"op": op(1)})], [endpoint("a.op", trace(0.5, 1.5, 2.5))],
              run={"warmup_s": 1.0})
    r = simulate(s)
    assert r.requests["ok"] == 2
    assert r.windows["ok"].sum() == 3
    assert list(r.windows["window_start_s"]) == [0.0, 1.0, 2.0]


def test_utilisation_counts_only_the_measured_period():
    # one 1 s job at t=0 (in the warm-up) and one from t=2 to 3: a is busy 1 s of 9 measured
    s = build([svc("a", 3001, {"op": op(1000)})], [endpoint("a.op", trace(0.0, 2.0))],
              run={"warmup_s": 1.0})
    assert simulate(s).services.loc["a", "utilisation"] == pytest.approx(1 / 9)


def test_the_engine_owns_its_clock_and_never_reaches_into_simpy():
    """The engine runs on its own clock (sim/clock.py): no module of the engine imports
    SimPy or touches the private fields it used to read (``_now``, ``_queue``, ``_eid``)."""
    import re
    from pathlib import Path

    import hailan_sim.sim as sim_pkg

    offenders = []
    for path in sorted(Path(sim_pkg.__file__).parent.glob("*.py")):
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines()
                         if not line.lstrip().startswith(("#", "``", "heappush(self._queue")))
        if re.search(r"^\s*(import simpy|from simpy)", code, re.M) or re.search(r"env\._(now|queue|eid)\b", code):
            offenders.append(path.name)
    assert offenders == []


# --------------------------------------------------------------------------- timer compaction


def _stale_timer_scenario():
    """Two endpoints with different timeouts, far apart arrivals, fast service: every call's
    timer goes stale long before it fires, and the timeouts recur."""
    from tests._build import build, endpoint, op, svc

    poisson = lambda rate: {"kind": "poisson", "rate": rate}  # noqa: E731
    return build(
        [svc("a", 3001, {"op": op(1)})],
        [endpoint("a.op", poisson(3), name="x", timeout_s=0.5),
         endpoint("a.op", poisson(3), name="y", timeout_s=0.7)],
        duration_s=60.0, run={"warmup_s": 0},
    )


def _rearm_on_timeout_scenario():
    """A call times out and its fallback's continuation at once starts a call with the same
    timeout: the timer queue takes a call while it is being fired."""
    return build(
        [svc("a", 3001, {"run": op(1, calls={"seq": [
            {"call": "b.slow", "timeout_s": 0.5, "fallback": True},
            {"call": "b.fast", "timeout_s": 0.5}]})}, depends_on=["b"]),
         svc("b", 3002, {"slow": op(1000), "fast": op(1)}, workers=8)],
        [endpoint("a.run", trace(0.1, 3.0, 6.0))],
        duration_s=10.0, run={"warmup_s": 0},
    )


def _timer_scenario(name: str, duration_s: float):
    """The runs the timer tests compare: a small scenario, or the default one with
    ``hardened`` (``hardened_partition``: calls from user-service to auth-service dropped
    for 10 s, so they time out)."""
    from hailan_sim.models import default_scenario

    if name == "stale_timers":
        return _stale_timer_scenario()
    if name == "rearm_on_timeout":
        return _rearm_on_timeout_scenario()
    sc = default_scenario().with_run(duration_s=duration_s, warmup_s=0).with_profile("hardened")
    if name == "hardened_partition":
        sc = type(sc).model_validate({**sc.model_dump(), "faults": [
            {"kind": "partition", "a": "user-service", "b": "auth-service", "start_s": 10,
             "duration_s": 10}]})
    return sc


@pytest.mark.parametrize("scenario", ["stale_timers", "default_hardened"])
def test_parking_stale_timers_changes_no_run(monkeypatch, scenario):
    """Engine._compact takes timer entries that can only do nothing off the heap, and
    Engine._unpark puts one back (or does what its pop did) when a call joins its queue:
    the log and sim_events are those of a run that never compacts, whether it compacts
    at every timer push or never; both ways out of a parked state are taken."""
    from hailan_sim.sim import engine as E

    sc = _timer_scenario(scenario, 20.0)
    seen = {"pending": 0, "fired": 0}
    unpark = E.Engine._unpark

    def counting(self, q):
        ev = q.parked
        pending = ev[:3] > self.env.cur[:3]  # after the entry being run: it has not popped yet
        seen["pending" if pending else "fired"] += 1
        unpark(self, q)
        # back on the heap exactly when it had not popped yet; else its pop is done here
        assert (ev in self.env.queue) == pending and q.armed == pending

    monkeypatch.setattr(E.Engine, "_unpark", counting)
    runs = {}
    for at in (0, 10**12):  # compact before every timer push / never
        monkeypatch.setattr(E, "_COMPACT_AT", at)
        monkeypatch.setattr(E, "_COMPACT_GROWTH", 0 if at == 0 else 2)
        r = simulate(sc)
        runs[at] = (r.event_log_sha256, r.sim_events, r.requests)
    assert runs[0] == runs[10**12]
    if scenario == "stale_timers":
        assert seen["pending"] > 0 and seen["fired"] > 0, seen
        assert runs[0][2]["timeout"] == 0


@pytest.mark.parametrize("scenario", ["stale_timers", "default_hardened", "hardened_partition",
                                      "rearm_on_timeout"])
def test_lone_timers_change_no_run(monkeypatch, scenario):
    """A call alone with its timeout is its own timer queue (Engine._arm: no queue object);
    it becomes a queue when another call comes with the same timeout (Engine._as_queue),
    and its entry does what the queue's would (Engine._timer_one). The log and sim_events
    are those of a run where every timeout has a queue object, and every way in and out is
    taken: a lone timer joined while its entry is pending and while it is parked, due with
    its call finished, due with its call still open (a timeout), and due as a queue."""
    from hailan_sim.sim import engine as E

    sc = _timer_scenario(scenario, 30.0)
    seen = dict.fromkeys(("joined pending", "joined parked", "finished", "timed out", "as queue"), 0)
    as_queue, one = E.Engine._as_queue, E.Engine._timer_one

    def joined(self, c, timeout):
        seen["joined parked" if c in self._parked else "joined pending"] += 1
        return as_queue(self, c, timeout)

    def due(self, c):
        x = self._timers.get(c.tkey)
        seen["as queue" if x is not c else "finished" if c.finished else "timed out"] += 1
        one(self, c)

    monkeypatch.setattr(E.Engine, "_as_queue", joined)
    monkeypatch.setattr(E.Engine, "_timer_one", due)
    runs = {}
    usual = E._COMPACT_AT
    for lone in (True, False):
        for at in (0, usual):  # compact before every timer push (parks lone timers) / as usual
            monkeypatch.setattr(E, "_LONE", lone)
            monkeypatch.setattr(E, "_COMPACT_AT", at)
            monkeypatch.setattr(E, "_COMPACT_GROWTH", 0 if at == 0 else 2)
            r = simulate(sc)
            runs[lone, at] = (r.event_log_sha256, r.sim_events, tuple(sorted(r.requests.items())))
    assert len(set(runs.values())) == 1, runs
    if scenario == "stale_timers":
        assert seen["joined pending"] > 0 and seen["joined parked"] > 0, seen
    elif scenario == "default_hardened":
        assert seen["finished"] > 0 and seen["as queue"] > 0, seen
    else:  # b.slow, or calls to the partitioned auth-service, time out
        assert seen["timed out"] > 0, seen


def test_stale_timers_do_not_fill_the_heap():
    """With deadline propagation (hardened) nearly every call has a timeout of its own; the
    entries of calls that finished must not pile up on the heap (before compaction: about
    780 entries, median, on this run; the live events are about 50)."""
    from hailan_sim.models import default_scenario
    from hailan_sim.sim.engine import Engine

    eng = Engine(default_scenario().with_run(duration_s=20, warmup_s=0).with_profile("hardened"))
    eng.start()
    sizes = []
    for i in range(1, 201):
        eng.run_until(i * 0.1)
        sizes.append(len(eng.env.queue))
    sizes.sort()
    assert sizes[len(sizes) // 2] < 300, sizes[len(sizes) // 2]
    assert len(eng._timers) < 3000  # queues whose timers have fired are forgotten

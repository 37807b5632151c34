"""Tests that kill the invariants' planted bugs (tools/invariants-mutants.yaml).

Each test pins one clause of an invariant that the tests of test_invariants.py left
unpinned (a mutant of it survived; docs/mutation.md). Where a clause is about a log no
correct engine writes (a call that ends twice, a breaker that jumps states), the test
takes a real run's log and doctors it: one row duplicated or removed, so that exactly that
clause is at stake. Where a clause is a tolerance (standard error, margin, Bonferroni,
sample size for a p99), the test puts numbers on both sides of it.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from hailan_sim.models import breakers as B
from hailan_sim.properties.invariants import Record, get
from hailan_sim.sim.eventlog import KeptLog
from hailan_sim.properties.windows import _p99_worse, _ratio_drop, _table_from_requests, _z
from tests.properties.test_invariants import AUTH_CRASH, _fails, _holds, _record, _with_planted, _Herd, mini

# Event-log columns (sim/eventlog.py COLUMNS): t, event, request, call, parent, source,
# target, instance, operation, outcome.
EVENT, CALL, SOURCE, TARGET, INSTANCE, OP, OUTCOME = 1, 3, 5, 6, 7, 8, 9


def _doctored(record: Record, events: list[tuple]) -> Record:
    """The same record with its run's event log replaced."""
    return Record(record.scenario, dataclasses.replace(record.result, _events=KeptLog.from_records(events)),
                  record.baseline)


@pytest.fixture(scope="module")
def seed_crash() -> Record:
    return _record(mini("seed", AUTH_CRASH))


@pytest.fixture(scope="module")
def hardened_crash() -> Record:
    # Without outlier detection, so hardened's per-instance breakers open on the dead
    # instance (with it the instance is ejected first and no breaker trips: issue 10 item 7).
    return _record(mini("hardened", AUTH_CRASH, duration_s=70, policies={"outlier": None}))


# --------------------------------------------------------------------------- conservation


def _duplicate_first(events: list[tuple], event: str) -> list[tuple]:
    i = next(i for i, e in enumerate(events) if e[EVENT] == event)
    return events[: i + 1] + [events[i]] + events[i + 1:]


def test_conservation_catches_a_call_that_ends_twice(seed_crash):
    _holds(get("conservation")(seed_crash))
    v = get("conservation")(_doctored(seed_crash, _duplicate_first(seed_crash.result._kept(), "call_end")))
    assert not v.holds and v.details["calls_ended_twice"] == 1
    assert "1 call(s) ended more than once" in v.explanation


def test_conservation_catches_a_request_that_ends_twice(seed_crash):
    v = get("conservation")(_doctored(seed_crash, _duplicate_first(seed_crash.result._kept(), "request_end")))
    assert not v.holds and v.details["requests_ended_twice"] == 1
    assert "1 request(s) ended more than once" in v.explanation


# --------------------------------------------------------------------------- breaker legality


def _breaker_rows(events: list[tuple]) -> dict[tuple, list[int]]:
    by: dict[tuple, list[int]] = {}
    for i, e in enumerate(events):
        if e[EVENT] == "breaker":
            by.setdefault((e[SOURCE], e[TARGET]), []).append(i)
    return by


def test_breaker_transition_from_a_state_it_was_not_in_is_caught(seed_crash):
    # Remove one open->half_open row of a breaker that moves on from half_open: every
    # remaining transition is legal on its own, but the next one leaves half_open while the
    # breaker is open. Only the continuity check can see it.
    events = seed_crash.result._kept()
    drop = next(rs[k] for rs in _breaker_rows(events).values() for k in range(len(rs) - 1)
                if (events[rs[k]][OP], events[rs[k]][OUTCOME]) == ("open", "half_open"))
    v = get("breaker_legality")(_doctored(seed_crash, events[:drop] + events[drop + 1:]))
    assert not v.holds
    assert v.details["violations"][0]["kind"] == "discontinuity"
    assert "went half_open->" in v.explanation and "but was open" in v.explanation


def test_open_to_open_is_legal_for_spec_breakers_only(seed_crash, hardened_crash):
    # The spec's breaker re-enters OPEN on a late failure (open->open); resilience4j's
    # state machine has no such transition (docs/mechanisms/breakers.md).
    for record, legal in ((seed_crash, True), (hardened_crash, False)):
        events = record.result._kept()
        i = next(rs[0] for rs in _breaker_rows(events).values()
                 if (events[rs[0]][OP], events[rs[0]][OUTCOME]) == ("closed", "open"))
        again = events[i][:OP] + ("open", "open")
        v = get("breaker_legality")(_doctored(record, events[: i + 1] + [again] + events[i + 1:]))
        assert v.holds is legal, v
        if not legal:
            assert "open->open" in v.explanation and "sliding_window" in v.explanation


def test_breaker_probe_limit_is_exact(monkeypatch):
    # A spec breaker that ignores its probe limit admits m calls in some half-open episode;
    # judged against a limit of m it holds, against m - 1 (one probe too many) it fails.
    limited = {"breaker": {"kind": "spec", "enforce_half_open_limit": True, "half_open_max_calls": 1}}
    _with_planted(monkeypatch, _Herd, B.SpecBreakerConfig)
    record = _record(mini("seed", AUTH_CRASH, policies=limited))
    m = get("breaker_legality")(record).details["max_half_open_probes"]
    assert m >= 2

    def judged(limit: int):
        pol = {"breaker": {**limited["breaker"], "half_open_max_calls": limit}}
        return get("breaker_legality")(Record(mini("seed", AUTH_CRASH, policies=pol),
                                              record.result, record.baseline))

    _holds(judged(m))
    v = _fails(judged(m - 1))
    assert f"admitted {m} calls" in v.explanation and f"its limit is {m - 1}" in v.explanation


# --------------------------------------------------------------------------- statistical windows


def _frame(n0, ok0, n1, ok1, p0=None, p1=None) -> pd.DataFrame:
    return pd.DataFrame({"endpoint": ["e"] * len(n0), "n_0": n0, "ok_0": ok0, "n_1": n1, "ok_1": ok1,
                         "p99_ms_0": p0 or [10.0] * len(n0), "p99_ms_1": p1 or [10.0] * len(n0)})


def test_ratio_drop_allows_for_sampling_noise():
    # 20 of 20 vs 18 of 20: 10 points lower, but within z standard errors of 20 requests
    # (Agresti-Caffo se about 0.08): noise, not a drop. 2000 of 2000 vs 1800 of 2000 is one.
    z = _z(0.01, 1)
    assert not _ratio_drop(_frame([20], [20], [20], [18]), z, 0.02)[0]
    assert _ratio_drop(_frame([2000], [2000], [2000], [1800]), z, 0.02)[0]


def test_ratio_drop_allows_the_margin():
    # 1% lower over a million requests is statistically certain, but within the 2% margin.
    z = _z(0.01, 1)
    m = _frame([1_000_000], [1_000_000], [1_000_000], [990_000])
    assert not _ratio_drop(m, z, 0.02)[0] and _ratio_drop(m, z, 0.0)[0]


def test_z_is_bonferroni_corrected():
    # One-sided quantile at alpha / comparisons: 2.326 for one window at 1%, 3.719 for 100.
    assert _z(0.01, 1) == pytest.approx(2.3263, abs=1e-3)
    assert _z(0.01, 100) == pytest.approx(3.7190, abs=1e-3)


def test_p99_needs_enough_requests_on_both_sides():
    m = _frame([5, 200], [5, 200], [5, 200], [5, 200], p0=[10.0, 10.0], p1=[500.0, 500.0])
    worse = _p99_worse(m, {"e": 10.0}, 2.0, 50.0, 100)
    assert worse.tolist() == [False, True]


def test_windows_take_requests_started_before_the_end_only():
    req = pd.DataFrame({"endpoint": ["e"] * 4, "start": [0.0, 4.999, 5.0, 10.0], "end": [0.1, 5.1, 5.1, 10.1],
                        "outcome": ["ok"] * 4, "latency_ms": [1.0] * 4})
    t = _table_from_requests(req, {"e": 5.0}, 0.0, 10.0)
    assert t["n"].tolist() == [2, 1]


# --------------------------------------------------------------------------- tokens, redelivery, wasted work


def test_tokens_401s_while_the_registry_is_unreachable_are_excused():
    # seed: after a key rotation every verifier refuses new tokens with the issuer up (a
    # liveness failure); the same 401s while the registry is unreachable are excused when
    # callers fetch tokens from an issuer they must discover (signing: issuer). With
    # signing: local (seed's own) there is no issuer to reach: not excused.
    for signing in ("issuer", "local"):
        pol = {"tokens": {"ttl_s": 10, "signing": signing}}
        record = _record(mini("seed", [{"kind": "key_rotation", "start_s": 40, "duration_s": 1}],
                              duration_s=50, policies=pol))
        v = _fails(get("token_safety")(record))
        n = v.details["failed_auth_count"]
        assert n > 0
        out = Record(record.scenario, record.result, record.baseline)
        out.__dict__["registry_unreachable"] = [(0.0, math.inf)]  # as if the registry were out all along
        v = get("token_safety")(out)
        if signing == "issuer":
            assert v.holds and v.details["excused_401"]["issuer_unreachable"] >= n
        else:
            assert not v.holds and v.details["failed_auth_count"] == n


def test_redelivery_counts_the_first_delivery():
    sc = mini("hardened", [{"kind": "error_rate", "target": "worker", "fraction": 1.0, "start_s": 20,
                            "duration_s": 10}], duration_s=40)
    record = _record(sc)
    log = record.log
    nacks = log.call[log.rows("message_nack")]
    most = int(pd.Series(nacks).value_counts().max()) + 1  # nacked deliveries plus the last one
    v = _holds(get("bounded_redelivery")(record, max_deliveries=most))
    assert v.details["most_deliveries"] == most
    _fails(get("bounded_redelivery")(record, max_deliveries=most - 1))


def test_wasted_work_is_counted_beyond_the_baseline():
    # Judged against itself as the baseline, a run has no orphans beyond the baseline's,
    # whatever its own count.
    slow = [{"kind": "slow", "target": "stock", "factor": 1000, "start_s": 20, "duration_s": 20}]
    record = _record(mini("seed", slow, duration_s=60))
    assert get("bounded_wasted_work")(record).details["orphans"] > 0
    same = Record(record.scenario, record.result, record.result)
    v = _holds(get("bounded_wasted_work")(same))
    assert v.details["extra_share"] == 0 and v.details["orphans"] > 0


def test_conservation_excuses_a_message_while_its_broker_is_back_too_briefly(hardened_crash):
    # One message's ack removed: with consumer and broker up for the whole run it is lost.
    # The same log with the broker down and back 2 s before the end: it had no grace_s
    # (heartbeat timeout plus redelivery delay) to requeue and redeliver, so it is not lost.
    events = hardened_crash.result._kept()
    ack = max(i for i, e in enumerate(events) if e[EVENT] == "message_ack")
    events = events[:ack] + events[ack + 1:]
    v = get("conservation")(_doctored(hardened_crash, events))
    assert not v.holds and v.details["messages_lost"] == 1 and "lost" in v.explanation
    end = hardened_crash.result.end_s
    at = next(i for i, e in enumerate(events) if e[0] >= end - 2)
    blip = [(end - 2, "instance_down", None, None, None, None, None, "mq-0", None, None),
            (end - 2, "instance_up", None, None, None, None, None, "mq-0", None, None)]
    v = _holds(get("conservation")(_doctored(hardened_crash, events[:at] + blip + events[at:])))
    assert v.details["messages_unacked"] == 1 and v.details["messages_lost"] == 0


# --------------------------------------------------------------------------- direct or collateral


def test_failures_at_an_instance_a_crash_left_dead_are_direct():
    # catalog-0 crashes at 20 s for 5 s and does not restart; the fault has ended, but the
    # failures of calls still sent to it (the seed's sticky gRPC channel) are the crash's
    # own cost, not a cascade.
    from hailan_sim.properties.causes import failure_origins

    crash = [{"kind": "crash_instance", "instance": "catalog-0", "start_s": 20, "duration_s": 5,
              "restart": False}]
    grpc = {"edges": [{"caller": "front", "callee": "catalog", "protocol": "grpc"}]}
    record = _record(mini("seed", crash, duration_s=60, policies=grpc))
    o = failure_origins(record)
    at = o[(o["instance"] == "catalog-0") & (o["t"] > 25)]
    assert len(at) > 0 and at["direct"].astype(bool).all()
    assert (at["fault"] == -1).all()


def test_401s_after_a_key_rotation_are_direct():
    # seed: the verifiers hold one static key, so after a rotation every token is refused.
    # The rotation faults the tokens: those 401s are its direct cost, not collateral.
    from hailan_sim.properties.causes import failure_origins

    record = _record(mini("seed", [{"kind": "key_rotation", "start_s": 40, "duration_s": 1}],
                          duration_s=50, policies={"tokens": {"ttl_s": 20}}))
    o = failure_origins(record)
    a401 = o[o["mechanism"] == "auth_401"]
    assert len(a401) > 0 and a401["direct"].astype(bool).all()


def test_dead_instance_time_while_the_registry_is_unreachable_does_not_count():
    # The seed's sticky gRPC channel keeps calling a catalog-0 that crashed for good at
    # 20 s: beyond the objective. Judged as if the registry had been unreachable all along,
    # no registry policy could have acted, so none of that time counts.
    crash = [{"kind": "crash_instance", "instance": "catalog-0", "start_s": 20, "duration_s": 5,
              "restart": False}]
    grpc = {"edges": [{"caller": "front", "callee": "catalog", "protocol": "grpc"}]}
    record = _record(mini("seed", crash, duration_s=90, policies=grpc))
    v = _fails(get("no_traffic_to_dead_instances")(record))
    assert v.details["calls_beyond_bound"] > 0
    out = Record(record.scenario, record.result, record.baseline)
    out.__dict__["registry_unreachable"] = [(0.0, math.inf)]
    v = _holds(get("no_traffic_to_dead_instances")(out))
    assert v.details["calls_to_dead_instances"] > 0 and v.details["calls_beyond_bound"] == 0


# --------------------------------------------------------------------------- vectorised views (issue 12)


def test_conservation_names_the_request_that_never_ended_and_a_call_end_without_start(seed_crash):
    # conservation works on sorted id arrays (np.unique, np.setdiff1d): the first request
    # left without its end is named with its endpoint and start, and a call_end whose
    # call_start was removed is counted.
    events = seed_crash.result._kept()
    last_end = max(i for i, e in enumerate(events) if e[EVENT] == "request_end")
    req = events[last_end][2]
    start = next(e for e in events if e[EVENT] == "request_start" and e[2] == req)
    first_cs = next(i for i, e in enumerate(events) if e[EVENT] == "call_start"
                    and any(x[EVENT] == "call_end" and x[CALL] == e[CALL] for x in events[i:]))
    doctored = events[:first_cs] + events[first_cs + 1:last_end] + events[last_end + 1:]
    v = get("conservation")(_doctored(seed_crash, doctored))
    assert not v.holds
    assert v.details["unfinished_requests"] == 1 and v.details["call_ends_without_start"] == 1
    assert f"request {req} to {start[TARGET]} at {start[0]:g} s" in v.explanation
    assert "1 call_end row(s) without a call_start" in v.explanation


def test_call_rows_is_each_calls_last_row_like_a_dict_in_log_order(seed_crash):
    from hailan_sim.properties.record import _Log

    events = seed_crash.result._kept()
    ends = [i for i, e in enumerate(events) if e[EVENT] == "call_end"]
    # The same call ending twice: the later row wins, as dict(zip(ids, rows)) would.
    events = events[: ends[0] + 1] + [events[ends[0]]] + events[ends[0] + 1:]
    log = _Log(KeptLog.from_records(events).columns())
    want = {}
    for i, e in enumerate(events):
        if e[EVENT] == "call_end":
            want[e[CALL]] = i
    tab = log.call_rows("call_end")
    assert tab[events[ends[0]][CALL] + 1] == ends[0] + 1
    got = {c: int(tab[c + 1]) for c in range(len(tab) - 1) if tab[c + 1] >= 0}
    assert got == want
    assert log.call_rows("call_end") is tab  # built once per log


def test_codes_are_the_columns_values_over_an_events_rows_built_once(seed_crash):
    """_Log.codes (issue 12): integer codes of a column over one event's rows, -1 for None,
    that read back as the column itself; shared, not rebuilt."""
    from hailan_sim.properties.record import _Log

    log = _Log(KeptLog.from_records(seed_crash.result._kept()).columns())
    for column, event in (("source", "call_start"), ("operation", "call_start"), ("instance", "call_end")):
        codes, values = log.codes(column, event)
        col = getattr(log, column)[log.rows(event)]
        assert len(codes) == len(col)
        back = [None if c < 0 else values[c] for c in codes.tolist()]
        assert back == col.tolist()
        assert (codes < 0).any() == any(x is None for x in col.tolist())
        assert len(set(values.tolist())) == len(values)
        assert log.codes(column, event)[0] is codes  # built once per log


def test_calls_per_request_labels_and_counts_each_request_target_operation(seed_crash):
    """_calls_per_request (issue 12: labelled per distinct pair, not per row): one row per
    (request, target, operation) in order of first call, counting its call_starts, labelled
    ``target.operation`` (``target`` for a component's calls), as a dict built in log order."""
    from hailan_sim.properties.invariants import _calls_per_request
    from hailan_sim.properties.record import _Log

    log = _Log(KeptLog.from_records(seed_crash.result._kept()).columns())
    want: dict = {}
    for r in log.rows("call_start").tolist():
        if log.target[r] is None:
            continue
        key = (int(log.request[r]), log.target[r], log.operation[r])
        want[key] = want.get(key, 0) + 1
    f = _calls_per_request(log)
    got = {(int(q), t, o): int(n) for q, t, o, n in zip(f["request"], f["target"], f["operation"], f["calls"])}
    assert list(got) == list(want) and got == want
    assert f["what"].tolist() == [t if o is None else f"{t}.{o}" for t, o in zip(f["target"], f["operation"])]
    assert f["operation"].isna().any() and f["operation"].notna().any()  # both kinds of label checked


def test_shares_are_each_instances_calls_per_window_as_a_groupby_on_names(seed_crash):
    """fair_share's table (issue 12: grouped on codes): the calls each instance of a
    multi-instance service served per 5 s window and its service's total in that window,
    ordered by (service, window, instance) name, as a groupby on the names gives."""
    import numpy as np

    from hailan_sim.properties.invariants import _shares
    from hailan_sim.properties.record import _Log

    events = seed_crash.result._kept()
    services = {s.name for s in seed_crash.scenario.services if s.instances >= 2}
    # A call_end with no instance (as a call failed before it reached one): not counted.
    k = next(i for i, e in enumerate(events) if e[EVENT] == "call_end" and e[TARGET] in services)
    events = events[:k] + [events[k][:INSTANCE] + (None,) + events[k][INSTANCE + 1:]] + events[k + 1:]
    log = _Log(KeptLog.from_records(events).columns())
    ce = log.rows("call_end")
    keep = np.array([t in services and i is not None for t, i in zip(log.target[ce], log.instance[ce])])
    df = pd.DataFrame({"svc": log.target[ce][keep], "inst": log.instance[ce][keep],
                       "j": np.floor(log.t[ce][keep] / 5.0).astype(np.int64)})
    want = df.groupby(["svc", "j", "inst"], sort=True).size().rename("n").reset_index()
    want["total"] = want.groupby(["svc", "j"])["n"].transform("sum")
    got = _shares(log, services, 5.0)
    assert len(got) > 10 and got["inst"].nunique() > 2
    pd.testing.assert_frame_equal(got[["svc", "j", "inst", "n", "total"]], want, check_dtype=False)


def test_window_table_is_the_per_window_nearest_rank_p99_of_finished_requests():
    """_table_from_requests computes every (endpoint, window) at once (issue 12): the same
    counts and nearest-rank p99 as a loop over the windows, unfinished requests (NaN
    latency) counted in n but not in the p99, a window of only unfinished ones NaN."""
    import numpy as np

    from hailan_sim.properties.windows import _nearest_rank

    rng = np.random.default_rng(7)
    n = 3000
    req = pd.DataFrame({
        "endpoint": rng.choice(["b", "a", "checkout"], n).astype(object),
        "start": rng.uniform(0.0, 120.0, n),
        "outcome": rng.choice(["ok", "ok", "timeout", "error"], n).astype(object),
        "latency_ms": rng.exponential(80.0, n).round(3),
    })
    req.loc[rng.random(n) < 0.2, "latency_ms"] = np.nan
    req.loc[(req["start"] >= 40.0) & (req["start"] < 50.0) & (req["endpoint"] == "a"), "latency_ms"] = np.nan
    widths = {"a": 10.0, "b": 5.0, "checkout": 60.0}
    got = _table_from_requests(req, widths, 10.0, 115.0)
    want = []
    sel = req[(req["start"] >= 10.0) & (req["start"] < 115.0)]
    for e in sorted(widths):
        r = sel[sel["endpoint"] == e]
        j = np.floor((r["start"].to_numpy() - 10.0) / widths[e]).astype(int)
        for jj in sorted(set(j.tolist())):
            g = r[j == jj]
            lat = g["latency_ms"].to_numpy()
            want.append((e, jj, len(g), int((g["outcome"] == "ok").sum()),
                         _nearest_rank(lat[~np.isnan(lat)], 0.99)))
    rows = list(got.itertuples(index=False, name=None))
    assert [r[:4] for r in rows] == [w[:4] for w in want]
    assert np.array_equal(got["p99_ms"].to_numpy(), [w[4] for w in want], equal_nan=True)
    assert got.loc[(got["endpoint"] == "a") & (got["j"] == 3), "p99_ms"].isna().all()
    assert got["n"].sum() == len(sel)

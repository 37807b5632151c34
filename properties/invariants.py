"""Invariants over a run's record: named checks that say what went wrong, where and when.

An invariant is a function of a :class:`Record` (the scenario, its run with the event log
kept, and the fault-free baseline of the same seed) that returns a :class:`Verdict`: whether
it holds, a sentence a person can act on, the time window of the violation and the numbers
behind it. Invariants read the record only (the event log, the per-window tables, the
scenario's own policies), never the engine's internals, so a record written to disk and read
back is checked the same way.

Fourteen are built in (docs/invariants.md defines each precisely, with the objective it reads,
its tolerance and the false-alarm rate it targets). Bounds come from the scenario's
``objectives`` only; what the policies' own timers predict is shown beside them::

    no_cascading_failure       no request fails collaterally (span trees) beyond the baseline
    bounded_recovery           every endpoint is back within rto_s of the last fault's end
    conservation               one terminal outcome per request; no durable message lost
    breaker_legality           breaker transitions follow the policy's state machine and its declared probe limit
    no_traffic_to_dead_instances  dead instances get calls only within dead_instance_s
    token_safety               no expired token accepted; no 401 while the issuer is reachable
    bounded_retry_amplification   attempts per request and retries' extra load within the objectives
    bounded_redelivery         no message delivered more than max_deliveries times
    redundancy                 losing spare capacity costs at most the budget and detection time
    static_stability           a short control plane outage costs the data plane nothing beyond the budget
    bounded_wasted_work        calls served after their caller gave up, within wasted_share
    fair_share                 no herd: no instance over fair_share_factor x its share for long
    endpoint_objectives        outside the faults, every endpoint meets its success and p99 objectives
    determinism                re-running reproduces the event-log hash

Anti-vacuity: every verdict's ``details`` carry ``fault_kinds_fired`` (faults that actually
started) and ``mechanisms`` (:func:`witnessed`: breaker opened, retry made, instance
deregistered, ...), plus what the invariant itself checked (``checked``) and ``vacuous``
when it checked nothing, so a pass that exercised nothing is visible.

Typical use::

    from hailan_sim.properties.invariants import Record, evaluate
    record = Record.from_scenario(scenario_with_faults)
    for v in evaluate(record):
        print(v)

Register your own with the same interface::

    @register("p99_under_a_second")
    def p99_under_a_second(record: Record) -> Verdict:
        "Every endpoint's p99 stays under 1 s."
        ...
"""


from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from hailan_sim.models.scenario import Scenario, split_target
from hailan_sim.properties.reach import (  # noqa: F401 (re-exported)
    TOKENS,
    _caller_service,
    _component_of,
    _edge_policy,
    _edges,
    _node_of,
    _registry_name,
    _service_of,
    dead_instance_bound_s,
    default_amplification_factor,
    default_recovery_s,
    endpoint_reach,
    faulted_components,
)
from hailan_sim.properties.record import (  # noqa: F401 (re-exported)
    Record,
    _first_rows,
    _Log,
    _up_since,
    applicable,
    factorize,
    without_faults,
    witnessed,
)
from hailan_sim.properties.verdicts import (  # noqa: F401 (re-exported)
    INVARIANTS,
    Invariant,
    Verdict,
    evaluate,
    get,
    register,
    unregister,
)
from hailan_sim.properties.windows import (  # noqa: F401 (re-exported)
    _compare_frames,
    _compare_windows,
    _nearest_rank,
    _p99_worse,
    _pct,
    _ratio_drop,
    _widths,
    _window_rows,
    _z,
)
from hailan_sim.sim.metrics import OUTCOMES

__all__ = [
    "INVARIANTS",
    "Invariant",
    "applicable",
    "Record",
    "TOKENS",
    "Verdict",
    "dead_instance_bound_s",
    "default_amplification_factor",
    "default_recovery_s",
    "endpoint_reach",
    "evaluate",
    "faulted_components",
    "get",
    "register",
    "unregister",
    "witnessed",
    "without_faults",
]

# --------------------------------------------------------------------------- 1. no cascading failure


@register("no_cascading_failure")
def no_cascading_failure(record: Record, *, alpha: float = 0.01, margin: float = 0.02,
                         min_requests: int = 50, window_s: Optional[float] = None) -> Verdict:
    """No failure spreads beyond the faulted components, decided request by request.

    Each failed request's failure is traced down its span tree to where it started
    (:func:`hailan_sim.properties.causes.failure_origins`): *direct* when that is a faulted
    component while its fault was on (a dead, hung or faulted instance, a faulted service,
    link or infrastructure component, the registry while unreachable, the token keys),
    otherwise *collateral* (a breaker short-circuiting a call to a healthy service, a
    rejection or timeout at a healthy service, a 401 from a healthy verifier). Every
    endpoint is checked, in every window while the faults are on (from the first start to
    the last end) and from ``objectives.rto_s`` after the last end until arrivals stop (the
    recovery in between is ``bounded_recovery``'s to judge): the share of its requests that did not fail collaterally must stay within
    tolerance of the baseline's success ratio (every baseline failure counts: it had no
    fault). Requests are counted by their start time (common random numbers). A window
    fails when the run's ratio is below the baseline's by more than ``margin`` plus z
    standard errors (Agresti-Caffo, one-sided), z at ``alpha`` over the windows compared
    (Bonferroni). The verdict names the mechanism behind most collateral failures in the
    failing windows and the chain that led there (for a short circuit: which breaker, when
    it opened and on which failures).
    """
    from hailan_sim.properties.causes import breaker_chain, describe_chain, failure_origins

    sc = record.scenario
    fired = record.faults_fired
    if not fired:
        return Verdict("", True, "no fault fired: nothing to compare", None,
                       {"checked": 0, "vacuous": True})
    comps = faulted_components(sc)
    faulted: list[str] = []
    for f in fired:
        for c in comps.get(f["index"], []):
            if c not in faulted:
                faulted.append(c)
    endpoints = [e.name for e in sc.workload.endpoints]
    t0 = min(f["start_s"] for f in fired)
    t1 = sc.run.duration_s
    origins = failure_origins(record)
    collateral = origins[~origins["direct"].astype(bool)]
    details = {"faulted_components": faulted, "alpha": alpha, "margin": margin,
               "failed_requests": int(len(origins)), "direct_failures": int(len(origins) - len(collateral)),
               "collateral_failures": int(len(collateral))}
    if t0 >= t1:
        return Verdict("", True, "nothing to check: the faults start after arrivals stop", None,
                       {**details, "checked": 0, "vacuous": True})
    # Direct failures are the fault's own cost: count them as not collateral.
    req = record.requests
    direct_ids = origins.loc[origins["direct"].astype(bool), "request"].to_numpy()
    req = req.assign(outcome=np.where(np.isin(req["request"].to_numpy(), direct_ids), "ok", req["outcome"]))
    widths = _widths(record, min_requests, window_s)
    # While the faults are on, and again from rto_s after the last one ended: how fast the
    # system comes back after a fault (a breaker still open on failures the fault caused)
    # is bounded_recovery's question, judged against the same objective.
    ends = [f["end_s"] for f in fired]
    t_end = None if any(e is None for e in ends) else max(ends)
    segments = [(t0, t1)] if t_end is None or t_end >= t1 else [(t0, t_end)]
    if t_end is not None and t_end + sc.objectives.rto_s < t1:
        segments.append((t_end + sc.objectives.rto_s, t1))
    m = pd.concat([_compare_frames(record, req, endpoints, widths, a, b) for a, b in segments],
                  ignore_index=True)
    m = m[(m["n_0"] > 0) & (m["n_1"] > 0)].reset_index(drop=True)
    z = _z(alpha, len(m))
    bad = _ratio_drop(m, z, margin)
    details.update({"checked": int(len(m)), "vacuous": len(m) == 0, "z": z, "segments": segments,
                    "window_s": widths, "violations": _window_rows(m, bad)})
    if not bad.any():
        return Verdict("", True,
                       f"all {len(endpoints)} endpoints kept their success ratio, direct failures aside, "
                       f"in all {len(m)} windows of {', '.join(f'[{a:g}, {b:g})' for a, b in segments)} s ({len(origins)} failed request(s): "
                       f"{len(origins) - len(collateral)} direct, {len(collateral)} collateral within tolerance)",
                       None, details)
    mb = m[bad]
    eps = list(dict.fromkeys(sorted(mb["endpoint"], key=endpoints.index)))
    # The collateral failures inside the failing windows: by mechanism, caller service and callee.
    inside = np.zeros(len(collateral), dtype=bool)
    cst = collateral["start"].to_numpy()
    cep = collateral["endpoint"].to_numpy()
    for _, r in mb.iterrows():
        inside |= (cep == r["endpoint"]) & (cst >= r["start"]) & (cst < r["end"])
    col = collateral[inside]
    callers = col["source"].map(lambda s: _caller_service(sc, s) or s)
    groups = (col.assign(caller=callers).groupby(["mechanism", "caller", "target"], sort=False)
              .size().sort_values(ascending=False, kind="stable"))
    mech, caller, target = groups.index[0]
    top = col[(col["mechanism"] == mech) & (callers == caller) & (col["target"] == target)]
    first = top.sort_values("t", kind="stable").iloc[0]
    chain = {}
    if mech == "short_circuit":
        chain = breaker_chain(record, first["source"], target, first["instance"], float(first["t"]))
    mechanisms = [{"mechanism": a, "caller": b, "target": c, "requests": int(n)}
                  for (a, b, c), n in groups.head(10).items()]
    details.update({"endpoints_violated": eps, "collateral_mechanisms": mechanisms, "chain": chain,
                    "example_path": first["path"]})
    w = mb.iloc[int(np.argmax((mb["ok_0"] / mb["n_0"] - mb["ok_1"] / mb["n_1"]).to_numpy()))]
    what = {"short_circuit": f"{caller}'s breakers short-circuited calls to {target}",
            "timeout": f"calls from {caller} to {target} timed out at a healthy {target}",
            "rejected": f"{target} rejected calls from {caller} (full queue or bulkhead) while healthy",
            "error": f"calls from {caller} to {target} failed at a healthy {target}",
            "auth_401": f"{target} refused {caller}'s tokens (401) while healthy",
            "no_instance": f"{caller} found no instance of {target} while some were up",
            "bulkhead_full": f"{caller}'s bulkhead for {target} was full",
            "discovery_error": f"{caller} could not discover {target} with the registry up",
            }.get(mech, f"{mech} on calls from {caller} to {target}")
    expl = (f"{len(eps)} of {len(endpoints)} endpoints ({', '.join(eps)}) failed beyond tolerance for "
            f"reasons other than the faulted {', '.join(faulted)}: {w['endpoint']} had "
            f"{_pct(w['ok_1'] / w['n_1'])} of {int(w['n_1'])} requests free of collateral failure in "
            f"[{w['start']:g}, {w['end']:g}) s vs {_pct(w['ok_0'] / w['n_0'])} ok in the baseline. "
            f"Mechanism: {what} ({int(groups.iloc[0])} of {len(col)} collateral failures in those windows; "
            f"e.g. {first['path']})"
            + (f"; chain: {describe_chain(chain)}" if chain else "") + ": a cascade")
    first_w = mb.sort_values("start", kind="stable").iloc[0]
    return Verdict("", False, expl, (float(first_w["start"]), float(first_w["end"])), details)


# --------------------------------------------------------------------------- 2. bounded recovery


@register("bounded_recovery")
def bounded_recovery(record: Record, *, recovery_s: Optional[float] = None, alpha: float = 0.01,
                     margin: float = 0.02, p99_ratio: float = 2.0, p99_abs_ms: float = 50.0,
                     min_requests: int = 50, min_requests_p99: int = 100,
                     window_s: Optional[float] = None) -> Verdict:
    """After the last fault ends, every endpoint's windowed success ratio and p99 return to
    within tolerance of the fault-free baseline within R seconds and stay there: every window
    starting at or after ``last end + R`` (until arrivals stop) passes.

    R is the scenario's recovery time objective (``objectives.rto_s``); what the policies'
    own timers predict (:func:`default_recovery_s`) is reported beside it
    (``details["predicted_recovery_s"]``), never used as the bound. Success ratio: the
    same one-sided Agresti-Caffo test as ``no_cascading_failure`` (``margin``, Bonferroni at
    ``alpha``). p99 (nearest rank, requests by start time): fails above
    ``max(p99_ratio x ref, ref + p99_abs_ms)``, ref the larger of the baseline window's and
    the baseline run's p99, checked only where both windows hold ``min_requests_p99``
    requests. ``details["recovered_after_s"]`` is when, on a grid from the last end, every
    later window passes (None: not by the end of the run).
    """
    sc = record.scenario
    fired = record.faults_fired
    details: dict = {"alpha": alpha, "margin": margin, "p99_ratio": p99_ratio, "p99_abs_ms": p99_abs_ms}
    if not fired:
        return Verdict("", True, "no fault fired: nothing to recover from", None,
                       {**details, "checked": 0, "vacuous": True})
    if any(f["end_s"] is None for f in fired):
        open_ = [sc.faults[f["index"]].kind for f in fired if f["end_s"] is None]
        return Verdict("", True, f"not applicable: {', '.join(open_)} never ended within the run",
                       None, {**details, "checked": 0, "vacuous": True})
    t_end = max(f["end_s"] for f in fired)
    # The bound is the user's recovery time objective; what the policies' own timers
    # predict is shown beside it, never used as the bound (objectives.md: "a design's own
    # timers are a prediction to show beside the objective").
    R = sc.objectives.rto_s if recovery_s is None else float(recovery_s)
    predicted = default_recovery_s(sc)
    beside = f"your timers predict recovery in {predicted:g} s; the objective is {R:g} s"
    t1 = sc.run.duration_s
    endpoints = [e.name for e in sc.workload.endpoints]
    widths = _widths(record, min_requests, window_s)
    ref_run = {e: float(record.baseline.endpoints.loc[e, "p99_ms"]) if e in record.baseline.endpoints.index
               else math.nan for e in endpoints}
    details.update({"last_fault_end_s": t_end, "recovery_s": R, "predicted_recovery_s": predicted,
                    "window_s": widths})

    # Observed recovery time, on a grid from the last end.
    g = _compare_windows(record, endpoints, widths, t_end, t1)
    g = g[(g["n_0"] > 0) & (g["n_1"] > 0)].reset_index(drop=True)
    if len(g):
        zg = _z(alpha, len(g))
        badg = _ratio_drop(g, zg, margin) | _p99_worse(g, ref_run, p99_ratio, p99_abs_ms, min_requests_p99)
        if badg.any():
            last_bad_end = float(g.loc[badg, "end"].max())
            details["recovered_after_s"] = None if last_bad_end >= t1 else last_bad_end - t_end
        else:
            details["recovered_after_s"] = 0.0
    else:
        details["recovered_after_s"] = None

    start = t_end + R
    if start >= t1:
        return Verdict("", True,
                       f"nothing to check: arrivals stop {t1 - t_end:g} s after the last fault ended, "
                       f"before R = {R:g} s; run arrivals until at least {start + max(widths.values()):g} s "
                       f"({beside})",
                       None, {**details, "checked": 0, "vacuous": True})
    m = _compare_windows(record, endpoints, widths, start, t1)
    m = m[(m["n_0"] > 0) & (m["n_1"] > 0)].reset_index(drop=True)
    z = _z(alpha, len(m))
    low = _ratio_drop(m, z, margin)
    slow = _p99_worse(m, ref_run, p99_ratio, p99_abs_ms, min_requests_p99)
    bad = low | slow
    details.update({"checked": int(len(m)), "vacuous": len(m) == 0, "z": z,
                    "violations": _window_rows(m, bad)})
    if not bad.any():
        return Verdict("", True,
                       f"every endpoint was within tolerance in all {len(m)} windows from "
                       f"{start:g} s ({R:g} s after the last fault ended at {t_end:g} s; {beside})", None, details)
    first = m[bad].sort_values("start", kind="stable").iloc[0]
    i = int(first.name)
    what = []
    if low[i]:
        what.append(f"succeeded {_pct(first['ok_1'] / first['n_1'])} vs {_pct(first['ok_0'] / first['n_0'])}")
    if slow[i]:
        what.append(f"p99 {first['p99_ms_1']:.0f} ms vs baseline {first['p99_ms_0']:.0f} ms")
    eps = list(dict.fromkeys(m.loc[bad, "endpoint"]))
    rec = details["recovered_after_s"]
    tail = ("it had not recovered when arrivals stopped" if rec is None
            else f"it was back {rec:g} s after the fault")
    expl = (f"{first['endpoint']} {' and '.join(what)} in [{first['start']:g}, {first['end']:g}) s, "
            f"{first['start'] - t_end:g} s after the last fault ended (R = {R:g} s); "
            f"{int(bad.sum())} late window(s) over {', '.join(eps)}; {tail}; {beside}")
    details["endpoints_violated"] = eps
    return Verdict("", False, expl, (float(first["start"]), float(first["end"])), details)


# --------------------------------------------------------------------------- 3. conservation


def _unique_counts(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ids, sorted, and how often each occurs. By sorting: numpy 2's hash-based
    ``np.unique`` (also inside ``np.setdiff1d``) took 0.6-0.9 s on 140,000 call ids here.
    Integer ids within a span not much wider than their number (the log's request and
    call ids: dense from 0, -1 for None) are counted with ``np.bincount`` instead (issue
    12: no sort of 280,000 call ids), which gives the same arrays."""
    if len(ids) and ids.dtype.kind in "iu":
        lo, hi = int(ids.min()), int(ids.max())
        if hi - lo <= 4 * len(ids) + 1024:
            counts = np.bincount((ids - lo).astype(np.intp), minlength=hi - lo + 1)
            at = np.flatnonzero(counts)
            return (at + lo).astype(ids.dtype), counts[at].astype(np.intp)
    a = np.sort(ids)
    if len(a) == 0:
        return a, np.zeros(0, dtype=np.intp)
    first = np.empty(len(a), dtype=bool)
    first[0] = True
    np.not_equal(a[1:], a[:-1], out=first[1:])
    at = np.flatnonzero(first)
    return a[at], np.diff(np.append(at, len(a)))


def _member(a: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """Whether each element of ``a`` is in ``sorted_unique`` (binary search)."""
    if len(sorted_unique) == 0:
        return np.zeros(len(a), dtype=bool)
    i = np.minimum(np.searchsorted(sorted_unique, a), len(sorted_unique) - 1)
    return sorted_unique[i] == a


def _minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted unique ``a`` without the elements of sorted unique ``b``."""
    return a[~_member(a, b)]


@register("conservation")
def conservation(record: Record, *, grace_s: Optional[float] = None) -> Verdict:
    """Every request has exactly one terminal outcome (one ``request_end``, its outcome one
    of ok/error/timeout/rejected, none unfinished, none without a start); every call has at
    most one ``call_end`` and none ends that did not start; every durable message is
    acknowledged at most once and is delivered once its consumer is back: a message still
    unacknowledged at the end of the run is *lost* if, by then, its consumer service had
    an instance up and the broker was up for ``grace_s`` without a break (default: the
    broker's ``heartbeat_timeout_s``, within which it requeues what a dead connection held
    (RabbitMQ: 60 s), plus its ``redelivery_delay_s``).
    """
    log = record.log
    sc = record.scenario
    problems: list[str] = []
    details: dict = {}
    window = None
    # Requests.
    s_rows = log.rows("request_start")
    e_rows = log.rows("request_end")
    # Set arithmetic on sorted id arrays, not Python sets of a million ids: the same
    # sorted lists.
    started = log.request[s_rows]
    u_start, _ = _unique_counts(started)
    u_end, n_end = _unique_counts(log.request[e_rows])
    unfinished = _minus(u_start, u_end).tolist()
    doubled = u_end[n_end > 1].tolist()
    unstarted = _minus(u_end, u_start).tolist()
    bad_out = sorted({o for o in pd.unique(log.outcome[e_rows]).tolist() if o not in OUTCOMES}, key=str)
    details.update({"requests": int(len(started)), "unfinished_requests": len(unfinished),
                    "requests_ended_twice": len(doubled), "ends_without_start": len(unstarted),
                    "unknown_outcomes": bad_out})
    if unfinished:
        r0 = unfinished[0]
        last = int(s_rows[np.flatnonzero(started == r0)[-1]])  # its last start, as a dict kept
        start_t, start_ep = {r0: float(log.t[last])}, {r0: log.target[last]}
        problems.append(f"{len(unfinished)} request(s) never ended (first: request {r0} to "
                        f"{start_ep[r0]} at {start_t[r0]:g} s)")
        window = (start_t[r0], record.result.end_s)
    if doubled:
        problems.append(f"{len(doubled)} request(s) ended more than once (first: request {doubled[0]})")
    if unstarted:
        problems.append(f"{len(unstarted)} request_end row(s) without a start")
    if bad_out:
        problems.append(f"request outcomes outside {OUTCOMES}: {bad_out}")
    # Calls.
    cs = log.rows("call_start")
    ce = log.rows("call_end")
    u_ce, n_ce = _unique_counts(log.call[ce])
    cstarted, _ = _unique_counts(log.call[cs])
    c_doubled = u_ce[n_ce > 1].tolist()
    c_unstarted = _minus(u_ce, cstarted).tolist()
    c_open = len(_minus(cstarted, u_ce))
    details.update({"calls": len(cstarted), "calls_ended_twice": len(c_doubled),
                    "call_ends_without_start": len(c_unstarted), "calls_in_flight_at_end": c_open})
    if c_doubled:
        problems.append(f"{len(c_doubled)} call(s) ended more than once (first: call {sorted(c_doubled)[0]})")
    if c_unstarted:
        problems.append(f"{len(c_unstarted)} call_end row(s) without a call_start")
    # Messages.
    pub = log.rows("message_publish")
    u_ack, n_ack = _unique_counts(log.call[log.rows("message_ack")])
    msg_doubled = u_ack[n_ack > 1].tolist()
    unacked = pub[~_member(log.call[pub], u_ack)].tolist()
    details.update({"messages": int(len(pub)), "messages_acked_twice": len(msg_doubled),
                    "messages_unacked": len(unacked)})
    if msg_doubled:
        problems.append(f"{len(msg_doubled)} message(s) acknowledged more than once")
    lost = []
    # The broker requeues what a dead consumer connection held once its heartbeat times
    # out (the broker's own heartbeat_timeout_s, as the engine uses it; RabbitMQ's default
    # is 60 s), then redelivers after its delay.
    graces = {c.name: (c.heartbeat_timeout_s + c.redelivery_delay_s if grace_s is None else grace_s)
              for c in sc.infrastructure if c.kind == "queue"}
    details["grace_s"] = graces
    if unacked:
        states = record.instance_states
        end_t = record.result.end_s
        ups: dict[str, Optional[float]] = {}
        for r in unacked:
            broker, consumer = log.source[r], log.target[r]
            for comp in (broker, consumer):
                if comp not in ups:
                    insts = [k for k in states if _service_of(sc, k) == comp]
                    ups[comp] = _up_since(states, insts)
            g = graces[broker]
            cu, bu = ups[consumer], ups[broker]
            if cu is not None and bu is not None and end_t - max(cu, bu) >= g:
                lost.append(r)
        details["messages_lost"] = len(lost)
        if lost:
            r0 = lost[0]
            consumer = log.target[r0]
            problems.append(
                f"{len(lost)} message(s) never acknowledged although {consumer} and "
                f"{log.source[r0]} were up for the last {end_t - max(ups[consumer], ups[log.source[r0]]):g} s "
                f"(first: message {int(log.call[r0])} to {consumer}.{log.operation[r0]}, published at "
                f"{log.t[r0]:g} s): lost")
            if window is None:
                window = (float(log.t[r0]), end_t)
    else:
        details["messages_lost"] = 0
    details["checked"] = int(len(started) + len(pub))
    details["vacuous"] = len(started) == 0
    if problems:
        return Verdict("", False, "; ".join(problems), window, details)
    return Verdict("", True,
                   f"all {len(started)} requests ended exactly once; {len(pub)} message(s), "
                   f"{len(unacked)} unacknowledged at the end, none lost", None, details)


# --------------------------------------------------------------------------- 4. breaker legality

_LEGAL = {
    # Spec 3.5.1 CircuitBreaker: a late failure while OPEN calls transitionToOpen again
    # (docs/mechanisms/breakers.md, quirk 2), logged as open -> open.
    "spec": {("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
             ("half_open", "open"), ("open", "open")},
    # resilience4j's CircuitBreakerStateMachine (CLOSED, OPEN, HALF_OPEN).
    "sliding_window": {("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
                       ("half_open", "open")},
}


def _breaker_configs(scenario: Scenario, caller: str, key: str) -> list:
    """The breaker configs that can serve breaker ``key`` of a ``caller`` instance."""
    names = {s.name for s in scenario.services}
    out = []
    for a, b in _edges(scenario):
        if a != caller:
            continue
        e = _edge_policy(scenario, a, b)
        if e["breaker"] is None:
            continue
        scope = e["breaker_scope"]
        if (scope == "client" and key == "*") or (scope == "service" and key == b) or (
            scope == "instance" and key not in names and _service_of(scenario, key) == b
        ):
            if e["breaker"] not in out:
                out.append(e["breaker"])
    return out


@register("breaker_legality")
def breaker_legality(record: Record) -> Verdict:
    """Every breaker (one per caller instance and scope key, as the log names them) moves
    only along its policy's state machine, starting closed, each transition leaving the
    state the previous one entered: spec breakers closed->open, open->half_open,
    half_open->closed, half_open->open and the spec's own open->open re-entry;
    sliding-window (resilience4j) breakers the same without open->open. And in each
    half-open episode it admits at most its declared probe limit (sliding window:
    ``permitted_calls_in_half_open``; spec: ``half_open_max_calls``, a promise checked
    whether or not the implementation enforces it: ``enforce_half_open_limit``), counting the caller's calls that start under that breaker
    between the transition into half-open and the next transition.
    """
    log = record.log
    sc = record.scenario
    names = {s.name for s in sc.services}
    rows = log.rows("breaker")
    if len(rows) == 0:
        return Verdict("", True, "no breaker changed state: nothing to check", None,
                       {"transitions": 0, "episodes": 0, "checked": 0, "vacuous": True})
    by: "OrderedDict[tuple[str, str], list[int]]" = OrderedDict()
    for r in rows.tolist():
        by.setdefault((log.source[r], log.target[r]), []).append(r)
    problems: list[dict] = []
    # Calls under each caller instance: call_start rows with the callee service; the
    # instance a call went to is on its call_end row.
    cs = log.rows("call_start")
    end_tab = log.call_rows("call_end")  # each call's last call_end row (-1: none)
    calls_by_src: dict[str, tuple[np.ndarray, list, list]] = {}
    # The callers' call_start rows by integer code (one factorize; an object comparison
    # per caller instance over every call_start row cost more).
    scodes, snames = log.codes("source", "call_start")
    code_of = {v: i for i, v in enumerate(snames.tolist())}
    for src in sorted({k[0] for k in by}):
        sel = cs[scodes == code_of.get(src, -2)]
        e = end_tab[log.call[sel] + 1]
        insts = np.where(e >= 0, log.instance[np.maximum(e, 0)], None)
        calls_by_src[src] = (sel, log.target[sel].tolist(), insts.tolist())
    episodes = 0
    max_probes = 0
    for (src, key), rs in by.items():
        caller = _caller_service(sc, src)
        confs = _breaker_configs(sc, caller, key)
        kinds = sorted({c.kind for c in confs}) or ["spec", "sliding_window"]
        legal = set().union(*(_LEGAL[k] for k in kinds))
        limits = [c.permitted_calls_in_half_open if c.kind == "sliding_window"
                  else c.half_open_max_calls for c in confs]
        limit = None if (not limits or any(x is None for x in limits)) else max(limits)
        state = "closed"
        for idx, r in enumerate(rs):
            a, b, t = log.operation[r], log.outcome[r], float(log.t[r])
            if a != state:
                problems.append({"breaker": (src, key), "t": t, "kind": "discontinuity",
                                 "text": f"breaker {key!r} of {src} went {a}->{b} at {t:g} s but was {state}"})
            elif (a, b) not in legal:
                problems.append({"breaker": (src, key), "t": t, "kind": "illegal",
                                 "text": f"breaker {key!r} of {src} went {a}->{b} at {t:g} s, not a "
                                         f"transition of the {'/'.join(kinds)} state machine"})
            state = b
            if b == "half_open":
                episodes += 1
                nxt = rs[idx + 1] if idx + 1 < len(rs) else log.n
                sel, tgts, insts = calls_by_src[src]
                lo, hi = np.searchsorted(sel, r, side="right"), np.searchsorted(sel, nxt, side="left")
                n = 0
                for j in range(lo, hi):
                    tg = tgts[j]
                    if tg not in names:
                        continue
                    if key == "*" or key == tg or insts[j] == key:
                        n += 1
                max_probes = max(max_probes, n)
                if limit is not None and n > limit:
                    t_end = float(log.t[nxt]) if nxt < log.n else record.result.end_s
                    problems.append({"breaker": (src, key), "t": t, "t_end": t_end, "kind": "probes",
                                     "text": f"breaker {key!r} of {src} admitted {n} calls in the half-open "
                                             f"episode from {t:g} s to {t_end:g} s; its limit is {limit}"})
    details = {"breakers": len(by), "transitions": int(len(rows)), "episodes": episodes,
               "max_half_open_probes": max_probes, "checked": int(len(rows)), "vacuous": False,
               "violations": problems[:20]}
    if not problems:
        return Verdict("", True, f"{len(rows)} transitions of {len(by)} breaker(s) were legal; "
                                 f"{episodes} half-open episode(s), at most {max_probes} probe(s) each",
                       None, details)
    p = problems[0]
    return Verdict("", False, p["text"] + (f" ({len(problems)} violations)" if len(problems) > 1 else ""),
                   (p["t"], p.get("t_end", p["t"])), details)


# --------------------------------------------------------------------------- 5. dead instances


def _overlap(a: float, b: float, intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``intervals`` within [a, b]."""
    total, cur = 0.0, a
    for s, e in sorted(intervals):
        s, e = max(s, cur), min(e, b)
        if e > s:
            total += e - s
            cur = e
    return total


@register("no_traffic_to_dead_instances")
def no_traffic_to_dead_instances(record: Record, *, bound_s: Optional[float] = None) -> Verdict:
    """No call is sent to a dead instance more than the objective's bound after it
    died. Dead: after its ``instance_down`` or ``instance_stop`` until its next
    ``instance_up``, and while a ``hang`` fault holds it. A call is sent when its
    ``call_start`` is logged and goes to the instance on its ``call_end``. The bound is
    the objective ``objectives.dead_instance_s``; what the registry policy of the call's
    edge predicts (:func:`dead_instance_bound_s`) is reported beside it; time in
    which the registry was unreachable (an outage, a partition with it, the registry down
    with its node or zone) does not count,
    as no registry policy can act then. ``bound_s`` overrides the bound for every call.

    A hung instance is dead only for callers that find instances through the registry
    (service instances): the gateway and the brokers pick among the engine's up instances,
    which no registry policy governs; their calls to hung instances are counted in
    ``details["hung_calls_outside_registry"]`` but are not violations.
    """
    log = record.log
    sc = record.scenario
    services = {s.name for s in sc.services}
    states = record.instance_states
    cs = log.rows("call_start")
    ce = log.rows("call_end")
    # The instance that served each call_start's call (from its call_end; None if it never
    # ended): a lookup table indexed by call id + 1 (-1, a missing id, at 0), the last
    # call_end of an id winning, as a dict built in log order would.
    inst_of = np.full(int(max(log.call.max(initial=-1), 0)) + 2, None, dtype=object)
    inst_of[log.call[ce] + 1] = log.instance[ce]
    insts = inst_of[log.call[cs] + 1]
    outages = record.registry_unreachable
    worst = None
    count = 0
    checked = 0
    per_instance: dict[str, int] = {}
    # The bound is the objective (objectives.dead_instance_s); what the registry policy
    # predicts per edge (dead_instance_bound_s) is shown beside it.
    default_bound = sc.objectives.dead_instance_s if bound_s is None else float(bound_s)
    predicted: dict = {}
    deaths = 0
    unmanaged = 0
    for inst, (rows, ts, ss) in states.items():
        svc = _service_of(sc, inst)
        if svc not in services:
            continue
        # A spell: a logged transition from up to not up.
        spells = sum(1 for i in range(1, len(ss)) if ss[i] != "up" and ss[i - 1] == "up")
        if not spells:
            continue
        deaths += spells
        sel = cs[insts == inst]
        if len(sel) == 0:
            continue
        # State at each call: the last transition before the call's row.
        k = np.searchsorted(rows, sel, side="right") - 1
        for r, kk in zip(sel.tolist(), k.tolist()):
            if ss[kk] == "up":
                continue
            # Dead since the first non-up transition of this spell.
            d = kk
            while d > 0 and ss[d - 1] != "up":
                d -= 1
            died = float(ts[d])
            t = float(log.t[r])
            src = log.source[r]
            caller = _caller_service(sc, src)
            if caller is None and ss[kk] == "hung":
                unmanaged += 1
                continue
            b = default_bound
            checked += 1
            excess = t - died - _overlap(died, t, outages) - b
            if excess > 1e-9:
                count += 1
                per_instance[inst] = per_instance.get(inst, 0) + 1
                if worst is None or excess > worst["excess_s"]:
                    key = (caller, svc) if caller in services else (None, None)
                    if key not in predicted:
                        predicted[key] = dead_instance_bound_s(sc, *key)
                    worst = {"instance": inst, "caller": src, "died_s": died, "sent_s": t,
                             "bound_s": b, "predicted_s": predicted[key], "excess_s": excess,
                             "state": ss[kk]}
    overall = dead_instance_bound_s(sc)
    details = {"deaths": deaths, "calls_to_dead_instances": checked, "calls_beyond_bound": count,
               "per_instance": per_instance, "bound_s": default_bound, "predicted_s": overall,
               "checked": checked,
               "hung_calls_outside_registry": unmanaged,
               "vacuous": deaths == 0, "worst": worst}
    if count == 0:
        return Verdict("", True,
                       f"{checked} call(s) reached {deaths} dead instance spell(s), all within the "
                       f"objective ({default_bound:g} s; your registry policy predicts up to {overall:g} s)"
                       if deaths else
                       "no instance died: nothing to check", None, details)
    w = worst
    how = "hung" if w["state"] == "hung" else "dead"
    expl = (f"{w['caller']} sent a call to {w['instance']} at {w['sent_s']:g} s, "
            f"{w['sent_s'] - w['died_s']:g} s after it went {how} at {w['died_s']:g} s; the objective "
            f"is {w['bound_s']:g} s and your registry policy predicts {w['predicted_s']:g} s "
            f"({count} call(s) beyond the objective to {', '.join(sorted(per_instance))})")
    return Verdict("", False, expl, (w["died_s"], w["sent_s"]), details)


# --------------------------------------------------------------------------- 6. tokens


def _skews(scenario: Scenario, log: _Log):
    """skew(node, t): the node's configured skew plus clock_skew faults active at t."""
    base = {n.name: n.clock_skew_s for n in scenario.nodes}
    spans: dict[str, list[tuple[float, float, float]]] = {}
    starts: dict[int, float] = {}
    for r in log.rows("fault_start", "fault_end").tolist():
        if log.operation[r] != "clock_skew":
            continue
        i = int(log.outcome[r])
        if log.event[r] == "fault_start":
            starts[i] = float(log.t[r])
        else:
            f = scenario.faults[i]
            spans.setdefault(f.node, []).append((starts.pop(i), float(log.t[r]), f.skew_s))
    for i, t in starts.items():
        f = scenario.faults[i]
        spans.setdefault(f.node, []).append((t, math.inf, f.skew_s))

    def skew(node: Optional[str], t: float) -> float:
        if node is None:
            return 0.0
        return base.get(node, 0.0) + sum(s for a, b, s in spans.get(node, ()) if a <= t < b)

    return skew


def _groups(codes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The positions of each distinct code, ascending, codes in order of first appearance:
    what ``{c: np.flatnonzero(codes == c) for c in dict.fromkeys(codes)}`` gives, from one
    stable sort."""
    if not len(codes):
        return []
    order = np.argsort(codes, kind="stable")
    grouped = codes[order]
    bounds = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1], True]).tolist()
    spans = sorted(zip(bounds[:-1], bounds[1:]), key=lambda ab: int(order[ab[0]]))
    return [(int(grouped[a]), order[a:b]) for a, b in spans]


@register("token_safety")
def token_safety(record: Record) -> Verdict:
    """Safety: no service-to-service call is accepted with a token that had expired, in
    true time, by more than the verifier's leeway when the call was sent, or that was
    signed with a key the issuer had not published; an expired token accepted while the
    clocks involved (true time, the caller's, the verifier's, the signer's when it signed)
    are further apart than ``objectives.max_clock_skew_s`` is outside the objective and
    excused (counted, and named in the verdict). Liveness: no call fails authentication
    (``auth_401``) while the issuer is reachable (with ``signing: issuer``: an instance up,
    no registry outage, no partition between caller and issuer; with ``signing: local``
    there is nothing to reach) and the clocks involved (caller, verifier, and
    the issuer when it signed) are within ``objectives.max_clock_skew_s`` of each other
    (not the verifier's configured leeway: a 401 the caller could not avoid is a liveness
    failure whatever leeway the verifier has) -- unless a later
    attempt of the same call from the same parent succeeded (a refresh-and-retry).

    The token a call carried is read from the log. With ``tokens.signing: local`` (seed's
    and the default reading of the spec's ServiceAuth.generateToken) it is the caller
    instance's latest ``token_signed`` row before the call started, which logs the key id
    and ``exp`` it signed on its own clock. With ``signing: issuer`` it is the latest
    successful call from the caller instance to the issuer's operation that ended before
    the call started (its claims: ``iat = floor(end + issuer skew)``, ``exp = iat + ttl_s``,
    key: the rotations so far); if the caller's own tree also calls that operation the
    freshest such call is taken, which can only hide a violation, never invent one, and
    calls to the issuer's operation are not checked (a token fetch carries no token).
    Accepted: the callee served the call and answered ok (``work_end``/``orphan_end`` ok).
    """
    sc = record.scenario
    tok = record.policies.tokens
    if not tok.enabled:
        return Verdict("", True, "not applicable: service tokens are disabled", None,
                       {"checked": 0, "vacuous": True})
    log = record.log
    skew_ok = sc.objectives.max_clock_skew_s
    issuer_svc, issuer_op = split_target(tok.issuer)
    services = {s.name for s in sc.services}
    skew = _skews(sc, log)
    node = {}

    def node_of(inst):
        if inst not in node:
            node[inst] = _node_of(sc, inst)
        return node[inst]

    rotations = sorted([*tok.key_rotations_s,
                        *(float(f["start_s"]) for f in record.faults_fired if f["kind"] == "key_rotation")])
    cs = log.rows("call_start")
    # Each call's last call_end and call_start row (lookup tables by call id, shared).
    end_tab = log.call_rows("call_end")
    start_tab = log.call_rows("call_start")

    def end_row(c: int) -> Optional[int]:
        e = int(end_tab[c + 1])
        return None if e < 0 else e

    local = tok.signing == "local"
    # The tokens each caller instance obtained, in log order: (row, claims). signing: issuer:
    # the caller's successful calls to the issuer's operation, claims rebuilt from the end
    # time and the issuer's clock. signing: local: the caller's own ``token_signed`` rows,
    # which carry the key id (operation) and exp (outcome) of the token it signed.
    fetches: dict[str, list[tuple[int, dict]]] = {}
    # tokens.first_token: steady_state: the token each caller held from before the run
    # (``token_held``: signer in instance, key id in operation, exp in outcome; signed
    # before time 0, so on the signer's configured clock: issued_s = -inf for ``skew``).
    for r in log.rows("token_held").tolist():
        kid = str(log.operation[r])
        exp = float(log.outcome[r])
        fetches.setdefault(log.source[r], []).append(
            (r, {"exp": exp, "kid": int(kid[1:]) if kid[1:].isdigit() else 0,
                 "issued_s": -math.inf, "issuer": log.instance[r]}))
    if local:
        for r in log.rows("token_signed").tolist():
            t = float(log.t[r])
            kid = str(log.operation[r])
            fetches.setdefault(log.source[r], []).append(
                (r, {"exp": float(log.outcome[r]), "kid": int(kid[1:]) if kid[1:].isdigit() else 0,
                     "issued_s": t, "issuer": log.instance[r]}))
    # The call_starts' callers, callees and operations as the log's shared codes: the
    # calls to the issuer's operation and the accepted calls below are picked by code (no
    # Python test, no comparison of strings, per call_start row).
    scodes, sources = log.codes("source", "call_start")
    tcodes, targets = log.codes("target", "call_start")
    ocodes, ops = log.codes("operation", "call_start")
    tc = next((i for i, x in enumerate(targets.tolist()) if x == issuer_svc), -2)
    oc = -1 if issuer_op is None else next((i for i, x in enumerate(ops.tolist()) if x == issuer_op), -2)
    to_issuer = (tcodes == tc) & (ocodes == oc)
    if not local:
        for r in cs[to_issuer].tolist():
            e = end_row(int(log.call[r]))
            if e is not None and log.outcome[e] == "ok" and log.source[r] is not None:
                t = float(log.t[e])
                iss = log.instance[e]
                iat = math.floor(t + skew(node_of(iss), t))
                fetches.setdefault(log.source[r], []).append(
                    (e, {"exp": iat + tok.ttl_s, "kid": sum(1 for x in rotations if x <= t),
                         "issued_s": t, "issuer": iss}))
    for v in fetches.values():
        v.sort(key=lambda x: x[0])
    fetch_rows = {k: np.array([x[0] for x in v]) for k, v in fetches.items()}

    def token_for(src: str, row: int):
        v = fetches.get(src)
        if not v:
            return None
        i = int(np.searchsorted(fetch_rows[src], row, side="left")) - 1
        if i < 0:
            return None
        return v[i][1]

    # Accepted s2s calls: served and answered ok. Vectorised per caller instance: the
    # token each call carried is the caller's latest fetch that ended before it started.
    served = log.rows("work_end", "orphan_end")
    ok_calls = log.call[served[log.outcome[served] == "ok"]]
    # Membership by a table indexed by call id + 1 (O(n); np.isin sorts both sides).
    is_ok = np.zeros(int(max(log.call.max(initial=-1), 0)) + 2, dtype=bool)
    is_ok[ok_calls + 1] = True
    # Per code, then per row (code -1, None, reads the appended False).
    to_service = np.array([t in services for t in targets.tolist()] + [False], dtype=bool)
    from_service = np.array([_caller_service(sc, x) is not None for x in sources.tolist()] + [False], dtype=bool)
    keep = (is_ok[log.call[cs] + 1] & to_service[tcodes] & from_service[scodes]
            & ~(to_issuer & (not local)))
    cand, cand_codes = cs[keep], scodes[keep]
    rot = np.asarray(rotations, dtype=float)
    found: list[tuple[int, dict]] = []
    unsafe_excused = 0  # expired tokens accepted with clocks beyond the objective's skew
    checked = 0
    # The candidates by caller instance (issue 12: grouped by code, not by comparing every
    # candidate's name with each caller's).
    for code, at in _groups(cand_codes):
        src = sources[code]
        v = fetches.get(src)
        if not v:
            continue
        rows_src = cand[at]
        i = np.searchsorted(fetch_rows[src], rows_src, side="left") - 1
        has = i >= 0
        rows_src, i = rows_src[has], i[has]
        checked += len(rows_src)
        claims = [x[1] for x in v]
        exp = np.array([c["exp"] for c in claims], dtype=float)[i]
        kid = np.array([c["kid"] for c in claims], dtype=np.int64)[i]
        t = log.t[rows_src]
        published = np.searchsorted(rot, t, side="right")
        for j in np.flatnonzero((t > exp + tok.leeway_s) | (kid > published)).tolist():
            r = int(rows_src[j])
            c = int(log.call[r])
            e = end_row(c)
            if kid[j] <= published[j]:
                # Expired, not an unpublished key: outside the objective when the clocks
                # involved (true time included: exp is an absolute time; the caller's, the
                # verifier's, the signer's when it signed) are further apart than
                # objectives.max_clock_skew_s. No verifier can tell true time better.
                tk = claims[int(i[j])]
                ts = float(t[j])
                clocks = [0.0, skew(node_of(src), ts), skew(node_of(tk["issuer"]), tk["issued_s"])]
                if e is not None and log.instance[e] is not None:
                    clocks.append(skew(node_of(log.instance[e]), ts))
                if max(clocks) - min(clocks) > skew_ok:
                    unsafe_excused += 1
                    continue
            found.append((r, {"call": c, "caller": src, "callee": log.instance[e] if e is not None else None,
                              "sent_s": float(t[j]), "exp": float(exp[j]), "expired_by_s": float(t[j] - exp[j]),
                              "kid": int(kid[j]), "published": int(published[j])}))
    unsafe = [u for _, u in sorted(found, key=lambda x: x[0])]
    # Liveness.
    a401 = log.rows("auth_401")
    outages = record.registry_unreachable
    partitions = [(f["start_s"], f["end_s"] if f["end_s"] is not None else math.inf, sc.faults[f["index"]])
                  for f in record.faults_fired if f["kind"] == "partition"]
    issuer_insts = [k for k in record.instance_states if _service_of(sc, k) == issuer_svc]
    states = record.instance_states
    later_ok: dict[tuple, list[int]] = {}
    if len(a401):
        e = end_tab[log.call[cs] + 1]
        done_ok = cs[(e >= 0) & (log.outcome[np.maximum(e, 0)] == "ok")]
        # Only the parents a 401 below will look up (issue 12: a clock skew draws 401s, and a
        # dict of every ok call, ~300,000, cost half a second). A 401's parent is its call's
        # start row's parent (-1 without one), as the loop reads it.
        s401 = start_tab[log.call[a401] + 1]
        asked = np.where(s401 >= 0, log.parent[np.maximum(s401, 0)], -1)
        for r in done_ok[np.isin(log.parent[done_ok], asked)].tolist():
            later_ok.setdefault((int(log.parent[r]), log.target[r], log.operation[r]), []).append(r)
    unlive = []
    excused = {"issuer_unreachable": 0, "clocks_apart": 0, "rescued": 0}
    for r in a401.tolist():
        c = int(log.call[r])
        t = float(log.t[r])
        sr = int(start_tab[c + 1])
        sr = None if sr < 0 else sr
        src = log.source[r]
        verifier = log.instance[r]
        parent = int(log.parent[sr]) if sr is not None else -1
        rescue = later_ok.get((parent, log.target[r], log.operation[r]), [])
        if any(x > r for x in rescue):
            excused["rescued"] += 1
            continue
        # Issuer reachable? With signing: local the caller signs its own tokens (3.7.1):
        # nothing on the network to reach, so no 401 is excused as "issuer unreachable".
        up = local
        for inst in ([] if local else issuer_insts):
            rows, ts, ss = states[inst]
            k = int(np.searchsorted(rows, r, side="right")) - 1
            if ss[k] == "up":
                up = True
                break
        caller_svc = _caller_service(sc, src)
        cut = any(a <= t < b and {f.a, f.b} & {src, caller_svc} and
                  {f.a, f.b} & {issuer_svc, *issuer_insts}
                  for a, b, f in partitions)
        if not local and (not up or cut or any(a <= t < b for a, b in outages)):
            excused["issuer_unreachable"] += 1
            continue
        tk = token_for(src, sr if sr is not None else r)
        clocks = [skew(node_of(src), t), skew(node_of(verifier), t)]
        if tk is not None:
            clocks.append(skew(node_of(tk["issuer"]), tk["issued_s"]))
        # Clocks further apart than the objective's tolerated skew excuse a 401; within
        # it, the caller could not have avoided the 401 whatever leeway the verifier has.
        if max(clocks) - min(clocks) > skew_ok:
            excused["clocks_apart"] += 1
            continue
        unlive.append({"call": c, "caller": src, "verifier": verifier, "t": t,
                       "verdict": log.outcome[r], "skews": clocks})
    details = {"calls_checked": checked, "auth_401": int(len(a401)), "unsafe": unsafe[:20],
               "unsafe_count": len(unsafe), "unsafe_excused_clocks_apart": unsafe_excused,
               "failed_auth": unlive[:20], "failed_auth_count": len(unlive),
               "excused_401": excused, "checked": checked + int(len(a401)), "vacuous": checked == 0}
    problems = []
    window = None
    if unsafe:
        u = unsafe[0]
        problems.append(f"{u['callee']} accepted a call from {u['caller']} at {u['sent_s']:g} s with a "
                        f"token expired {u['expired_by_s']:g} s earlier (leeway {tok.leeway_s:g} s; "
                        f"{len(unsafe)} such call(s))")
        window = (u["sent_s"], u["sent_s"])
    if unlive:
        u = unlive[0]
        problems.append(f"{u['verifier']} refused a call from {u['caller']} at {u['t']:g} s "
                        f"({u['verdict']}) although the issuer was reachable and clocks were within "
                        f"{skew_ok:g} s (the objective's tolerated skew; the verifier's leeway is "
                        f"{tok.leeway_s:g} s); {len(unlive)} such failure(s)")
        window = window or (u["t"], u["t"])
        if len(unlive) > 1:
            window = (min(window[0], unlive[0]["t"]), max(window[1], unlive[-1]["t"]))
    beyond = (f"; clocks further apart than the objective's {skew_ok:g} s tolerated skew "
              f"(outside the objective, excused): {unsafe_excused} expired token(s) accepted, "
              f"{excused['clocks_apart']} 401(s)") if unsafe_excused or excused["clocks_apart"] else ""
    if problems:
        return Verdict("", False, "; ".join(problems) + beyond, window, details)
    return Verdict("", True, (f"{checked} accepted call(s) carried valid tokens; {len(a401)} 401(s), "
                              f"each excused ({excused})" if len(a401) else
                              f"{checked} accepted call(s) carried valid tokens; no call failed authentication")
                   + beyond, None, details)


# --------------------------------------------------------------------------- 7. retry amplification


def _calls_per_request(log: _Log, brokers: Sequence[str] = ()) -> pd.DataFrame:
    """Calls per (request, target, operation); calls from ``brokers`` (message deliveries)
    and every call below them are left out. Rows in order of each triple's first call;
    ``operation`` is None for a component's calls (they name no operation); ``what`` is
    ``target.operation`` (``target`` alone for a component's calls)."""
    cs = log.rows("call_start")
    # The log's shared codes of every call_start's target and operation (None -> -1).
    tcodes, targets = log.codes("target", "call_start")
    ocodes, ops = log.codes("operation", "call_start")
    if brokers:
        # A call is asynchronous if a broker made it or its parent call is asynchronous (a
        # parent's call_start comes before its children's): marked from the brokers' calls
        # down, one generation of the call trees per pass.
        src, call, parent = log.source[cs], log.call[cs], log.parent[cs]
        async_ = np.isin(src, list(brokers))
        pos = np.full(int(max(call.max(initial=-1), parent.max(initial=-1))) + 2, -1, dtype=np.int64)
        pos[call] = np.arange(len(cs))
        up = np.where(parent >= 0, pos[parent], -1)
        up = np.where(up < np.arange(len(cs)), up, -1)  # only parents whose call came first
        has_up = up >= 0
        while True:
            more = async_ | (has_up & async_[np.maximum(up, 0)])
            if (more == async_).all():
                break
            async_ = more
        cs, tcodes, ocodes = cs[~async_], tcodes[~async_], ocodes[~async_]
    request = log.request[cs]
    known = tcodes >= 0  # groupby leaves out a missing target
    request, tcodes, ocodes = request[known], tcodes[known], ocodes[known] + 1
    O = np.int64(len(ops) + 1)
    pair = tcodes * O + ocodes
    triple, _ = pd.factorize(request * np.int64(len(targets) + 1) * O + pair)  # first-seen order
    counts = np.bincount(triple)
    first = _first_rows(triple)
    op_names = np.asarray([None, *ops.tolist()], dtype=object)
    # One label per distinct (target, operation) pair, not per row.
    pcodes, pairs = pd.factorize(pair[first])
    labels = np.asarray([str(targets[p // O]) if p % O == 0 else f"{targets[p // O]}.{op_names[p % O]}"
                         for p in pairs.tolist()], dtype=object)
    return pd.DataFrame({"request": request[first],
                         "target": pd.Series(targets[tcodes[first]], dtype=object),
                         "operation": pd.Series(op_names[ocodes[first]], dtype=object),
                         "calls": counts.astype(np.int64),
                         "what": pd.Series(labels[pcodes], dtype=object)})


def _repeats_by_caller(log: _Log, brokers: Sequence[str], skip_targets: Sequence[str] = ()) -> pd.DataFrame:
    """Per caller service: calls made (``call_start`` from its instances, message deliveries
    and calls to ``skip_targets`` left out) and repeats: calls with the same parent, target
    and operation as an earlier one (retries, and a ``repeat`` node's siblings: the
    baseline has those too)."""
    cs = log.rows("call_start")
    # Work on the log's shared codes: the callers' names are derived once per distinct
    # source instance.
    scodes, sources = log.codes("source", "call_start")
    tcodes, targets = log.codes("target", "call_start")
    ocodes, ops = log.codes("operation", "call_start")
    keep = log.parent[cs] >= 0
    # Per code, then per row (code -1, None, reads the appended False: kept).
    if brokers:
        keep &= ~np.append(np.isin(sources, list(brokers)), False)[scodes]
    if skip_targets:
        keep &= ~np.append(np.isin(targets, list(skip_targets)), False)[tcodes]
    cs, scodes, tcodes, ocodes = cs[keep], scodes[keep], tcodes[keep], ocodes[keep]
    T, O = len(targets) + 1, len(ops) + 1
    key = (log.parent[cs] * np.int64(T) + (tcodes + 1)) * np.int64(O) + (ocodes + 1)
    repeat = pd.Series(key).duplicated(keep="first").to_numpy()
    callers = np.array([str(x).rsplit("-", 1)[0] for x in sources.tolist()], dtype=object)
    known = scodes >= 0
    # Callers named and sorted per distinct source (a handful), then counted per row; the
    # callers with no call left are dropped, as factorizing the rows' names would.
    by_source, cnames = pd.factorize(callers, sort=True)
    ccodes = by_source[scodes[known]]
    calls = np.bincount(ccodes, minlength=len(cnames))
    repeats = np.bincount(ccodes, weights=repeat[known], minlength=len(cnames)).astype(np.int64)
    made = calls > 0
    return pd.DataFrame({"calls": calls[made].astype(np.int64), "repeats": repeats[made]},
                        index=pd.Index(np.asarray(cnames, dtype=object)[made], name="caller", dtype=object))


def _endpoints_of(requests: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    """``ids.map(requests.set_index("request")["endpoint"])`` as an object array (NaN where
    no request has the id): read from a table indexed by request id (issue 12: a hash
    look-up per call, ~180,000 of them, cost about 10 ms), keeping the endpoint names'
    own objects."""
    rid = requests["request"].to_numpy(dtype=np.int64)
    names = requests["endpoint"].to_numpy(dtype=object)
    ids = np.asarray(ids, dtype=np.int64)
    top = int(max(rid.max(initial=-1), ids.max(initial=-1))) + 1
    at = np.full(top + 1, -1, dtype=np.intp)
    at[rid] = np.arange(len(rid))
    pos = at[ids]  # a call without a request (-1) reads the last slot, which no request fills
    out = np.empty(len(ids), dtype=object)
    out[:] = np.nan
    out[pos >= 0] = names[pos[pos >= 0]]
    return out


def _pair_lookup(table: pd.Series, a: np.ndarray, b: np.ndarray, default: float) -> np.ndarray:
    """``table.reindex(pd.MultiIndex.from_arrays([a, b])).fillna(default)`` as a float array:
    ``table`` (indexed by pairs) read once per distinct (a, b) pair of the rows, not through
    a MultiIndex of every row (issue 12: ~100,000 rows, a few hundred pairs). A missing
    value (None, NaN) matches no pair."""
    ca, ua = factorize(a)
    cb, ub = factorize(b)
    width = len(ub) + 1
    pcodes, pairs = pd.factorize((ca + 1).astype(np.int64) * width + (cb + 1))
    names_a, names_b = [None, *ua.tolist()], [None, *ub.tolist()]
    known = dict(zip(table.index.tolist(), table.to_numpy(dtype=float).tolist()))
    values = np.array([known.get((names_a[p // width], names_b[p % width]), default)
                       if p // width and p % width else default for p in pairs.tolist()], dtype=float)
    return values[pcodes]


@register("bounded_retry_amplification")
def bounded_retry_amplification(record: Record, *, factor: Optional[float] = None,
                                extra_load: Optional[float] = None, quantile: float = 1.0,
                                messages: bool = False) -> Verdict:
    """Retries stay within the objectives, per request and in aggregate.

    **Per request**: for every request and every operation of a service (every component,
    whose calls name no operation), the calls the request made to it (``call_start`` rows
    with its request id, from any of its callers: retries, a 401's resend and token
    fetches included) are at most ``factor`` times the most the baseline's requests of the
    same endpoint made to it (at least 1). Attempts are counted per operation because the
    SRE book's limit is on attempts *of the same request* (ch. 22, "Limit retries per
    request"): when two callers of one request each draw a 401 (from a verifier whose
    clock is skewed, say), each fetches a token and re-sends, so auth-service gets four
    calls, but no operation of it more than twice (``verify_token`` twice,
    ``issue_token`` twice), and no call was attempted more than twice. Attempts at several
    layers still add up on the operation they repeat (``max_attempts`` per layer, raised
    to the number of layers), and a caller that fetches a token for every attempt
    multiplies its ``issue_token`` calls by its attempts. Discovery lookups (calls to a
    ``registry`` component) are not attempts: a client looks up the service of each attempt
    it makes (at most one lookup per attempt, sim/client.py ``_Logical.attempt``), so the
    lookups of one request to the registry add up its calls to *different* services, and
    those calls are judged per service here; the SRE book's limit is on "attempts of the
    same request to the same service" (ch. 22, "Limit retries per request"). The most
    lookups one request made is reported (``discovery_lookups_max``). ``factor`` is the
    objective ``objectives.max_attempts`` (SRE book: at most 3 attempts per request); what
    the policies allow (:func:`default_amplification_factor`) is reported beside it.
    ``quantile`` below 1 checks that quantile of the requests' worst ratio instead.

    **Aggregate**: per caller service, the share of its calls that repeat an earlier call
    of the same parent to the same target and operation (retries; lookups left out, as
    above) exceeds the baseline's
    share by at most ``extra_load`` (``objectives.retry_extra_load``; SRE book: retries
    under about 10% of requests).

    Message deliveries and what their consumers call are left out (``messages=True`` counts
    them): redelivery is judged apart, by ``bounded_redelivery``, so that one does not hide
    the other. Needs the baseline's events.
    """
    sc = record.scenario
    if record.baseline_log is None:
        raise ValueError("bounded_retry_amplification needs the baseline's event log: build the "
                         "record with Record.from_scenario(scenario) or run the baseline with "
                         "simulate(without_faults(scenario), keep_events=True)")
    F = float(sc.objectives.max_attempts) if factor is None else float(factor)
    X = sc.objectives.retry_extra_load if extra_load is None else float(extra_load)
    predicted = default_amplification_factor(sc)
    req = record.requests.set_index("request")
    breq = record.baseline_requests.set_index("request")
    queues = tuple(c.name for c in sc.infrastructure if c.kind == "queue")
    brokers = () if messages else queues
    registries = tuple(c.name for c in sc.infrastructure if c.kind == "registry")
    f = _calls_per_request(record.log, brokers)
    to_registry = f["target"].isin(registries).to_numpy()
    lookups = f["calls"][to_registry]
    f = f[~to_registry].reset_index(drop=True)

    def baseline_most() -> pd.Series:
        b = _calls_per_request(record.baseline_log, brokers)
        b["endpoint"] = b["request"].map(breq["endpoint"])
        return b.groupby(["endpoint", "what"], sort=False)["calls"].max()

    # The baseline's most per (endpoint, target, operation): once per baseline, not per example.
    ref = record.baseline_log.memo(("most_calls_by_operation", brokers), baseline_most)
    endpoint = _endpoints_of(record.requests, f["request"].to_numpy())
    f["endpoint"] = pd.Series(endpoint, index=f.index, dtype=object)
    f["ref"] = np.maximum(_pair_lookup(ref, endpoint, f["what"].to_numpy(dtype=object), 1.0), 1)
    f["ratio"] = f["calls"] / f["ref"]
    per_req = f.groupby("request", sort=True)["ratio"].max()
    n = len(per_req)
    if n == 0:
        return Verdict("", True, "no request made a call: nothing to check", None,
                       {"factor": F, "checked": 0, "vacuous": True})
    # Aggregate extra load by caller service.
    agg_r = _repeats_by_caller(record.log, queues, registries)
    agg_b = record.baseline_log.memo(("repeats", queues, registries),
                                     lambda: _repeats_by_caller(record.baseline_log, queues, registries))
    share_r = agg_r["repeats"] / agg_r["calls"].clip(lower=1)
    share_b = (agg_b["repeats"] / agg_b["calls"].clip(lower=1)).reindex(share_r.index).fillna(0.0)
    extra = (share_r - share_b).sort_values(ascending=False, kind="stable")
    stat = float(per_req.max()) if quantile >= 1 else _nearest_rank(per_req.to_numpy(), quantile)
    worst_i = f["ratio"].to_numpy().argmax()
    w = f.iloc[int(worst_i)]
    over = int((per_req > F).sum())
    details = {"factor": F, "predicted_factor": predicted, "extra_load": X, "quantile": quantile,
               "messages": messages, "statistic": stat, "requests": n,
               "discovery_lookups_max": int(lookups.max()) if len(lookups) else 0,
               "requests_over": over, "max_ratio": float(per_req.max()),
               "p99_ratio": _nearest_rank(per_req.to_numpy(), 0.99),
               "retry_extra_load": {k: round(float(v), 4) for k, v in extra.items()},
               "worst": {"request": int(w["request"]), "endpoint": w["endpoint"], "target": w["target"],
                         "operation": w["operation"], "calls": int(w["calls"]),
                         "baseline_max": int(w["ref"])},
               "checked": n, "vacuous": False}
    rq = req.loc[int(w["request"])]
    window = (float(rq["start"]), float(rq["end"]) if not pd.isna(rq["end"]) else record.result.end_s)
    what = "the largest" if quantile >= 1 else f"the {quantile:g} quantile of the"
    beside = f"your retry policies allow up to {predicted:g}x"
    problems = []
    if stat > F:
        problems.append(
            f"request {int(w['request'])} ({w['endpoint']}, started {window[0]:g} s) made "
            f"{int(w['calls'])} calls to {w['what']}, {w['ratio']:.1f}x the baseline's most "
            f"({int(w['ref'])}); the objective is {F:g}x ({beside}); {over} request(s) over it")
    if len(extra) and float(extra.iloc[0]) > X + 1e-12:
        c = extra.index[0]
        problems.append(
            f"{c}'s retries added {100 * float(extra.iloc[0]):.1f}% to its calls "
            f"({int(agg_r.loc[c, 'repeats'])} repeats of {int(agg_r.loc[c, 'calls'])} calls, beyond the "
            f"baseline's share); the objective is at most {100 * X:g}%")
    if problems:
        if stat <= F:
            window = None
        return Verdict("", False, "; ".join(problems), window or (0.0, record.result.end_s), details)
    top = f"; the most extra load: {extra.index[0]} +{100 * float(extra.iloc[0]):.1f}%" if len(extra) else ""
    return Verdict("", True, f"{what} per-request amplification was {stat:.2f}x (objective {F:g}x, "
                             f"{beside}; worst: {int(w['calls'])} calls to {w['what']} vs at most "
                             f"{int(w['ref'])} in the baseline){top}", None, details)


@register("bounded_redelivery")
def bounded_redelivery(record: Record, *, max_deliveries: Optional[int] = None) -> Verdict:
    """No message is delivered more than ``max_deliveries`` times (first delivery and
    redeliveries: one ``message_nack`` per failed delivery). The objective is
    ``objectives.max_deliveries`` (RabbitMQ quorum queues' default delivery limit, 20 since
    4.0); the engine's broker redelivers without a limit, so a consumer-breaking outage
    longer than ``max_deliveries x redelivery_delay_s`` breaks it. Judged apart from retry
    amplification so that neither hides the other."""
    sc = record.scenario
    limit = sc.objectives.max_deliveries if max_deliveries is None else int(max_deliveries)
    log = record.log
    pub = log.rows("message_publish")
    if len(pub) == 0:
        return Verdict("", True, "no message was published: nothing to check", None,
                       {"max_deliveries": limit, "checked": 0, "vacuous": True})
    nacks = log.rows("message_nack")
    counts = pd.Series(log.call[nacks]).value_counts() + 1
    details = {"max_deliveries": limit, "messages": int(len(pub)), "redeliveries": int(len(nacks)),
               "most_deliveries": int(counts.max()) if len(counts) else 1,
               "checked": int(len(pub)), "vacuous": False}
    over = counts[counts > limit]
    if over.empty:
        return Verdict("", True, f"{len(pub)} message(s), {len(nacks)} redelivery(ies); at most "
                                 f"{details['most_deliveries']} deliveries of one (objective {limit})",
                       None, details)
    msg = int(over.index[0])
    rows = nacks[log.call[nacks] == msg]
    t0, t1 = float(log.t[rows[0]]), float(log.t[rows[-1]])
    details["messages_over"] = int(len(over))
    return Verdict("", False,
                   f"message {msg} to {log.target[rows[0]]}.{log.operation[rows[0]]} was delivered "
                   f"{int(over.iloc[0])} times between {t0:g} and {t1:g} s; the objective is at most "
                   f"{limit} ({len(over)} message(s) over it)", (t0, t1), details)


# --------------------------------------------------------------------------- 9. redundancy and static stability


def _losses_are_redundant(sc: Scenario, fired: list[dict]) -> tuple[bool, str]:
    """Whether every fault that fired is the loss of capacity the design has spare: one
    instance of a service with others left, or a node or zone where every service on it has
    instances elsewhere and no single-instance component runs; and the instances left can
    carry the service's analytic load (utilisation scaled by n / (n - lost) below 1)."""
    from hailan_sim.models.capacity import offered_load

    util = offered_load(sc)["utilisation"].to_dict()
    lost: dict[str, int] = {}
    for f in fired:
        fault = sc.faults[f["index"]]
        if fault.kind in ("crash_instance", "hang", "drain_instance"):
            insts = [fault.instance]
        elif fault.kind in ("crash_node", "crash_zone"):
            nodes = ({fault.node} if fault.kind == "crash_node"
                     else {n.name for n in sc.nodes if n.zone == fault.zone})
            infra = [c.name for c in sc.infrastructure if (c.placement or sc.nodes[0].name) in nodes]
            if infra:
                return False, f"{fault.kind} takes single-instance {', '.join(infra)} with it"
            insts = [p.instance for p in sc.placements() if p.node in nodes]
        else:
            return False, f"{fault.kind} is not the loss of a redundant instance, node or zone"
        for i in insts:
            svc = _service_of(sc, i)
            lost[svc] = lost.get(svc, 0) + 1
    for svc, k in lost.items():
        n = sc.service(svc).instances
        if k >= n:
            return False, f"every instance of {svc} is lost"
        if util.get(svc, 0.0) * n / (n - k) >= 1.0:
            return False, f"the {n - k} instance(s) of {svc} left cannot carry its load"
    return True, ", ".join(f"{k} of {sc.service(s).instances} {s} instance(s)" for s, k in lost.items())


def _cost_beyond_baseline(record: Record, t0: float, budget_of, detection_s: Optional[float], *,
                          alpha: float, margin: float, min_requests: int, window_s: Optional[float]):
    """Two clauses over the requests started from ``t0`` until arrivals stop, per endpoint:
    the run's success ratio over the whole period is not below the baseline's by more than
    the endpoint's budget (``budget_of(endpoint)``) plus z standard errors; and (with
    ``detection_s``) the windows that fail the window test and are below the endpoint's
    success objective add up to at most ``detection_s`` plus one window (the granularity).
    Returns (problems, details)."""
    sc = record.scenario
    t1 = sc.run.duration_s
    endpoints = [e.name for e in sc.workload.endpoints]
    problems: list[tuple[float, float, str]] = []
    # The whole period, one window per endpoint.
    whole = {e: t1 - t0 for e in endpoints}
    m = _compare_windows(record, endpoints, whole, t0, t1)
    m = m[(m["n_0"] > 0) & (m["n_1"] > 0)].reset_index(drop=True)
    z = _z(alpha, max(1, len(m)))
    lost = {}
    for _, r in m.iterrows():
        e = r["endpoint"]
        b = budget_of(e)
        p0, p1 = r["ok_0"] / r["n_0"], r["ok_1"] / r["n_1"]
        lost[e] = round(float(p0 - p1), 5)
        one = pd.DataFrame([r])
        if _ratio_drop(one, z, b)[0]:
            problems.append((t0, t1, f"{e} lost {100 * (p0 - p1):.2f}% of its {int(r['n_1'])} requests "
                                     f"beyond the baseline's failures from {t0:g} s; the budget is "
                                     f"{100 * b:g}%"))
    details = {"budget_used": lost, "checked": int(len(m))}
    if detection_s is not None:
        widths = _widths(record, min_requests, window_s)
        w = _compare_windows(record, endpoints, widths, t0, t1)
        w = w[(w["n_0"] > 0) & (w["n_1"] > 0)].reset_index(drop=True)
        zw = _z(alpha, max(1, len(w)))
        slo = w["endpoint"].map(lambda e: sc.objectives.for_endpoint(e)[0]).to_numpy(float)
        bad = _ratio_drop(w, zw, margin) & ((w["ok_1"] / w["n_1"]).to_numpy(float) < slo)
        below = {}
        for e in endpoints:
            sel = w[bad & (w["endpoint"] == e).to_numpy()]
            if len(sel):
                below[e] = float((sel["end"] - sel["start"]).sum())
                allowed = detection_s + widths[e]
                if below[e] > allowed:
                    first = sel.iloc[0]
                    problems.append((float(first["start"]), float(sel["end"].max()),
                                     f"{e} was below its success objective for {below[e]:g} s "
                                     f"(from {first['start']:g} s); the detection objective is "
                                     f"{detection_s:g} s (measured in {widths[e]:g} s windows)"))
        details.update({"seconds_below_objective": below, "checked": details["checked"] + int(len(w))})
    return problems, details


@register("redundancy")
def redundancy(record: Record, *, alpha: float = 0.01, margin: float = 0.02, min_requests: int = 50,
               window_s: Optional[float] = None) -> Verdict:
    """The loss of capacity the design has spare costs little: when every fault that fired
    is the loss of one (or some) of several instances of a service whose remaining
    instances can carry its load, or of a node or zone where every service has replicas
    elsewhere, then from the first loss until arrivals stop every endpoint loses at most
    ``objectives.redundancy_budget`` of its requests beyond the baseline's failures, and is
    below its success objective (windows failing the window test and under the SLO) for at
    most ``objectives.detection_s`` (plus one window). Other runs: not applicable (vacuous).
    AWS Builders' Library, "Static stability using Availability Zones" (N+1)."""
    sc = record.scenario
    fired = record.faults_fired
    o = sc.objectives
    base = {"budget": o.redundancy_budget, "detection_s": o.detection_s}
    if not fired:
        return Verdict("", True, "no fault fired: nothing to check", None, {**base, "checked": 0, "vacuous": True})
    ok, what = _losses_are_redundant(sc, fired)
    if not ok:
        return Verdict("", True, f"not applicable: {what}", None, {**base, "checked": 0, "vacuous": True})
    t0 = min(f["start_s"] for f in fired)
    if t0 >= sc.run.duration_s:
        return Verdict("", True, "nothing to check: the faults start after arrivals stop", None,
                       {**base, "checked": 0, "vacuous": True})
    problems, details = _cost_beyond_baseline(record, t0, lambda e: o.redundancy_budget, o.detection_s,
                                              alpha=alpha, margin=margin, min_requests=min_requests,
                                              window_s=window_s)
    details = {**base, "lost": what, **details, "vacuous": details["checked"] == 0}
    if not problems:
        return Verdict("", True, f"losing {what} cost every endpoint at most "
                                 f"{100 * max(details['budget_used'].values(), default=0):.2f}% of its requests "
                                 f"(budget {100 * o.redundancy_budget:g}%) and at most "
                                 f"{max(details.get('seconds_below_objective', {}).values(), default=0):g} s "
                                 f"below its objective (detection {o.detection_s:g} s)", None, details)
    problems.sort()
    details["violations"] = [p[2] for p in problems[:20]]
    return Verdict("", False, f"losing {what}, capacity the design has spare: " + problems[0][2]
                   + (f" ({len(problems)} violations)" if len(problems) > 1 else ""),
                   (problems[0][0], problems[0][1]), details)


_CONTROL_PLANE = ("registry_outage",)


@register("static_stability")
def static_stability(record: Record, *, alpha: float = 0.01, min_requests: int = 50,
                     window_s: Optional[float] = None) -> Verdict:
    """An outage of the control plane shorter than ``objectives.control_plane_horizon_s``
    costs the data plane nothing beyond the error budget: when every fault that fired is a
    registry outage, an outage of the registry component, or a partition that cuts callers
    from the registry, each shorter than the horizon, then from the first one's start until
    arrivals stop every endpoint's success ratio is not below the baseline's by more than
    its error budget (``1 - success_ratio``, per endpoint) plus z standard errors. Other
    runs: not applicable (vacuous). AWS Builders' Library, "Static stability using
    Availability Zones": the data plane keeps serving in its last known good state."""
    sc = record.scenario
    fired = record.faults_fired
    o = sc.objectives
    reg = _registry_name(sc)
    base = {"horizon_s": o.control_plane_horizon_s}
    if not fired:
        return Verdict("", True, "no fault fired: nothing to check", None, {**base, "checked": 0, "vacuous": True})
    for f in fired:
        fault = sc.faults[f["index"]]
        cp = (fault.kind in _CONTROL_PLANE
              or (fault.kind == "infra_outage" and fault.component == reg)
              or (fault.kind == "partition" and reg in (fault.a, fault.b)))
        if not cp:
            return Verdict("", True, f"not applicable: {fault.kind} is not a control plane outage", None,
                           {**base, "checked": 0, "vacuous": True})
        length = (f["end_s"] if f["end_s"] is not None else record.result.end_s) - f["start_s"]
        if length >= o.control_plane_horizon_s:
            return Verdict("", True, f"not applicable: the {fault.kind} lasted {length:g} s, not shorter than "
                                     f"the {o.control_plane_horizon_s:g} s horizon", None,
                           {**base, "checked": 0, "vacuous": True})
    t0 = min(f["start_s"] for f in fired)
    if t0 >= sc.run.duration_s:
        return Verdict("", True, "nothing to check: the faults start after arrivals stop", None,
                       {**base, "checked": 0, "vacuous": True})
    problems, details = _cost_beyond_baseline(record, t0, lambda e: 1.0 - o.for_endpoint(e)[0], None,
                                              alpha=alpha, margin=0.0, min_requests=min_requests,
                                              window_s=window_s)
    details = {**base, **details, "vacuous": details["checked"] == 0}
    if not problems:
        return Verdict("", True, "the control plane outage cost every endpoint at most "
                                 f"{100 * max(details['budget_used'].values(), default=0):.2f}% of its "
                                 "requests, within its error budget", None, details)
    details["violations"] = [p[2] for p in problems[:20]]
    return Verdict("", False, "a control plane outage shorter than the "
                              f"{o.control_plane_horizon_s:g} s horizon cost the data plane: " + problems[0][2]
                   + (f" ({len(problems)} endpoints)" if len(problems) > 1 else ""),
                   (problems[0][0], problems[0][1]), details)


# --------------------------------------------------------------------------- 11. wasted work, fair share


def _orphans(log: _Log) -> tuple[int, float, int]:
    """(orphaned calls, busy seconds spent on them after their caller gave up, calls)."""
    o = log.rows("orphan_end")
    # Each orphan's call's (last) call_end row from the log's shared table (issue 12: no
    # dict of every call_end), 0 busy seconds without one; summed in log order as before.
    ended = log.call_rows("call_end")[log.call[o] + 1]
    t = log.t[o]
    busy = float(sum(np.where(ended >= 0, t - log.t[ended], 0.0).tolist()))
    return int(len(o)), busy, int(len(log.rows("call_start")))


@register("bounded_wasted_work")
def bounded_wasted_work(record: Record, *, share: Optional[float] = None) -> Verdict:
    """Calls served after their caller gave up (``orphan_end``: the callee finished work
    whose caller had timed out) are at most ``objectives.wasted_share`` of the run's calls
    beyond the baseline's share. Reported in count and in busy seconds (from the caller's
    timeout to the callee's end). SRE book ch. 22: propagate deadlines so that servers drop
    work whose caller has given up. Needs the baseline's events."""
    sc = record.scenario
    X = sc.objectives.wasted_share if share is None else float(share)
    if record.baseline_log is None:
        raise ValueError("bounded_wasted_work needs the baseline's event log")
    n1, s1, c1 = _orphans(record.log)
    n0, s0, c0 = record.baseline_log.memo("orphans", lambda: _orphans(record.baseline_log))
    extra = n1 / max(c1, 1) - n0 / max(c0, 1)
    details = {"orphans": n1, "orphan_busy_s": round(s1, 3), "baseline_orphans": n0,
               "baseline_orphan_busy_s": round(s0, 3), "calls": c1, "extra_share": round(extra, 5),
               "objective": X, "checked": c1, "vacuous": c1 == 0}
    if extra <= X:
        return Verdict("", True, f"{n1} call(s) served after their caller gave up ({s1:.1f} busy s; "
                                 f"baseline {n0}, {s0:.1f} s): {100 * max(extra, 0):.2f}% of calls beyond the "
                                 f"baseline, objective {100 * X:g}%", None, details)
    o = record.log.rows("orphan_end")
    t0, t1 = float(record.log.t[o[0]]), float(record.log.t[o[-1]])
    return Verdict("", False, f"{n1} call(s) were served after their caller gave up ({s1:.1f} busy s) vs "
                              f"{n0} ({s0:.1f} s) in the baseline: {100 * extra:.2f}% of the {c1} calls beyond "
                              f"the baseline; the objective is {100 * X:g}% (propagate deadlines)",
                   (t0, t1), details)


def _shares(log: _Log, services: set[str], window_s: float) -> pd.DataFrame:
    """Calls served per (service, window, instance) (``call_end`` rows of ``services`` with
    an instance; window ``j`` is [j, j + 1) x ``window_s``) and the service's calls in that
    window (``total``), sorted by service, window and instance name. Grouped on the log's
    shared integer codes of call_end's target and instance (issue 12; a code of -1, None,
    reads the appended False: not counted), then named and sorted as a groupby on the
    names would be."""
    ce = log.rows("call_end")
    tcodes, targets = log.codes("target", "call_end")
    icodes, insts = log.codes("instance", "call_end")
    counted = np.array([t in services for t in targets.tolist()] + [False], dtype=bool)
    keep = counted[tcodes] & (icodes >= 0)
    df = pd.DataFrame({"tc": tcodes[keep], "j": np.floor(log.t[ce[keep]] / window_s).astype(np.int64),
                       "ic": icodes[keep]})
    g = df.groupby(["tc", "j", "ic"], sort=False).size().rename("n").reset_index()
    g = pd.DataFrame({"svc": pd.Series(targets[g["tc"].to_numpy()], dtype=object), "j": g["j"],
                      "inst": pd.Series(insts[g["ic"].to_numpy()], dtype=object), "n": g["n"]})
    g = g.sort_values(["svc", "j", "inst"], kind="stable").reset_index(drop=True)
    g["total"] = g.groupby(["svc", "j"])["n"].transform("sum")
    return g


@register("fair_share")
def fair_share(record: Record, *, window_s: float = 5.0, min_calls: int = 50) -> Verdict:
    """No instance takes more than ``objectives.fair_share_factor`` times its fair share (1 /
    the service's instances up) of its service's calls for longer than
    ``objectives.fair_share_s``: a herd on a restarted or surviving instance. Counted in
    ``window_s`` windows (by ``call_end``, the instance that served), only where the service
    got ``min_calls`` calls in the window and had two or more instances up for all of it and
    no fault degrading one of them (slow, error rate, hang, drain: moving calls away from a
    degraded instance is what a balancer should do), and only windows in which the baseline's same instance was within the factor (an
    imbalance the design has without faults is not the fault's herd)."""
    sc = record.scenario
    o = sc.objectives
    services = {s.name for s in sc.services if s.instances >= 2}
    states = record.instance_states

    blog = record.baseline_log  # its shares are computed once per baseline (not modified below)
    run = _shares(record.log, services, window_s)
    base = None if blog is None else blog.memo(("shares", tuple(sorted(services)), window_s),
                                               lambda: _shares(blog, services, window_s))
    run = run[run["total"] >= min_calls]
    # Windows in which a fault degrades one of the service's instances are left out: moving
    # calls away from a slow or failing instance is what a balancer should do, not a herd.
    degraded = []
    for f in record.faults_fired:
        fault = sc.faults[f["index"]]
        target = getattr(fault, "instance", None) or getattr(fault, "target", None)
        if target is not None and fault.kind in ("slow", "error_rate", "hang", "drain_instance"):
            end = f["end_s"] if f["end_s"] is not None else record.result.end_s
            degraded.append((_component_of(sc, target), f["start_s"], end))

    # Each service's instances' transitions, grouped once (not a pass over every instance
    # of the scenario per service and window).
    by_service: dict[str, list] = {}
    for inst, st in states.items():
        by_service.setdefault(_service_of(sc, inst), []).append(st)

    def up_all_window(svc: str, j: int) -> int:
        a, b = j * window_s, (j + 1) * window_s
        n = 0
        for rows, ts, ss in by_service.get(svc, ()):
            k0 = int(np.searchsorted(ts, a, side="right")) - 1
            k1 = int(np.searchsorted(ts, b, side="left")) - 1
            if all(ss[k] == "up" for k in range(max(k0, 0), max(k1, 0) + 1)):
                n += 1
        return n

    over = []
    checked = 0
    ups: dict = {}
    for r in run.itertuples(index=False):
        key = (r.svc, r.j)
        if key not in ups:
            ups[key] = up_all_window(r.svc, r.j)
        n_up = ups[key]
        a, b = r.j * window_s, (r.j + 1) * window_s
        if n_up < 2 or any(svc == r.svc and s0 < b and a < s1 for svc, s0, s1 in degraded):
            continue
        checked += 1
        share = r.n / r.total
        if share > o.fair_share_factor / n_up:
            if base is not None:
                b = base[(base["svc"] == r.svc) & (base["j"] == r.j) & (base["inst"] == r.inst)]
                if len(b) and b["n"].iloc[0] / b["total"].iloc[0] > o.fair_share_factor / n_up:
                    continue
            over.append((r.inst, r.j, share, n_up))
    by: dict[str, list] = {}
    for inst, j, share, n_up in over:
        by.setdefault(inst, []).append((j, share, n_up))
    worst = None
    for inst, spans in by.items():
        secs = len(spans) * window_s
        if secs > o.fair_share_s and (worst is None or secs > worst[1]):
            worst = (inst, secs, spans)
    details = {"factor": o.fair_share_factor, "allowed_s": o.fair_share_s, "window_s": window_s,
               "seconds_over": {k: len(v) * window_s for k, v in by.items()}, "checked": checked,
               "vacuous": checked == 0}
    if worst is None:
        return Verdict("", True, f"no instance took more than {o.fair_share_factor:g}x its fair share for "
                                 f"longer than {o.fair_share_s:g} s ({checked} instance-windows checked)",
                       None, details)
    inst, secs, spans = worst
    j, share, n_up = max(spans, key=lambda x: x[1])
    return Verdict("", False, f"{inst} took up to {100 * share:.0f}% of {_service_of(sc, inst)}'s calls with "
                              f"{n_up} instances up (fair share {100 / n_up:.0f}%) for {secs:g} s in all; the "
                              f"objective allows {o.fair_share_factor:g}x for {o.fair_share_s:g} s: a herd",
                   (spans[0][0] * window_s, (spans[-1][0] + 1) * window_s), details)


# --------------------------------------------------------------------------- 13. endpoint objectives


def _steady_requests(record: Record) -> tuple[pd.DataFrame, list[tuple[float, float]]]:
    """The run's requests started after the warm-up and before arrivals stop that were not
    in flight at any time from a fired fault's start until ``objectives.rto_s`` after its
    end (until the end of the run for a fault that did not end); and those intervals."""
    sc = record.scenario
    rto = sc.objectives.rto_s
    t1 = sc.run.duration_s
    excluded = [(f["start_s"], t1 if f["end_s"] is None else min(f["end_s"] + rto, t1))
                for f in record.faults_fired]
    req = record.requests
    st = req["start"].to_numpy(float)
    en = np.nan_to_num(req["end"].to_numpy(float), nan=math.inf)  # never ended: in flight to the end
    keep = (st >= sc.run.warmup_s) & (st < t1)
    for a, b in excluded:
        keep &= ~((st < b) & (en >= a))
    return req[keep], excluded


def _binom_sf(x: int, n: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p), exactly (summed in log space from the pmf at x
    by the recurrence pmf(k + 1) = pmf(k) (n - k) / (k + 1) p / (1 - p)). The normal
    approximation is far off in the tail for the small p of an SLO (p = 0.001, 0.01)."""
    if x <= 0:
        return 1.0
    if x > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    k = np.arange(x, n, dtype=float)
    log0 = (math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
            + x * math.log(p) + (n - x) * math.log1p(-p))
    steps = np.log((n - k) / (k + 1)) + math.log(p) - math.log1p(-p)
    logs = np.concatenate(([log0], log0 + np.cumsum(steps)))
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def _slo_misses(sc: Scenario, req: pd.DataFrame, alpha: float, min_requests: int):
    """Per endpoint of ``req``: the counts behind its two SLO clauses; and the clauses
    missed, as (endpoint, clause, sentence, (first, last) start of the offending requests)."""
    o = sc.objectives
    lat = req["latency_ms"].to_numpy(float)
    ok = (req["outcome"] == "ok").to_numpy()
    ep = req["endpoint"].to_numpy(dtype=object)
    st = req["start"].to_numpy(float)
    rows, masks = [], []
    for e in (x.name for x in sc.workload.endpoints):
        sel = ep == e
        n = int(sel.sum())
        if n < min_requests:
            continue
        slo, p99 = o.for_endpoint(e)
        le = lat[sel]
        slow = np.isnan(le) | (le > p99)  # a request that never ended took longer than any objective
        rows.append({"endpoint": e, "n": n, "ok": int(ok[sel].sum()), "success_objective": slo,
                     "p99_objective_ms": p99, "over_p99": int(slow.sum()),
                     "p99_ms": _nearest_rank(np.where(np.isnan(le), np.inf, le), 0.99)})
        masks.append((st[sel], ~ok[sel], slow))
    level = alpha / max(1, 2 * len(rows))  # Bonferroni over both clauses of every endpoint
    misses = []
    for r, (starts, failed, slow) in zip(rows, masks):
        n, slo, e = r["n"], r["success_objective"], r["endpoint"]
        ratio = r["ok"] / n
        if _binom_sf(n - r["ok"], n, 1.0 - slo) < level:
            misses.append((e, "success", f"{e} succeeded {100 * ratio:.2f}% of {n} requests; the objective "
                                         f"is {100 * slo:g}%",
                           (float(starts[failed].min()), float(starts[failed].max()))))
        share = r["over_p99"] / n
        if _binom_sf(r["over_p99"], n, 0.01) < level:
            misses.append((e, "p99", f"{e}'s p99 was {r['p99_ms']:.0f} ms ({_pct(share)} of {n} requests over "
                                     f"{r['p99_objective_ms']:g} ms); the objective is p99 <= "
                                     f"{r['p99_objective_ms']:g} ms",
                           (float(starts[slow].min()), float(starts[slow].max()))))
    return rows, misses, level


@register("endpoint_objectives")
def endpoint_objectives(record: Record, *, alpha: float = 0.01, min_requests: int = 1) -> Verdict:
    """Every endpoint meets its service level objectives (``objectives.success_ratio`` and
    ``objectives.p99_ms``, with the per-endpoint overrides) over the requests started outside
    the faults: after the warm-up, before arrivals stop, and not in flight at any time from
    a fault's start until ``objectives.rto_s`` after its end (what happens there is ``no_cascading_failure``'s,
    ``redundancy``'s and ``bounded_recovery``'s to judge). Two clauses per endpoint, each a
    one-sided binomial test against the objective itself, z at ``alpha`` over all the
    clauses (Bonferroni):

    * success: ``k`` of ``n`` requests ok fails when ``slo - k/n > z sqrt(slo (1 - slo) / n)``;
    * p99: a p99 objective ``X`` says at most 1% of requests take longer than ``X``; with
      ``e`` of ``n`` over ``X`` (whatever their outcome; a request that never ended counts
      as over), it fails when ``e/n - 0.01 > z sqrt(0.01 x 0.99 / n)``.

    The SLO is the user's, not the baseline's: a design whose fault-free run misses it fails
    here too, and the explanation says so. Google SRE book ch. 4 "Service Level
    Objectives": an SLO is a target for a ratio of good events and for a latency percentile.
    """
    sc = record.scenario
    req, excluded = _steady_requests(record)
    rows, misses, level = _slo_misses(sc, req, alpha, min_requests)
    where = "requests started after the warm-up" + (
        ", not in flight in " + ", ".join(f"[{a:g}, {b:g})" for a, b in excluded) + " s (the faults and rto_s after them)"
        if excluded else "")
    details = {"alpha": alpha, "level": level, "excluded": excluded, "endpoints": rows,
               "checked": 2 * len(rows), "vacuous": not rows}
    if not misses:
        return Verdict("", True, f"all {len(rows)} endpoints met their success and p99 objectives over the {where}",
                       None, details)
    details["violations"] = [m[2] for m in misses]
    e, clause, sentence, window = misses[0]
    base = ""
    if record.baseline_requests is not None:
        # Does the fault-free run miss the same objective? Then it is the design, not a fault.
        b = record.baseline_requests
        b = b[(b["start"] >= sc.run.warmup_s) & (b["start"] < sc.run.duration_s)]
        missed = any(m[0] == e and m[1] == clause for m in _slo_misses(sc, b, alpha, min_requests)[1])
        details["baseline_misses_it"] = missed
        base = (" (the fault-free baseline misses it too: the design, not a fault)" if missed
                else " (the fault-free baseline meets it)")
    return Verdict("", False, f"{sentence}, over the {where}{base}"
                   + (f"; {len(misses)} objectives missed" if len(misses) > 1 else ""), window, details)


# --------------------------------------------------------------------------- 8. determinism


@register("determinism")
def determinism(record: Record, *, rerun: Optional[Callable[[], str]] = None) -> Verdict:
    """Re-running the scenario reproduces the identical event-log hash (SHA-256 of the
    canonical log, :mod:`hailan_sim.sim.eventlog`). The re-run is ``rerun`` or ``record.rerun``;
    without either the check is skipped (it holds, marked vacuous)."""
    again = rerun or record.rerun
    expected = record.result.event_log_sha256
    if again is None:
        return Verdict("", True, "skipped: no re-run given (Record.rerun is None)", None,
                       {"expected": expected, "skipped": True, "checked": 0, "vacuous": True})
    got = again()
    details = {"expected": expected, "got": got, "skipped": False, "checked": 1, "vacuous": False}
    if got == expected:
        return Verdict("", True, f"a re-run reproduced event-log hash {expected[:12]}...", None, details)
    return Verdict("", False,
                   f"a re-run of the same scenario and seed gave event-log hash {got[:12]}... instead of "
                   f"{expected[:12]}...: the run is not deterministic (look for set iteration, "
                   "unseeded randomness or wall-clock reads)", (0.0, record.result.end_s), details)

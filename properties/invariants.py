"""Invariants over a run's record: named checks that say what went wrong, where and when.

An invariant is a function of a :class:`Record` (the scenario, its run with the event log
kept, and the fault-free baseline of the same seed) that returns a :class:`Verdict`: whether
it holds, a sentence a person can act on, the time window of the violation and the numbers
behind it. Invariants read the record only (the event log, the per-window tables, the
scenario's own policies), never the engine's internals, so a record written to disk and read
back is checked the same way.

Eight are built in (docs/invariants.md defines each precisely, with its tolerance and the
false-alarm rate it targets)::

    no_cascading_failure       unaffected endpoints keep their success ratio during and after faults
    bounded_recovery           every endpoint is back within R seconds of the last fault's end
    conservation               one terminal outcome per request; no durable message lost
    breaker_legality           breaker transitions follow the policy's state machine
    no_traffic_to_dead_instances  dead instances get calls only within the registry's bound
    token_safety               no expired token accepted; no 401 while the issuer is reachable
    bounded_retry_amplification   calls per request to any one target within a factor of baseline
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
    _edge_policy,
    _edges,
    _node_of,
    _service_of,
    dead_instance_bound_s,
    default_amplification_factor,
    default_recovery_s,
    endpoint_reach,
    faulted_components,
)
from hailan_sim.properties.record import (  # noqa: F401 (re-exported)
    Record,
    _Log,
    _up_since,
    applicable,
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
    """During and after the faults, every endpoint whose call tree does not reach a faulted
    component (:func:`endpoint_reach`, :func:`faulted_components`) keeps its success ratio,
    in every window from the first fault's start to the end of arrivals, within tolerance of
    the fault-free baseline of the same seed.

    Requests are counted by their start time (the same arrivals in both runs: common random
    numbers). A window fails when the run's ratio is below the baseline's by more than
    ``margin`` plus z standard errors (Agresti-Caffo two-proportion, one-sided), with z at
    ``alpha`` divided by the number of windows compared (Bonferroni): the chance that a run
    with no real degradation raises any alarm is at most ``alpha``.
    """
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
    spiked = [sc.faults[f["index"]].endpoint for f in fired if f["kind"] == "load_spike"]
    reach = endpoint_reach(sc)
    excluded = {e: [c for c in r if c in faulted] for e, r in reach.items()}
    excluded = {e: c or ["(load spike)"] for e, c in excluded.items() if c or e in spiked}
    unaffected = [e for e in reach if e not in excluded]
    t0 = min(f["start_s"] for f in fired)
    t1 = sc.run.duration_s
    details = {"faulted_components": faulted, "excluded_endpoints": excluded,
               "unaffected_endpoints": unaffected, "alpha": alpha, "margin": margin}
    if not unaffected or t0 >= t1:
        why = ("every endpoint reaches a faulted component" if not unaffected
               else "the faults start after arrivals stop")
        return Verdict("", True, f"nothing to check: {why}", None,
                       {**details, "checked": 0, "vacuous": True})
    widths = _widths(record, min_requests, window_s)
    m = _compare_windows(record, unaffected, widths, t0, t1)
    m = m[(m["n_0"] > 0) & (m["n_1"] > 0)].reset_index(drop=True)
    z = _z(alpha, len(m))
    bad = _ratio_drop(m, z, margin)
    details.update({"checked": int(len(m)), "vacuous": len(m) == 0, "z": z,
                    "window_s": {e: widths[e] for e in unaffected},
                    "violations": _window_rows(m, bad)})
    if not bad.any():
        return Verdict("", True,
                       f"{len(unaffected)} endpoint(s) not reaching {', '.join(faulted)} kept their "
                       f"success ratio in all {len(m)} windows from {t0:g} s", None, details)
    mb = m[bad]
    # The worst: the largest drop.
    drop = (mb["ok_0"] / mb["n_0"] - mb["ok_1"] / mb["n_1"]).to_numpy()
    w = mb.iloc[int(np.argmax(drop))]
    first = mb.sort_values("start", kind="stable").iloc[0]
    eps = sorted(set(mb["endpoint"]), key=unaffected.index)
    details["endpoints_violated"] = eps
    expl = (f"{w['endpoint']} (its calls reach none of {', '.join(faulted)}) succeeded "
            f"{_pct(w['ok_1'] / w['n_1'])} of {int(w['n_1'])} requests in [{w['start']:g}, {w['end']:g}) s "
            f"vs {_pct(w['ok_0'] / w['n_0'])} in the baseline; {int(bad.sum())} window(s) over "
            f"{len(eps)} unaffected endpoint(s) ({', '.join(eps)}) dropped beyond tolerance: a cascade")
    return Verdict("", False, expl, (float(first["start"]), float(first["end"])), details)


# --------------------------------------------------------------------------- 2. bounded recovery


@register("bounded_recovery")
def bounded_recovery(record: Record, *, recovery_s: Optional[float] = None, alpha: float = 0.01,
                     margin: float = 0.02, p99_ratio: float = 2.0, p99_abs_ms: float = 50.0,
                     min_requests: int = 50, min_requests_p99: int = 100,
                     window_s: Optional[float] = None) -> Verdict:
    """After the last fault ends, every endpoint's windowed success ratio and p99 return to
    within tolerance of the fault-free baseline within R seconds and stay there: every window
    starting at or after ``last end + R`` (until arrivals stop) passes.

    R defaults to :func:`default_recovery_s` (the policies' own timers). Success ratio: the
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
    R = default_recovery_s(sc) if recovery_s is None else float(recovery_s)
    t1 = sc.run.duration_s
    endpoints = [e.name for e in sc.workload.endpoints]
    widths = _widths(record, min_requests, window_s)
    ref_run = {e: float(record.baseline.endpoints.loc[e, "p99_ms"]) if e in record.baseline.endpoints.index
               else math.nan for e in endpoints}
    details.update({"last_fault_end_s": t_end, "recovery_s": R, "window_s": widths})

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
                       f"before R = {R:g} s; run arrivals until at least {start + max(widths.values()):g} s",
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
                       f"{start:g} s ({R:g} s after the last fault ended at {t_end:g} s)", None, details)
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
            f"{int(bad.sum())} late window(s) over {', '.join(eps)}; {tail}")
    details["endpoints_violated"] = eps
    return Verdict("", False, expl, (float(first["start"]), float(first["end"])), details)


# --------------------------------------------------------------------------- 3. conservation


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
    started = log.request[s_rows]
    ends = pd.Series(log.request[e_rows]).value_counts()
    start_t = dict(zip(started.tolist(), log.t[s_rows].tolist()))
    start_ep = dict(zip(started.tolist(), log.target[s_rows].tolist()))
    unfinished = sorted(set(started.tolist()) - set(ends.index.tolist()))
    doubled = sorted(ends[ends > 1].index.tolist())
    unstarted = sorted(set(ends.index.tolist()) - set(started.tolist()))
    bad_out = sorted({o for o in log.outcome[e_rows].tolist() if o not in OUTCOMES}, key=str)
    details.update({"requests": int(len(started)), "unfinished_requests": len(unfinished),
                    "requests_ended_twice": len(doubled), "ends_without_start": len(unstarted),
                    "unknown_outcomes": bad_out})
    if unfinished:
        r0 = unfinished[0]
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
    cends = pd.Series(log.call[ce]).value_counts()
    cstarted = set(log.call[cs].tolist())
    c_doubled = cends[cends > 1].index.tolist()
    c_unstarted = sorted(set(cends.index.tolist()) - cstarted)
    c_open = len(cstarted - set(cends.index.tolist()))
    details.update({"calls": len(cstarted), "calls_ended_twice": len(c_doubled),
                    "call_ends_without_start": len(c_unstarted), "calls_in_flight_at_end": c_open})
    if c_doubled:
        problems.append(f"{len(c_doubled)} call(s) ended more than once (first: call {sorted(c_doubled)[0]})")
    if c_unstarted:
        problems.append(f"{len(c_unstarted)} call_end row(s) without a call_start")
    # Messages.
    pub = log.rows("message_publish")
    acks = pd.Series(log.call[log.rows("message_ack")]).value_counts()
    msg_doubled = acks[acks > 1].index.tolist()
    unacked = [r for r in pub.tolist() if log.call[r] not in acks.index]
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
    half-open episode it admits at most its probe limit where the policy enforces one
    (sliding window: ``permitted_calls_in_half_open``; spec: ``half_open_max_calls`` with
    ``enforce_half_open_limit``), counting the caller's calls that start under that breaker
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
    ce = log.rows("call_end")
    inst_of = dict(zip(log.call[ce].tolist(), log.instance[ce].tolist()))
    calls_by_src: dict[str, tuple[np.ndarray, list, list]] = {}
    src_all = log.source[cs]
    for src in sorted({k[0] for k in by}):
        sel = cs[src_all == src]
        calls_by_src[src] = (sel, log.target[sel].tolist(), [inst_of.get(c) for c in log.call[sel].tolist()])
    episodes = 0
    max_probes = 0
    for (src, key), rs in by.items():
        caller = _caller_service(sc, src)
        confs = _breaker_configs(sc, caller, key)
        kinds = sorted({c.kind for c in confs}) or ["spec", "sliding_window"]
        legal = set().union(*(_LEGAL[k] for k in kinds))
        limits = [c.permitted_calls_in_half_open if c.kind == "sliding_window"
                  else (c.half_open_max_calls if c.enforce_half_open_limit else None) for c in confs]
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
    """No call is sent to a dead instance more than the registry policy's bound after it
    died. Dead: after its ``instance_down`` or ``instance_stop`` until its next
    ``instance_up``, and while a ``hang`` fault holds it. A call is sent when its
    ``call_start`` is logged and goes to the instance on its ``call_end``. The bound is
    :func:`dead_instance_bound_s` of the call's edge (caller service -> callee service;
    the largest over all edges for calls from the gateway, clients or brokers); time in
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
    inst_of = dict(zip(log.call[ce].tolist(), log.instance[ce].tolist()))
    insts = np.array([inst_of.get(c) for c in log.call[cs].tolist()], dtype=object)
    outages = record.registry_unreachable
    worst = None
    count = 0
    checked = 0
    per_instance: dict[str, int] = {}
    default_bound = dead_instance_bound_s(sc) if bound_s is None else float(bound_s)
    bounds: dict = {}
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
            if bound_s is not None:
                b = default_bound
            elif caller in services:
                key = (caller, svc)
                if key not in bounds:
                    bounds[key] = dead_instance_bound_s(sc, caller, svc)
                b = bounds[key]
            else:
                b = default_bound
            checked += 1
            excess = t - died - _overlap(died, t, outages) - b
            if excess > 1e-9:
                count += 1
                per_instance[inst] = per_instance.get(inst, 0) + 1
                if worst is None or excess > worst["excess_s"]:
                    worst = {"instance": inst, "caller": src, "died_s": died, "sent_s": t,
                             "bound_s": b, "excess_s": excess, "state": ss[kk]}
    details = {"deaths": deaths, "calls_to_dead_instances": checked, "calls_beyond_bound": count,
               "per_instance": per_instance, "bound_s": default_bound, "checked": checked,
               "hung_calls_outside_registry": unmanaged,
               "vacuous": deaths == 0, "worst": worst}
    if count == 0:
        return Verdict("", True,
                       f"{checked} call(s) reached {deaths} dead instance spell(s), all within the "
                       f"registry bound ({default_bound:g} s)" if deaths else
                       "no instance died: nothing to check", None, details)
    w = worst
    how = "hung" if w["state"] == "hung" else "dead"
    expl = (f"{w['caller']} sent a call to {w['instance']} at {w['sent_s']:g} s, "
            f"{w['sent_s'] - w['died_s']:g} s after it went {how} at {w['died_s']:g} s; the registry "
            f"policy bounds that at {w['bound_s']:g} s ({count} call(s) beyond the bound to "
            f"{', '.join(sorted(per_instance))})")
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


@register("token_safety")
def token_safety(record: Record) -> Verdict:
    """Safety: no service-to-service call is accepted with a token that had expired, in
    true time, by more than the verifier's leeway when the call was sent, or that was
    signed with a key the issuer had not published. Liveness: no call fails authentication
    (``auth_401``) while the issuer is reachable (an instance up, no registry outage, no
    partition between caller and issuer) and the clocks involved (caller, verifier, and
    the issuer when it signed) are within the leeway of each other -- unless a later
    attempt of the same call from the same parent succeeded (a refresh-and-retry).

    The token a call carried is read from the log: the latest successful call from the
    caller instance to the issuer's operation that ended before the call started (its
    claims: ``iat = floor(end + issuer skew)``, ``exp = iat + ttl_s``, key: the rotations so
    far). If the caller's own tree also calls that operation the freshest such call is
    taken, which can only hide a violation, never invent one. Accepted: the callee served
    the call and answered ok (``work_end``/``orphan_end`` ok). Calls to the issuer's
    operation are not checked (a token fetch carries no token).
    """
    sc = record.scenario
    tok = record.policies.tokens
    if not tok.enabled:
        return Verdict("", True, "not applicable: service tokens are disabled", None,
                       {"checked": 0, "vacuous": True})
    log = record.log
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
    ce = log.rows("call_end")
    end_row = dict(zip(log.call[ce].tolist(), ce.tolist()))
    # Fetch candidates per caller instance: (call_end row, end time, issuer instance).
    fetches: dict[str, list[tuple[int, float, str]]] = {}
    for r in cs.tolist():
        if log.target[r] == issuer_svc and log.operation[r] == issuer_op:
            e = end_row.get(int(log.call[r]))
            if e is not None and log.outcome[e] == "ok" and log.source[r] is not None:
                fetches.setdefault(log.source[r], []).append((e, float(log.t[e]), log.instance[e]))
    for v in fetches.values():
        v.sort()
    fetch_rows = {k: np.array([x[0] for x in v]) for k, v in fetches.items()}

    def token_for_fetch(fetch: tuple[int, float, str]) -> dict:
        """The claims of the token a fetch returned."""
        e, t, iss = fetch
        iat = math.floor(t + skew(node_of(iss), t))
        return {"iat": iat, "exp": iat + tok.ttl_s, "kid": sum(1 for x in rotations if x <= t),
                "issued_s": t, "issuer": iss}

    def token_for(src: str, row: int):
        v = fetches.get(src)
        if not v:
            return None
        i = int(np.searchsorted(fetch_rows[src], row, side="left")) - 1
        if i < 0:
            return None
        return token_for_fetch(v[i])

    # Accepted s2s calls: served and answered ok. Vectorised per caller instance: the
    # token each call carried is the caller's latest fetch that ended before it started.
    served = log.rows("work_end", "orphan_end")
    ok_calls = log.call[served[log.outcome[served] == "ok"]]
    start_row = dict(zip(log.call[cs].tolist(), cs.tolist()))
    src_cs, tgt_cs = log.source[cs], log.target[cs]
    caller_of = {s: _caller_service(sc, s) for s in dict.fromkeys(src_cs.tolist())}
    keep = (np.isin(log.call[cs], ok_calls)
            & np.fromiter((t in services for t in tgt_cs.tolist()), dtype=bool, count=len(cs))
            & np.fromiter((caller_of[s] is not None for s in src_cs.tolist()), dtype=bool, count=len(cs))
            & ~((tgt_cs == issuer_svc) & (log.operation[cs] == issuer_op)))
    cand, cand_src = cs[keep], src_cs[keep]
    rot = np.asarray(rotations, dtype=float)
    found: list[tuple[int, dict]] = []
    checked = 0
    for src in dict.fromkeys(cand_src.tolist()):
        v = fetches.get(src)
        if not v:
            continue
        rows_src = cand[cand_src == src]
        i = np.searchsorted(fetch_rows[src], rows_src, side="left") - 1
        has = i >= 0
        rows_src, i = rows_src[has], i[has]
        checked += len(rows_src)
        claims = [token_for_fetch(x) for x in v]
        exp = np.array([c["exp"] for c in claims], dtype=float)[i]
        kid = np.array([c["kid"] for c in claims], dtype=np.int64)[i]
        t = log.t[rows_src]
        published = np.searchsorted(rot, t, side="right")
        for j in np.flatnonzero((t > exp + tok.leeway_s) | (kid > published)).tolist():
            r = int(rows_src[j])
            c = int(log.call[r])
            e = end_row.get(c)
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
    for r in (cs if len(a401) else cs[:0]).tolist():
        c = int(log.call[r])
        e = end_row.get(c)
        if e is not None and log.outcome[e] == "ok":
            later_ok.setdefault((int(log.parent[r]), log.target[r], log.operation[r]), []).append(r)
    unlive = []
    excused = {"issuer_unreachable": 0, "clocks_apart": 0, "rescued": 0}
    for r in a401.tolist():
        c = int(log.call[r])
        t = float(log.t[r])
        sr = start_row.get(c)
        src = log.source[r]
        verifier = log.instance[r]
        parent = int(log.parent[sr]) if sr is not None else -1
        rescue = later_ok.get((parent, log.target[r], log.operation[r]), [])
        if any(x > r for x in rescue):
            excused["rescued"] += 1
            continue
        # Issuer reachable?
        up = False
        for inst in issuer_insts:
            rows, ts, ss = states[inst]
            k = int(np.searchsorted(rows, r, side="right")) - 1
            if ss[k] == "up":
                up = True
                break
        caller_svc = _caller_service(sc, src)
        cut = any(a <= t < b and {f.a, f.b} & {src, caller_svc} and
                  {f.a, f.b} & {issuer_svc, *issuer_insts}
                  for a, b, f in partitions)
        if not up or cut or any(a <= t < b for a, b in outages):
            excused["issuer_unreachable"] += 1
            continue
        tk = token_for(src, sr if sr is not None else r)
        clocks = [skew(node_of(src), t), skew(node_of(verifier), t)]
        if tk is not None:
            clocks.append(skew(node_of(tk["issuer"]), tk["issued_s"]))
        if max(clocks) - min(clocks) > tok.leeway_s:
            excused["clocks_apart"] += 1
            continue
        unlive.append({"call": c, "caller": src, "verifier": verifier, "t": t,
                       "verdict": log.outcome[r], "skews": clocks})
    details = {"calls_checked": checked, "auth_401": int(len(a401)), "unsafe": unsafe[:20],
               "unsafe_count": len(unsafe), "failed_auth": unlive[:20], "failed_auth_count": len(unlive),
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
                        f"{tok.leeway_s:g} s; {len(unlive)} such failure(s)")
        window = window or (u["t"], u["t"])
        if len(unlive) > 1:
            window = (min(window[0], unlive[0]["t"]), max(window[1], unlive[-1]["t"]))
    if problems:
        return Verdict("", False, "; ".join(problems), window, details)
    return Verdict("", True, f"{checked} accepted call(s) carried valid tokens; {len(a401)} 401(s), "
                             f"each excused ({excused})" if len(a401) else
                   f"{checked} accepted call(s) carried valid tokens; no call failed authentication",
                   None, details)


# --------------------------------------------------------------------------- 7. retry amplification


def _calls_per_request(log: _Log, brokers: Sequence[str] = ()) -> pd.DataFrame:
    """Calls per (request, target); calls from ``brokers`` (message deliveries) and every
    call below them are left out."""
    cs = log.rows("call_start")
    if brokers:
        keep = np.ones(len(cs), dtype=bool)
        async_calls: set = set()
        src, call, parent = log.source[cs], log.call[cs], log.parent[cs]
        for i in range(len(cs)):  # a parent's call_start comes before its children's
            if src[i] in brokers or parent[i] in async_calls:
                async_calls.add(int(call[i]))
                keep[i] = False
        cs = cs[keep]
    df = pd.DataFrame({"request": log.request[cs], "target": log.target[cs]})
    return df.groupby(["request", "target"], sort=False).size().rename("calls").reset_index()


@register("bounded_retry_amplification")
def bounded_retry_amplification(record: Record, *, factor: Optional[float] = None,
                                quantile: float = 1.0, messages: bool = True) -> Verdict:
    """Calls per user request stay within ``factor`` of the fault-free baseline: for every
    request and every target (service or component), the calls the request made to that
    target (``call_start`` rows with its request id: retries, discovery lookups, token
    fetches, message deliveries and redeliveries included) are at most ``factor`` times the
    most the baseline's requests of the same endpoint made to it (at least 1). ``quantile``
    below 1 checks that quantile of the requests' worst ratio instead of the maximum.
    ``factor`` defaults to :func:`default_amplification_factor`. ``messages=False`` leaves out
    message deliveries and what their consumers call (the broker redelivers a failed message
    every ``redelivery_delay_s`` for as long as its consumer fails, with no limit, so a
    consumer-breaking outage amplifies that request's calls in proportion to its length).
    Needs the baseline's events.
    """
    sc = record.scenario
    if record.baseline_log is None:
        raise ValueError("bounded_retry_amplification needs the baseline's event log: build the "
                         "record with Record.from_scenario(scenario) or run the baseline with "
                         "simulate(without_faults(scenario), keep_events=True)")
    F = default_amplification_factor(sc) if factor is None else float(factor)
    req = record.requests.set_index("request")
    breq = record.baseline_requests.set_index("request")
    brokers = () if messages else tuple(c.name for c in sc.infrastructure if c.kind == "queue")
    f = _calls_per_request(record.log, brokers)
    b = _calls_per_request(record.baseline_log, brokers)
    b["endpoint"] = b["request"].map(breq["endpoint"])
    ref = b.groupby(["endpoint", "target"], sort=False)["calls"].max()
    f["endpoint"] = f["request"].map(req["endpoint"])
    keys = pd.MultiIndex.from_arrays([f["endpoint"], f["target"]])
    f["ref"] = np.maximum(ref.reindex(keys).fillna(1).to_numpy(), 1)
    f["ratio"] = f["calls"] / f["ref"]
    per_req = f.groupby("request", sort=True)["ratio"].max()
    n = len(per_req)
    if n == 0:
        return Verdict("", True, "no request made a call: nothing to check", None,
                       {"factor": F, "checked": 0, "vacuous": True})
    stat = float(per_req.max()) if quantile >= 1 else _nearest_rank(per_req.to_numpy(), quantile)
    worst_i = f["ratio"].to_numpy().argmax()
    w = f.iloc[int(worst_i)]
    over = int((per_req > F).sum())
    details = {"factor": F, "quantile": quantile, "messages": messages, "statistic": stat, "requests": n,
               "requests_over": over, "max_ratio": float(per_req.max()),
               "p99_ratio": _nearest_rank(per_req.to_numpy(), 0.99),
               "worst": {"request": int(w["request"]), "endpoint": w["endpoint"], "target": w["target"],
                         "calls": int(w["calls"]), "baseline_max": int(w["ref"])},
               "checked": n, "vacuous": False}
    rq = req.loc[int(w["request"])]
    window = (float(rq["start"]), float(rq["end"]) if not pd.isna(rq["end"]) else record.result.end_s)
    what = "the largest" if quantile >= 1 else f"the {quantile:g} quantile of the"
    if stat <= F:
        return Verdict("", True, f"{what} per-request amplification was {stat:.2f}x (limit {F:g}x; "
                                 f"worst: {int(w['calls'])} calls to {w['target']} vs at most "
                                 f"{int(w['ref'])} in the baseline)", None, details)
    return Verdict("", False,
                   f"request {int(w['request'])} ({w['endpoint']}, started {window[0]:g} s) made "
                   f"{int(w['calls'])} calls to {w['target']}, {w['ratio']:.1f}x the baseline's most "
                   f"({int(w['ref'])}); limit {F:g}x; {over} request(s) over the limit", window, details)


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

"""A run's record and its views: what every invariant reads.

:class:`Record` holds the scenario, its run with the event log kept and the fault-free
baseline of the same seed; its cached views (the log as numpy columns, one row per
request, faults fired, instance states, when the registry was unreachable, mechanisms
witnessed) are derived once per record.
"""

from __future__ import annotations

import ctypes
import sys
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from hailan_sim.models.scenario import CallNode, Scenario
from hailan_sim.models.topology import walk_tree
from hailan_sim.properties.reach import _registry_name, _service_of
from hailan_sim.sim.eventlog import COLUMNS
from hailan_sim.sim.result import Result


# --------------------------------------------------------------------------- the record


def without_faults(scenario: Scenario) -> Scenario:
    """The same scenario (profile, policies, seed) with no faults: the baseline to compare with."""
    data = scenario.model_dump(mode="python", exclude_unset=True)
    data["faults"] = []
    return Scenario.model_validate(data)


def _first_rows(codes: np.ndarray) -> np.ndarray:
    """Where each code of ``pd.factorize`` (0, 1, ... in order of first appearance) first
    appears, by code: what ``np.unique(codes, return_index=True)[1]`` gives, without the
    sort (a code appears first exactly where it exceeds every code before it)."""
    return np.flatnonzero(codes > np.maximum.accumulate(np.r_[np.int64(-1), codes[:-1]]))


# Object arrays at least this long are factorized by identity first (:func:`factorize`).
_BY_IDENTITY_FROM = 4096


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(values)`` of an object array: the same codes (-1 for None) and the same
    distinct values, in order of first appearance (as an object array).

    NOTE: for speed (issue 12 item 2): the log's text columns hold a few dozen distinct
    strings, each written by the engine as one shared object (a service's name, an event
    kind), in up to a million rows. Hashing and comparing them row by row is pandas' object
    table (about 30 ns a row, plus its scan for all-strings). Here the rows are grouped by
    object identity first, which in CPython is the array's own pointers read as integers
    (pandas' integer table, 4-8 ns a row); then the few groups' first objects are factorized
    by value, which merges equal strings held as distinct objects. The groups come in order
    of first appearance, so the merged codes do too: the result is ``pd.factorize``'s, and
    tests/properties/test_record_columns.py checks it against it."""
    n = len(values)
    pointers = None
    if (values.dtype == object and n >= _BY_IDENTITY_FROM and values.ndim == 1 and values.flags.c_contiguous
            and values.itemsize == ctypes.sizeof(ctypes.c_void_p) and sys.implementation.name == "cpython"):
        # The pointers, read in place (a view that ``values`` keeps valid for this call: it
        # holds a reference to every object, so no address is reused while we read).
        pointers = np.ctypeslib.as_array((ctypes.c_ssize_t * n).from_address(values.ctypes.data))
    # Objects not shared (strings made one per row, e.g. pandas' Arrow strings turned back
    # into objects) go to pandas too: grouping them by identity would save nothing.
    if pointers is None or len(np.unique(pointers[:1024])) > 128:
        codes, uniques = pd.factorize(values)
        return codes, np.asarray(uniques, dtype=object)
    by_object, _ = pd.factorize(pointers)
    by_value, uniques = pd.factorize(values[_first_rows(by_object)])
    return by_value[by_object], np.asarray(uniques, dtype=object)


class _Log:
    """The event log as numpy columns (object arrays for strings, None for missing; -1 for a
    missing request, call or parent id): the arrays of the run's
    :class:`~hailan_sim.sim.eventlog.KeptLog`, which the engine's log builds batch by batch
    as the run goes (shared, not copied), with the rows of each event kind indexed once.
    :meth:`memo` keeps what invariants derive from a log with the log, so a baseline (one
    per seed, shared by every example of that seed) is read once."""

    __slots__ = ("n", "t", "event", "request", "call", "parent", "source", "target",
                 "instance", "operation", "outcome", "_code", "_codes", "_memo")

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        # The engine writes text columns as str or None (tests/properties/test_invariants.py
        # checks it); KeptLog.columns gives ids as int64 with -1 for None.
        for name in COLUMNS:
            setattr(self, name, columns[name])
        self.n = len(self.t)
        codes, kinds = factorize(self.event)
        self._codes = codes
        self._code = {k: j for j, k in enumerate(kinds.tolist())}
        self._memo: dict = {}

    def rows(self, *events: str) -> np.ndarray:
        """Row indices of the given events, in log order: computed once per log and events
        (several invariants read each kind's rows) and shared, so read-only."""
        def make() -> np.ndarray:
            codes = [self._code[e] for e in events if e in self._code]
            if not codes:
                out = np.zeros(0, dtype=np.intp)
            elif len(codes) == 1:
                out = np.flatnonzero(self._codes == codes[0])
            else:
                out = np.flatnonzero(np.isin(self._codes, codes))
            out.flags.writeable = False
            return out
        return self.memo(("rows",) + events, make)

    def codes(self, column: str, event: str) -> tuple[np.ndarray, np.ndarray]:
        """``column`` over ``event``'s rows (:meth:`rows`, in log order) as integer codes
        (-1: None) and the distinct values, in order of first appearance (``pd.factorize``):
        computed once per log, column and event, and shared by the invariants that group
        calls by caller, callee or operation (issue 12)."""
        def make() -> tuple[np.ndarray, np.ndarray]:
            return factorize(getattr(self, column)[self.rows(event)])
        return self.memo(("codes", column, event), make)

    def call_rows(self, event: str) -> np.ndarray:
        """A lookup table from call id to the row of that call's last ``event`` row (-1:
        none), indexed by call id + 1 (a missing id, -1, at 0): the last row of an id wins,
        as a dict built in log order would. Built once per log and event (shared)."""
        def make() -> np.ndarray:
            rows = self.rows(event)
            tab = np.full(int(max(self.call.max(initial=-1), 0)) + 2, -1, dtype=np.intp)
            # ufunc.at applies every index in order (plain fancy assignment leaves the
            # winner of a repeated index unspecified); rows ascend, so the largest is the last.
            np.maximum.at(tab, self.call[rows] + 1, rows)
            return tab
        return self.memo(("call_rows", event), make)

    def memo(self, key, make: Callable[[], object]):
        """``make()``, computed once per log and ``key`` (hashable: a name and the
        arguments). What it returns is shared: callers must not modify it."""
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = make()
            return value


_LOGS: dict[int, _Log] = {}


def _log_of(result: Result) -> _Log:
    """``result``'s :class:`_Log`, built once per result (a baseline serves many records)."""
    key = id(result)
    log = _LOGS.get(key)
    if log is None:
        log = _LOGS[key] = _Log(result._events.columns())
        weakref.finalize(result, _LOGS.pop, key, None)
    return log


@dataclass(frozen=True, eq=False)
class Record:
    """A run's record: what every invariant reads.

    Attributes:
        scenario: the scenario that was run, faults included.
        result: its :class:`hailan_sim.sim.Result`, with the event log kept.
        baseline: the same scenario and seed without faults (:func:`without_faults`);
            its event log is optional (without it the statistical invariants fall back on
            its per-window table, and retry amplification cannot be checked).
        rerun: returns the event-log hash of a fresh run of ``scenario`` (for
            ``determinism``); None skips that check.

    The cached properties below are derived once per record.
    """

    scenario: Scenario
    result: Result
    baseline: Result
    rerun: Optional[Callable[[], str]] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.result.has_events:
            raise ValueError(
                "the run must keep its event log: simulate(scenario, keep_events=True), "
                "or build the record with Record.from_scenario(scenario)"
            )
        if self.baseline.seed != self.result.seed:
            raise ValueError(
                f"baseline seed {self.baseline.seed} differs from the run's {self.result.seed}: "
                "compare against without_faults(scenario) run with the same seed"
            )

    @classmethod
    def from_scenario(cls, scenario: Scenario, *, rerun: bool = True,
                      baseline_events: bool = True) -> "Record":
        """Run ``scenario`` (events kept) and its fault-free baseline; ``rerun`` makes the
        determinism check possible (it costs one more run when evaluated)."""
        from hailan_sim.sim import simulate

        result = simulate(scenario, keep_events=True)
        baseline = simulate(without_faults(scenario), keep_events=baseline_events)
        again = (lambda: simulate(scenario).event_log_sha256) if rerun else None
        return cls(scenario, result, baseline, again)

    @staticmethod
    def warm_baseline(baseline: Result) -> None:
        """Build a baseline's log columns now (once per result): a checker forking workers
        calls it first, so that every worker inherits them instead of building its own."""
        if baseline.has_events:
            _log_of(baseline)

    # ------------------------------------------------------------------ cached views

    @cached_property
    def events(self) -> pd.DataFrame:
        """The run's event log (:meth:`sim.Result.events`)."""
        return self.result.events()

    @cached_property
    def baseline_events(self) -> Optional[pd.DataFrame]:
        return self.baseline.events() if self.baseline.has_events else None

    @cached_property
    def log(self) -> _Log:
        return _log_of(self.result)

    @cached_property
    def baseline_log(self) -> Optional[_Log]:
        return _log_of(self.baseline) if self.baseline.has_events else None

    @cached_property
    def policies(self):
        return self.scenario.effective_policies()

    @cached_property
    def faults_fired(self) -> list[dict]:
        """Each fault that started: index, kind, start and end (None: not ended in the run)."""
        log = self.log
        out: dict[int, dict] = {}
        for r in log.rows("fault_start", "fault_end"):
            i = int(log.outcome[r])
            if log.event[r] == "fault_start":
                out[i] = {"index": i, "kind": log.operation[r], "target": log.target[r],
                          "start_s": float(log.t[r]), "end_s": None}
            elif i in out:
                out[i]["end_s"] = float(log.t[r])
        return [out[i] for i in sorted(out)]

    @cached_property
    def fault_kinds_fired(self) -> list[str]:
        return sorted({f["kind"] for f in self.faults_fired})

    @cached_property
    def requests(self) -> pd.DataFrame:
        """One row per request of the run: endpoint, start, end, outcome, latency_ms."""
        return _requests(self.log)

    @cached_property
    def baseline_requests(self) -> Optional[pd.DataFrame]:
        # Shared by every record of the same baseline (callers do not modify it).
        log = self.baseline_log
        return None if log is None else log.memo("requests", lambda: _requests(log))

    @cached_property
    def instance_states(self) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
        """Per instance: (rows, times, states) of its transitions ("up", "down", "hung")."""
        return _instance_states(self.scenario, self.log)

    @cached_property
    def mechanisms_witnessed(self) -> dict[str, bool]:
        """:func:`witnessed` of this record (computed once)."""
        return _witnessed(self)

    @cached_property
    def registry_unreachable(self) -> list[tuple[float, float]]:
        """Intervals in which callers could not reach the registry (outages, partitions
        with the registry as one side, and any time the registry was down: a crash of its
        node or zone takes it down too)."""
        reg = _registry_name(self.scenario)
        if reg is None:
            return []
        end = self.result.end_s
        out = []
        spell = self.instance_states.get(f"{reg}-0")
        if spell is not None:
            down_since = None
            for t, st in zip(spell[1].tolist(), spell[2]):
                if st != "up" and down_since is None:
                    down_since = t
                elif st == "up" and down_since is not None:
                    out.append((down_since, t))
                    down_since = None
            if down_since is not None:
                out.append((down_since, end))
        for f in self.faults_fired:
            i = f["index"]
            fault = self.scenario.faults[i]
            if fault.kind == "registry_outage" or (
                fault.kind == "partition" and reg in (fault.a, fault.b)
            ):
                out.append((f["start_s"], end if f["end_s"] is None else f["end_s"]))
        return out


def _requests(log: _Log) -> pd.DataFrame:
    s = log.rows("request_start")
    e = log.rows("request_end")
    # Text as object columns, not pandas' inferred ``str`` (Arrow-backed): the invariants
    # filter, map and compare these small frames many times per example, and each step on
    # an Arrow column goes through pyarrow's compute functions (issue 12 item 2).
    starts = pd.DataFrame({"request": log.request[s], "endpoint": pd.Series(log.target[s], dtype=object),
                           "start": log.t[s]})
    ends = pd.DataFrame({"request": log.request[e], "end": log.t[e],
                         "outcome": pd.Series(log.outcome[e], dtype=object)})
    ends = ends.drop_duplicates("request", keep="first")
    df = starts.merge(ends, on="request", how="left", sort=False)
    df["latency_ms"] = (df["end"] - df["start"]) * 1000.0
    return df



# --------------------------------------------------------------------------- instance states


def _instance_states(scenario: Scenario, log: _Log):
    """Per instance, its transitions from the log: instance_up -> "up"; instance_down and
    instance_stop -> "down"; a hang fault's start -> "hung" (the engine ends a hang by
    crashing and restarting the instance, which logs its down and up). Instances running
    at t=0 start "up" (with a cold start, those that have a start-up time start "down")."""
    cold = scenario.run.cold_start
    states: dict[str, tuple[list, list, list]] = {}
    for p in scenario.placements():
        svc = scenario.service(_service_of(scenario, p.instance))
        first = "down" if (cold and svc.startup_s > 0) else "up"
        states[p.instance] = ([-1], [0.0], [first])
    for c in scenario.infrastructure:
        states[f"{c.name}-0"] = ([-1], [0.0], ["up"])
    kind = {"instance_up": "up", "instance_down": "down", "instance_stop": "down"}
    for r in log.rows("instance_up", "instance_down", "instance_stop", "fault_start", "fault_end"):
        ev = log.event[r]
        if ev in kind:
            inst, st = log.instance[r], kind[ev]
        elif log.operation[r] == "hang" and ev == "fault_start":
            # Its end needs no row of its own: the engine restarts a hung instance by
            # crashing it (instance_down, unless already down), then instance_up.
            inst, st = log.target[r], "hung"
        else:
            continue
        rows, ts, ss = states.setdefault(inst, ([-1], [0.0], ["down"]))
        rows.append(int(r))
        ts.append(float(log.t[r]))
        ss.append(st)
    return {k: (np.asarray(v[0]), np.asarray(v[1]), v[2]) for k, v in states.items()}


def _up_since(states, instances: Sequence[str]) -> Optional[float]:
    """Since when at least one of ``instances`` has been up without a break until the end
    of the log; None if none is up at the end."""
    # Merge every instance's transitions and walk back from the end.
    events = []
    for inst in instances:
        if inst not in states:
            continue
        rows, ts, ss = states[inst]
        for r, t, s in zip(rows.tolist(), ts.tolist(), ss):
            events.append((r, t, inst, s))
    events.sort()
    cur: dict[str, str] = {}
    since: Optional[float] = None
    for r, t, inst, s in events:
        was = any(v == "up" for v in cur.values())
        cur[inst] = s
        now = any(v == "up" for v in cur.values())
        if now and not was:
            since = t
        elif not now:
            since = None
    return since



# --------------------------------------------------------------------------- anti-vacuity


def witnessed(record: Record) -> dict[str, bool]:
    """Which faults fired and which mechanisms were exercised in the run (stateright's
    "sometimes" properties): a check that passed with none of them witnessed tested little.

    Keys: ``fault_fired``, ``instance_down``, ``breaker_opened``, ``breaker_half_open``,
    ``breaker_closed_again``, ``short_circuit``, ``retry_made``, ``instance_deregistered``,
    ``discovery_error``, ``no_instance``, ``bulkhead_full``, ``fallback_used``,
    ``timeout_seen``, ``load_shed``, ``token_fetched``, ``auth_401``,
    ``message_redelivered``, ``autoscaled``.
    """
    return dict(record.mechanisms_witnessed)


def applicable(scenario: Scenario) -> dict[str, bool]:
    """Which of :func:`witnessed`'s keys the scenario and its policies can exercise at all:
    a retry needs an edge with more than one attempt (and, with ``idempotent_only``, an
    idempotent operation), a bulkhead needs a bulkhead, a fallback a call site with one,
    autoscaling a service with a policy, and so on. A check report lists the applicable
    ones it never witnessed apart from those that cannot happen here."""
    pol = scenario.effective_policies()
    edges = [pol, *pol.edges]
    registry = _registry_name(scenario) is not None
    breaker = any(e.breaker is not None for e in edges)
    idempotent = any(op.idempotent for s in scenario.services for op in s.operations.values())
    retry = any(e.retry is not None and e.retry.max_attempts > 1
                and (idempotent or not e.retry.idempotent_only) for e in edges)
    fallback = any(isinstance(n, CallNode) and n.fallback
                   for s in scenario.services for name, op in s.operations.items()
                   for n, _ in walk_tree(op.calls, name))
    tokens = pol.tokens.enabled
    return {
        "fault_fired": True, "instance_down": True, "timeout_seen": True,
        "breaker_opened": breaker, "breaker_half_open": breaker, "breaker_closed_again": breaker,
        "short_circuit": breaker, "retry_made": retry,
        "instance_deregistered": registry, "discovery_error": registry, "no_instance": registry,
        "bulkhead_full": any(e.bulkhead is not None for e in edges),
        "fallback_used": fallback,
        "load_shed": any(e.deadline_propagation for e in edges)
        or any(s.max_queue_wait_s is not None for s in scenario.services),
        "token_fetched": tokens, "auth_401": tokens,
        "message_redelivered": any(c.kind == "queue" for c in scenario.infrastructure),
        "autoscaled": any(s.autoscaling is not None for s in scenario.services),
    }


def _witnessed(record: Record) -> dict[str, bool]:
    log = record.log
    m = record.result.mechanisms
    # Rows by event code (log.rows), not whole-log string comparisons: 0.45 s -> ~0.01 s.
    br = log.rows("breaker")
    to = log.outcome[br]
    reg = log.rows("registry")
    trans = m.get("breaker_transitions", {})
    return {
        "fault_fired": bool(record.faults_fired),
        "instance_down": bool(len(log.rows("instance_down"))),
        "breaker_opened": bool((to == "open").any()),
        "breaker_half_open": bool((to == "half_open").any()),
        "breaker_closed_again": bool(trans.get("half_open->closed", 0)),
        "short_circuit": bool(m.get("short_circuits", 0)),
        "retry_made": bool(m.get("retries", 0)),
        "instance_deregistered": bool((log.operation[reg] == "deregistered").any()),
        "discovery_error": bool(m.get("discovery_errors", 0)),
        "no_instance": bool(len(log.rows("no_instance"))),
        "bulkhead_full": bool(m.get("bulkhead_rejections", 0)),
        "fallback_used": bool(m.get("fallbacks", 0)),
        "timeout_seen": bool((log.outcome[log.rows("call_end")] == "timeout").any()),
        "load_shed": bool(m.get("shed", 0) or m.get("deadline_drops", 0)),
        "token_fetched": bool(m.get("token_fetches", 0)),
        "auth_401": bool(m.get("auth_401", 0)),
        "message_redelivered": bool(len(log.rows("message_nack"))),
        "autoscaled": bool(m.get("scale_out", 0) or m.get("scale_in", 0)),
    }

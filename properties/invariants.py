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
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from statistics import NormalDist
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from hailan_sim.models.policies import EDGE_FIELDS
from hailan_sim.models.scenario import CallNode, Infrastructure, PublishNode, Scenario, split_target
from hailan_sim.models.topology import walk_tree
from hailan_sim.sim.eventlog import COLUMNS
from hailan_sim.sim.metrics import OUTCOMES
from hailan_sim.sim.result import Result

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

#: The pseudo-component "service tokens" (the issuer's keys and every verifier's checks):
#: reached by every service-to-service call when tokens are enabled; faulted by a key
#: rotation, or by a clock skew on a node the issuer runs on. Parenthesised so it can never
#: collide with a component's name.
TOKENS = "(tokens)"

# RabbitMQ's default heartbeat timeout: a broker notices a dead consumer connection (and
# requeues what it had delivered on it) within this long.
_HEARTBEAT_S = 60.0
# Consul's reaper pass period (check_reap_interval), as models.registry uses it.
_REAP_S = 30.0


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """What one invariant says about one record.

    Attributes:
        name: the invariant's registered name.
        holds: True if no violation was found.
        explanation: one sentence a person can act on (which endpoint or instance, how far
            off, when); for a pass, what was checked.
        window: ``(start_s, end_s)`` of the (first) violation, or None.
        details: numbers: what was compared, every violation found, and the anti-vacuity
            report (``fault_kinds_fired``, ``mechanisms``, ``checked``, ``vacuous``).
    """

    name: str
    holds: bool
    explanation: str
    window: Optional[tuple[float, float]] = None
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        mark = "holds" if self.holds else "VIOLATED"
        where = "" if self.window is None else f" [{self.window[0]:g}, {self.window[1]:g}) s"
        return f"{self.name}: {mark}{where}: {self.explanation}"


# --------------------------------------------------------------------------- the record


def without_faults(scenario: Scenario) -> Scenario:
    """The same scenario (profile, policies, seed) with no faults: the baseline to compare with."""
    data = scenario.model_dump(mode="python", exclude_unset=True)
    data["faults"] = []
    return Scenario.model_validate(data)


class _Log:
    """The event log as numpy columns (object arrays for strings, None for missing; -1 for a
    missing request, call or parent id), built straight from the engine's record tuples
    (:data:`sim.eventlog.COLUMNS`) without going through a DataFrame, with the rows of each
    event kind indexed once."""

    __slots__ = ("n", "t", "event", "request", "call", "parent", "source", "target",
                 "instance", "operation", "outcome", "_code", "_codes")

    _STRINGS = {1: "event", 5: "source", 6: "target", 7: "instance", 8: "operation", 9: "outcome"}
    _INTS = {2: "request", 3: "call", 4: "parent"}

    def __init__(self, records: Sequence[tuple]) -> None:
        n = self.n = len(records)
        # One 2-D object array, then a view or a conversion per column: about twice as
        # fast as zip(*records) or a DataFrame on a million rows. The engine writes text
        # columns as str or None (tests/properties/test_invariants.py checks it).
        a = np.array(records, dtype=object).reshape(n, len(COLUMNS))
        self.t = a[:, 0].astype(float)
        for i, name in self._STRINGS.items():
            setattr(self, name, a[:, i])
        for i, name in self._INTS.items():
            col = a[:, i].copy()
            col[col == None] = -1  # noqa: E711 (elementwise comparison)
            setattr(self, name, col.astype(np.int64))
        codes, kinds = pd.factorize(a[:, 1])
        self._codes = codes
        self._code = {k: j for j, k in enumerate(kinds.tolist())}

    def rows(self, *events: str) -> np.ndarray:
        """Row indices of the given events, in log order."""
        codes = [self._code[e] for e in events if e in self._code]
        if not codes:
            return np.zeros(0, dtype=np.intp)
        if len(codes) == 1:
            return np.flatnonzero(self._codes == codes[0])
        return np.flatnonzero(np.isin(self._codes, codes))


_LOGS: dict[int, _Log] = {}


def _log_of(result: Result) -> _Log:
    """``result``'s :class:`_Log`, built once per result (a baseline serves many records)."""
    key = id(result)
    log = _LOGS.get(key)
    if log is None:
        log = _LOGS[key] = _Log(result._events)
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
        return None if self.baseline_log is None else _requests(self.baseline_log)

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
    starts = pd.DataFrame({"request": log.request[s], "endpoint": log.target[s], "start": log.t[s]})
    ends = pd.DataFrame({"request": log.request[e], "end": log.t[e], "outcome": log.outcome[e]})
    ends = ends.drop_duplicates("request", keep="first")
    df = starts.merge(ends, on="request", how="left", sort=False)
    df["latency_ms"] = (df["end"] - df["start"]) * 1000.0
    return df


# --------------------------------------------------------------------------- topology helpers


def _registry_name(scenario: Scenario) -> Optional[str]:
    return next((c.name for c in scenario.infrastructure if c.kind == "registry"), None)


def _gateway_name(scenario: Scenario) -> Optional[str]:
    return next((c.name for c in scenario.infrastructure if c.kind == "gateway"), None)


def _service_of(scenario: Scenario, instance: str) -> str:
    """``order-service-2`` -> ``order-service`` (also infrastructure ``redis-0`` -> ``redis``)."""
    return instance.rsplit("-", 1)[0]


def _component_of(scenario: Scenario, name: str) -> str:
    """A fault's side (a component or an instance) -> the component."""
    names = {c.name for c in (*scenario.services, *scenario.infrastructure)}
    return name if name in names else _service_of(scenario, name)


def _caller_service(scenario: Scenario, source: Optional[str]) -> Optional[str]:
    """The service whose instance ``source`` is; None for clients, the gateway, brokers."""
    if source is None:
        return None
    name, _, idx = source.rpartition("-")
    if idx.isdigit() and any(s.name == name for s in scenario.services):
        return name
    return None


def _node_of(scenario: Scenario, instance: str) -> Optional[str]:
    """Where an instance runs (autoscaled ones too: placement is cycled by index)."""
    name, _, idx = instance.rpartition("-")
    for s in scenario.services:
        if s.name == name:
            order = s.placement or [n.name for n in scenario.nodes]
            return order[int(idx) % len(order)]
    for c in scenario.infrastructure:
        if c.name == name:
            return c.placement or scenario.nodes[0].name
    return None


def _components_on_nodes(scenario: Scenario, nodes: set) -> list[str]:
    out = []
    for p in scenario.placements():
        if p.node in nodes:
            svc = _service_of(scenario, p.instance)
            if svc not in out:
                out.append(svc)
    for c in scenario.infrastructure:
        if (c.placement or scenario.nodes[0].name) in nodes and c.name not in out:
            out.append(c.name)
    return out


def _op_reach(scenario: Scenario, service: str, op: str, acc: list, seen: list,
              *, through_fallback: bool, consumers: bool) -> None:
    """Add what ``service.op`` reaches to ``acc`` (and the operations visited to ``seen``)."""
    if (service, op) in seen:
        return
    seen.append((service, op))
    if service not in acc:
        acc.append(service)
    queues = [c.name for c in scenario.infrastructure if c.kind == "queue"]
    for node, _ in walk_tree(scenario.service(service).operations[op].calls, "calls"):
        if isinstance(node, CallNode):
            if node.fallback and not through_fallback:
                continue
            name, sub = split_target(node.call)
            if isinstance(scenario.component(name), Infrastructure):
                if name not in acc:
                    acc.append(name)
            else:
                _op_reach(scenario, name, sub, acc, seen, through_fallback=through_fallback,
                          consumers=consumers)
        elif isinstance(node, PublishNode):
            via = node.via or (queues[0] if len(queues) == 1 else None)
            if via is not None and via not in acc:
                acc.append(via)
            if consumers:
                name, sub = split_target(node.publish)
                _op_reach(scenario, name, sub, acc, seen, through_fallback=through_fallback,
                          consumers=consumers)


def _makes_service_call(scenario: Scenario, service: str, op: str, through_fallback: bool) -> bool:
    return any(
        isinstance(n, CallNode) and (through_fallback or not n.fallback)
        and not isinstance(scenario.component(split_target(n.call)[0]), Infrastructure)
        for n, _ in walk_tree(scenario.service(service).operations[op].calls, "calls")
    )


def _reach(scenario: Scenario, entry: str, *, through_fallback: bool = False,
           consumers: bool = False) -> list[str]:
    svc, op = split_target(entry)
    acc: list[str] = []
    gw = _gateway_name(scenario)
    if gw is not None:
        acc.append(gw)
    seen: list = []
    _op_reach(scenario, svc, op, acc, seen, through_fallback=through_fallback, consumers=consumers)
    # Any service-to-service call below the entry goes through discovery and (with tokens)
    # carries a token; the entry call itself comes from the gateway, which does neither.
    if any(_makes_service_call(scenario, s, o, through_fallback) for s, o in seen):
        reg = _registry_name(scenario)
        if reg is not None and reg not in acc:
            acc.append(reg)
        if scenario.effective_policies().tokens.enabled:
            acc.append(TOKENS)
    return acc


def endpoint_reach(scenario: Scenario) -> dict[str, list[str]]:
    """Per endpoint, the components its requests depend on for their outcome.

    The entry service, then what its call tree calls, transitively through service
    operations, *except* through calls with ``fallback: true`` (their failure does not fail
    the caller); a publish reaches the queue (the publisher waits for the broker's confirm)
    but not the consumer. The gateway is reached by every endpoint (every request passes
    it). An endpoint whose tree makes a service-to-service call also reaches the registry
    (discovery runs before such calls) and, with tokens enabled, :data:`TOKENS`.
    """
    return {ep.name: _reach(scenario, ep.entry) for ep in scenario.workload.endpoints}


def faulted_components(scenario: Scenario) -> dict[int, list[str]]:
    """Per fault (by index), the components it faults.

    ``crash_instance``/``hang``/``drain_instance``: the instance's service;
    ``crash_service``: the service; ``crash_node``/``crash_zone``: every service and
    component with an instance there; ``slow``/``error_rate``: the target's service;
    ``partition``/``link_latency``: both sides; ``registry_outage``: the registry;
    ``infra_outage``: the component; ``clock_skew``: what runs on the node, plus
    :data:`TOKENS` if the token issuer does; ``key_rotation``: the issuer and
    :data:`TOKENS`; ``load_spike``: everything the spiked endpoint's requests touch
    (through fallbacks and message consumers too: the extra load goes everywhere), except
    the gateway and the registry, which are shared by design and must absorb it.
    """
    out: dict[int, list[str]] = {}
    pol = scenario.effective_policies()
    issuer = split_target(pol.tokens.issuer)[0] if pol.tokens.enabled else None
    for i, f in enumerate(scenario.faults):
        k = f.kind
        if k in ("crash_instance", "hang", "drain_instance"):
            comps = [_service_of(scenario, f.instance)]
        elif k == "crash_service":
            comps = [f.service]
        elif k == "crash_node":
            comps = _components_on_nodes(scenario, {f.node})
        elif k == "crash_zone":
            comps = _components_on_nodes(scenario, {n.name for n in scenario.nodes if n.zone == f.zone})
        elif k in ("slow", "error_rate"):
            comps = [_component_of(scenario, f.target)]
        elif k in ("partition", "link_latency"):
            comps = list(dict.fromkeys([_component_of(scenario, f.a), _component_of(scenario, f.b)]))
        elif k == "registry_outage":
            comps = [_registry_name(scenario)]
        elif k == "infra_outage":
            comps = [f.component]
        elif k == "clock_skew":
            comps = _components_on_nodes(scenario, {f.node})
            if issuer is not None and issuer in comps:
                comps.append(TOKENS)
        elif k == "key_rotation":
            comps = [issuer, TOKENS] if issuer is not None else []
        elif k == "load_spike":
            ep = next(e for e in scenario.workload.endpoints if e.name == f.endpoint)
            shared = {_gateway_name(scenario), _registry_name(scenario)}
            comps = [c for c in _reach(scenario, ep.entry, through_fallback=True, consumers=True)
                     if c not in shared]
        else:  # pragma: no cover - a new fault kind must be classified here
            raise ValueError(f"faults[{i}]: no rule for fault kind {k!r} in faulted_components")
        out[i] = [c for c in comps if c is not None]
    return out


# --------------------------------------------------------------------------- policy-derived defaults


def _edges(scenario: Scenario) -> list[tuple[str, str]]:
    """(caller, callee) service pairs that calls can use, in document order (token
    fetches to the issuer included)."""
    pol = scenario.effective_policies()
    issuer = split_target(pol.tokens.issuer)[0] if pol.tokens.enabled else None
    out: list[tuple[str, str]] = []
    for s in scenario.services:
        for op in s.operations.values():
            for node, _ in walk_tree(op.calls, "calls"):
                if isinstance(node, CallNode):
                    name = split_target(node.call)[0]
                    if not isinstance(scenario.component(name), Infrastructure):
                        if (s.name, name) not in out:
                            out.append((s.name, name))
                        if issuer is not None and (s.name, issuer) not in out:
                            out.append((s.name, issuer))
    return out


def _edge_policy(scenario: Scenario, caller: str, callee: str) -> dict:
    """The policies of calls from ``caller`` to ``callee``: the defaults, then every
    matching ``edges`` entry in order (later wins) -- the rule docs/profiles.md states."""
    p = scenario.effective_policies()
    fields = {f: getattr(p, f) for f in EDGE_FIELDS}
    for ov in p.edges:
        if ov.caller in (None, caller) and ov.callee in (None, callee):
            fields.update(ov.overrides())
    return fields


def _staleness_s(discovery) -> float:
    if discovery.timing == "cached":
        return float(discovery.ttl_s)
    if discovery.timing == "watch":
        return float(discovery.watch_delay_s)
    return 0.0


def dead_instance_bound_s(scenario: Scenario, caller: Optional[str] = None,
                          callee: Optional[str] = None) -> float:
    """How long after an instance dies its callers may still send it calls, by the
    registry policy of the edge (the largest over all edges when not given).

    ``agent_list`` discovery lists an instance until it is reaped: detection (a failing
    check: ``max(1, failures_before_critical) x (interval + timeout)``), then the
    deregistration delay (Consul clamps it to >= 60 s and reaps every 30 s; ``exact``:
    as configured, no reaper), then the view's staleness (cache TTL or watch delay).
    ``health_passing`` hides it at the first failing check: detection plus staleness.
    Without a registry callers pick among up instances only: 0. Never reaped: infinite.
    """
    if _registry_name(scenario) is None:
        return 0.0
    pol = scenario.effective_policies()
    hc = pol.health_check
    detect = max(1, hc.failures_before_critical) * (hc.interval_s + hc.timeout_s)
    if caller is not None and callee is not None:
        edges = [(caller, callee)]
    else:
        edges = _edges(scenario) or [("", "")]
    bound = 0.0
    for a, b in edges:
        disc = _edge_policy(scenario, a, b)["discovery"]
        if disc.path == "agent_list":
            after = hc.effective_deregister_after_s()
            if after is None:
                return math.inf
            removal = after + (_REAP_S if hc.deregister_timing == "consul" else 0.0)
            b_s = detect + removal + _staleness_s(disc)
        else:
            b_s = detect + _staleness_s(disc)
        bound = max(bound, b_s)
    return bound


def default_recovery_s(scenario: Scenario, *, slack_s: float = 10.0) -> float:
    """R, the time after the last fault ends by which every endpoint must be back, from the
    policies' own timers, taken in sequence (each can start only when the previous ended):

    restart (the largest ``startup_s`` of a service a fault restarts) + detection (health
    check ``interval + timeout``; the dead-instance bound instead when a fault leaves an
    instance dead) + the largest discovery staleness + the largest breaker wait (spec:
    ``timeout_s``; sliding window: ``wait_in_open_s + max_wait_in_half_open_s``; outlier
    ejection: ``base_ejection_s + interval_s``) + the verifiers' key-cache TTL after a key
    rotation when they do not refetch unknown keys + ``slack_s``.
    """
    pol = scenario.effective_policies()
    restart = 0.0
    leaves_dead = False
    for f in scenario.faults:
        if f.kind in ("crash_instance", "hang", "drain_instance"):
            svcs = [_service_of(scenario, f.instance)]
        elif f.kind == "crash_service":
            svcs = [f.service]
        elif f.kind in ("crash_node", "crash_zone"):
            nodes = ({f.node} if f.kind == "crash_node"
                     else {n.name for n in scenario.nodes if n.zone == f.zone})
            svcs = _components_on_nodes(scenario, nodes)
        else:
            continue
        if getattr(f, "restart", True) is False:
            leaves_dead = True
        for s in scenario.services:
            if s.name in svcs:
                restart = max(restart, s.startup_s)
    hc = pol.health_check
    detect = hc.interval_s + hc.timeout_s
    if leaves_dead:
        detect = max(detect, dead_instance_bound_s(scenario))
    stale = 0.0
    breaker = 0.0
    for a, b in _edges(scenario) or [("", "")]:
        e = _edge_policy(scenario, a, b)
        stale = max(stale, _staleness_s(e["discovery"]))
        br = e["breaker"]
        if br is not None:
            if br.kind == "spec":
                breaker = max(breaker, br.timeout_s)
            else:
                breaker = max(breaker, br.wait_in_open_s + br.max_wait_in_half_open_s)
        if e["outlier"] is not None:
            breaker = max(breaker, e["outlier"].base_ejection_s + e["outlier"].interval_s)
    keys = 0.0
    tok = pol.tokens
    if tok.enabled and not tok.refetch_on_unknown_kid and (
        tok.key_rotations_s or any(f.kind == "key_rotation" for f in scenario.faults)
    ):
        keys = tok.key_cache_ttl_s
    return restart + detect + stale + breaker + keys + slack_s


def default_amplification_factor(scenario: Scenario) -> float:
    """The most one retrying layer can multiply a request's calls to any one target: the
    largest ``retry.max_attempts`` of any edge, plus one when a 401 is refreshed and retried
    (that attempt is not counted as a retry); at least 2, because one-off work (a token
    fetch, a discovery refresh) and random fan-out (repeat counts) can exceed the
    baseline's largest count but not double it. More than this means retries compounded
    across layers (the SRE book's 3 x 3 x 3) or redeliveries piled up."""
    pol = scenario.effective_policies()
    attempts = max([_edge_policy(scenario, a, b)["retry"].max_attempts
                    for a, b in _edges(scenario)] or [pol.retry.max_attempts])
    if pol.tokens.enabled and pol.tokens.on_401 == "refresh_retry":
        attempts += 1
    return float(max(2, attempts))


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
    ev = log.event
    br = log.rows("breaker")
    to = log.outcome[br]
    reg = log.rows("registry")
    trans = m.get("breaker_transitions", {})
    return {
        "fault_fired": bool(record.faults_fired),
        "instance_down": bool((ev == "instance_down").any()),
        "breaker_opened": bool((to == "open").any()),
        "breaker_half_open": bool((to == "half_open").any()),
        "breaker_closed_again": bool(trans.get("half_open->closed", 0)),
        "short_circuit": bool(m.get("short_circuits", 0)),
        "retry_made": bool(m.get("retries", 0)),
        "instance_deregistered": bool((log.operation[reg] == "deregistered").any()),
        "discovery_error": bool(m.get("discovery_errors", 0)),
        "no_instance": bool((ev == "no_instance").any()),
        "bulkhead_full": bool(m.get("bulkhead_rejections", 0)),
        "fallback_used": bool(m.get("fallbacks", 0)),
        "timeout_seen": bool(((ev == "call_end") & (log.outcome == "timeout")).any()),
        "load_shed": bool(m.get("shed", 0) or m.get("deadline_drops", 0)),
        "token_fetched": bool(m.get("token_fetches", 0)),
        "auth_401": bool(m.get("auth_401", 0)),
        "message_redelivered": bool((ev == "message_nack").any()),
        "autoscaled": bool(m.get("scale_out", 0) or m.get("scale_in", 0)),
    }


# --------------------------------------------------------------------------- the registry


class Invariant:
    """A named invariant: ``invariant(record, **options) -> Verdict``.

    Wraps a function of the record; the verdict it returns gets the invariant's name and
    the anti-vacuity report (``fault_kinds_fired``, ``mechanisms``) in its details.
    """

    def __init__(self, name: str, fn: Callable[..., Verdict]) -> None:
        self.name = name
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = name
        self.__wrapped__ = fn

    def __call__(self, record: Record, **options: Any) -> Verdict:
        v = self.fn(record, **options)
        if not isinstance(v, Verdict):
            raise TypeError(f"invariant {self.name!r} returned {type(v).__name__}, not a Verdict")
        details = dict(v.details)
        details.setdefault("fault_kinds_fired", record.fault_kinds_fired)
        details.setdefault("mechanisms", dict(record.mechanisms_witnessed))
        return replace(v, name=self.name, holds=bool(v.holds), details=details)

    def __repr__(self) -> str:
        return f"Invariant({self.name!r})"


INVARIANTS: "OrderedDict[str, Invariant]" = OrderedDict()


def register(name: str, *, replace: bool = False) -> Callable[[Callable[..., Verdict]], Invariant]:
    """Decorator: register ``fn(record, **options) -> Verdict`` as invariant ``name``.

    Its docstring is its definition. Registering a taken name is an error unless
    ``replace=True`` (then it keeps its place in the order)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{name=} must be a non-empty string")

    def deco(fn: Callable[..., Verdict]) -> Invariant:
        if name in INVARIANTS and not replace:
            raise ValueError(
                f"an invariant named {name!r} is already registered; pick another name, "
                "pass replace=True, or unregister it first"
            )
        inv = Invariant(name, fn)
        INVARIANTS[name] = inv
        return inv

    return deco


def unregister(name: str) -> Invariant:
    """Remove invariant ``name`` (and return it)."""
    try:
        return INVARIANTS.pop(name)
    except KeyError:
        raise KeyError(f"no invariant {name!r}; registered: {', '.join(INVARIANTS)}") from None


def get(name: str) -> Invariant:
    try:
        return INVARIANTS[name]
    except KeyError:
        raise KeyError(f"no invariant {name!r}; registered: {', '.join(INVARIANTS)}") from None


def evaluate(record: Record, names: Optional[Iterable[str]] = None,
             options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> list[Verdict]:
    """Every registered invariant (or those named), in registration order.

    ``options`` maps an invariant's name to keyword arguments for it, e.g.
    ``{"bounded_recovery": {"recovery_s": 60}}``.
    """
    wanted = None if names is None else list(names)
    if wanted is not None:
        unknown = [n for n in wanted if n not in INVARIANTS]
        if unknown:
            raise KeyError(f"no invariant {unknown[0]!r}; registered: {', '.join(INVARIANTS)}")
    options = dict(options or {})
    for n in options:
        if n not in INVARIANTS:
            raise KeyError(f"options for unknown invariant {n!r}; registered: {', '.join(INVARIANTS)}")
    return [inv(record, **options.get(n, {}))
            for n, inv in INVARIANTS.items() if wanted is None or n in wanted]


# --------------------------------------------------------------------------- windowed statistics

_WIDTHS = (5.0, 10.0, 15.0, 20.0, 30.0, 60.0)


def _widths(record: Record, min_requests: int, window_s: Optional[float]) -> dict[str, float]:
    """Per endpoint, the window width: the narrowest of 5, 10, 15, 20, 30, 60 s (and not
    below the run's own window) in which the baseline averages at least ``min_requests``
    requests; 60 s if none does. ``window_s`` forces one width."""
    run = record.scenario.run
    names = [e.name for e in record.scenario.workload.endpoints]
    if window_s is not None:
        return {e: float(window_s) for e in names}
    measured = run.duration_s - run.warmup_s
    counts = record.baseline.endpoints["total"] if "total" in record.baseline.endpoints else None
    out = {}
    for e in names:
        rate = float(counts.get(e, 0)) / measured if counts is not None else 0.0
        width = _WIDTHS[-1]
        for w in _WIDTHS:
            if w >= run.window_s and rate * w >= min_requests:
                width = w
                break
        out[e] = max(width, run.window_s)
    return out


def _nearest_rank(values: np.ndarray, q: float) -> float:
    if len(values) == 0:
        return math.nan
    v = np.sort(values)
    return float(v[max(1, math.ceil(q * len(v))) - 1])


def _table_from_requests(req: pd.DataFrame, widths: dict, t0: float, t1: float) -> pd.DataFrame:
    """(endpoint, j) -> n, ok, p99_ms for requests *started* in [t0 + jW, t0 + (j+1)W) < t1."""
    df = req[(req["start"] >= t0) & (req["start"] < t1)]
    if df.empty:
        return pd.DataFrame(columns=["endpoint", "j", "n", "ok", "p99_ms"])
    w = df["endpoint"].map(widths).to_numpy(dtype=float)
    j = np.floor((df["start"].to_numpy() - t0) / w).astype(np.int64)
    lat = df["latency_ms"].to_numpy(dtype=float)
    ok = (df["outcome"] == "ok").to_numpy()
    key = pd.DataFrame({"endpoint": df["endpoint"].to_numpy(dtype=object), "j": j, "ok": ok, "lat": lat})
    rows = []
    for (e, jj), g in key.groupby(["endpoint", "j"], sort=True):
        lats = g["lat"].to_numpy()
        lats = lats[~np.isnan(lats)]
        rows.append((e, int(jj), len(g), int(g["ok"].sum()), _nearest_rank(lats, 0.99)))
    return pd.DataFrame(rows, columns=["endpoint", "j", "n", "ok", "p99_ms"])


def _table_from_windows(windows: pd.DataFrame, widths: dict, t0: float, t1: float) -> pd.DataFrame:
    """The same from a run's per-window table (completions by end time; p99 of a merged
    window: the largest of its windows' p99, an upper bound)."""
    df = windows[(windows["window_start_s"] >= t0) & (windows["window_start_s"] < t1)]
    rows = []
    if not df.empty:
        w = df["endpoint"].map(widths).to_numpy(dtype=float)
        j = np.floor((df["window_start_s"].to_numpy() - t0) / w).astype(np.int64)
        tmp = pd.DataFrame({"endpoint": df["endpoint"].to_numpy(dtype=object), "j": j,
                            "n": df["total"].to_numpy(), "ok": df["ok"].to_numpy(),
                            "p99": df["p99_ms"].to_numpy(dtype=float)})
        for (e, jj), g in tmp.groupby(["endpoint", "j"], sort=True):
            rows.append((e, int(jj), int(g["n"].sum()), int(g["ok"].sum()), float(np.nanmax(g["p99"]))
                         if g["p99"].notna().any() else math.nan))
    return pd.DataFrame(rows, columns=["endpoint", "j", "n", "ok", "p99_ms"])


def _compare_windows(record: Record, endpoints: Sequence[str], widths: dict, t0: float, t1: float
                     ) -> pd.DataFrame:
    """Faulted vs baseline, per endpoint and window from ``t0``: n0, ok0, p99_0, n1, ok1, p99_1."""
    f = _table_from_requests(record.requests, widths, t0, t1)
    if record.baseline_requests is not None:
        b = _table_from_requests(record.baseline_requests, widths, t0, t1)
    else:
        b = _table_from_windows(record.baseline.windows, widths, t0, t1)
    m = b.merge(f, on=["endpoint", "j"], how="outer", suffixes=("_0", "_1"))
    m = m[m["endpoint"].isin(list(endpoints))].copy()
    for c in ("n_0", "ok_0", "n_1", "ok_1"):
        m[c] = m[c].fillna(0).astype(np.int64)
    m["start"] = t0 + m["j"] * m["endpoint"].map(widths).astype(float)
    m["end"] = np.minimum(m["start"] + m["endpoint"].map(widths).astype(float), t1)
    order = {e: i for i, e in enumerate(endpoints)}
    m["_o"] = m["endpoint"].map(order)
    return m.sort_values(["_o", "j"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _ratio_drop(m: pd.DataFrame, z: float, margin: float) -> np.ndarray:
    """True where the run's success ratio is below the baseline's by more than ``margin``
    plus ``z`` standard errors (Agresti-Caffo: one success and one failure added to each
    side, so small and all-ok windows get honest errors)."""
    n0, k0 = m["n_0"].to_numpy(float), m["ok_0"].to_numpy(float)
    n1, k1 = m["n_1"].to_numpy(float), m["ok_1"].to_numpy(float)
    p0 = (k0 + 1) / (n0 + 2)
    p1 = (k1 + 1) / (n1 + 2)
    se = np.sqrt(p0 * (1 - p0) / (n0 + 2) + p1 * (1 - p1) / (n1 + 2))
    return (n0 > 0) & (n1 > 0) & (p0 - p1 - margin > z * se)


def _p99_worse(m: pd.DataFrame, ref_run: Mapping[str, float], ratio: float, abs_ms: float,
               min_requests: int) -> np.ndarray:
    """True where the run's p99 exceeds ``max(ratio x ref, ref + abs_ms)``, ref being the
    larger of the baseline window's p99 and the baseline run's; only where both windows
    hold ``min_requests`` requests."""
    ref = np.fmax(m["p99_ms_0"].to_numpy(float), m["endpoint"].map(ref_run).to_numpy(float))
    limit = np.maximum(ratio * ref, ref + abs_ms)
    enough = (m["n_0"].to_numpy() >= min_requests) & (m["n_1"].to_numpy() >= min_requests)
    return enough & (m["p99_ms_1"].to_numpy(float) > limit)


def _z(alpha: float, comparisons: int) -> float:
    """One-sided normal quantile at the Bonferroni-corrected level ``alpha / comparisons``."""
    return NormalDist().inv_cdf(1.0 - alpha / max(1, comparisons))


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _window_rows(m: pd.DataFrame, mask: np.ndarray, limit: int = 20) -> list[dict]:
    out = []
    for _, r in m[mask].head(limit).iterrows():
        out.append({
            "endpoint": r["endpoint"], "window": (float(r["start"]), float(r["end"])),
            "baseline_ratio": float(r["ok_0"] / r["n_0"]) if r["n_0"] else None,
            "ratio": float(r["ok_1"] / r["n_1"]) if r["n_1"] else None,
            "baseline_requests": int(r["n_0"]), "requests": int(r["n_1"]),
            "baseline_p99_ms": None if pd.isna(r["p99_ms_0"]) else float(r["p99_ms_0"]),
            "p99_ms": None if pd.isna(r["p99_ms_1"]) else float(r["p99_ms_1"]),
        })
    return out


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
    an instance up and the broker was up for ``grace_s`` without a break (default: RabbitMQ's
    60 s heartbeat timeout, within which a broker requeues what a dead connection held,
    plus the broker's redelivery delay).
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
            g = grace_s
            if g is None:
                g = _HEARTBEAT_S + sc.component(broker).redelivery_delay_s
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

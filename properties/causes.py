"""Where each failed request's failure started, from its span tree: direct or collateral.

For every request that did not end ok, follow its failing calls from the top (the gateway's
or client's call) down to the deepest one: at each failed call, the failing child that ended
last before it (the first failure stops a sequence, and a retried call's last attempt is its
last failure); a failed call with no failing child before its end is where the failure
started (its *origin*). Refusals by the caller's own client (a breaker's short circuit, no
instance, a discovery error, a full bulkhead) are leaves too, as is a 401 from a verifier.

The origin is **direct** when it is at a faulted component while its fault was on: a dead,
hung or faulted instance, a faulted service or infrastructure component, a faulted link
between the caller and the callee, the registry while it was unreachable, the token keys
or a skewed clock. Otherwise it is **collateral**: a breaker short-circuiting a call to a
healthy service, a rejection or timeout at a healthy service, a 401 from a healthy
verifier. A load spike's own requests fail directly. docs/invariants.md, "no_cascading_failure".
"""

from __future__ import annotations

import bisect
from typing import Optional

import numpy as np
import pandas as pd

from hailan_sim.models.scenario import Scenario
from hailan_sim.properties.reach import (
    _caller_service,
    _components_on_nodes,
    _edge_policy,
    _op_reach,
    _registry_name,
    _service_of,
    _staleness_s,
    faulted_components,
    token_issuer,
)
from hailan_sim.properties.record import Record

__all__ = ["REFUSALS", "breaker_chain", "describe_chain", "fault_scopes", "failure_origins"]

#: Events logged when the caller's own client refuses a call before sending it.
REFUSALS = ("short_circuit", "no_instance", "discovery_error", "bulkhead_full")

_ORIGIN_COLUMNS = ["request", "endpoint", "start", "outcome", "mechanism", "t", "source", "target",
                   "operation", "instance", "direct", "fault", "path"]


def fault_scopes(scenario: Scenario) -> dict[int, dict]:
    """Per fault (by index): what it faults, finer than :func:`faulted_components`:
    ``instances`` (a crash, hang, drain, slowness or errors of one instance; every instance
    on a crashed node or zone), ``components`` (a faulted service or infrastructure
    component), ``links`` (pairs of sides, a component or an instance), ``registry`` and
    ``tokens`` (True when the fault takes them out), ``endpoint`` (a load spike's)."""
    pol = scenario.effective_policies()
    issuer = token_issuer(scenario)
    issuer_nodes = {p.node for p in scenario.placements() if _service_of(scenario, p.instance) == issuer}
    comps = faulted_components(scenario)
    services = {s.name for s in scenario.services}
    out: dict[int, dict] = {}
    for i, f in enumerate(scenario.faults):
        s = {"instances": [], "components": [], "links": [], "registry": False, "tokens": False,
             "endpoint": None, "nodes": []}
        k = f.kind
        if k in ("crash_instance", "hang", "drain_instance"):
            s["instances"] = [f.instance]
        elif k in ("slow", "error_rate"):
            if f.target in services or f.target in {c.name for c in scenario.infrastructure}:
                s["components"] = [f.target]
            else:
                s["instances"] = [f.target]
        elif k in ("crash_node", "crash_zone"):
            nodes = {f.node} if k == "crash_node" else {n.name for n in scenario.nodes if n.zone == f.zone}
            s["nodes"] = sorted(nodes)
            s["instances"] = [p.instance for p in scenario.placements() if p.node in nodes]
            s["components"] = [c for c in _components_on_nodes(scenario, nodes) if c not in services]
        elif k in ("partition", "link_latency"):
            s["links"] = [(f.a, f.b)]
        elif k == "registry_outage":
            s["registry"] = True
            s["components"] = [_registry_name(scenario)]
        elif k == "clock_skew":
            # Tokens signed or checked on the node fail (the ``nodes`` rule); every token
            # only when the issuer signs on it (signing: issuer).
            s["nodes"] = [f.node]
            s["tokens"] = f.node in issuer_nodes
        elif k == "key_rotation":
            s["tokens"] = pol.tokens.enabled
        elif k == "load_spike":
            s["endpoint"] = f.endpoint
            s["components"] = list(comps.get(i, []))
        else:
            s["components"] = list(comps.get(i, []))
        out[i] = s
    return out


class _Faults:
    """Which faults were on when, and whether a place was faulted at a time."""

    def __init__(self, record: Record) -> None:
        sc = record.scenario
        self.sc = sc
        self.scopes = fault_scopes(sc)
        end = record.result.end_s
        # A key rotation acts for good: the issuer never signs with the old key again, so
        # tokens signed after it (at each caller's next renewal, which with steady-state
        # tokens can come long after its nominal end) are its direct cost.
        self.on = [(f["index"], f["start_s"],
                    end if f["end_s"] is None or f["kind"] == "key_rotation" else f["end_s"])
                   for f in record.faults_fired]
        # Per instance, its transitions' rows as a Python list and its states: looked up
        # with bisect for each failed request (a numpy searchsorted per scalar cost more).
        self.states = {k: (rows.tolist(), ss) for k, (rows, _, ss) in record.instance_states.items()}
        self.registry_out = record.registry_unreachable
        self.registry = _registry_name(sc)
        self._node: dict[str, Optional[str]] = {}
        self._reach: dict[tuple[str, str], list[str]] = {}
        # Per name, computed once per record (failure_origins asks for every failed
        # request; a few dozen distinct names): the caller's service, an instance's
        # service, the instances of a target.
        self._caller: dict[str, Optional[str]] = {}
        self._svc: dict[str, Optional[str]] = {}
        self._insts: dict[str, list[str]] = {}
        self._log = record.log
        self._initial_status = sc.policies.health_check.initial_status
        self._listed: Optional[dict[str, tuple[list[int], list[float], list[str]]]] = None
        self._lag: dict[tuple[str, str], float] = {}
        self._breakers: dict[tuple[str, str], np.ndarray] = {}
        # What direct() decides from the faults on and the names alone, per (faults on,
        # source, target, instance, mechanism, endpoint, op): thousands of failed requests
        # share a few hundred such keys (issue 12). Rows are not part of it: what depends
        # on them (dead, opened_while_dead, unready) is decided after, for each request.
        self._scoped: dict[tuple, Optional[int]] = {}

    def _caller_of(self, source: str) -> Optional[str]:
        c = self._caller.get(source, self)
        if c is self:
            c = self._caller[source] = _caller_service(self.sc, source)
        return c

    def _service(self, instance: str) -> Optional[str]:
        v = self._svc.get(instance, self)
        if v is self:
            v = self._svc[instance] = _service_of(self.sc, instance)
        return v

    def reach(self, service: str, op: Optional[str]) -> list[str]:
        """What ``service.op`` depends on for its outcome (itself included; not through
        fallbacks; not the consumers of what it publishes)."""
        key = (service, op or "")
        if key not in self._reach:
            acc: list[str] = []
            svc = next((s for s in self.sc.services if s.name == service), None)
            if svc is not None and op in svc.operations:
                _op_reach(self.sc, service, op, acc, [], through_fallback=False, consumers=False)
            else:
                acc = [service]
            self._reach[key] = acc
        return self._reach[key]

    def _node_of(self, inst: Optional[str]) -> Optional[str]:
        from hailan_sim.properties.reach import _node_of

        if inst is None:
            return None
        if inst not in self._node:
            self._node[inst] = _node_of(self.sc, inst)
        return self._node[inst]

    def dead(self, inst: Optional[str], row: int) -> bool:
        """Was ``inst`` down or hung at log row ``row``?"""
        st = self.states.get(inst) if inst is not None else None
        if st is None:
            return False
        rows, ss = st
        return ss[max(bisect.bisect_right(rows, row) - 1, 0)] != "up"

    def restarted(self, inst: str, row: int) -> Optional[tuple[int, int]]:
        """If ``inst`` was up at log row ``row`` after having been down or hung: the rows at
        which it last went down and came back up; else None (not up, never down, or down
        only before the log began, as a cold start)."""
        st = self.states.get(inst)
        if st is None:
            return None
        rows, ss = st
        k = bisect.bisect_right(rows, row) - 1
        if k < 1 or ss[k] != "up":
            return None
        down = next((rows[j] for j in range(k - 1, -1, -1) if ss[j] != "up"), -1)
        return (down, rows[k]) if down >= 0 else None

    def _registry_status(self) -> dict[str, tuple[list[int], list[float], list[str]]]:
        """Per instance, the rows at which the registry set its health status, and the
        status: a check's ``status`` row; a (re-)registration, which starts the check in
        ``initial_status`` (Consul: "A new check is critical until its first pass unless
        status is set", models/registry.py HealthCheckConfig, ref 4); a deregistration,
        after which discovery lists the instance no more ("critical" here)."""
        if self._listed is None:
            log = self._log
            out: dict[str, tuple[list[int], list[float], list[str]]] = {}
            for r in log.rows("registry").tolist():
                kind = log.operation[r]
                if kind == "status":
                    status = log.outcome[r]
                elif kind in ("registered", "reregistered"):
                    status = self._initial_status
                elif kind == "deregistered":
                    status = "critical"
                else:
                    continue
                rows, ts, ss = out.setdefault(log.instance[r], ([], [], []))
                rows.append(r)
                ts.append(float(log.t[r]))
                ss.append(status)
            self._listed = out
        return self._listed

    def view_lag(self, source: Optional[str], target: str) -> float:
        """How old the caller's view of ``target``'s instances may be: its discovery's
        cache TTL or watch delay (0 per call; reach._staleness_s)."""
        caller = (self._caller_of(source) if source else None) or ""
        key = (caller, target)
        lag = self._lag.get(key)
        if lag is None:
            lag = self._lag[key] = _staleness_s(_edge_policy(self.sc, caller, target)["discovery"])
        return lag

    def unready(self, inst: str, row: int, t: float, lag: float = 0.0) -> bool:
        """Was ``inst`` up at log row ``row`` (time ``t``) after a restart, but not yet listed
        as passing since it went down, in a view of the registry up to ``lag`` s old? A
        restarted instance registers again with its check in ``initial_status`` and is
        discovered only after its first passing check (Consul ``health_passing``); a crash
        the check saw leaves it critical until then; a cached view shows that for up to its
        TTL more. Either way the caller's "no instance" is the fault's own recovery, not a
        cascade."""
        spell = self.restarted(inst, row)
        listed = self._registry_status().get(inst)
        if spell is None or listed is None:
            return False
        down, _ = spell
        lrows, lts, lss = listed
        # The registry's last word before ``row``, and before the oldest view the caller
        # may still be using.
        for j in (bisect.bisect_left(lrows, row) - 1, bisect.bisect_right(lts, t - lag) - 1):
            if j >= 0 and lrows[j] > down and lss[j] == "critical":
                return True
        return False

    def opened_while_dead(self, source: Optional[str], key: str, row: int) -> bool:
        """Was ``source``'s breaker for instance ``key`` still open (or half-open) at ``row``
        from an opening while ``key`` was last down or hung? Its short circuits after the
        instance is back are the crash's recovery: the breaker waits out ``wait_in_open_s``
        and its half-open probes before it closes (resilience4j CircuitBreaker; the
        spec's 3.5.1), the same for a restarted instance as for a healthy one."""
        spell = self.restarted(key, row) if source is not None else None
        if spell is None:
            return False
        down, up = spell
        log = self._log
        br = self._breakers.get((source, key))
        if br is None:
            allb = log.rows("breaker")
            br = allb[(log.source[allb] == source) & (log.target[allb] == key)]
            self._breakers[(source, key)] = br
        # This episode: the transitions since the breaker last closed (open, half_open, open
        # again on a failed probe...). The first opening of it decides.
        before = br[br < row]
        closes = before[log.outcome[before] == "closed"]
        opens = before[(before > (int(closes[-1]) if len(closes) else -1)) & (log.outcome[before] == "open")]
        return len(opens) > 0 and down < int(opens[0]) <= up

    def active(self, t0: float, t1: float) -> list[int]:
        """Faults on at some time in [t0, t1]."""
        return [i for i, a, b in self.on if a <= t1 and t0 <= b]

    def direct(self, *, t0: float, t1: float, row0: int, row1: int, source: Optional[str],
               target: str, instance: Optional[str], mechanism: str, endpoint: str,
               op: Optional[str] = None) -> Optional[int]:
        """The fault (index) that makes an origin direct, or None (collateral); -1 for a
        dead instance whose fault already ended (a crash that left it dead)."""
        # A refusal's "instance" is the breaker's or bulkhead's key: an instance, a service or "*".
        if instance is not None and instance not in self.states:
            instance = None
        on = tuple(self.active(t0, t1))
        key = (on, source, target, instance, mechanism, endpoint, op)
        i = self._scoped.get(key, self)
        if i is self:
            i = self._scoped[key] = self._by_scope(on, source, target, instance, mechanism, endpoint, op)
        if i is not None:
            return i
        return self._by_rows(t0=t0, t1=t1, row0=row0, row1=row1, source=source, target=target,
                             instance=instance, mechanism=mechanism)

    def _by_scope(self, on: tuple, source: Optional[str], target: str, instance: Optional[str],
                  mechanism: str, endpoint: str, op: Optional[str]) -> Optional[int]:
        """direct()'s first part: the first of the faults ``on`` whose scope takes in the
        origin, by names alone (no row, no time: the same for every origin with these
        arguments and these faults on), or None."""
        sc = self.sc
        caller = self._caller_of(source) if source else None
        inst_svc = self._service(instance) if instance else None
        for i in on:
            s = self.scopes[i]
            if s["endpoint"] is not None:
                if s["endpoint"] == endpoint or target in s["components"]:
                    return i
                continue
            if instance is not None and instance in s["instances"]:
                return i
            if target in s["components"] or (inst_svc is not None and inst_svc in s["components"]):
                return i
            for a, b in s["links"]:
                sides = {a, b}
                here = {x for x in (source, caller) if x}
                there = {x for x in (target, instance) if x}
                if (sides & here and sides & there) or (
                    # a partition of the registry fails discovery
                    mechanism == "discovery_error" and self.registry in sides and sides & here
                ):
                    return i
            if mechanism == "discovery_error" and s["registry"]:
                return i
            if mechanism == "no_instance" and (s["registry"] or any(
                _service_of(sc, x) == target for x in s["instances"]
            )):
                return i
            if mechanism == "auth_401" and (s["tokens"] or (
                s["nodes"] and {self._node_of(source), self._node_of(instance)} & set(s["nodes"])
            )):
                return i
        # A short circuit or a timeout at a callee that itself depends on a component a
        # fault takes out whole (a service, an infrastructure component, the registry, a
        # link to it): the call could not have succeeded, breaker or not. One instance of
        # several being lost does not count: the callee could have used another.
        if mechanism in ("short_circuit", "timeout", "bulkhead_full"):
            deps = self.reach(target, op)
            for i in on:
                s = self.scopes[i]
                # (A link counts when both its sides are whole components on that path.)
                if s["endpoint"] is None and (set(s["components"]) & set(deps) or any(
                    a in deps and b in deps for a, b in s["links"]
                )):
                    return i
        return None

    def _by_rows(self, *, t0: float, t1: float, row0: int, row1: int, source: Optional[str],
                 target: str, instance: Optional[str], mechanism: str) -> Optional[int]:
        """direct()'s second part, when no fault's scope took the origin in: -1 when it
        failed at what a fault left behind at its rows and times (a dead instance, an
        unreachable registry, a breaker opened while its instance was dead, a target with
        no instance up or listed yet), else None."""
        if mechanism == "discovery_error" and any(a <= t1 and t0 <= b for a, b in self.registry_out):
            return -1
        if instance is not None and (self.dead(instance, row0) or self.dead(instance, row1)):
            return -1
        if mechanism == "short_circuit" and instance is not None and self.opened_while_dead(
            source, instance, row0
        ):
            return -1
        if mechanism == "no_instance" or (mechanism == "error" and instance is None):
            # No instance to send to (the client's no_instance; or a call the engine failed
            # at once because the component had none up, as at a crashed single-instance
            # gateway): direct when every instance of the target was dead then, whether or
            # not its fault is still on (a crash without restart outlives its fault), or
            # restarted and not yet passing its first check since (found by the 200-example
            # hardened property: crash_service(user-service, restart) left all three up
            # and critical for 2.7-4.7 s after the fault; docs/invariants.md).
            insts = self._insts.get(target)
            if insts is None:
                insts = self._insts[target] = [k for k in self.states if self._service(k) == target]
            lag = self.view_lag(source, target) if mechanism == "no_instance" else 0.0
            if insts and all(self.dead(k, row0) or self.unready(k, row0, t0, lag) for k in insts):
                return -1
        return None


class _RowOf:
    """``get(call, default)`` over a :meth:`_Log.call_rows` table, as ``dict.get`` on
    ``{call id: row}``."""

    __slots__ = ("tab",)

    def __init__(self, tab: np.ndarray) -> None:
        self.tab = tab

    def get(self, call: int, default=None):
        i = call + 1
        if i < 0 or i >= len(self.tab):
            return default
        r = int(self.tab[i])
        return default if r < 0 else r


class _Tree:
    """The failing part of every span tree of a log: failed calls and refusals by parent."""

    def __init__(self, log) -> None:
        self.log = log
        ce = log.rows("call_end")
        # Each call's (last) call_start row: the log's shared lookup table by call id,
        # read like the dict it replaces (issue 12: no dict of every call per example).
        self.start_row = _RowOf(log.call_rows("call_start"))
        # Each call's first call_end row, by call id in ascending order (what a groupby on
        # the ids and first() gave): one table indexed by call id + 1, the smallest row kept.
        first = np.full(int(max(log.call.max(initial=-1), 0)) + 2, log.n, dtype=np.intp)
        np.minimum.at(first, log.call[ce] + 1, ce)
        has = np.flatnonzero(first < log.n)
        end_rows = first[has]
        bad = log.outcome[end_rows] != "ok"
        self.kids: dict[int, list[int]] = {}
        self.tops: dict[int, list[int]] = {}
        # Each failed call's start row, parent and request read at once from the table
        # (issue 12: no lookup per failed call); calls without a call_start row are skipped.
        starts = self.start_row.tab[has[bad]]
        found = starts >= 0
        starts = starts[found]
        kids, tops = self.kids, self.tops
        for p, q, r in zip(log.parent[starts].tolist(), log.request[starts].tolist(),
                           end_rows[bad][found].tolist()):
            if p >= 0:
                kids.setdefault(p, []).append(r)
            else:
                tops.setdefault(q, []).append(r)
        for r in log.rows(*REFUSALS).tolist():
            p = int(log.parent[r])
            if p >= 0:
                self.kids.setdefault(p, []).append(r)
        a401 = log.rows("auth_401")
        self.auth_of = dict(zip(log.call[a401].tolist(), a401.tolist()))

    def descend(self, row: int) -> tuple[int, list[str]]:
        """From a failed call's end row down to where its failure started: at each failed
        call, the failing child that ended last before it. Returns the origin's row (a
        ``call_end`` or a refusal) and the path of ``service.operation`` below ``row``'s."""
        log = self.log
        cur = row
        path = []
        while True:
            c = int(log.call[cur])
            path.append(f"{log.target[cur]}.{log.operation[cur]}" if log.operation[cur] else str(log.target[cur]))
            below = [r for r in self.kids.get(c, ()) if r < cur]
            if not below:
                return cur, path
            cur = max(below)
            if log.event[cur] in REFUSALS:
                path.append(f"{log.target[cur]}.{log.operation[cur]}")
                return cur, path


_TREES: dict[int, _Tree] = {}


def _tree_of(result, log) -> _Tree:
    import weakref

    key = id(result)
    t = _TREES.get(key)
    if t is None:
        t = _TREES[key] = _Tree(log)
        weakref.finalize(result, _TREES.pop, key, None)
    return t


def failure_origins(record: Record, *, baseline: bool = False) -> pd.DataFrame:
    """One row per failed request of the run (or of the baseline): where its failure started.

    Columns: ``request``, ``endpoint``, ``start`` (the request's), ``outcome`` (the request's),
    ``mechanism`` (``short_circuit``, ``no_instance``, ``discovery_error``, ``bulkhead_full``,
    ``auth_401``, or the origin call's outcome: ``timeout``, ``rejected``, ``error``), ``t``
    (when the origin failed), ``source`` (the caller), ``target`` (the callee service or
    component), ``operation``, ``instance`` (the callee instance, or the breaker's or
    bulkhead's key for a refusal), ``direct`` (bool), ``fault`` (index of the fault that makes
    it direct; -1: a dead instance or an unreachable registry with no fault on; None:
    collateral) and ``path`` (``endpoint > service.op > ...`` down to the origin).
    In the baseline every failure is collateral (no fault).
    """
    log = record.baseline_log if baseline else record.log
    if log is None:
        raise ValueError("failure_origins of the baseline needs its event log")
    req = record.baseline_requests if baseline else record.requests
    failed = req[req["outcome"] != "ok"]
    if failed.empty:
        return pd.DataFrame(columns=_ORIGIN_COLUMNS)
    tree = _tree_of(record.baseline if baseline else record.result, log)
    start_row, tops, auth_of = tree.start_row, tree.tops, tree.auth_of
    faults = None if baseline else _Faults(record)
    spiked = set()
    if not baseline:
        spiked = {record.scenario.faults[f["index"]].endpoint for f in record.faults_fired
                  if f["kind"] == "load_spike"}
    rows = []
    for rq, ep, t_start, outcome in zip(failed["request"].tolist(), failed["endpoint"].tolist(),
                                        failed["start"].tolist(), failed["outcome"].tolist()):
        top = tops.get(int(rq))
        path = [ep]
        if not top:
            rows.append((rq, ep, t_start, outcome, outcome, t_start, None, ep, None, None,
                         bool(faults is not None and ep in spiked), None, ep))
            continue
        cur, below = tree.descend(max(top))
        path += below
        ev = log.event[cur]
        t1 = float(log.t[cur])
        if ev in REFUSALS:
            mech, c, r0 = ev, None, cur
            t0 = t1
        else:
            c = int(log.call[cur])
            r0 = start_row.get(c, cur)
            t0 = float(log.t[r0])
            mech = "auth_401" if c in auth_of else log.outcome[cur]
        src, tgt, inst, op = log.source[cur], log.target[cur], log.instance[cur], log.operation[cur]
        if ev not in REFUSALS:
            src = log.source[r0]
        fault = None
        if faults is not None:
            fault = faults.direct(t0=t0, t1=t1, row0=int(r0), row1=int(cur), source=src, target=tgt,
                                  instance=inst, mechanism=mech, endpoint=ep, op=op)
            if fault is None and ep in spiked:
                fault = next(f["index"] for f in record.faults_fired
                             if f["kind"] == "load_spike" and record.scenario.faults[f["index"]].endpoint == ep)
        rows.append((rq, ep, t_start, outcome, mech, t1, src, tgt, op, inst, fault is not None,
                     fault, " > ".join(path)))
    df = pd.DataFrame(rows, columns=_ORIGIN_COLUMNS)
    df["fault"] = df["fault"].astype(object)
    return df


def breaker_chain(record: Record, source: str, target: str, instance: Optional[str], at_t: float,
                  *, limit: int = 50, _depth: int = 0) -> dict:
    """Which breaker of caller instance ``source`` short-circuited a call to ``target`` at
    ``at_t``, and why it was open: the transition into open before ``at_t`` of the breaker
    that covers the call (key ``*``: one per client; the service; or the instance), and the
    failed calls under it since its previous transition (the last ``limit``), by callee
    instance and outcome, with how many of them went to instances that were dead then."""
    log = record.log
    br = log.rows("breaker")
    mine = br[log.source[br] == source]
    keys = {"*", target, *([instance] if instance else [])}
    mine = mine[np.isin(log.target[mine], list(keys)) & (log.t[mine] <= at_t + 1e-9)]
    opened = mine[log.outcome[mine] == "open"]
    if len(opened) == 0:
        return {}
    r_open = int(opened[-1])
    key = log.target[r_open]
    same = mine[log.target[mine] == key]
    prev = same[(same < r_open) & (log.outcome[same] != "open")]
    lo = int(prev[-1]) if len(prev) else 0
    ce = log.rows("call_end")
    sel = ce[(ce > lo) & (ce < r_open)]
    sel = sel[log.source[sel] == source]
    names = {s.name for s in record.scenario.services}
    if key in names:
        sel = sel[log.target[sel] == key]
    elif key != "*":
        sel = sel[log.instance[sel] == key]
    bad = sel[log.outcome[sel] != "ok"][-limit:]
    states = record.instance_states
    by: dict[str, int] = {}
    dead = 0
    for r in bad.tolist():
        inst = log.instance[r]
        k = f"{inst or log.target[r]} {log.outcome[r]}"
        by[k] = by.get(k, 0) + 1
        st = states.get(inst)
        if st is not None:
            j = int(np.searchsorted(st[0], r, side="right")) - 1
            dead += st[2][max(j, 0)] != "up"
    out = {"breaker": key, "caller": source, "opened_s": float(log.t[r_open]),
           "failures": int(len(bad)), "failures_by": by, "failures_at_dead_instances": int(dead)}
    # Why the last of those calls failed: trace it down; a short circuit below is the next
    # link of the chain (depth-limited).
    if len(bad) and _depth < 4:
        tree = _tree_of(record.result, log)
        origin, path = tree.descend(int(bad[-1]))
        out["last_failure_path"] = " > ".join(path)
        if log.event[origin] == "short_circuit":
            nxt = breaker_chain(record, log.source[origin], log.target[origin], log.instance[origin],
                                float(log.t[origin]), limit=limit, _depth=_depth + 1)
            if nxt:
                out["because"] = nxt
        else:
            inst = log.instance[origin]
            st = states.get(inst)
            was_dead = False
            if st is not None:
                j = int(np.searchsorted(st[0], origin, side="right")) - 1
                was_dead = st[2][max(j, 0)] != "up"
            out["started_at"] = {"target": log.target[origin], "instance": inst,
                                 "outcome": log.outcome[origin], "dead": bool(was_dead),
                                 "t": float(log.t[origin])}
    return out


def describe_chain(chain: dict) -> str:
    """One sentence: which breaker opened, when, and on which failures."""
    if not chain:
        return ""
    key = "its one client-wide breaker" if chain["breaker"] == "*" else f"its breaker for {chain['breaker']}"
    by = ", ".join(f"{v} {k}" for k, v in sorted(chain["failures_by"].items(), key=lambda kv: -kv[1])[:3])
    dead = chain["failures_at_dead_instances"]
    text = (f"{chain['caller']} had {key} open since {chain['opened_s']:.1f} s, opened by "
            f"{chain['failures']} failed call(s) ({by})"
            + (f", {dead} of them to dead instances" if dead else ""))
    if "because" in chain:
        text += f"; they failed because {describe_chain(chain['because'])}"
    elif "started_at" in chain:
        o = chain["started_at"]
        where = o["instance"] or o["target"]
        text += f"; the last started at {where} ({o['outcome']}{', dead' if o['dead'] else ''})"
    return text

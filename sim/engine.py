"""The discrete-event engine: a scenario's services as servers on a clock of our own.

The clock (sim/clock.py) is a heap of ``(time, priority, event id, fn, arg)`` entries in
SimPy's order, so events at the same instant run first-in first-out and a run is
deterministic. Every step of a call is one scheduled entry carrying a callback and its
payload (:func:`~hailan_sim.sim.clock.at`), which does the work of a process switch without
the generator machinery (:meth:`Engine.run_until` runs them). That is what lets a full call,
with network hops, queueing and a caller-side timeout, cost little more than a textbook
SimPy customer. Random streams are held as their samplers' ``next`` (a draw without a Python
frame).

This module keeps the kernel: servers (instances, their workers and queues), calls and their
timeouts, and the call-tree executors. The rest of :class:`Engine` lives in mixins of its own:
the client pipeline and service tokens (sim/client.py), faults (sim/faults.py), the control
plane (registry, health checks, reaper, autoscaling: sim/control.py) and message queues
(sim/messages.py); the runtime records they share are in sim/state.py.

Life of a call (``_start_call``): the caller picks an instance, the request pays one
network hop, the instance serves it at once, queues it, or rejects it when its queue is
full; after its service time the operation runs its call tree; the answer pays a hop back.
A caller with a timeout stops waiting when it fires; the callee carries on regardless (no
deadline propagation) and the work it finishes after that is logged as orphaned.

Outcomes, as the caller sees them: ``ok``; ``error`` (the callee failed, one of its own
calls failed, or no instance was there); ``timeout``; ``rejected`` (the callee's queue was
full). Every request ends with exactly one of them.
"""

from __future__ import annotations

import functools
from heapq import heapify, heappop, heappush
from typing import Callable, Optional

from hailan_sim.models.scenario import (
    CallNode,
    ChoiceNode,
    Infrastructure,
    MaybeNode,
    ParNode,
    PublishNode,
    RepeatNode,
    Scenario,
    SeqNode,
    split_target,
)
from hailan_sim.models.arrivals import schedule_for
from hailan_sim.models.autoscaling import Autoscaler
from hailan_sim.models.distributions import Constant
from hailan_sim.models.registry import Registry
from hailan_sim.sim.client import ClientMixin, _Logical
from hailan_sim.sim.clock import NORMAL, URGENT, Clock
from hailan_sim.sim.clock import at as _at
from hailan_sim.sim.clock import at_first as _at_first
from hailan_sim.sim.control import ControlPlaneMixin
from hailan_sim.sim.eventlog import EventLog
from hailan_sim.sim.faults import FaultsMixin
from hailan_sim.sim.gateway import GatewayRouter
from hailan_sim.sim.messages import MessagingMixin
from hailan_sim.sim.metrics import OUTCOME_INDEX, Recorder
from hailan_sim.sim.rng import Streams
from hailan_sim.sim.state import (
    _UNIT_EXP,
    _UNSET,
    _Call,
    _Endpoint,
    _Instance,
    _Op,
    _Request,
    _Route,
    _Service,
    _TimerQueue,
    _index,
)

__all__ = ["Engine"]


# --------------------------------------------------------------------------- the engine


class Engine(ClientMixin, FaultsMixin, ControlPlaneMixin, MessagingMixin):
    """One run of one scenario. Build it, call :meth:`run`, read its counters."""

    def __init__(self, scenario: Scenario, *, keep_events: bool = False) -> None:
        self.scenario = scenario
        run = scenario.run
        self.duration = run.duration_s
        self.warmup = run.warmup_s
        self.window = run.window_s
        self.env = Clock()  # our own clock and event heap (sim/clock.py)
        self.streams = Streams(run.seed)
        self.log = EventLog(keep=keep_events)
        self._rec = self.log.buf.append
        self.n_requests = 0
        self.n_calls = 0
        self.n_published = 0  # messages (their ids are taken from n_calls)
        self.outstanding = 0
        self.arrivals_open = True
        self.messages_pending = 0
        self.last_call = None
        self._stop_pending = 0  # see run_until
        self._timers: dict = {}
        self._parked: dict = {}  # timer queue (or lone call) -> its parked heap entry (see _compact)
        self._one = self._timer_one  # one object, so that _compact knows a lone call's entry
        self._compact_at = self._prune_at = _COMPACT_AT
        self._gateway_last: dict = {}
        self._links: dict = {}
        self._build()

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        sc = self.scenario
        streams = self.streams
        self.policies = sc.effective_policies()
        self.services: dict[str, _Service] = {}
        zone = {n.name: n.zone for n in sc.nodes}
        skew = self._skew = {n.name: n.clock_skew_s for n in sc.nodes}
        self._edges: dict = {}
        self._clients: dict = {}
        self._breaker_due: dict = {}  # (client, breaker scope) -> due time of its pending tick
        self.counters = {k: 0 for k in _COUNTERS}
        self.breaker_transitions: dict[str, int] = {}
        for c in sc.infrastructure:
            svc = _Service(c.name, c, c.capacity, c.queue_limit, 0.0)
            svc.ops[None] = _Op(svc, None, streams.sampler(f"svc/{c.name}", c.latency_ms, 1e-3).next,
                                0.0, None, None, False)
            node = c.placement or sc.nodes[0].name
            svc.instances.append(_Instance(svc, 0, node, zone[node]))
            self.services[c.name] = svc
        placements = {p.instance: p for p in sc.placements()}
        for s in sc.services:
            svc = _Service(s.name, None, s.workers, s.queue_limit, s.startup_s)
            svc.placement = [(n, zone[n]) for n in (s.placement or [n.name for n in sc.nodes])]
            if s.autoscaling is not None:
                svc.scaler = Autoscaler(s.autoscaling)
            for i in range(s.instances):
                p = placements[f"{s.name}-{i}"]
                svc.instances.append(_Instance(svc, i, p.node, p.zone))
            self.services[s.name] = svc
        for s in sc.services:
            svc = self.services[s.name]
            for name, op in s.operations.items():
                err_u = streams.uniform(f"err/{s.name}.{name}").next if op.error_probability > 0 else None
                tree = self._compile(op.calls, s.name, f"{s.name}.{name}") if op.calls else None
                sample = streams.sampler(f"svc/{s.name}.{name}", op.service_time_ms, 1e-3).next
                wait = s.max_queue_wait_s
                if wait is None:
                    wait = (self.policies.max_queue_wait_s or {}).get(s.name)  # policies' load shedding
                svc.ops[name] = _Op(svc, name, sample, op.error_probability, err_u, tree, s.blocking_calls,
                                    op.idempotent, wait)
        self._picks: dict = {}
        self.instance_by_name: dict[str, _Instance] = {}
        for i, svc in enumerate(self.services.values()):
            svc.key = i
            for inst in svc.instances:
                inst.skew = skew[inst.node]
                self.instance_by_name[inst.name] = inst
        self._blocked: dict = {}  # (a, b) -> active partitions between them (both orders)
        self._slow_links: dict = {}  # (a, b) -> list of (added seconds, loss, fault index)
        self._fault_us: dict = {}
        self._rotations_extra = [f.start_s for f in sc.faults if f.kind == "key_rotation"]
        reg = next((c for c in sc.infrastructure if c.kind == "registry"), None)
        self.registry_svc = self.services[reg.name] if reg is not None else None
        self.registry = Registry(check=self.policies.health_check) if reg is not None else None
        self._registry_timer = None
        self._check_u = {s.name: streams.uniform(f"check/{s.name}").next for s in sc.services} if reg else {}
        tokens = self.policies.tokens
        self.tokens = tokens if tokens.enabled else None
        if self.tokens is not None:
            self._issuer_op = None  # signing: local (the spec's ServiceAuth signs its own tokens)
            if tokens.signing == "issuer":
                issuer, _, issuer_op = tokens.issuer.partition(".")
                if issuer not in self.services or issuer_op not in self.services[issuer].ops:
                    raise ValueError(f"policies.tokens.issuer: {tokens.issuer!r} is not an operation of a service")
                self._issuer_op = self.services[issuer].ops[issuer_op]
            self._rotations = sorted([*tokens.key_rotations_s, *self._rotations_extra])
            self._publish_ahead = tokens.key_publish_ahead_s
            # The instances running when the run starts hold a token from before it
            # (tokens.first_token: steady_state); those started later begin without one.
            self._held_at_start = frozenset(self.instance_by_name)
        self.call_rec = Recorder(list(self.services), self.window)
        self._call_done = self.call_rec.buf.extend

        self.gateway = next((self.services[c.name] for c in sc.infrastructure if c.kind == "gateway"), None)
        gp = self.policies.gateway
        self._gw = (GatewayRouter(self, gp) if self.gateway is not None and gp is not None
                    and (gp.retry is not None or gp.outlier is not None) else None)
        self.endpoints: list[_Endpoint] = []
        shares = sc.workload.shares()
        for ep in sc.workload.endpoints:
            e = _Endpoint()
            e.name = ep.name
            e.client = f"client:{ep.name}"
            svc_name, op_name = split_target(ep.entry)
            e.entry = self.services[svc_name].ops[op_name]
            e.timeout = ep.timeout_s
            if ep.arrival is not None:
                e.schedule = schedule_for(ep.arrival)
            else:
                e.schedule = schedule_for(sc.workload.arrival, shares[ep.name])
            e.draw = streams.sampler(f"arrive/{ep.name}", _UNIT_EXP).next
            e.key = len(self.endpoints)
            self.endpoints.append(e)
        self.request_rec = Recorder([e.name for e in self.endpoints], self.window)
        self._request_done_rec = self.request_rec.buf.extend

    def _compile(self, node, svc_name: str, path: str):
        """Turn a call-tree node into an executor object (see the ``_X*`` classes)."""
        sc = self.scenario
        if isinstance(node, CallNode):
            target, op = split_target(node.call)
            comp = sc.component(target)
            if isinstance(comp, Infrastructure):
                return _XCall(target, op, comp.timeout_s, True, False)
            # A service call: the edge's policies (resolved at first use) apply; the call
            # site's own timeout_s, if set, wins over the edge's.
            return _XCall(target, op, node.timeout_s, node.timeout_s is not None, node.fallback)
        if isinstance(node, PublishNode):
            target, op = split_target(node.publish)
            via = node.via or next(c.name for c in sc.infrastructure if c.kind == "queue")
            return _XPublish(via, target, op)
        if isinstance(node, SeqNode):
            return _XSeq([self._compile(c, svc_name, f"{path}.{i}") for i, c in enumerate(node.seq)])
        if isinstance(node, ParNode):
            return _XPar([self._compile(c, svc_name, f"{path}.{i}") for i, c in enumerate(node.par)])
        if isinstance(node, MaybeNode):
            return _XMaybe(node.p, self.streams.uniform(f"tree/{path}").next,
                           self._compile(node.maybe, svc_name, f"{path}.m"))
        if isinstance(node, ChoiceNode):
            total = sum(o.weight for o in node.choice)
            cum, acc = [], 0.0
            for o in node.choice:
                acc += o.weight / total
                cum.append(acc)
            return _XChoice(cum, self.streams.uniform(f"tree/{path}").next,
                            [self._compile(o.do, svc_name, f"{path}.{i}") for i, o in enumerate(node.choice)])
        if isinstance(node, RepeatNode):
            count = node.count
            draw = None if isinstance(count, int) else self.streams.sampler(f"tree/{path}", count).next
            return _XRepeat(count if isinstance(count, int) else None, draw, node.parallel,
                            self._compile(node.repeat, svc_name, f"{path}.r"))
        raise TypeError(f"unknown call-tree node {node!r}")  # pragma: no cover

    def _link(self, src: str, dst: str):
        """The latency sampler (seconds) of the hop src -> dst, or None when it is always 0."""
        key = (src, dst)
        try:
            return self._links[key]
        except KeyError:
            pass
        net = self.scenario.network
        # A link override naming "client" applies to every endpoint's users.
        names = lambda n: (n, "client") if n.startswith("client:") else (n,)  # noqa: E731
        dist = next(
            (l.latency_ms for l in net.links if l.src in names(src) and l.dst in names(dst)),
            net.latency_ms,
        )
        if isinstance(dist, Constant) and dist.value == 0:
            sampler = None
        else:
            sampler = self.streams.sampler(f"net/{src}>{dst}", dist, 1e-3).next
        self._links[key] = sampler
        return sampler

    # ------------------------------------------------------------------ the run

    def start(self) -> None:
        """Schedule arrivals, start-ups and the warm-up/end snapshots."""
        env = self.env
        cold = self.scenario.run.cold_start
        for svc in self.services.values():
            for inst in svc.instances:
                if cold and svc.infra is None and svc.startup > 0:
                    _at(env, svc.startup, self._instance_up, inst)
                else:
                    self._set_up(inst)
                    if svc.infra is None:
                        # Running at t=0: registered long ago and passing, unless the run
                        # is a cold start (then it registers now, critical until checked).
                        self._register(inst, warm=not cold)
        self._queues: dict = {}  # "broker/target.op" -> its _MessageQueue (sim/messages.py)
        for e in self.endpoints:
            t = e.schedule.next_arrival(0.0, e.draw())
            if t < self.duration:
                _at(env, t, self._arrival, e)
        for svc in self.services.values():
            if svc.scaler is not None:
                _at(env, svc.scaler.policy.interval_s, self._autoscale, svc)
        for i, f in enumerate(self.scenario.faults):
            _at(env, f.start_s, self._fault_start, (i, f))
            if f.duration_s is not None:
                _at(env, f.start_s + f.duration_s, self._fault_end, (i, f))
        _at_first(env, self.warmup, self._snapshot, 0)
        _at_first(env, self.duration, self._close, 2)

    def _set_up(self, inst: _Instance) -> None:
        self._touch(inst)
        inst.up = True
        svc = inst.svc
        svc.up.append(inst)
        svc.up.sort(key=_index)

    def _instance_up(self, inst: _Instance) -> None:
        self._set_up(inst)
        self._rec((self.env.now, "instance_up", None, None, None, None, inst.svc.name, inst.name, None, None))
        if inst.svc.infra is None:
            self._register(inst, warm=False)  # the spec registers at start-up, and only then
        for q in inst.svc.consumers:
            self._dispatch(q)

    def _snapshot(self, slot: int) -> None:
        """Record every instance's integrals at warm-up (slot 0) and at the end (slot 2)."""
        for svc in self.services.values():
            for inst in svc.instances:
                self._touch(inst)
                inst.snap[slot] = inst.qarea
                inst.snap[slot + 1] = inst.barea

    def _close(self, slot: int) -> None:
        self.arrivals_open = False
        self._snapshot(slot)

    def run_until(self, until: float) -> None:
        """Run every event due before ``until``, then set the clock to ``until``.

        The same events in the same order as SimPy's ``env.run(until=until)`` would run them
        (the engine ran on SimPy's environment until it got a clock of its own, sim/clock.py,
        and every event log stayed byte-identical across that change): the run stops at an
        URGENT entry for ``until``, so urgent events already scheduled for that instant run
        first and ordinary ones in the next slice.
        """
        env = self.env
        queue = env.queue
        now = env.now
        at = until if isinstance(until, int) else float(until)
        if at <= now:
            raise ValueError(f"until ({at}) must be greater than the current simulation time")
        stop = (now + (at - now), URGENT, next(env.eid))
        # NOTE: for speed, an entry due strictly before the stop's time is before the stop
        # whatever its priority and id: one float comparison per event instead of a tuple
        # comparison (three rich comparisons in C). Entries due at the stop's very instant
        # are then compared by their whole key, so the entries run are the same, in the
        # same order.
        t_stop = stop[0]
        while queue and queue[0][0] < t_stop:
            env.cur = ev = heappop(queue)
            env.now = ev[0]
            ev[3](ev[4])
        while queue and queue[0] < stop:
            env.cur = ev = heappop(queue)
            env.now = ev[0]
            ev[3](ev[4])
        env.now = stop[0]
        env.cur = stop
        # Counted as SimPy counted it (it re-queued its stop event once more, with another
        # id, popped by the next run as an event that does nothing), so that sim_events
        # keeps its meaning: take the id, and count it as pending until then.
        next(env.eid)
        self._stop_pending = 1

    def env_events(self) -> int:
        """Kernel events processed so far (``sim_events`` in a result).

        NOTE: the id counter (scheduled so far, plus one stop per :meth:`run_until`, as
        SimPy's ``env.run`` counted it) less what is still on the heap; counting in the hot
        path would cost every event a call. Reading it takes an id, which orders nothing
        (ids only break ties between entries already scheduled).
        """
        now = self.env.now
        # A parked timer entry (see _compact) is pending while its time has not passed
        # (it is NORMAL, so one due exactly now is behind the runner's URGENT stop).
        parked = sum(1 for ev in self._parked.values() if ev[0] >= now)
        return next(self.env.eid) - len(self.env.queue) - self._stop_pending - parked

    def _compact(self) -> None:
        """Take the timer entries that can only do nothing off the heap.

        NOTE: for speed. With deadline propagation nearly every call has a timeout of its
        own (what is left of its caller's deadline), so its own timer queue and heap entry;
        most calls finish long before it fires, and the stale entries made the heap ten
        times longer than the events that matter (781 vs 52 entries, median, on the default
        scenario with ``hardened``), and every push and pop slower. An entry whose queue
        holds only finished calls would pop, find nothing to do and arm nothing
        (``_timers_due``), so it is *parked* on its queue instead: the other entries are
        re-heaped (the pop order is that of their keys, unchanged). If a call is added to a
        parked queue (another call with exactly the same timeout), :meth:`_unpark` puts the
        entry back with its own key, or, if its time has passed, does what its pop did. No
        id is taken or skipped, so every tie between events at one instant is broken as
        before, and ``sim_events`` counts a parked entry when its time passes. A lone
        call's entry (:meth:`_arm`) is parked as its queue of one would be, kept in
        ``_parked`` with the call as its key. Called when a timer is pushed onto a heap
        that has doubled since the last compaction.
        """
        queue = self.env.queue
        parked = self._parked
        timers = self._timers
        one = self._one
        keep = []
        for ev in queue:
            q = ev[4]
            if type(q) is not _TimerQueue:
                if ev[3] is not one:
                    keep.append(ev)
                    continue
                x = timers.get(q.tkey)
                if x is q:  # a lone call's timer (_arm)
                    if q.finished:
                        parked[q] = ev
                        continue
                    keep.append(ev)
                    continue
                q = x  # its entry stands for the queue it became (_as_queue)
            calls = q.calls
            # Finished calls at the front are skipped by the pop and by _arm_head alike:
            # dropping them now changes nothing, and each is looked at once.
            while calls and calls[0].finished:
                calls.popleft()
            if not calls:
                q.parked = ev
                parked[q] = ev
                continue
            keep.append(ev)
        if len(keep) != len(queue):
            queue[:] = keep
            heapify(queue)
        # Next time when the heap has doubled: each entry is looked at O(1) times on average.
        self._compact_at = max(_COMPACT_AT, _COMPACT_GROWTH * len(queue))
        if len(parked) < self._prune_at:
            return
        now = self.env.now
        for q in [q for q, ev in parked.items() if ev[0] < now]:
            # Its time has passed: it popped and did nothing but this. A queue left with
            # nothing is the same as a new one, so it is forgotten (this is for memory
            # only, so it is done when the parked queues have doubled; env_events and
            # _unpark tell a parked entry whose time has passed from one still pending).
            del parked[q]
            if type(q) is not _TimerQueue:  # a lone call's timer: forgotten as its queue would be
                if timers.get(q.tkey) is q:
                    del timers[q.tkey]
                continue
            q.parked = None
            q.armed = False
            q.calls.clear()
            if timers.get(q.timeout) is q:
                del timers[q.timeout]
        self._prune_at = max(_COMPACT_AT, _COMPACT_GROWTH * len(parked))

    def _unpark(self, q: _TimerQueue) -> None:
        """A call joins the parked queue ``q``: its entry is put back, or has fired by now."""
        env = self.env
        ev = q.parked
        q.parked = None
        del self._parked[q]
        if ev[:3] > env.cur[:3]:
            heappush(env.queue, ev)  # still pending: back in its place in the order
        else:
            q.armed = False  # it would have fired already (before the entry being run)
            q.calls.clear()

    # ------------------------------------------------------------------ arrivals & requests

    def _arrival(self, e: _Endpoint) -> None:
        env = self.env
        now = env.now
        t = e.schedule.next_arrival(now, e.draw())
        if t < self.duration:
            _at(env, t - now, self._arrival, e)
        self._request(e, now)

    def _request(self, e: _Endpoint, now: float) -> None:
        self.n_requests += 1
        req = _Request(self.n_requests, e, now, 1.0 if now >= self.warmup else 0.0)
        self.outstanding += 1
        self._rec((now, "request_start", req.id, None, None, e.client, e.name, None, e.entry.key, None))
        if self.gateway is not None:
            self._start_call(req, None, e.client, None, self.gateway.ops[None], None,
                             lambda outcome: self._through_gateway(req, outcome))
        else:
            self._start_call(req, None, e.client, None, e.entry, e.timeout,
                             lambda outcome: self._request_done(req, outcome))

    def _through_gateway(self, req: _Request, outcome: str) -> None:
        if outcome != "ok":
            self._request_done(req, outcome)
            return
        if self._gw is not None:
            self._gw.route(req)  # policies.gateway: retries and outlier ejection (sim/gateway.py)
            return
        e = req.ep
        self._start_call(req, None, self.gateway.name, self.gateway, e.entry, e.timeout,
                         lambda out: self._request_done(req, out))

    def _request_done(self, req: _Request, outcome: str) -> None:
        now = self.env.now
        self.outstanding -= 1
        self._rec((now, "request_end", req.id, None, None, req.ep.client, req.ep.name, None, None, outcome))
        self._request_done_rec((now, req.ep.key, OUTCOME_INDEX[outcome], now - req.t0, req.track))

    # ------------------------------------------------------------------ calls

    def _start_call(self, req, parent: Optional[_Call], source: str, src_svc: Optional[_Service],
                    op: _Op, timeout: Optional[float], k: Callable, inst: Optional[_Instance] = None,
                    deadline: Optional[float] = None, token=None) -> _Call:
        env = self.env
        now = env.now
        self.n_calls += 1
        svc = op.svc
        src = source if src_svc is None else src_svc.name
        route = svc.routes.get(src)
        if route is None:
            route = svc.routes[src] = _Route(src, svc.name)
        c = _Call(self.n_calls, req, source, src_svc, op, now, k,
                  1.0 if now >= self.warmup else 0.0, route, token)
        self._rec((now, "call_start", req.id, c.id, parent.id if parent else None, source, svc.name,
                   None, op.name, None))
        if deadline is not None:
            c.deadline = deadline
            left = deadline - now
            if left <= 0:
                c.status = "timeout"  # nothing left of the caller's deadline: fail fast
                _at(env, 0.0, self._deliver, c)
                return c
            if timeout is None or left < timeout:
                timeout = left
        if inst is None:
            up = svc.up
            if self.registry is not None and src_svc is not None and src_svc is self.gateway:
                up = self._gateway_targets(svc)
            if not up:
                # The spec's selectServiceInstance throws "No available instances" at once.
                c.status = "error"
                _at(env, 0.0, self._deliver, c)
                return c
            n = len(up)
            if n == 1:
                inst = up[0]
            else:
                pick = route.pick
                if pick is None:
                    pick = route.pick = self._pick(src, svc.name)
                inst = up[int(pick() * n)]
        c.inst = inst
        hop = route.there
        if hop is _UNSET:
            hop = route.there = self._link(src, svc.name)
        if self._blocked or self._slow_links:
            extra = self._net_fault(source, src_svc, inst)
            if extra is None:
                pass  # dropped by a partition or link loss: only the caller's timeout ends it
            else:
                _at(env, (hop() if hop is not None else 0.0) + extra, self._arrive_at, c)
        elif hop is None:
            self._arrive_at(c)
        else:
            heappush(env.queue, (now + hop(), NORMAL, next(env.eid), self._arrive_at, c))  # _at, inlined
        if timeout is not None:
            self._arm(c, timeout)
        return c

    def _arm(self, c: _Call, timeout: float) -> None:
        """Start ``c``'s caller-side timeout.

        NOTE: for speed, calls with the same timeout share one FIFO queue (their deadlines
        arrive in order) and one scheduled event, for the earliest deadline of a call still
        open; calls that finished early are skipped instead of each firing a no-op event.
        A call alone with its timeout is its own queue of one (no queue object: with
        deadline propagation nearly every call's timeout is what is left of its caller's
        deadline, so most are alone and finish long before it); it becomes a queue when
        another call comes with the same timeout (:meth:`_as_queue`), and its entry does
        what the queue's would (:meth:`_timer_one`): the same ids, taken at the same moments.
        """
        timers = self._timers
        q = timers.get(timeout)
        c.expires = self.env.now + timeout
        if type(q) is not _TimerQueue:
            if q is not None:
                q = self._as_queue(q, timeout)
            elif _LONE:
                timers[timeout] = c
                c.tkey = timeout
                env = self.env
                if len(env.queue) >= self._compact_at:
                    self._compact()
                heappush(env.queue, (c.expires, NORMAL, next(env.eid), self._one, c))
                return
            else:
                q = timers[timeout] = _TimerQueue(timeout)
        if q.parked is not None:
            self._unpark(q)
        q.calls.append(c)
        if not q.armed:
            self._arm_head(q)

    def _as_queue(self, c: _Call, timeout: float) -> _TimerQueue:
        """The queue a lone call's timer becomes when another call has the same timeout, or
        when it times out (:meth:`_timer_one`): its entry (pending on the heap, or parked)
        is the queue's, armed."""
        q = self._timers[timeout] = _TimerQueue(timeout)
        q.calls.append(c)
        q.armed = True
        ev = self._parked.pop(c, None)
        if ev is not None:
            q.parked = ev
            self._parked[q] = ev
        return q

    def _timer_one(self, c: _Call) -> None:
        """A lone call's timer (:meth:`_arm`) is due: what :meth:`_timers_due` does for a
        queue of one."""
        timers = self._timers
        x = timers.get(c.tkey)
        if x is not c:
            self._timers_due(x)  # it became a queue (_as_queue): this entry is the queue's
            return
        if c.finished:
            # Popped and left empty: an empty queue is the same as none (as _compact's
            # pruning forgets parked ones).
            del timers[c.tkey]
            return
        self._timers_due(self._as_queue(c, c.tkey))  # a timeout: exactly as a queue of one

    def _arm_head(self, q: "_TimerQueue") -> None:
        calls = q.calls
        while calls and calls[0].finished:
            calls.popleft()
        if calls:
            q.armed = True
            env = self.env
            if len(env.queue) >= self._compact_at:
                self._compact()
            heappush(env.queue, (calls[0].expires, NORMAL, next(env.eid), self._timers_due, q))

    def _timers_due(self, q: _TimerQueue) -> None:
        q.armed = False
        now = self.env.now
        calls = q.calls
        while calls:
            c = calls[0]
            if c.finished:
                calls.popleft()
            elif c.expires <= now:
                calls.popleft()
                c.t_abandon = now
                self._complete(c, "timeout")
            else:
                break
        self._arm_head(q)


    def _pick(self, src: str, dst: str):
        """The uniform stream ``src`` uses to pick among ``dst``'s instances.

        One stream per caller and callee: a new caller never shifts existing ones' picks.
        """
        pick = self._picks.get((src, dst))
        if pick is None:
            pick = self._picks[(src, dst)] = self.streams.uniform(f"pick/{src}>{dst}").next
        return pick

    def _retry_u(self, src: str, dst: str):
        """The uniform stream for ``src``'s backoff jitter on calls to ``dst``."""
        key = ("retry", src, dst)
        u = self._picks.get(key)
        if u is None:
            u = self._picks[key] = self.streams.uniform(f"retry/{src}>{dst}").next
        return u

    def _arrive_at(self, c: _Call) -> None:
        inst = c.inst
        c.t_arrive = now = self.env.now
        if not inst.up:
            c.refused = True
            self._answer(c, "error")  # connection refused
            return
        if inst.hung:
            inst.calls[c.id] = c  # accepted, never answered
            return
        if c.token is not None and not self._verify(c, inst):
            return
        if inst.free:
            dt = now - inst.last  # self._touch(inst), inlined (hot path)
            if dt:
                inst.qarea += len(inst.queue) * dt
                inst.barea += (inst.workers - inst.free) * dt
                inst.last = now
            inst.free -= 1
            inst.calls[c.id] = c
            if not self._serve(c):
                inst.free += 1
            return
        q = inst.queue
        if inst.qlimit is None or len(q) < inst.qlimit:
            self._touch(inst)
            inst.calls[c.id] = c
            q.append(c)
            if len(q) > inst.qmax:
                inst.qmax = len(q)
            return
        if c.track:
            inst.rejected += 1
        self._rec((self.env.now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name,
                   inst.name, c.op.name, "rejected"))
        self._answer(c, "rejected")

    def _serve(self, c: _Call) -> bool:
        """A worker takes ``c``; False if it was shed instead (the worker stays free)."""
        env = self.env
        now = env.now
        op = c.op
        if (c.deadline is not None and now >= c.deadline) or (
            op.max_wait is not None and now - c.t_arrive > op.max_wait
        ):
            self._shed(c)
            return False
        inst = c.inst
        if c.track:
            w = now - c.t_arrive
            inst.wait_sum += w
            inst.wait_n += 1
            if w:  # a call that found a free worker waited exactly 0: counted by wait_n only
                inst.svc.waits.append(w)
        heappush(env.queue, (now + op.sample() * inst.slow, NORMAL, next(env.eid), self._served, c))  # _at
        return True

    def _shed(self, c: _Call) -> None:
        """Drop a call at the moment a worker would take it: its caller's deadline has
        passed (deadline propagation) or it waited longer than the shedding limit."""
        inst = c.inst
        late = c.deadline is not None and self.env.now >= c.deadline
        self.counters["deadline_drops" if late else "shed"] += 1
        inst.calls.pop(c.id, None)
        self._rec((self.env.now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                   c.op.name, "rejected"))
        self._answer(c, "rejected")

    def _served(self, c: _Call) -> None:
        if c.lost:
            return
        op = c.op
        inst = c.inst
        if inst.hung:
            c.lost = True  # finished its work but never answers; dropped when it recovers
            return
        if not op.blocking:
            self._release(inst)
        if (op.err_u is not None and op.err_u() < op.err_p) or (
            inst.fault_err and self._fault_u(inst)() < inst.fault_err
        ):
            self._work_done(c, "error")
        elif op.tree is not None:
            op.tree.run(self, c, functools.partial(self._work_done, c))
        else:
            self._work_done(c, "ok")

    def _release(self, inst: _Instance) -> None:
        now = self.env.now
        dt = now - inst.last  # self._touch(inst), inlined (hot path)
        if dt:
            inst.qarea += len(inst.queue) * dt
            inst.barea += (inst.workers - inst.free) * dt
            inst.last = now
        q = inst.queue
        while q:
            if self._serve(q.popleft()):
                return
        inst.free += 1
        if inst.draining and inst.free == inst.workers:
            self._stop(inst)

    def _touch(self, inst: _Instance) -> None:
        """Advance the instance's queue-length and busy-worker integrals to now."""
        now = self.env.now
        dt = now - inst.last
        if dt:
            inst.qarea += len(inst.queue) * dt
            inst.barea += (inst.workers - inst.free) * dt
            inst.last = now

    def _work_done(self, c: _Call, status: str) -> None:
        """The work is done; ``status`` is ok, or anything else for an error (the outcome of
        the operation's call tree, whatever failed in it, makes it an error)."""
        if status != "ok":
            status = "error"
        if c.lost:
            return
        inst = c.inst
        if inst.hung:
            c.lost = True
            return
        del inst.calls[c.id]
        if c.op.blocking:
            self._release(inst)
        now = self.env.now
        if c.track:
            inst.served += 1
        if c.t_abandon is not None:
            if c.track:
                inst.orphans += 1
                inst.orphan_s += now - c.t_abandon
            self._rec((now, "orphan_end", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                       c.op.name, status))
            return
        self._rec((now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                   c.op.name, status))
        self._answer(c, status)

    def _answer(self, c: _Call, status: str) -> None:
        """Send the callee's answer back over the network."""
        if c.finished:
            return
        route = c.route
        hop = route.back
        if hop is _UNSET:
            hop = route.back = self._link(route.dst, route.src)
        c.status = status
        if self._blocked or self._slow_links:
            extra = self._net_fault(c.source, c.src_svc, c.inst)
            if extra is not None:
                _at(self.env, (hop() if hop is not None else 0.0) + extra, self._deliver, c)
        elif hop is None:
            self._deliver(c)
        else:
            env = self.env
            heappush(env.queue, (env.now + hop(), NORMAL, next(env.eid), self._deliver, c))  # _at

    def _complete(self, c: _Call, outcome: str) -> None:
        """The caller gets ``outcome`` for ``c`` now (its own timeout, or a failure before sending)."""
        c.status = outcome
        self._deliver(c)

    def _deliver(self, c: _Call) -> None:
        """The answer in ``c.status`` reaches the caller, unless it already stopped waiting."""
        if c.finished:
            return
        outcome = c.status
        c.finished = True
        now = self.env.now
        svc = c.op.svc
        inst = c.inst
        self._rec((now, "call_end", c.req.id, c.id, None, c.source, svc.name,
                   inst.name if inst is not None else None, c.op.name, outcome))
        self._call_done((now, svc.key, OUTCOME_INDEX[outcome], now - c.t0, c.track))
        self.last_call = c  # read by a client's continuation (a 401 is told apart this way)
        k, c.k = c.k, None  # the continuation usually closes over c: break the cycle
        k(outcome)


# Heaps shorter than this are not worth compacting (see Engine._compact).
_COMPACT_AT = 256
_COMPACT_GROWTH = 2
# A call alone with its timeout is its own timer queue (Engine._arm). Off: every timeout
# gets a queue object (the tests compare both ways).
_LONE = True

_COUNTERS = (
    "retries", "short_circuits", "bulkhead_rejections", "fallbacks", "discovery_errors",
    "token_fetches", "auth_401", "auth_refresh_retries", "deadline_drops", "shed",
    "deregistrations", "scale_out", "scale_in", "gateway_retries", "gateway_retry_overflows",
    "gateway_ejections",
)

# --------------------------------------------------------------------------- call-tree executors
# Each executor runs its part of an operation's call tree for one call ``c`` (the call being
# served, whose instance is the caller of every child) and then calls ``k(outcome)`` once.


class _XCall:
    __slots__ = ("target", "op", "timeout", "fixed", "fallback", "_op", "_edge")

    def __init__(self, target, op, timeout, fixed, fallback):
        self.target = target
        self.op = op
        self.timeout = timeout  # the call site's own timeout, when ``fixed``
        self.fixed = fixed
        self.fallback = fallback
        self._op = None
        self._edge = None

    def run(self, eng: Engine, c: _Call, k: Callable) -> None:
        op = self._op
        if op is None:
            op = self._op = eng.services[self.target].ops[self.op]
        if op.svc.infra is not None:
            eng._start_call(c.req, c, c.inst.name, c.op.svc, op, self.timeout, k, None, c.deadline)
            return
        edge = self._edge
        if edge is None:  # every call site of an operation has the same caller service
            edge = self._edge = eng._edge(c.op.svc.name, op.svc.name)
        timeout = self.timeout if self.fixed else edge.timeout
        if edge.fast and not self.fallback:
            eng._start_call(c.req, c, c.inst.name, c.op.svc, op, timeout, k, None, c.deadline)
        else:
            _Logical(eng, edge, c, op, timeout, k, self.fallback).attempt()


class _XPublish:
    __slots__ = ("via", "target", "op")

    def __init__(self, via, target, op):
        self.via = via
        self.target = target
        self.op = op

    def run(self, eng: Engine, c: _Call, k: Callable) -> None:
        eng._publish(c, self.via, self.target, self.op, k)


class _SeqRun:
    """Runs children in order. A child may finish synchronously (a skipped ``maybe``, a
    zero-latency rejection); the loop trampolines those instead of recursing, so a long
    repeat cannot overflow the stack."""

    __slots__ = ("eng", "c", "k", "children", "i", "inside", "sync")

    def __init__(self, eng, c, k, children):
        self.eng = eng
        self.c = c
        self.k = k
        self.children = children
        self.i = 0
        self.inside = False
        self.sync = None

    def step(self, outcome: str) -> None:
        if self.inside:
            self.sync = outcome  # finished inside child.run: the loop below carries on
            return
        while True:
            if outcome != "ok" or self.i == len(self.children):
                self.k(outcome)
                return
            child = self.children[self.i]
            self.i += 1
            self.inside, self.sync = True, None
            child.run(self.eng, self.c, self.step)
            self.inside = False
            if self.sync is None:
                return  # the child is under way; it will call step again
            outcome = self.sync


class _XSeq:
    __slots__ = ("children",)

    def __init__(self, children):
        self.children = children

    def run(self, eng, c, k):
        _SeqRun(eng, c, k, self.children).step("ok")


class _ParRun:
    __slots__ = ("k", "left", "done")

    def __init__(self, k, n):
        self.k = k
        self.left = n
        self.done = False

    def child_done(self, outcome: str) -> None:
        if self.done:
            return  # Promise.all already settled; this child ran on, unobserved
        if outcome != "ok":
            self.done = True
            self.k(outcome)
            return
        self.left -= 1
        if self.left == 0:
            self.done = True
            self.k("ok")


class _XPar:
    __slots__ = ("children",)

    def __init__(self, children):
        self.children = children

    def run(self, eng, c, k):
        r = _ParRun(k, len(self.children))
        for child in self.children:
            child.run(eng, c, r.child_done)


class _XMaybe:
    __slots__ = ("p", "u", "child")

    def __init__(self, p, u, child):
        self.p = p
        self.u = u
        self.child = child

    def run(self, eng, c, k):
        if self.u() < self.p:
            self.child.run(eng, c, k)
        else:
            k("ok")


class _XChoice:
    __slots__ = ("cum", "u", "children")

    def __init__(self, cum, u, children):
        self.cum = cum
        self.u = u
        self.children = children

    def run(self, eng, c, k):
        x = self.u()
        for edge, child in zip(self.cum, self.children):
            if x < edge:
                child.run(eng, c, k)
                return
        self.children[-1].run(eng, c, k)  # x within float rounding of 1.0


class _XRepeat:
    __slots__ = ("count", "draw", "parallel", "child")

    def __init__(self, count, draw, parallel, child):
        self.count = count
        self.draw = draw
        self.parallel = parallel
        self.child = child

    def run(self, eng, c, k):
        n = self.count if self.draw is None else int(self.draw())
        if n == 0:
            k("ok")
        elif self.parallel:
            _XPar([self.child] * n).run(eng, c, k)
        else:
            _SeqRun(eng, c, k, [self.child] * n).step("ok")
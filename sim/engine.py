"""The discrete-event engine: a scenario's services as servers on a SimPy clock.

SimPy supplies the clock and the event heap (``(time, priority, event id)``, so events at
the same instant run first-in first-out and a run is deterministic). The engine does not
use SimPy processes or resources: every step of a call is one scheduled event carrying a
callback and its payload (:func:`_at`), which does the work of a process switch without
the generator machinery (:meth:`Engine.run_until` runs them, in SimPy's order). That is
what lets a full call, with network hops, queueing and a caller-side timeout, cost little
more than a textbook SimPy customer. Random streams are held as their samplers' ``next``
(a draw without a Python frame).

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

import bisect
import functools
from collections import deque
from heapq import heappop, heappush
from typing import Callable, Optional

import simpy
from simpy.events import NORMAL, URGENT

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
from hailan_sim.models.balancers import make_balancer
from hailan_sim.models.breakers import OutlierDetector, make_breaker
from hailan_sim.models.policies import EDGE_FIELDS
from hailan_sim.models.registry import Registry, deep_check_passes, make_view
from hailan_sim.models.retry import NoBudget
from hailan_sim.models.tokens import KeySet, RefreshAheadCache, SpecTokenCache, issue, verify
from hailan_sim.models.distributions import Constant, Exponential
from hailan_sim.sim.eventlog import EventLog
from hailan_sim.sim.metrics import OUTCOME_INDEX, Recorder
from hailan_sim.sim.rng import Streams

__all__ = ["Engine"]


def _at(env: simpy.Environment, delay: float, fn: Callable, arg) -> None:
    """Schedule ``fn(arg)`` after ``delay``.

    NOTE: for speed an event is a bare heap entry ``(time, priority, event id, fn, arg)``,
    not a SimPy ``Event``: no object, no callback list, and :meth:`Engine.run_until` calls
    ``fn(arg)`` directly. The key ``(time, priority, id)`` is SimPy's own (``env._now +
    delay``, ``NORMAL``, the next id of its counter), so events run in SimPy's order. Hot
    paths inline this push.
    """
    heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), fn, arg))


def _at_first(env: simpy.Environment, delay: float, fn: Callable, arg) -> None:
    """Like :func:`_at`, but ahead of ordinary events at the same instant (and of the
    runner's stop at that instant): for bookkeeping that must see a boundary time."""
    heappush(env._queue, (env._now + delay, URGENT, next(env._eid), fn, arg))


# --------------------------------------------------------------------------- runtime state


class _Instance:
    __slots__ = (
        "name", "svc", "index", "node", "zone", "workers", "free", "queue", "qlimit", "up",
        "last", "qarea", "barea", "qmax", "served", "rejected", "orphans", "orphan_s",
        "snap", "credit", "wait_sum", "wait_n", "skew", "check_gen", "keys", "draining",
        "calls", "hung", "slow", "fault_err",
    )

    def __init__(self, svc: "_Service", index: int, node: str, zone: str) -> None:
        self.name = f"{svc.name}-{index}"
        self.svc = svc
        self.index = index
        self.node = node
        self.zone = zone
        self.workers = svc.workers
        self.free = svc.workers
        self.queue: deque = deque()
        self.qlimit = svc.qlimit
        self.up = False
        self.last = 0.0
        self.qarea = 0.0  # integral of queue length over time
        self.barea = 0.0  # integral of busy workers over time
        self.qmax = 0
        self.served = 0
        self.rejected = 0
        self.orphans = 0
        self.orphan_s = 0.0
        self.snap = [0.0, 0.0, 0.0, 0.0]  # (qarea, barea) at warm-up, then at the end
        self.credit = 0  # unacknowledged deliveries this instance may still take
        self.wait_sum = 0.0  # time tracked calls spent queued here before a worker took them
        self.wait_n = 0
        self.skew = 0.0  # this host's clock minus true time
        self.check_gen = 0  # bumps on (re)registration so stale health-check timers are ignored
        self.keys = None  # the verifier's key cache (service tokens)
        self.draining = False  # scaled in: finishing its work, then it stops
        self.calls: dict = {}  # calls whose work is in progress here (lost if it crashes)
        self.hung = False  # accepts calls, never answers (fault)
        self.slow = 1.0  # service-time factor (fault)
        self.fault_err = 0.0  # extra chance a call fails (fault)


class _Op:
    __slots__ = ("name", "svc", "sample", "err_p", "err_u", "tree", "blocking", "key",
                 "idempotent", "max_wait")

    def __init__(self, svc, name, sample, err_p, err_u, tree, blocking, idempotent=False, max_wait=None):
        self.svc = svc
        self.name = name
        self.sample = sample
        self.err_p = err_p
        self.err_u = err_u
        self.tree = tree
        self.blocking = blocking
        self.key = f"{svc.name}.{name}" if name else svc.name
        self.idempotent = idempotent
        self.max_wait = max_wait  # load shedding: longest a call may wait for a worker


class _Service:
    """A service or an infrastructure component: a set of identical instances."""

    __slots__ = ("name", "infra", "workers", "qlimit", "instances", "up", "ops", "key",
                 "startup", "consumers", "placement", "scaler", "starting", "scale_areas", "routes")

    def __init__(self, name, infra, workers, qlimit, startup):
        self.name = name
        self.infra = infra
        self.workers = workers
        self.qlimit = qlimit
        self.startup = startup
        self.instances: list[_Instance] = []
        self.up: list[_Instance] = []
        self.ops: dict[Optional[str], _Op] = {}
        self.key = 0  # row of this service in the engine's call recorder
        self.consumers: list = []  # message queues this service consumes from
        self.placement: list = []  # (node, zone) for instance 0, 1, ... (cycled)
        self.scaler = None  # models.autoscaling.Autoscaler, if the service autoscales
        self.starting = 0  # instances added by autoscaling that are still starting up
        self.scale_areas = (0.0, 0.0)  # busy and queue integrals at the last evaluation
        self.routes: dict[str, _Route] = {}  # caller (service or client) name -> its route here


class _Call:
    __slots__ = ("id", "req", "source", "src_svc", "op", "inst", "t0", "k",
                 "finished", "t_abandon", "status", "track", "t_arrive", "deadline",
                 "token", "auth_failed", "lost", "expires", "route", "pushback")

    def __init__(self, cid, req, source, src_svc, op, t0, k, track, route, token):
        self.id = cid
        self.req = req
        self.source = source
        self.src_svc = src_svc
        self.op = op
        self.inst = None
        self.t0 = t0
        self.k = k
        self.finished = False
        self.t_abandon = None
        self.status = None
        self.track = track  # 1.0: started after the warm-up, counts in the summaries
        self.deadline = None  # with deadline propagation: when the caller stops waiting
        self.token = token  # the service token the caller sent, if any
        self.auth_failed = False  # the callee answered 401
        self.lost = False  # the instance died or hung with this call: nothing more happens here
        self.route = route  # the network path between caller and callee (a _Route)
        self.pushback = False  # the callee's own retries failed: "don't retry" (RetryPolicy.pushback)


_UNSET = object()  # a _Route's sampler not looked up yet


class _Route:
    """The path from one caller (a service, or an endpoint's client) to one callee service:
    its hop samplers each way and the caller's instance-pick stream.

    NOTE: for speed; these were two tuple-keyed dict look-ups (``Engine._link``,
    ``Engine._pick``) per call. Each is still looked up lazily, at its first use, so streams
    are handed out in the same order as before.
    """

    __slots__ = ("src", "dst", "there", "back", "pick")

    def __init__(self, src: str, dst: str) -> None:
        self.src = src
        self.dst = dst
        self.there = _UNSET  # latency sampler src -> dst, or None (always 0)
        self.back = _UNSET  # latency sampler dst -> src, or None
        self.pick = None  # uniform stream src uses to pick among dst's instances


class _TimerQueue:
    """Open calls with one timeout duration, in deadline order (see ``Engine._arm``)."""

    __slots__ = ("timeout", "calls", "armed")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.calls: deque = deque()
        self.armed = False


class _Request:
    __slots__ = ("id", "ep", "t0", "track")

    def __init__(self, rid, ep, t0, track):
        self.id = rid
        self.ep = ep
        self.t0 = t0
        self.track = track


class _Endpoint:
    # ``client`` is the source name of its requests' first call: each endpoint's users are
    # their own component, with their own network and instance-pick streams.
    __slots__ = ("name", "entry", "timeout", "schedule", "draw", "key", "client")


class _MessageQueue:
    """One queue on the broker per consumer operation (a binding), RabbitMQ style:
    messages wait while no consumer instance is up or has prefetch credit left."""

    __slots__ = ("broker", "op", "ready", "inflight", "rr", "delay")

    def __init__(self, broker, op, delay):
        self.broker = broker
        self.op = op
        self.ready: deque = deque()
        self.inflight = 0
        self.rr = 0
        self.delay = delay


# --------------------------------------------------------------------------- the engine


class Engine:
    """One run of one scenario. Build it, call :meth:`run`, read its counters."""

    def __init__(self, scenario: Scenario, *, keep_events: bool = False) -> None:
        self.scenario = scenario
        run = scenario.run
        self.duration = run.duration_s
        self.warmup = run.warmup_s
        self.window = run.window_s
        self.env = simpy.Environment()
        self.streams = Streams(run.seed)
        self.log = EventLog(keep=keep_events)
        self._rec = self.log.buf.append
        self.n_requests = 0
        self.n_calls = 0
        self.outstanding = 0
        self.arrivals_open = True
        self.messages_pending = 0
        self.last_call = None
        self._stop_pending = 0  # see run_until
        self._timers: dict = {}
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
                svc.ops[name] = _Op(svc, name, sample, op.error_probability, err_u, tree, s.blocking_calls,
                                    op.idempotent, s.max_queue_wait_s)
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
            issuer, _, issuer_op = tokens.issuer.partition(".")
            if issuer not in self.services or issuer_op not in self.services[issuer].ops:
                raise ValueError(f"policies.tokens.issuer: {tokens.issuer!r} is not an operation of a service")
            self._issuer_op = self.services[issuer].ops[issuer_op]
            self._rotations = sorted([*tokens.key_rotations_s, *self._rotations_extra])
        self.call_rec = Recorder(list(self.services), self.window)
        self._call_done = self.call_rec.buf.extend

        self.gateway = next((self.services[c.name] for c in sc.infrastructure if c.kind == "gateway"), None)
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
        self._queues: dict[str, _MessageQueue] = {}
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
        self._rec((self.env._now, "instance_up", None, None, None, None, inst.svc.name, inst.name, None, None))
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

        The same events in the same order as ``self.env.run(until=until)``: SimPy stops at
        an URGENT event it schedules at ``until`` (so urgent events already scheduled for
        that instant run first, ordinary ones in the next slice), and its time and event id
        are computed here the same way, so the clock and :meth:`env_events` agree too.

        NOTE: our own loop because the heap holds bare ``(time, priority, id, fn, arg)``
        entries (see :func:`_at`): SimPy's ``step`` would want an ``Event``, and calling
        ``fn(arg)`` here saves a frame per event.
        """
        env = self.env
        queue = env._queue
        now = env._now
        at = until if isinstance(until, int) else float(until)
        if at <= now:
            raise ValueError(f"until ({at}) must be greater than the current simulation time")
        stop = (now + (at - now), URGENT, next(env._eid))
        while queue and queue[0] < stop:
            env._now, _, _, fn, arg = heappop(queue)
            fn(arg)
        env._now = stop[0]
        # SimPy re-queues its stop event once more (another id; the next run pops it as an
        # event that does nothing): take the id, and count it as pending until then.
        next(env._eid)
        self._stop_pending = 1

    def env_events(self) -> int:
        """Events the SimPy kernel has processed so far.

        NOTE: read from SimPy's event-id counter (scheduled so far, plus one stop per
        :meth:`run_until`, as ``env.run`` would count it) less what is still on its heap;
        counting in our own hot path would cost every event a call.
        """
        return next(self.env._eid) - len(self.env._queue) - self._stop_pending

    # ------------------------------------------------------------------ arrivals & requests

    def _arrival(self, e: _Endpoint) -> None:
        env = self.env
        now = env._now
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
        e = req.ep
        self._start_call(req, None, self.gateway.name, self.gateway, e.entry, e.timeout,
                         lambda out: self._request_done(req, out))

    def _request_done(self, req: _Request, outcome: str) -> None:
        now = self.env._now
        self.outstanding -= 1
        self._rec((now, "request_end", req.id, None, None, req.ep.client, req.ep.name, None, None, outcome))
        self._request_done_rec((now, req.ep.key, OUTCOME_INDEX[outcome], now - req.t0, req.track))

    # ------------------------------------------------------------------ calls

    def _start_call(self, req, parent: Optional[_Call], source: str, src_svc: Optional[_Service],
                    op: _Op, timeout: Optional[float], k: Callable, inst: Optional[_Instance] = None,
                    deadline: Optional[float] = None, token=None) -> _Call:
        env = self.env
        now = env._now
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
            heappush(env._queue, (now + hop(), NORMAL, next(env._eid), self._arrive_at, c))  # _at, inlined
        if timeout is not None:
            self._arm(c, timeout)
        return c

    def _arm(self, c: _Call, timeout: float) -> None:
        """Start ``c``'s caller-side timeout.

        NOTE: for speed, calls with the same timeout share one FIFO queue (their deadlines
        arrive in order) and one scheduled event, for the earliest deadline of a call still
        open; calls that finished early are skipped instead of each firing a no-op event.
        """
        q = self._timers.get(timeout)
        if q is None:
            q = self._timers[timeout] = _TimerQueue(timeout)
        c.expires = self.env._now + timeout
        q.calls.append(c)
        if not q.armed:
            self._arm_head(q)

    def _arm_head(self, q: "_TimerQueue") -> None:
        calls = q.calls
        while calls and calls[0].finished:
            calls.popleft()
        if calls:
            q.armed = True
            env = self.env
            heappush(env._queue, (calls[0].expires, NORMAL, next(env._eid), self._timers_due, q))

    def _timers_due(self, q: _TimerQueue) -> None:
        q.armed = False
        now = self.env._now
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

    def _gateway_targets(self, svc: _Service) -> list:
        """The instances the gateway routes to: those Consul's DNS interface would return
        (critical ones excluded; ref 4 "DNS"), or the last such list while the registry is
        unreachable (allow_stale)."""
        names = self.registry.health_passing(svc.name)
        if names is None:
            return self._gateway_last.get(svc.name, svc.up)
        targets = [self.instance_by_name[n] for n in names]
        self._gateway_last[svc.name] = targets
        return targets

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
        c.t_arrive = now = self.env._now
        if not inst.up:
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
        self._rec((self.env._now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name,
                   inst.name, c.op.name, "rejected"))
        self._answer(c, "rejected")

    def _serve(self, c: _Call) -> bool:
        """A worker takes ``c``; False if it was shed instead (the worker stays free)."""
        env = self.env
        now = env._now
        op = c.op
        if (c.deadline is not None and now >= c.deadline) or (
            op.max_wait is not None and now - c.t_arrive > op.max_wait
        ):
            self._shed(c)
            return False
        inst = c.inst
        if c.track:
            inst.wait_sum += now - c.t_arrive
            inst.wait_n += 1
        heappush(env._queue, (now + op.sample() * inst.slow, NORMAL, next(env._eid), self._served, c))  # _at
        return True

    def _shed(self, c: _Call) -> None:
        """Drop a call at the moment a worker would take it: its caller's deadline has
        passed (deadline propagation) or it waited longer than the shedding limit."""
        inst = c.inst
        late = c.deadline is not None and self.env._now >= c.deadline
        self.counters["deadline_drops" if late else "shed"] += 1
        inst.calls.pop(c.id, None)
        self._rec((self.env._now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
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
        now = self.env._now
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
        now = self.env._now
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
        now = self.env._now
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
            heappush(env._queue, (env._now + hop(), NORMAL, next(env._eid), self._deliver, c))  # _at

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
        now = self.env._now
        svc = c.op.svc
        inst = c.inst
        self._rec((now, "call_end", c.req.id, c.id, None, c.source, svc.name,
                   inst.name if inst is not None else None, c.op.name, outcome))
        self._call_done((now, svc.key, OUTCOME_INDEX[outcome], now - c.t0, c.track))
        self.last_call = c  # read by a client's continuation (a 401 is told apart this way)
        k, c.k = c.k, None  # the continuation usually closes over c: break the cycle
        k(outcome)

    # ------------------------------------------------------------------ faults

    def _fault_u(self, key) -> "Callable[[], float]":
        """A uniform stream for fault draws about ``key`` (an instance, a link, a spike)."""
        name = key.name if isinstance(key, _Instance) else str(key)
        u = self._fault_us.get(name)
        if u is None:
            u = self._fault_us[name] = self.streams.uniform(f"fault/{name}").next
        return u

    def _fault_instances(self, f) -> list:
        """The instances (of services and infrastructure) a fault's target covers."""
        kind = f.kind
        every = [i for svc in self.services.values() for i in svc.instances]
        if kind in ("crash_instance", "drain_instance", "hang"):
            return [self.instance_by_name[f.instance]]
        if kind == "crash_service":
            return list(self.services[f.service].instances)
        if kind == "crash_node":
            return [i for i in every if i.node == f.node]
        if kind == "crash_zone":
            return [i for i in every if i.zone == f.zone]
        if kind in ("slow", "error_rate"):
            if f.target in self.services:
                return list(self.services[f.target].instances)
            return [self.instance_by_name[f.target]]
        if kind == "infra_outage":
            return list(self.services[f.component].instances)
        if kind == "registry_outage":
            return list(self.registry_svc.instances)
        if kind == "clock_skew":
            return [i for i in every if i.node == f.node]
        return []

    def _fault_log(self, event: str, i: int, f) -> None:
        target = next((getattr(f, k) for k in ("instance", "service", "node", "zone", "target",
                                                "component", "endpoint") if hasattr(f, k)), None)
        if f.kind in ("partition", "link_latency"):
            target = f"{f.a}|{f.b}"
        self._rec((self.env._now, event, None, None, None, None, target, None, f.kind, str(i)))

    def _fault_start(self, arg) -> None:
        i, f = arg
        self._fault_log("fault_start", i, f)
        kind = f.kind
        now = self.env._now
        if kind in ("crash_instance", "crash_service", "crash_node", "crash_zone", "infra_outage"):
            for inst in self._fault_instances(f):
                self._crash(inst)
        elif kind == "drain_instance":
            inst = self.instance_by_name[f.instance]
            if inst.up and not inst.draining:
                self._drain(inst)
        elif kind == "hang":
            self.instance_by_name[f.instance].hung = True
        elif kind == "slow":
            for inst in self._fault_instances(f):
                inst.slow *= f.factor
        elif kind == "error_rate":
            for inst in self._fault_instances(f):
                inst.fault_err = 1 - (1 - inst.fault_err) * (1 - f.fraction)
        elif kind == "partition":
            for key in ((f.a, f.b), (f.b, f.a)):
                self._blocked[key] = self._blocked.get(key, 0) + 1
        elif kind == "link_latency":
            for key in ((f.a, f.b), (f.b, f.a)):
                self._slow_links.setdefault(key, []).append((f.added_ms / 1000, f.loss, i))
        elif kind == "registry_outage":
            for inst in self._fault_instances(f):
                self._crash(inst)
            self._registry_events(self.registry.set_registry_up(now, False))
        elif kind == "clock_skew":
            for inst in self._fault_instances(f):
                inst.skew += f.skew_s
        elif kind == "load_spike":
            self._spike(i, f)
        # key_rotation: the issuer's key schedule already includes it (see _build)

    def _fault_end(self, arg) -> None:
        i, f = arg
        self._fault_log("fault_end", i, f)
        kind = f.kind
        now = self.env._now
        if kind in ("crash_instance", "crash_service", "crash_node", "crash_zone"):
            if f.restart:
                for inst in self._fault_instances(f):
                    self._restart(inst)
        elif kind == "infra_outage":
            for inst in self._fault_instances(f):
                self._restart(inst)
        elif kind == "drain_instance":
            self._restart(self.instance_by_name[f.instance])
        elif kind == "hang":
            inst = self.instance_by_name[f.instance]
            inst.hung = False
            # It comes back by restarting (a watchdog kill): what it held is lost.
            self._crash(inst)
            self._restart(inst)
        elif kind == "slow":
            for inst in self._fault_instances(f):
                inst.slow /= f.factor
        elif kind == "error_rate":
            for inst in self._fault_instances(f):
                inst.fault_err = 0.0 if f.fraction == 1 else 1 - (1 - inst.fault_err) / (1 - f.fraction)
        elif kind == "partition":
            for key in ((f.a, f.b), (f.b, f.a)):
                self._blocked[key] -= 1
                if not self._blocked[key]:
                    del self._blocked[key]
        elif kind == "link_latency":
            for key in ((f.a, f.b), (f.b, f.a)):
                self._slow_links[key] = [x for x in self._slow_links[key] if x[2] != i]
                if not self._slow_links[key]:
                    del self._slow_links[key]
        elif kind == "registry_outage":
            for inst in self._fault_instances(f):
                self._restart(inst)
            self._registry_events(self.registry.set_registry_up(now, True))
        elif kind == "clock_skew":
            for inst in self._fault_instances(f):
                inst.skew -= f.skew_s

    def _crash(self, inst: _Instance) -> None:
        """The process dies: every call it holds is reset (its caller gets an error), it
        stays registered (nobody deregisters a dead process), checks start failing."""
        if not inst.up:
            return
        self._touch(inst)
        inst.up = False
        inst.hung = False
        inst.draining = False
        if inst in inst.svc.up:
            inst.svc.up.remove(inst)
        now = self.env._now
        self._rec((now, "instance_down", None, None, None, None, inst.svc.name, inst.name, None, None))
        lost = list(inst.calls.values())
        inst.calls.clear()
        inst.queue.clear()
        inst.free = inst.workers
        for c in lost:
            c.lost = True
            self._rec((now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                       c.op.name, "error"))
            self._answer(c, "error")  # connection reset

    def _restart(self, inst: _Instance) -> None:
        """Start the instance again: it pays its start-up, then comes up and registers."""
        if inst.up:
            return
        if inst.svc.infra is not None:
            self._set_up(inst)
            self._rec((self.env._now, "instance_up", None, None, None, None, inst.svc.name, inst.name, None, None))
            return
        _at(self.env, inst.svc.startup, self._instance_up, inst)

    def _net_fault(self, source: str, src_svc, inst: _Instance) -> Optional[float]:
        """Extra delay on a hop between a caller and ``inst`` under network faults, or None
        when the packet is dropped (a partition, or loss)."""
        # A gateway's or a broker's calls carry its component name as both the sender and
        # the sender's service: look each link up once.
        ends_a = (source, src_svc.name) if src_svc is not None and src_svc.name != source else (source,)
        ends_b = (inst.name, inst.svc.name)
        extra = 0.0
        for a in ends_a:
            for b in ends_b:
                if (a, b) in self._blocked:
                    return None
                for added, loss, i in self._slow_links.get((a, b), ()):
                    if loss and self._fault_u(f"link{i}")() < loss:
                        return None
                    extra += added
        return extra

    def _spike(self, i: int, f) -> None:
        """Extra arrivals for the endpoint during the spike, on their own stream, so the
        baseline's arrivals are untouched (common random numbers)."""
        e = next(e for e in self.endpoints if e.name == f.endpoint)
        ep = next(x for x in self.scenario.workload.endpoints if x.name == f.endpoint)
        factor = f.factor - 1.0
        if ep.arrival is not None:
            schedule = schedule_for(ep.arrival, factor)
        else:
            schedule = schedule_for(self.scenario.workload.arrival, self.scenario.workload.shares()[ep.name] * factor)
        draw = self.streams.sampler(f"fault/{i}/arrive", _UNIT_EXP).next
        end = min(f.end_s() or self.duration, self.duration)
        state = (e, schedule, draw, end)
        t = schedule.next_arrival(self.env._now, draw())
        if t < end:
            _at(self.env, t - self.env._now, self._spike_arrival, state)

    def _spike_arrival(self, state) -> None:
        e, schedule, draw, end = state
        now = self.env._now
        t = schedule.next_arrival(now, draw())
        if t < end:
            _at(self.env, t - now, self._spike_arrival, state)
        self._request(e, now)

    # ------------------------------------------------------------------ autoscaling

    def _autoscale(self, svc: _Service) -> None:
        """Measure the last interval, ask the service's autoscaler, add or drain instances."""
        env = self.env
        now = env._now
        policy = svc.scaler.policy
        if now < self.duration:
            _at(env, policy.interval_s, self._autoscale, svc)
        serving = [i for i in svc.up if not i.draining]
        busy = queue = 0.0
        for inst in svc.instances:
            self._touch(inst)
            busy += inst.barea
            queue += inst.qarea
        d_busy, d_queue = busy - svc.scale_areas[0], queue - svc.scale_areas[1]
        svc.scale_areas = (busy, queue)
        if not serving:
            metric = float("inf")
        elif policy.metric == "utilisation":
            metric = d_busy / (svc.workers * len(serving) * policy.interval_s)
        else:
            metric = d_queue / (len(serving) * policy.interval_s)
        delta = svc.scaler.decide(now, metric, len(serving) + svc.starting)
        if delta:
            self.counters["scale_out" if delta > 0 else "scale_in"] += abs(delta)
            self._rec((now, "autoscale", None, None, None, None, svc.name, None, policy.metric, str(delta)))
        for _ in range(delta):
            inst = _Instance(svc, len(svc.instances), *svc.placement[len(svc.instances) % len(svc.placement)])
            inst.skew = self._skew[inst.node]
            inst.last = now
            svc.instances.append(inst)
            self.instance_by_name[inst.name] = inst
            svc.starting += 1
            _at(env, svc.startup, self._scaled_up, inst)
        for _ in range(-delta):
            inst = max((i for i in svc.up if not i.draining), key=_index)
            self._drain(inst)

    def _scaled_up(self, inst: _Instance) -> None:
        inst.svc.starting -= 1
        self._instance_up(inst)

    def _drain(self, inst: _Instance) -> None:
        """Graceful stop: deregister (spec 3.2.1 deregisterService), take no new work from
        the balancer's fast path, finish what it has, then stop."""
        inst.draining = True
        inst.svc.up.remove(inst)
        self._rec((self.env._now, "instance_drain", None, None, None, None, inst.svc.name, inst.name, None, None))
        if self.registry is not None and self.registry.is_registered(inst.name):
            self._registry_events(self.registry.deregister(self.env._now, inst.name))
        if inst.free == inst.workers and not inst.queue:
            self._stop(inst)

    def _stop(self, inst: _Instance) -> None:
        self._touch(inst)
        inst.up = False
        inst.draining = False
        self._rec((self.env._now, "instance_stop", None, None, None, None, inst.svc.name, inst.name, None, None))

    # ------------------------------------------------------------------ registry and health checks

    def _registry_events(self, events) -> None:
        """Log what the registry model did; events carry their own (due) times."""
        now = self.env._now
        for instance, (kind, detail) in events:
            self._rec((now, "registry", None, None, None, None,
                       self.registry.service_of(instance) if instance and self.registry.is_registered(instance) else None,
                       instance, kind, None if detail is None else str(detail)))
            if kind == "deregistered":
                self.counters["deregistrations"] += 1
        nxt = self.registry.next_timer(now)
        if nxt is not None and (self._registry_timer is None or nxt < self._registry_timer):
            self._registry_timer = nxt
            _at(self.env, max(nxt - now, 0.0), self._registry_tick, nxt)

    def _registry_tick(self, due: float) -> None:
        if self._registry_timer != due:
            return  # superseded by an earlier timer
        self._registry_timer = None
        self._registry_events(self.registry.tick(self.env._now))

    def _register(self, inst: _Instance, warm: bool) -> None:
        """Register with the registry (spec 3.2.1) and start the instance's health check."""
        if self.registry is None:
            return
        now = self.env._now
        check = self.policies.health_check
        if warm:
            check = check.model_copy(update={"initial_status": "passing"})
        self._registry_events(self.registry.register(now, inst.name, inst.svc.name, check=check))
        if self.registry.is_registered(inst.name):
            inst.check_gen += 1
            t = self.registry.schedule_first_check(now, inst.name, self._check_u[inst.svc.name])
            _at(self.env, t - now, self._check, (inst, inst.check_gen))

    def _check(self, arg) -> None:
        """Consul runs the instance's HTTP check; the instance answers per its check content."""
        inst, gen = arg
        reg = self.registry
        if gen != inst.check_gen or not reg.is_registered(inst.name):
            return
        now = self.env._now
        cut = self._blocked and self._net_fault(self.registry_svc.name, self.registry_svc, inst) is None
        if inst.up and (inst.hung or cut):
            # No answer: the check fails when its timeout runs out.
            _at(self.env, self.policies.health_check.timeout_s, self._check_failed, (inst, gen))
            return
        passing = inst.up and (
            self.policies.health_check.content == "shallow" or self._deep_check()
        )
        self._check_result(inst, gen, passing)

    def _check_failed(self, arg) -> None:
        inst, gen = arg
        if gen == inst.check_gen and self.registry.is_registered(inst.name):
            self._check_result(inst, gen, False)

    def _check_result(self, inst: _Instance, gen: int, passing: bool) -> None:
        now = self.env._now
        reg = self.registry
        self._registry_events(reg.record_check(now, inst.name, passing))
        nxt = reg.next_check(inst.name)
        if nxt is not None:
            _at(self.env, nxt - now, self._check, (inst, gen))

    def _deep_check(self) -> bool:
        """The spec's HealthCheckService.checkHealth (3.2.2) run inside an instance."""
        def up(kind: str) -> bool:
            return all(i.up for svc in self.services.values() if svc.infra is not None
                       and svc.infra.kind == kind for i in svc.instances)

        def discover(service: str):
            # A scenario without the spec's auth-/payment-service has nothing to look up.
            return self.registry.agent_list(service) if service in self.services else ["-"]

        return deep_check_passes(up("database"), up("cache"), discover)

    # ------------------------------------------------------------------ service tokens

    def _current_kid(self, now: float) -> str:
        """The issuer signs with key k<n>, n = rotations that have happened by ``now``."""
        return f"k{bisect.bisect_right(self._rotations, now)}"

    def _published_kids(self, now: float) -> list[str]:
        return [f"k{i}" for i in range(bisect.bisect_right(self._rotations, now) + 1)]

    def _verify(self, c: _Call, inst: _Instance) -> bool:
        """The callee checks the caller's token on its own clock; False: it answered 401."""
        tp = self.tokens
        now = self.env._now
        clock = now + inst.skew
        if inst.keys is None:
            inst.keys = KeySet(ttl_s=tp.key_cache_ttl_s, refetch_on_unknown_kid=tp.refetch_on_unknown_kid)
        token = c.token
        known = inst.keys.known(clock, token.kid, lambda: self._published_kids(now))
        verdict = verify(token, clock, tp.leeway_s, (token.kid,) if known else (), tp.verifier)
        if verdict == "ok":
            return True
        self.counters["auth_401"] += 1
        c.auth_failed = True
        self._rec((now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                   c.op.name, "error"))
        self._rec((now, "auth_401", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                   c.op.name, verdict))
        self._answer(c, "error")
        return False

    # ------------------------------------------------------------------ client-side policies

    def _edge(self, caller: str, callee: str) -> "_Edge":
        """The policies for calls from ``caller`` to ``callee``: defaults, then matching edges."""
        key = (caller, callee)
        e = self._edges.get(key)
        if e is None:
            p = self.policies
            fields = {f: getattr(p, f) for f in EDGE_FIELDS}
            for ov in p.edges:
                if ov.caller in (None, caller) and ov.callee in (None, callee):
                    fields.update(ov.overrides())
            e = self._edges[key] = _Edge(fields, self.registry is not None, self.tokens is not None)
        return e

    def weights_of(self, service: str) -> Optional[dict]:
        """Instance name -> the metadata.weight it registered (None: no weights given)."""
        weights = self.scenario.service(service).weights
        if weights is None:
            return None
        return {i.name: weights[i.index % len(weights)] for i in self.services[service].instances}

    def _client(self, inst: _Instance) -> "_ClientState":
        cl = self._clients.get(inst.name)
        if cl is None:
            cl = self._clients[inst.name] = _ClientState(inst)
        return cl

    def _refused(self, req, parent: _Call, op: _Op, event: str, outcome: str, instance=None) -> None:
        """A call the caller's own client refused before sending (no instance, breaker open,
        bulkhead full, discovery failed): logged, and counted against the callee."""
        now = self.env._now
        self._rec((now, event, req.id, None, parent.id, parent.inst.name, op.svc.name, instance, op.name, outcome))
        self._call_done((now, op.svc.key, OUTCOME_INDEX[outcome], 0.0, 1.0 if now >= self.warmup else 0.0))

    def _breaker_logged(self, br, before: int, source: str, scope: str) -> None:
        for t, a, b in br.transitions[before:]:
            self._rec((t, "breaker", None, None, None, source, scope, None, a, b))
            key = f"{a}->{b}"
            self.breaker_transitions[key] = self.breaker_transitions.get(key, 0) + 1

    # ------------------------------------------------------------------ messages

    def _publish(self, caller: _Call, broker: str, target: str, op: Optional[str], k: Callable) -> None:
        """Publish with publisher confirms: the caller waits for the broker, not the consumer."""
        b = self.services[broker]

        def confirmed(outcome: str) -> None:
            if outcome == "ok":
                q = self._queue(b, target, op)
                self.messages_pending += 1
                self.n_calls += 1
                msg = (self.n_calls, caller.req, caller.id)
                self._rec((self.env._now, "message_publish", caller.req.id, msg[0], caller.id, broker,
                           target, None, op, None))
                q.ready.append(msg)
                self._dispatch(q)
            k(outcome)

        self._start_call(caller.req, caller, caller.inst.name, caller.op.svc, b.ops[None],
                         b.infra.timeout_s, confirmed)

    def _queue(self, broker: _Service, target: str, op: Optional[str]) -> _MessageQueue:
        key = f"{broker.name}/{target}.{op}"
        q = self._queues.get(key)
        if q is None:
            consumer = self.services[target]
            q = _MessageQueue(broker, consumer.ops[op], broker.infra.redelivery_delay_s)
            self._queues[key] = q
            consumer.consumers.append(q)
        return q

    def _dispatch(self, q: _MessageQueue) -> None:
        """Hand ready messages to up consumer instances, round robin, within prefetch."""
        consumer = q.op.svc
        prefetch = q.broker.infra.prefetch
        while q.ready:
            up = consumer.up
            if not up:
                return
            n = len(up)
            for j in range(n):
                inst = up[(q.rr + j) % n]
                if inst.credit < prefetch:
                    break
            else:
                return
            q.rr = (q.rr + j + 1) % n
            inst.credit += 1
            msg_id, req, parent_id = q.ready.popleft()
            q.inflight += 1
            self._deliver_message(q, inst, msg_id, req, parent_id)

    def _deliver_message(self, q, inst, msg_id, req, parent_id) -> None:
        broker = q.broker

        def finished(outcome: str) -> None:
            inst.credit -= 1
            q.inflight -= 1
            now = self.env._now
            if outcome == "ok":
                self.messages_pending -= 1
                self._rec((now, "message_ack", req.id, msg_id, parent_id, broker.name, q.op.svc.name,
                           inst.name, q.op.name, outcome))
            else:
                self._rec((now, "message_nack", req.id, msg_id, parent_id, broker.name, q.op.svc.name,
                           inst.name, q.op.name, outcome))
                _at(self.env, q.delay, self._redeliver, (q, (msg_id, req, parent_id)))
            self._dispatch(q)

        # A delivery is a call from the broker to the chosen consumer. The broker waits for
        # the ack; if the consumer's connection goes silent (a partition, a hung process),
        # the missed heartbeats close it after heartbeat_timeout_s and the unacknowledged
        # message is requeued (RabbitMQ: heartbeat 60 s; consumer_timeout 30 min for a
        # connection that stays alive).
        self._start_call(req, None, broker.name, broker, q.op, broker.infra.heartbeat_timeout_s, finished, inst)

    def _redeliver(self, arg) -> None:
        q, msg = arg
        q.ready.append(msg)
        self._dispatch(q)


def _index(inst: _Instance) -> int:
    return inst.index


_UNIT_EXP = Exponential(dist="exponential", mean=1.0)


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


class _Edge:
    """Resolved policies of one caller -> callee edge (see ``Engine._edge``)."""

    __slots__ = ("timeout", "discovery", "balancer", "breaker", "scope", "outlier", "retry",
                 "budget", "bulkhead", "deadline", "protocol", "channel", "fast")

    def __init__(self, f: dict, registry: bool, tokens: bool) -> None:
        self.timeout = f["timeout_s"]
        self.discovery = f["discovery"]
        self.balancer = f["balancer"]
        self.breaker = f["breaker"]
        self.scope = f["breaker_scope"]
        self.outlier = f["outlier"]
        self.retry = f["retry"]
        self.budget = None if isinstance(f["retry_budget"], NoBudget) else f["retry_budget"]
        self.bulkhead = f["bulkhead"]
        self.deadline = f["deadline_propagation"]
        self.protocol = f["protocol"]
        self.channel = f["grpc_channel"]
        # Nothing to do but pick a random up instance: the engine's fast path.
        self.fast = not (
            registry or tokens or self.breaker or self.outlier or self.bulkhead or self.deadline
            or self.budget or self.retry.max_attempts > 1 or self.protocol == "grpc"
            or self.balancer.kind != "random"
        )


class _ClientState:
    """What one caller instance's HTTP/gRPC clients remember (spec 3.3: one HttpClient, one
    GrpcClient and one ServiceAuth per process)."""

    __slots__ = ("inst", "views", "edge_views", "balancers", "breakers", "outliers", "inflight", "channels",
                 "budgets", "token_cache", "token_waiters", "active", "retrying")

    def __init__(self, inst: _Instance) -> None:
        self.inst = inst
        self.views: dict = {}  # discovery config -> view
        self.edge_views: dict = {}  # _Edge -> its view (a cache of the above)
        self.balancers: dict = {}
        self.breakers: dict = {}
        self.outliers: dict = {}
        self.inflight: dict = {}
        self.channels: dict = {}
        self.budgets: dict = {}
        self.token_cache = None
        self.token_waiters: list = []
        self.active = 0  # calls in flight from this client (Envoy's budget counts these)
        self.retrying = 0


class _Logical:
    """One call as the caller's client code makes it: discovery, balancing, gRPC channel,
    breaker, bulkhead, token, the attempt itself, then retries with backoff and a fallback.

    The order follows the spec's HttpClient.callService (3.3.1): the instance is selected
    *before* ``circuitBreaker.execute``, so discovery failures never reach the breaker.
    """

    __slots__ = ("eng", "edge", "parent", "op", "timeout", "k", "fallback", "attempt_no",
                 "prev_delay", "client", "callee", "inst", "breaker", "br_key", "t_sent",
                 "auth_retried", "token", "with_token", "view", "pushed_back")

    def __init__(self, eng, edge, parent, op, timeout, k, fallback):
        self.eng = eng
        self.edge = edge
        self.parent = parent
        self.op = op
        self.timeout = timeout
        self.k = k
        self.fallback = fallback
        self.attempt_no = 0
        self.prev_delay = 0.0
        self.client = eng._client(parent.inst)
        self.callee = op.svc.name
        self.inst = None
        self.breaker = None
        self.br_key = None
        self.auth_retried = False
        self.pushed_back = False
        self.token = None
        self.with_token = eng.tokens is not None
        budget = edge.budget
        if budget is not None and budget.kind == "finagle":
            self._budget().deposit(eng.env._now)

    def _budget(self):
        b = self.client.budgets.get(self.callee)
        if b is None:
            b = self.client.budgets[self.callee] = self.edge.budget.build(self.eng.env._now)
        return b

    def attempt(self) -> None:
        self.attempt_no += 1
        eng = self.eng
        if eng.registry is None:
            self._choose([i.name for i in self.op.svc.up])
            return
        # NOTE: looked up by the edge (one object per caller -> callee) first: keying by the
        # discovery config (equal configs share a view) hashes a pydantic model every time.
        cl = self.client
        view = cl.edge_views.get(self.edge)
        if view is None:
            view = cl.views.get(self.edge.discovery)
            if view is None:
                view = cl.views[self.edge.discovery] = make_view(self.edge.discovery)
            cl.edge_views[self.edge] = view
        self.view = view
        if _needs_query(view, eng.env._now, self.callee):
            # agent.service.list() is an HTTP call to the Consul agent: it costs a round trip.
            reg = eng.registry_svc
            timeout = reg.infra.timeout_s if reg.infra.timeout_s is not None else self.timeout
            eng._start_call(self.parent.req, self.parent, self.parent.inst.name, self.parent.op.svc,
                            reg.ops[None], timeout, self._discovered)
        else:
            self._discovered("ok")

    def _discovered(self, outcome: str) -> None:
        eng = self.eng
        view = self.view
        now = eng.env._now
        if outcome == "ok":
            names = view.instances(now, self.callee, eng.registry)
        else:  # the lookup itself failed (registry down or cut off): stale data, if any
            names = view.unreachable(now, self.callee)
        if names is None:
            eng.counters["discovery_errors"] += 1
            eng._refused(self.parent.req, self.parent, self.op, "discovery_error", "error")
            self._failed("error", retryable=True)
            return
        self._choose(names)

    def _choose(self, names: list) -> None:
        eng = self.eng
        edge = self.edge
        cl = self.client
        now = eng.env._now
        outlier = None
        if edge.outlier is not None:
            outlier = cl.outliers.get(self.callee)
            if outlier is None:
                outlier = cl.outliers[self.callee] = OutlierDetector(edge.outlier, names, start=now)
            names = outlier.eligible(now, names)
        name = None
        sticky = edge.protocol == "grpc" and edge.channel != "per_call"
        if sticky:
            name = cl.channels.get(self.callee)
        if name is None:
            if not names:
                # The spec: throw new Error(`No available instances for service: ...`)
                eng._refused(self.parent.req, self.parent, self.op, "no_instance", "error")
                self._failed("error", retryable=True)
                return
            bal = cl.balancers.get(self.callee)
            if bal is None:
                bal = cl.balancers[self.callee] = make_balancer(edge.balancer, eng.weights_of(self.callee))
            pick = eng._pick(self.parent.op.svc.name, self.callee)
            name = bal.choose(now, names, pick, self.parent.req.id)
            if name is None:
                # instances[currentIndex] is undefined: `instance.host` throws a TypeError.
                eng._refused(self.parent.req, self.parent, self.op, "no_instance", "error")
                self._failed("error", retryable=True)
                return
            if sticky:
                cl.channels[self.callee] = name  # GrpcClient caches the client for ever
        self.inst = eng.instance_by_name[name]
        if edge.bulkhead is not None and cl.inflight.get(self.callee, 0) >= edge.bulkhead:
            eng.counters["bulkhead_rejections"] += 1
            eng._refused(self.parent.req, self.parent, self.op, "bulkhead_full", "rejected", name)
            self._failed("rejected", retryable=False)
            return
        if edge.breaker is not None:
            key = ("*" if edge.scope == "client" else self.callee if edge.scope == "service" else name)
            br = cl.breakers.get(key)
            if br is None:
                br = cl.breakers[key] = make_breaker(edge.breaker)
            self.breaker, self.br_key = br, key
            before = len(br.transitions)
            allowed = br.allow(now)
            eng._breaker_logged(br, before, cl.inst.name, key)
            if not allowed:
                eng.counters["short_circuits"] += 1
                eng._refused(self.parent.req, self.parent, self.op, "short_circuit", "error", name)
                self._failed("error", retryable=False)
                return
        if self.with_token:
            self._with_token()
        else:
            self._send()

    # -------------------------------------------------------------- tokens

    def _with_token(self) -> None:
        eng = self.eng
        tp = eng.tokens
        cl = self.client
        if cl.token_cache is None:
            cl.token_cache = (RefreshAheadCache(tp.refresh_margin_s, tp.single_flight)
                              if tp.cache == "refresh_ahead" else SpecTokenCache())
        cache = cl.token_cache
        clock = eng.env._now + cl.inst.skew
        token = cache.get(clock)
        single = tp.cache == "refresh_ahead" and tp.single_flight
        if cache.needs_fetch(clock) and not (single and cache.in_flight):
            self._fetch_token(cache, wait=token is None)
            if token is None:
                return
        if token is None:
            cl.token_waiters.append(self)  # a single-flight refresh is under way
            return
        self.token = token
        self._send()

    def _fetch_token(self, cache, wait: bool) -> None:
        """Ask the issuer (auth-service) for a token; the reply is signed on its clock."""
        eng = self.eng
        cl = self.client
        cache.fetch_started(eng.env._now)
        eng.counters["token_fetches"] += 1
        waiter = self if wait else None
        issuer = eng._issuer_op

        def done(outcome: str, fetch: "_Logical") -> None:
            now = eng.env._now
            token = None
            if outcome == "ok":
                src = fetch.inst
                token = issue(now + src.skew, eng.tokens.ttl_s, eng._current_kid(now))
            cache.fetch_done(now, token)
            waiters, cl.token_waiters = cl.token_waiters, []
            if waiter is not None:
                waiters.insert(0, waiter)
            for w in waiters:
                if token is None:
                    eng._refused(w.parent.req, w.parent, w.op, "token_error", "error")
                    w._failed("error", retryable=True)
                else:
                    w.token = token
                    w._send()

        edge = eng._edge(self.parent.op.svc.name, issuer.svc.name)
        fetch = _Logical(eng, edge, self.parent, issuer, edge.timeout, None, False)
        fetch.k = lambda outcome: done(outcome, fetch)
        fetch.with_token = False  # the token request itself carries no token
        fetch.attempt()

    # -------------------------------------------------------------- the attempt

    def _send(self) -> None:
        eng = self.eng
        cl = self.client
        now = eng.env._now
        cl.inflight[self.callee] = cl.inflight.get(self.callee, 0) + 1
        cl.active += 1
        bal = cl.balancers.get(self.callee)
        if bal is not None:
            bal.on_start(self.inst.name, now)
        self.t_sent = now
        deadline = self.parent.deadline
        if self.edge.deadline and self.timeout is not None:
            mine = now + self.timeout
            deadline = mine if deadline is None else min(deadline, mine)
        eng._start_call(self.parent.req, self.parent, self.parent.inst.name, self.parent.op.svc,
                        self.op, self.timeout, self._done, self.inst, deadline, self.token)

    def _done(self, outcome: str) -> None:
        eng = self.eng  # eng.last_call is the attempt's call (set just before this runs)
        cl = self.client
        now = eng.env._now
        name = self.inst.name
        cl.inflight[self.callee] -= 1
        cl.active -= 1
        rtt = now - self.t_sent
        bal = cl.balancers.get(self.callee)
        if bal is not None:
            bal.on_end(name, now, rtt, outcome == "ok")
        if self.breaker is not None:
            before = len(self.breaker.transitions)
            self.breaker.on_result(now, outcome, rtt)
            eng._breaker_logged(self.breaker, before, cl.inst.name, self.br_key)
        outlier = cl.outliers.get(self.callee)
        if outlier is not None:
            outlier.on_result(now, name, outcome)
        budget = self.edge.budget
        if budget is not None and budget.kind == "grpc_throttle":
            b = self._budget()
            b.on_success() if outcome == "ok" else b.on_failure()
        if outcome != "ok" and self.edge.protocol == "grpc" and self.edge.channel == "refresh_on_failure":
            cl.channels.pop(self.callee, None)
        if outcome == "ok":
            self._finish("ok")
            return
        if eng.last_call.auth_failed and eng.tokens.on_401 == "refresh_retry" and not self.auth_retried:
            # One refresh-and-retry on a 401 (not counted as a retry attempt).
            self.auth_retried = True
            cl.token_cache.token = None
            eng.counters["auth_refresh_retries"] += 1
            self.attempt_no -= 1
            self.attempt()
            return
        if eng.last_call.pushback and self.edge.retry.pushback:
            self.pushed_back = True
            self._failed(outcome, retryable=False)
            return
        self._failed(outcome, retryable=True)

    def _failed(self, outcome: str, retryable: bool) -> None:
        eng = self.eng
        edge = self.edge
        retry = edge.retry
        if retryable and edge.deadline and self.parent.deadline is not None \
                and eng.env._now >= self.parent.deadline:
            # With deadline propagation no retry starts after the caller's own deadline:
            # nobody waits for its answer (gRFC A6: the original RPC and all its retries
            # are bound by the deadline).
            retryable = False
        if retryable and retry.should_retry(self.attempt_no, outcome, self.op.idempotent) and self._budget_allows():
            delay = retry.delay(self.attempt_no, self.prev_delay, eng._retry_u(self.parent.op.svc.name, self.callee))
            self.prev_delay = delay
            eng.counters["retries"] += 1
            now = eng.env._now
            eng._rec((now, "retry", self.parent.req.id, None, self.parent.id, self.parent.inst.name,
                      self.callee, None, self.op.name, outcome))
            self.client.retrying += 1
            _at(eng.env, delay, self._retry, None)
            return
        self._finish(outcome)

    def _retry(self, _arg) -> None:
        self.client.retrying -= 1
        self.attempt()

    def _budget_allows(self) -> bool:
        budget = self.edge.budget
        if budget is None:
            return True
        b = self._budget()
        now = self.eng.env._now
        if budget.kind == "finagle":
            return b.try_withdraw(now)
        if budget.kind == "envoy":
            return b.allow(self.client.active, self.client.retrying)
        return b.retries_allowed()

    def _finish(self, outcome: str) -> None:
        if outcome != "ok" and (self.attempt_no > 1 or self.pushed_back):
            # This call failed after retries (or was pushed back): if the work it serves
            # fails, its answer tells the caller not to retry (RetryPolicy.pushback).
            self.parent.pushback = True
        if outcome != "ok" and self.fallback:
            self.eng.counters["fallbacks"] += 1
            outcome = "ok"
        self.k(outcome)


def _needs_query(view, now: float, service: str) -> bool:
    """Whether ``view.instances`` will ask the registry now (and so costs a round trip)."""
    timing = view.config.timing
    if timing == "per_call":
        return True
    if timing == "cached":
        at = view.fetched_at(service)
        return at is None or now >= at + view.config.ttl_s
    return service not in view._delivered  # watch: only the first lookup queries directly


_COUNTERS = (
    "retries", "short_circuits", "bulkhead_rejections", "fallbacks", "discovery_errors",
    "token_fetches", "auth_401", "auth_refresh_retries", "deadline_drops", "shed",
    "deregistrations", "scale_out", "scale_in",
)


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

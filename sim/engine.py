"""The discrete-event engine: a scenario's services as servers on a SimPy clock.

SimPy supplies the clock and the event heap (``(time, priority, event id)``, so events at
the same instant run first-in first-out and a run is deterministic). The engine does not
use SimPy processes or resources: every step of a call is one scheduled event carrying a
callback and its payload (:class:`_At`), which does the work of a process switch without
the generator machinery. That is what lets a full call, with network hops, queueing and a
caller-side timeout, cost little more than a textbook SimPy customer.

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

from collections import deque
from typing import Callable, Optional

import simpy
from simpy.events import NORMAL, URGENT, Event

from models.scenario import (
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
from models.arrivals import schedule_for
from models.distributions import Constant, Exponential
from sim.eventlog import EventLog
from sim.metrics import OUTCOME_INDEX, Recorder
from sim.rng import Streams

__all__ = ["Engine"]


class _At(Event):
    """An event that runs ``fn(self)`` after ``delay``; ``arg`` is its payload.

    NOTE: the body inlines ``Event.__init__`` and ``Timeout.__init__`` for speed.
    """

    def __init__(self, env: simpy.Environment, delay: float, fn: Callable, arg) -> None:
        self.env = env
        self.callbacks = [fn]
        self._value = None
        self._ok = True
        self.arg = arg
        env.schedule(self, NORMAL, delay)


class _AtFirst(_At):
    """Like :class:`_At`, but ahead of ordinary events at the same instant (and of the
    runner's stop at that instant): for bookkeeping that must see a boundary time."""

    def __init__(self, env: simpy.Environment, delay: float, fn: Callable, arg) -> None:
        self.env = env
        self.callbacks = [fn]
        self._value = None
        self._ok = True
        self.arg = arg
        env.schedule(self, URGENT, delay)


# --------------------------------------------------------------------------- runtime state


class _Instance:
    __slots__ = (
        "name", "svc", "index", "node", "zone", "workers", "free", "queue", "qlimit", "up",
        "last", "qarea", "barea", "qmax", "served", "rejected", "orphans", "orphan_s",
        "snap", "credit", "wait_sum", "wait_n",
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


class _Op:
    __slots__ = ("name", "svc", "sample", "err_p", "err_u", "tree", "blocking", "key")

    def __init__(self, svc, name, sample, err_p, err_u, tree, blocking):
        self.svc = svc
        self.name = name
        self.sample = sample
        self.err_p = err_p
        self.err_u = err_u
        self.tree = tree
        self.blocking = blocking
        self.key = f"{svc.name}.{name}" if name else svc.name


class _Service:
    """A service or an infrastructure component: a set of identical instances."""

    __slots__ = ("name", "infra", "workers", "qlimit", "instances", "up", "ops", "key",
                 "startup", "consumers")

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


class _Call:
    __slots__ = ("id", "req", "parent", "source", "src_svc", "op", "inst", "t0", "k",
                 "finished", "t_abandon", "hold", "status", "track", "t_arrive")

    def __init__(self, cid, req, parent, source, src_svc, op, t0, k, track):
        self.id = cid
        self.req = req
        self.parent = parent
        self.source = source
        self.src_svc = src_svc
        self.op = op
        self.inst = None
        self.t0 = t0
        self.k = k
        self.finished = False
        self.t_abandon = None
        self.hold = 0.0
        self.status = None
        self.track = track  # 1.0: started after the warm-up, counts in the summaries


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
        self._links: dict = {}
        self._build()

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        sc = self.scenario
        streams = self.streams
        self.services: dict[str, _Service] = {}
        zone = {n.name: n.zone for n in sc.nodes}
        for c in sc.infrastructure:
            svc = _Service(c.name, c, c.capacity, c.queue_limit, 0.0)
            svc.ops[None] = _Op(svc, None, streams.sampler(f"svc/{c.name}", c.latency_ms, 1e-3),
                                0.0, None, None, False)
            node = c.placement or sc.nodes[0].name
            svc.instances.append(_Instance(svc, 0, node, zone[node]))
            self.services[c.name] = svc
        placements = {p.instance: p for p in sc.placements()}
        for s in sc.services:
            svc = _Service(s.name, None, s.workers, s.queue_limit, s.startup_s)
            for i in range(s.instances):
                p = placements[f"{s.name}-{i}"]
                svc.instances.append(_Instance(svc, i, p.node, p.zone))
            self.services[s.name] = svc
        for s in sc.services:
            svc = self.services[s.name]
            for name, op in s.operations.items():
                err_u = streams.uniform(f"err/{s.name}.{name}") if op.error_probability > 0 else None
                tree = self._compile(op.calls, s.name, f"{s.name}.{name}") if op.calls else None
                svc.ops[name] = _Op(svc, name, streams.sampler(f"svc/{s.name}.{name}", op.service_time_ms, 1e-3),
                                    op.error_probability, err_u, tree, s.blocking_calls)
        self._picks: dict = {}
        for i, svc in enumerate(self.services.values()):
            svc.key = i
        self.call_rec = Recorder(list(self.services), self.window)
        self._call_done = self.call_rec.buf.append

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
            e.draw = streams.sampler(f"arrive/{ep.name}", _UNIT_EXP)
            e.key = len(self.endpoints)
            self.endpoints.append(e)
        self.request_rec = Recorder([e.name for e in self.endpoints], self.window)
        self._request_done_rec = self.request_rec.buf.append

    def _compile(self, node, svc_name: str, path: str):
        """Turn a call-tree node into an executor object (see the ``_X*`` classes)."""
        sc = self.scenario
        if isinstance(node, CallNode):
            target, op = split_target(node.call)
            comp = sc.component(target)
            if isinstance(comp, Infrastructure):
                timeout = comp.timeout_s
            else:
                timeout = node.timeout_s if node.timeout_s is not None else sc.policies.timeout_s
            return _XCall(target, op, timeout)
        if isinstance(node, PublishNode):
            target, op = split_target(node.publish)
            via = node.via or next(c.name for c in sc.infrastructure if c.kind == "queue")
            return _XPublish(via, target, op)
        if isinstance(node, SeqNode):
            return _XSeq([self._compile(c, svc_name, f"{path}.{i}") for i, c in enumerate(node.seq)])
        if isinstance(node, ParNode):
            return _XPar([self._compile(c, svc_name, f"{path}.{i}") for i, c in enumerate(node.par)])
        if isinstance(node, MaybeNode):
            return _XMaybe(node.p, self.streams.uniform(f"tree/{path}"), self._compile(node.maybe, svc_name, f"{path}.m"))
        if isinstance(node, ChoiceNode):
            total = sum(o.weight for o in node.choice)
            cum, acc = [], 0.0
            for o in node.choice:
                acc += o.weight / total
                cum.append(acc)
            return _XChoice(cum, self.streams.uniform(f"tree/{path}"),
                            [self._compile(o.do, svc_name, f"{path}.{i}") for i, o in enumerate(node.choice)])
        if isinstance(node, RepeatNode):
            count = node.count
            draw = None if isinstance(count, int) else self.streams.sampler(f"tree/{path}", count)
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
            sampler = self.streams.sampler(f"net/{src}>{dst}", dist, 1e-3)
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
                    _At(env, svc.startup, self._instance_up, inst)
                else:
                    self._set_up(inst)
        self._queues: dict[str, _MessageQueue] = {}
        for e in self.endpoints:
            t = e.schedule.next_arrival(0.0, e.draw())
            if t < self.duration:
                _At(env, t, self._arrival, e)
        _AtFirst(env, self.warmup, self._snapshot, 0)
        _AtFirst(env, self.duration, self._close, 2)

    def _set_up(self, inst: _Instance) -> None:
        inst.up = True
        inst.last = self.env.now
        inst.credit = 0
        svc = inst.svc
        svc.up.append(inst)
        svc.up.sort(key=_index)

    def _instance_up(self, ev) -> None:
        inst = ev.arg
        self._set_up(inst)
        self._rec((self.env.now, "instance_up", None, None, None, None, inst.svc.name, inst.name, None, None))
        for q in inst.svc.consumers:
            self._dispatch(q)

    def _snapshot(self, ev) -> None:
        """Record every instance's integrals at warm-up (slot 0) and at the end (slot 2)."""
        slot = ev.arg
        for svc in self.services.values():
            for inst in svc.instances:
                self._touch(inst)
                inst.snap[slot] = inst.qarea
                inst.snap[slot + 1] = inst.barea

    def _close(self, ev) -> None:
        self.arrivals_open = False
        self._snapshot(ev)

    def env_events(self) -> int:
        """Events the SimPy kernel has processed so far.

        NOTE: read from SimPy's event-id counter (scheduled so far) less what is still on
        its heap; counting in our own hot path would cost every event a call.
        """
        return next(self.env._eid) - len(self.env._queue)

    # ------------------------------------------------------------------ arrivals & requests

    def _arrival(self, ev) -> None:
        e: _Endpoint = ev.arg
        env = self.env
        now = env.now
        t = e.schedule.next_arrival(now, e.draw())
        if t < self.duration:
            _At(env, t - now, self._arrival, e)
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
        now = self.env.now
        self.outstanding -= 1
        self._rec((now, "request_end", req.id, None, None, req.ep.client, req.ep.name, None, None, outcome))
        self._request_done_rec((now, req.ep.key, OUTCOME_INDEX[outcome], now - req.t0, req.track))

    # ------------------------------------------------------------------ calls

    def _start_call(self, req, parent: Optional[_Call], source: str, src_svc: Optional[_Service],
                    op: _Op, timeout: Optional[float], k: Callable, inst: Optional[_Instance] = None) -> None:
        env = self.env
        now = env.now
        self.n_calls += 1
        c = _Call(self.n_calls, req, parent, source, src_svc, op, now, k, 1.0 if now >= self.warmup else 0.0)
        svc = op.svc
        self._rec((now, "call_start", req.id, c.id, parent.id if parent else None, source, svc.name,
                   None, op.name, None))
        if inst is None:
            up = svc.up
            if not up:
                # The spec's selectServiceInstance throws "No available instances" at once.
                c.status = "error"
                _At(env, 0.0, self._deliver, c)
                return
            n = len(up)
            if n == 1:
                inst = up[0]
            else:
                src = src_svc.name if src_svc is not None else source
                pick = self._picks.get((src, svc.name))
                if pick is None:
                    # One stream per caller and callee: a new caller never shifts the picks
                    # of existing ones.
                    pick = self._picks[(src, svc.name)] = self.streams.uniform(f"pick/{src}>{svc.name}")
                inst = up[int(pick() * n)]
        c.inst = inst
        hop = self._link(src_svc.name if src_svc is not None else source, svc.name)
        if hop is None:
            self._arrive_at(c)
        else:
            _At(env, hop(), self._arrive, c)
        if timeout is not None:
            _At(env, timeout, self._timeout, c)

    def _arrive(self, ev) -> None:
        self._arrive_at(ev.arg)

    def _arrive_at(self, c: _Call) -> None:
        inst = c.inst
        c.t_arrive = self.env.now
        if not inst.up:
            self._answer(c, "error")  # connection refused
            return
        if inst.free:
            self._touch(inst)
            inst.free -= 1
            self._serve(c)
            return
        q = inst.queue
        if inst.qlimit is None or len(q) < inst.qlimit:
            self._touch(inst)
            q.append(c)
            if len(q) > inst.qmax:
                inst.qmax = len(q)
            return
        if c.track:
            inst.rejected += 1
        self._rec((self.env.now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name,
                   inst.name, c.op.name, "rejected"))
        self._answer(c, "rejected")

    def _serve(self, c: _Call) -> None:
        env = self.env
        now = c.hold = env.now
        if c.track:
            inst = c.inst
            inst.wait_sum += now - c.t_arrive
            inst.wait_n += 1
        _At(env, c.op.sample(), self._served, c)

    def _served(self, ev) -> None:
        c: _Call = ev.arg
        op = c.op
        if not op.blocking:
            self._release(c.inst)
        if op.err_u is not None and op.err_u() < op.err_p:
            self._work_done(c, "error")
        elif op.tree is not None:
            op.tree.run(self, c, lambda outcome: self._work_done(c, "ok" if outcome == "ok" else "error"))
        else:
            self._work_done(c, "ok")

    def _release(self, inst: _Instance) -> None:
        self._touch(inst)
        q = inst.queue
        if q:
            self._serve(q.popleft())
        else:
            inst.free += 1

    def _touch(self, inst: _Instance) -> None:
        """Advance the instance's queue-length and busy-worker integrals to now."""
        now = self.env.now
        dt = now - inst.last
        if dt:
            inst.qarea += len(inst.queue) * dt
            inst.barea += (inst.workers - inst.free) * dt
            inst.last = now

    def _work_done(self, c: _Call, status: str) -> None:
        inst = c.inst
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
        hop = self._link(c.op.svc.name, c.src_svc.name if c.src_svc is not None else c.source)
        c.status = status
        if hop is None:
            self._complete(c, status)
        else:
            _At(self.env, hop(), self._deliver, c)

    def _deliver(self, ev) -> None:
        c: _Call = ev.arg
        if not c.finished:
            self._complete(c, c.status)

    def _timeout(self, ev) -> None:
        c: _Call = ev.arg
        if c.finished:
            return
        c.t_abandon = self.env.now
        self._complete(c, "timeout")

    def _complete(self, c: _Call, outcome: str) -> None:
        c.finished = True
        now = self.env.now
        svc = c.op.svc
        inst = c.inst
        self._rec((now, "call_end", c.req.id, c.id, None, c.source, svc.name,
                   inst.name if inst is not None else None, c.op.name, outcome))
        self._call_done((now, svc.key, OUTCOME_INDEX[outcome], now - c.t0, c.track))
        c.k(outcome)

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
                self._rec((self.env.now, "message_publish", caller.req.id, msg[0], caller.id, broker,
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
            now = self.env.now
            if outcome == "ok":
                self.messages_pending -= 1
                self._rec((now, "message_ack", req.id, msg_id, parent_id, broker.name, q.op.svc.name,
                           inst.name, q.op.name, outcome))
            else:
                self._rec((now, "message_nack", req.id, msg_id, parent_id, broker.name, q.op.svc.name,
                           inst.name, q.op.name, outcome))
                _At(self.env, q.delay, self._redeliver, (q, (msg_id, req, parent_id)))
            self._dispatch(q)

        # A delivery is a call from the broker to the chosen consumer, with no timeout: the
        # broker waits for the ack (RabbitMQ's consumer_timeout is 30 min by default).
        self._start_call(req, None, broker.name, broker, q.op, None, finished, inst)

    def _redeliver(self, ev) -> None:
        q, msg = ev.arg
        q.ready.append(msg)
        self._dispatch(q)


def _index(inst: _Instance) -> int:
    return inst.index


_UNIT_EXP = Exponential(dist="exponential", mean=1.0)


# --------------------------------------------------------------------------- call-tree executors
# Each executor runs its part of an operation's call tree for one call ``c`` (the call being
# served, whose instance is the caller of every child) and then calls ``k(outcome)`` once.


class _XCall:
    __slots__ = ("target", "op", "timeout", "_op")

    def __init__(self, target, op, timeout):
        self.target = target
        self.op = op
        self.timeout = timeout
        self._op = None

    def run(self, eng: Engine, c: _Call, k: Callable) -> None:
        op = self._op
        if op is None:
            op = self._op = eng.services[self.target].ops[self.op]
        eng._start_call(c.req, c, c.inst.name, c.op.svc, op, self.timeout, k)


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

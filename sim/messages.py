"""Message queues: publish with confirms, per-binding queues on the broker, round-robin
delivery within prefetch, acknowledgement and redelivery (RabbitMQ semantics).

Split out of sim/engine.py unchanged: :class:`MessagingMixin` is part of
:class:`~hailan_sim.sim.engine.Engine` and works on its state.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

from hailan_sim.sim.clock import at as _at
from hailan_sim.sim.state import _Call, _Service

__all__ = ["MessagingMixin"]


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

class MessagingMixin:
    """The engine's message-queue methods (mixed into Engine)."""

    def _publish(self, caller: _Call, broker: str, target: str, op: Optional[str], k: Callable) -> None:
        """Publish with publisher confirms: the caller waits for the broker, not the consumer."""
        b = self.services[broker]

        def confirmed(outcome: str) -> None:
            if outcome == "ok":
                q = self._queue(b, target, op)
                self.messages_pending += 1
                self.n_calls += 1
                self.n_published += 1
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

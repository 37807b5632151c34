"""The run's event log: flat records, a canonical serialisation and its SHA-256.

Each record is a tuple with the fields of :data:`COLUMNS` (``None`` where a field does not
apply). The canonical form of a record is the record as a compact JSON array, as orjson
writes it (floats in their shortest round-tripping form, identical on every platform
with IEEE-754 doubles; ``None`` as ``null``), followed by a comma. The log's hash is the
SHA-256 of the canonical records concatenated in the order the events happened
(:func:`canonical` recomputes it from records, e.g. from ``Result.events()``). It is always computed;
keeping the records themselves is optional, so memory need not grow with run length.

===========  ==================================================================
column       meaning
===========  ==================================================================
t            simulated time, seconds
event        what happened (see :data:`EVENTS`)
request      the user request (trace id); messages keep their request's id
call         the call (span id); for messages, the message id
parent       the call that made this one (parent span id), or None
source       the caller: an instance, ``client:<endpoint>`` (that endpoint's users),
             the gateway, or a broker
target       the called service or component (for requests: the endpoint)
instance     the instance that served, if one was chosen
operation    the operation called (for requests: the entry)
outcome      ok / error / timeout / rejected where the event ends something
===========  ==================================================================
"""

from __future__ import annotations

import hashlib

import orjson
from typing import Optional

__all__ = ["COLUMNS", "EVENTS", "EventLog", "canonical"]

COLUMNS = ("t", "event", "request", "call", "parent", "source", "target", "instance", "operation", "outcome")

EVENTS = {
    # requests and calls
    "request_start": "a user request entered (target = endpoint)",
    "request_end": "a user request got its one outcome",
    "call_start": "a caller sent a call",
    "call_end": "the caller got an outcome for the call (timeout: it stopped waiting)",
    "work_end": "the callee finished its work and answered (or rejected the call)",
    "orphan_end": "the callee finished work its caller had already abandoned",
    "retry": "a caller's client will retry a call (outcome: what the failed attempt got)",
    "auth_401": "a callee refused a call's token (outcome: why)",
    "gateway_retry": "the gateway will retry a request on another instance (outcome: connect-failure or reset)",
    "gateway_retry_overflow": "the gateway would retry, but max_retries retries were waiting: not retried",
    # calls the caller's own client refused before sending (no call id)
    "discovery_error": "the caller could not list the callee's instances (registry unreachable)",
    "no_instance": "discovery listed no instance to send the call to",
    "bulkhead_full": "the caller's bulkhead for the callee was full",
    "short_circuit": "an open breaker refused the call",
    "token_error": "the caller could not get a service token",
    # messages
    "message_publish": "a message was accepted by the broker",
    "message_ack": "a consumer finished a message; the broker forgets it",
    "message_nack": "a delivery failed; the broker will redeliver",
    # instances, registry, mechanisms, faults
    "instance_up": "an instance finished start-up and can serve",
    "instance_down": "an instance stopped (crash); what it held is lost",
    "instance_drain": "an instance stopped taking new work (graceful shutdown began)",
    "instance_stop": "a draining instance finished its work and stopped",
    "registry": "the service registry changed an instance's state (operation: what; outcome: detail)",
    "breaker": "a circuit breaker changed state (operation: from; outcome: to)",
    "gateway_eject": "the gateway's outlier detection ejected a host (outcome: for how many seconds)",
    "gateway_uneject": "the gateway's outlier detection took an ejected host back",
    "grpc_channel_closed": "a caller's cached gRPC channel saw its connection to a dead instance close "
                           "(outcome: reset or keepalive); the call looks the service up again",
    "autoscale": "the autoscaler changed a service's instance count (outcome: by how many)",
    "fault_start": "a scheduled fault began (operation: its kind; outcome: its index in faults)",
    "fault_end": "a scheduled fault ended",
    "token_signed": "a caller signed a new service token itself (tokens.signing: local; "
                    "operation = key id, outcome = exp)",
    "token_held": "a caller's first call found the service token it held from before the run "
                  "(tokens.first_token: steady_state; instance = signer, operation = key id, outcome = exp)",
}

_CHUNK = 4096


def canonical(records: list) -> bytes:
    """The canonical bytes of ``records``: each as a compact JSON array plus a comma."""
    if not records:
        return b""
    # dumps of the list is '[r1,r2,...]'; dropping the brackets and adding a comma gives
    # 'r1,r2,...,', which concatenates chunk after chunk into the same bytes.
    return orjson.dumps(records)[1:-1] + b","


class EventLog:
    """Accumulates records in ``buf`` (appended to directly by the engine), hashing them
    whenever :meth:`flush` is called; keeps them only if asked, and hands each flushed batch
    to every sink in ``sinks`` (objects with a ``write(records)`` method that must not keep
    the list: it is cleared after). Sinks observe; the hash does not depend on them."""

    __slots__ = ("buf", "_sha", "kept", "count", "sinks")

    def __init__(self, keep: bool = False) -> None:
        self.buf: list[tuple] = []
        self._sha = hashlib.sha256()
        self.kept: Optional[list[tuple]] = [] if keep else None
        self.count = 0
        self.sinks: tuple = ()

    def flush(self) -> None:
        buf = self.buf
        if not buf:
            return
        for i in range(0, len(buf), _CHUNK):
            # NOTE: orjson serialises a chunk ~10x faster than any per-record str formatting.
            self._sha.update(canonical(buf[i : i + _CHUNK]))
        self.count += len(buf)
        if self.kept is not None:
            self.kept.extend(buf)
        for sink in self.sinks:
            sink.write(buf)
        buf.clear()

    def sha256(self) -> str:
        self.flush()
        return self._sha.hexdigest()

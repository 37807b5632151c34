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
from operator import itemgetter

import numpy as np
import orjson
from typing import Optional

__all__ = ["COLUMNS", "EVENTS", "EventLog", "KeptLog", "canonical"]

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


#: Columns holding ids (int or None): kept as int64 with -1 for None.
ID_COLUMNS = ("request", "call", "parent")
_ID_INDEX = tuple(COLUMNS.index(c) for c in ID_COLUMNS)
# What np.fromiter makes of each field of a batch: times and ids as float64 (None -> NaN:
# numpy converts None to NaN for floating dtypes; ids stay exact below 2**53), the text
# columns as object arrays holding the engine's own str objects (or None, or an int index).
_DTYPES = tuple(float if (i == 0 or i in _ID_INDEX) else object for i in range(len(COLUMNS)))

try:
    # pandas' C loop from a list of tuples to a 2-D object array (what its
    # DataFrame.from_records uses); numpy's own (np.array of the list, a (n, 10) object
    # fromiter, a structured dtype) are slower than the ten passes below, measured.
    from pandas._libs.lib import to_object_array_tuples as _to_object_rows
except ImportError:  # pragma: no cover - a private function: pandas may move it
    _to_object_rows = None


class KeptLog:
    """A kept event log, column by column: each flushed batch of record tuples becomes one
    numpy array per column while the batch is still in the cache (issue 12 item 4), so that
    no tuple outlives its batch and the invariants' columns (``properties.record``) need
    no pass over a million tuples after the run. :meth:`columns` joins the batches once;
    :meth:`records` rebuilds the tuples, equal to the engine's (the export and span
    paths read tuples; tests/test_eventlog_columns.py checks them against a sink)."""

    __slots__ = ("_batches", "_cols", "count", "_int_t")

    def __init__(self) -> None:
        self._batches: list[tuple[np.ndarray, ...]] = []
        self._cols: Optional[dict[str, np.ndarray]] = None
        self.count = 0
        # Rows whose time the engine wrote as an int (SimPy's clock starts at the int 0 and
        # stays an int until a float delay): orjson writes 0, not 0.0, so records() must
        # give the int back for the tuples to hash alike.
        self._int_t: list[int] = []

    def add(self, buf: list) -> None:
        n = len(buf)
        if _to_object_rows is not None:
            # NOTE: for speed: one C pass over the tuples into an (n, 10) object array, then
            # each column copied (text) or cast (numbers; None -> NaN as np.fromiter makes
            # it): a quarter less than ten passes through itemgetter, 2% of a run with its log.
            rows = _to_object_rows(buf).T
            cols = [rows[i].astype(float) if dt is float else rows[i].copy() for i, dt in enumerate(_DTYPES)]
        else:  # pragma: no cover - a pandas without it
            # One np.fromiter pass per column over the batch (16,384 tuples at most: cache-resident).
            cols = [np.fromiter(map(itemgetter(i), buf), dtype=dt, count=n) for i, dt in enumerate(_DTYPES)]
        for i in _ID_INDEX:  # None (NaN) -> -1, while the batch is small and in the cache
            cols[i] = np.nan_to_num(cols[i], copy=False, nan=-1.0).astype(np.int64)
        t = cols[0]
        for k in np.flatnonzero(t == np.floor(t)).tolist():  # whole numbers: few
            if type(buf[k][0]) is int:
                self._int_t.append(self.count + k)
        self._batches.append(tuple(cols))
        self.count += n
        self._cols = None

    @classmethod
    def from_records(cls, records: list) -> "KeptLog":
        """A kept log holding ``records`` (tuples of :data:`COLUMNS`), e.g. a doctored log in a test."""
        kept = cls()
        if records:
            kept.add(records)
        return kept

    def __len__(self) -> int:
        return self.count

    def columns(self) -> dict[str, np.ndarray]:
        """Every column as one array (``t`` float64; ``request``, ``call``, ``parent``
        int64 with -1 for None; the others object arrays of str or None). Computed once
        and shared: callers must not modify the arrays."""
        if self._cols is None:
            batches = self._batches
            cols = {}
            for i, name in enumerate(COLUMNS):
                parts = [b[i] for b in batches]
                cols[name] = (np.concatenate(parts) if len(parts) > 1 else parts[0]) if parts \
                    else np.zeros(0, dtype=np.int64 if i in _ID_INDEX else _DTYPES[i])
            # The joined arrays replace the batches (one copy in memory, not two).
            self._batches = [tuple(cols[name] for name in COLUMNS)] if self.count else []
            self._cols = cols
        return self._cols

    def records(self) -> list[tuple]:
        """The records as the engine wrote them (tuples of :data:`COLUMNS`)."""
        cols = self.columns()
        lists = [cols[name].tolist() for name in COLUMNS]
        t = lists[0]
        for k in self._int_t:
            t[k] = int(t[k])
        for i in _ID_INDEX:
            lists[i] = [None if v < 0 else v for v in lists[i]]
        return list(zip(*lists))


class EventLog:
    """Accumulates records in ``buf`` (appended to directly by the engine), hashing them
    whenever :meth:`flush` is called; keeps them (as a :class:`KeptLog`) only if asked, and hands each flushed batch
    to every sink in ``sinks`` (objects with a ``write(records)`` method that must not keep
    the list: it is cleared after). Sinks observe; the hash does not depend on them."""

    __slots__ = ("buf", "_sha", "kept", "count", "sinks")

    def __init__(self, keep: bool = False) -> None:
        self.buf: list[tuple] = []
        self._sha = hashlib.sha256()
        self.kept: Optional[KeptLog] = KeptLog() if keep else None
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
            self.kept.add(buf)
        for sink in self.sinks:
            sink.write(buf)
        buf.clear()

    def sha256(self) -> str:
        self.flush()
        return self._sha.hexdigest()

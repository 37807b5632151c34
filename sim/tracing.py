"""Span trees from the event log, as the spec's tracing headers would build them, in the
OpenTelemetry protocol's JSON encoding (OTLP/JSON).

Every call carries ``x-trace-id`` (the request), ``x-span-id`` (the call) and
``x-parent-span-id`` (the call that made it) (spec 074 3.6.1). Each request is a trace:
a root span for the request, from its arrival to its one outcome, and one span per call,
from the caller sending it to the caller getting its outcome (or giving up).

The output is one ``ExportTraceServiceRequest`` (opentelemetry-proto,
``opentelemetry/proto/collector/trace/v1/trace_service.proto``) as OTLP/JSON encodes it
(https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding):

- ``traceId`` is the request id and ``spanId`` the call id, as 16- and 8-byte big-endian
  integers written as **hex strings** (OTLP/JSON's rule; not base64 as in the generic
  protobuf JSON mapping). Ids start at 1, so no id is the invalid all-zero one. A root
  span's id is its request id with the top bit set; call ids never have it.
- enums (``kind``, ``status.code``) as integers; 64-bit integers (times) as decimal
  strings; field names in lowerCamelCase; attributes as a list of ``KeyValue``.
- times are integer nanoseconds of *simulated* time (the run starts at the Unix epoch).
- one ``ResourceSpans`` per service and batch, with the ``service.name`` resource
  attribute: a call's span belongs to its caller (a CLIENT span), ``client`` for an
  endpoint's users, the broker for message deliveries; a request's root span belongs to
  the component that received it (the gateway, or the entry service) as a SERVER span.
  The same service can appear in several ``ResourceSpans`` (one per streamed batch);
  OTLP allows it.

:class:`SpanBuilder` is streaming: it holds only spans still open (in-flight calls and
requests), so memory does not grow with the run's length.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["SpanBuilder", "otlp", "service_of"]

_ROOT = 1 << 63  # root spans get ids with the top bit set, call spans never do

# opentelemetry/proto/trace/v1/trace.proto: Span.SpanKind and Status.StatusCode.
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_CODE_OK = 1
STATUS_CODE_ERROR = 2


def _trace_id(request: int) -> str:
    return f"{request:032x}"


def _span_id(n: int) -> str:
    return f"{n:016x}"


def _ns(t: float) -> str:
    return str(round(t * 1e9))


def _kv(key: str, value) -> dict:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": str(value)}}


def service_of(source: str) -> str:
    """The service an event's ``source`` belongs to: instances are named
    ``<service>-<index>``; ``client:<endpoint>`` is the endpoint's users (``client``);
    anything else (a broker) is its own name."""
    if source.startswith("client:"):
        return "client"
    head, _, tail = source.rpartition("-")
    return head if head and tail.isdigit() else source


def _status(outcome: Optional[str]) -> dict:
    if outcome == "ok":
        return {"code": STATUS_CODE_OK}
    return {"code": STATUS_CODE_ERROR, "message": outcome or "unfinished"}


class SpanBuilder:
    """Turns event-log records into OTLP spans as they arrive.

    :meth:`feed` takes a batch of records and returns the ``ResourceSpans`` of the spans
    it completed; :meth:`finish` returns those still open at the end of the run, ended at
    the last record's time with outcome ``unfinished``.
    """

    def __init__(self) -> None:
        from hailan_sim._version import __version__

        self.scope = {"name": "hailan-sim", "version": __version__}
        self._roots: dict[int, list] = {}  # request -> [t, endpoint, entry, receiver]
        self._calls: dict[int, tuple] = {}  # call -> (request, parent, t, source, target, operation)
        self._last_t = 0.0

    def _group(self, done: list[tuple[str, dict]]) -> list[dict]:
        by_service: dict[str, list] = {}
        for service, span in done:
            by_service.setdefault(service, []).append(span)
        return [{"resource": {"attributes": [_kv("service.name", s)]},
                 "scopeSpans": [{"scope": self.scope, "spans": spans}]}
                for s, spans in by_service.items()]

    def _root(self, req: int, r: list, t_end: float, outcome: Optional[str]) -> tuple[str, dict]:
        t, endpoint, entry, receiver = r
        return (receiver or (entry.partition(".")[0] if entry else endpoint), {
            "traceId": _trace_id(req), "spanId": _span_id(_ROOT | req),
            "name": f"{endpoint} {entry}", "kind": SPAN_KIND_SERVER,
            "startTimeUnixNano": _ns(t), "endTimeUnixNano": _ns(t_end),
            "attributes": [_kv("hailan.endpoint", endpoint), _kv("hailan.entry", entry),
                           _kv("hailan.outcome", outcome or "unfinished")],
            "status": _status(outcome),
        })

    def _call(self, call: int, c: tuple, t_end: float, outcome: Optional[str],
              instance: Optional[str]) -> tuple[str, dict]:
        req, parent, t, source, target, operation = c
        attrs = [_kv("peer.service", target), _kv("hailan.source", source)]
        if operation is not None:
            attrs.append(_kv("hailan.operation", operation))
        if instance is not None:
            attrs.append(_kv("hailan.instance", instance))
        attrs.append(_kv("hailan.outcome", outcome or "unfinished"))
        return (service_of(source), {
            "traceId": _trace_id(req), "spanId": _span_id(call),
            "parentSpanId": _span_id(_ROOT | req if parent is None else parent),
            "name": f"{target}.{operation}" if operation is not None else target,
            "kind": SPAN_KIND_CLIENT,
            "startTimeUnixNano": _ns(t), "endTimeUnixNano": _ns(t_end),
            "attributes": attrs,
            "status": _status(outcome),
        })

    def feed(self, records) -> list[dict]:
        done: list[tuple[str, dict]] = []
        roots, calls = self._roots, self._calls
        for rec in records:
            ev = rec[1]
            if ev == "call_start":
                t, _, req, call, parent, source, target, _, operation, _ = rec
                calls[call] = (req, parent, t, source, target, operation)
                if parent is None:
                    r = roots.get(req)
                    if r is not None and r[3] is None:
                        r[3] = target  # the first hop's target received the request
            elif ev == "call_end":
                c = calls.pop(rec[3], None)
                if c is not None:
                    done.append(self._call(rec[3], c, rec[0], rec[9], rec[7]))
            elif ev == "request_start":
                roots[rec[2]] = [rec[0], rec[6], rec[8], None]
            elif ev == "request_end":
                r = roots.pop(rec[2], None)
                if r is not None:
                    done.append(self._root(rec[2], r, rec[0], rec[9]))
        if records:
            self._last_t = records[-1][0]
        return self._group(done)

    def finish(self) -> list[dict]:
        t = self._last_t
        done = [self._root(req, r, t, None) for req, r in self._roots.items()]
        done += [self._call(call, c, t, None, None) for call, c in self._calls.items()]
        self._roots.clear()
        self._calls.clear()
        return self._group(done)


def otlp(records) -> dict:
    """Every span of a kept event log as one OTLP/JSON ``ExportTraceServiceRequest`` dict."""
    b = SpanBuilder()
    return {"resourceSpans": [*b.feed(records), *b.finish()]}

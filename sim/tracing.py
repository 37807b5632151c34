"""Span trees from the event log, as the spec's tracing headers would build them.

Every call carries ``x-trace-id`` (the request), ``x-span-id`` (the call) and
``x-parent-span-id`` (the call that made it) (spec 074 3.6.1). Each request is a trace:
a root span for the request at the gateway, and one span per call, from the caller
sending it to the caller getting its outcome. The output follows OpenTelemetry's JSON
span shape (ids as hex strings, times as integer nanoseconds of simulated time) so
trace viewers can load it.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["spans"]

_ROOT = 1 << 63  # root spans get ids with the top bit set, call spans never do


def _trace_id(request: int) -> str:
    return f"{request:032x}"


def _span_id(n: int) -> str:
    return f"{n:016x}"


def _ns(t: float) -> int:
    return round(t * 1e9)


def spans(events: pd.DataFrame) -> list[dict]:
    """One dict per span (roots first per trace, then calls in the order they started)."""
    ev = events
    starts = ev[ev.event.isin(["request_start", "call_start"])]
    ends = ev[ev.event.isin(["request_end", "call_end"])]
    end_of_request = {int(r): (t, o) for r, t, o in zip(
        ends[ends.event == "request_end"]["request"], ends[ends.event == "request_end"]["t"],
        ends[ends.event == "request_end"]["outcome"])}
    call_ends = ends[ends.event == "call_end"]
    end_of_call = {int(c): (t, o, i) for c, t, o, i in zip(
        call_ends["call"], call_ends["t"], call_ends["outcome"], call_ends["instance"])}
    out: list[dict] = []
    for row in starts.itertuples(index=False):
        req = int(row.request)
        if row.event == "request_start":
            t_end, outcome = end_of_request.get(req, (None, None))
            out.append({
                "traceId": _trace_id(req), "spanId": _span_id(_ROOT | req), "parentSpanId": None,
                "name": f"{row.target} {row.operation}", "kind": "SPAN_KIND_SERVER",
                "startTimeUnixNano": _ns(row.t), "endTimeUnixNano": None if t_end is None else _ns(t_end),
                "attributes": {"endpoint": row.target, "entry": row.operation},
                "status": {"code": "STATUS_CODE_OK" if outcome == "ok" else "STATUS_CODE_ERROR",
                           "message": outcome},
            })
            continue
        call = int(row.call)
        parent = _ROOT | req if pd.isna(row.parent) else int(row.parent)
        t_end, outcome, instance = end_of_call.get(call, (None, None, None))
        out.append({
            "traceId": _trace_id(req), "spanId": _span_id(call), "parentSpanId": _span_id(parent),
            "name": f"{row.target}.{row.operation}" if not pd.isna(row.operation) else str(row.target),
            "kind": "SPAN_KIND_CLIENT",
            "startTimeUnixNano": _ns(row.t), "endTimeUnixNano": None if t_end is None else _ns(t_end),
            "attributes": {"caller": row.source, "service": row.target,
                           "instance": None if instance is None or pd.isna(instance) else instance},
            "status": {"code": "STATUS_CODE_OK" if outcome == "ok" else "STATUS_CODE_ERROR",
                       "message": outcome},
        })
    return out

"""What a run produced: summaries, per-window series and (optionally) the event log.

Tables are pandas DataFrames with one documented row per key, ready for a notebook.
Summaries count only requests and calls that *started* at or after the warm-up; window
series cover the whole run, by completion time, so the warm-up stays visible in plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from hailan_sim.sim.eventlog import COLUMNS, ID_COLUMNS, KeptLog
from hailan_sim.sim.metrics import OUTCOMES

__all__ = ["Result"]

_INT_COLUMNS = {*OUTCOMES, "total", "max_queue", "orphaned_calls", "served", "rejected_at_callee"}
_SUMMARY_COLUMNS = [*OUTCOMES, "total", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms",
                    "ok_mean_ms", "ok_p50_ms", "ok_p95_ms", "ok_p99_ms",
                    *(f"{o}_{s}_ms" for o in OUTCOMES[1:] for s in ("mean", "p99"))]


@dataclass(frozen=True, eq=False)
class Result:
    """The outcome of :func:`hailan_sim.sim.simulate`. Every field is a pure function of the scenario.

    Attributes:
        seed, duration_s, warmup_s: the run's settings.
        end_s: simulated time when the run stopped (after draining in-flight requests).
        event_log_sha256: SHA-256 of the canonical event log (:mod:`hailan_sim.sim.eventlog`).
        event_count: records in the event log.
        sim_events: events the SimPy kernel processed.
        requests: counts by outcome of requests that started after the warm-up.
        unfinished_requests: requests still open when the drain time ran out.
        messages_pending: messages not yet acknowledged at the end.
        endpoints: one row per endpoint: counts by outcome and latency (ms), over all
            outcomes and per outcome (``ok_mean_ms``, ``ok_p99_ms``, ``rejected_mean_ms``...;
            docs/metrics.md defines each column).
        services: one row per service and infrastructure component, as its callers saw it:
            counts by outcome and latency (ms), plus utilisation (busy workers / workers,
            time-averaged after the warm-up), mean and max queue length, mean wait for a
            worker (ms), calls served, rejected, and orphaned work (calls finished after
            their caller gave up, and the seconds the callee spent on them after that); the
            counts, like the summaries, cover calls that started after the warm-up.
        instances: the same per-instance figures (utilisation, queue, orphans).
        windows: one row per endpoint and window: window start (s), counts by outcome,
            success ratio, p50/p99 latency (ms).
        service_windows: the same per service and window (calls as callers saw them).
        mechanisms: what the resilience mechanisms did over the whole run: counts of
            ``retries``, ``short_circuits`` (calls an open breaker refused),
            ``bulkhead_rejections``, ``fallbacks``, ``discovery_errors``, ``token_fetches``,
            ``auth_401`` (calls a callee refused for their token), ``auth_refresh_retries``,
            ``deadline_drops``, ``shed``, ``deregistrations``, ``gateway_retries``,
            ``gateway_retry_overflows``, ``gateway_ejections`` (policies.gateway), and
            ``breaker_transitions`` by ``"from->to"``.
        calls_started: calls sent over the whole run, every attempt of every call and
            every delivery of a message (the ``call_start`` records of the event log).
        breaker_trips: the time of every closed -> open transition of any breaker (the
            ``breaker`` records from ``closed`` to ``open``), grouped by caller instance
            and then by breaker, each group in time order. With ``calls_started``, what
            sweeps measure without the log.
    """

    seed: int
    duration_s: float
    warmup_s: float
    end_s: float
    event_log_sha256: str
    event_count: int
    sim_events: int
    requests: dict[str, int]
    unfinished_requests: int
    messages_pending: int
    endpoints: pd.DataFrame
    services: pd.DataFrame
    instances: pd.DataFrame
    windows: pd.DataFrame
    service_windows: pd.DataFrame
    mechanisms: dict = field(default_factory=dict)
    streams: list[str] = field(default_factory=list, repr=False)
    calls_started: int = 0
    breaker_trips: list[float] = field(default_factory=list, repr=False)
    _events: Optional[KeptLog] = field(default=None, repr=False)

    @property
    def has_events(self) -> bool:
        return self._events is not None

    def events(self) -> pd.DataFrame:
        """The event log as a DataFrame (columns: :data:`sim.eventlog.COLUMNS`).

        Only available when the run kept it (``simulate(..., keep_events=True)``).
        """
        if self._events is None:
            raise ValueError(
                "this run did not keep its event log; run simulate(scenario, keep_events=True)"
            )
        if not len(self._events):
            df = pd.DataFrame.from_records([], columns=list(COLUMNS))
            for col in ID_COLUMNS:
                df[col] = df[col].astype("Int64")
        else:
            # Straight from the kept columns (the frame equals the one from_records built
            # from the tuples: tests/test_eventlog_columns.py).
            cols = self._events.columns()
            df = pd.DataFrame({
                name: (pd.arrays.IntegerArray(cols[name].copy(), cols[name] < 0)
                       if name in ID_COLUMNS else cols[name].copy())
                for name in COLUMNS
            })
        for col in ("event", "source", "target", "instance", "operation", "outcome"):
            df[col] = df[col].astype("string")
        return df

    def _kept(self) -> list[tuple]:
        if self._events is None:
            raise ValueError(
                "this run did not keep its event log; run simulate(scenario, keep_events=True), "
                "or stream it with simulate(scenario, sinks=[EventWriter(path)])"
            )
        return self._events.records()

    def spans(self) -> dict:
        """Every request's span tree as one OTLP/JSON ``ExportTraceServiceRequest``
        (``{"resourceSpans": [...]}``; see :mod:`hailan_sim.sim.tracing`)."""
        from hailan_sim.sim.tracing import otlp

        return otlp(self._kept())

    def write_events(self, path: Union[str, Path]) -> Path:
        """Write the event log to ``path``: ``.parquet`` or ``.csv`` (any case; another
        suffix is a ValueError). Written under a temporary name, renamed when complete."""
        from hailan_sim.sim.export import write_events

        return write_events(self._kept(), path)

    def write_spans(self, path: Union[str, Path]) -> Path:
        """Write :meth:`spans` to ``path`` (``.json``), as :class:`~hailan_sim.sim.export.SpanWriter` does."""
        from hailan_sim.sim.export import write_spans

        return write_spans(self._kept(), path)

    def to_dict(self) -> dict:
        """A JSON-ready summary (the CLI's ``--json`` adds ``wall_s``)."""

        def rows(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> dict:
            out = {}
            for name, row in df.iterrows():
                d = {}
                for col in (*_SUMMARY_COLUMNS, *extra):
                    v = row[col]
                    d[col] = None if pd.isna(v) else (int(v) if col in _INT_COLUMNS else float(v))
                out[str(name)] = d
            return out

        svc = self.services
        extra = ("utilisation", "mean_queue", "mean_wait_ms", "p_wait", "wait_p50_ms", "wait_p95_ms",
                 "wait_p99_ms", "max_queue", "orphaned_calls", "orphaned_s")
        return {
            "seed": self.seed,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "end_s": self.end_s,
            "event_log_sha256": self.event_log_sha256,
            "event_count": self.event_count,
            "sim_events": self.sim_events,
            "requests": {**self.requests, "unfinished": self.unfinished_requests},
            "messages_pending": self.messages_pending,
            "mechanisms": self.mechanisms,
            "endpoints": rows(self.endpoints),
            "services": rows(svc[svc["kind"] == "service"], extra),
            "infrastructure": rows(svc[svc["kind"] != "service"], extra),
        }

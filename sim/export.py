"""Streaming exports of a run: the event log (Parquet or CSV) and its spans (OTLP JSON).

A writer is a *sink* of the event log: :func:`hailan_sim.sim.simulate` hands it every batch
of records the moment the log is flushed (the runner flushes between its fixed slices of
simulated time), so what a writer holds does not grow with the run's length. Writers only
observe: the records, their order and the log's SHA-256 are the same with or without them.

Every writer writes to a temporary file in the destination's own folder and renames it to
the destination only when it is closed after a complete run (``os.replace``, atomic on one
file system): an interrupted or failed run leaves no file that looks like a valid log.

    with EventWriter("run.parquet") as events, SpanWriter("spans.json") as spans:
        result = simulate(scenario, sinks=[events, spans])

Formats are chosen by suffix, compared without regard to case (``.PARQUET`` is Parquet);
an unknown suffix is an error before anything runs, never silently CSV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import orjson
import pyarrow as pa

from hailan_sim.sim.eventlog import COLUMNS

__all__ = ["EVENT_FORMATS", "SPAN_FORMATS", "EventWriter", "OutputError", "SpanWriter",
           "check_output", "event_schema"]

EVENT_FORMATS = {".parquet": "parquet", ".csv": "csv"}
SPAN_FORMATS = {".json": "otlp-json"}

# Parquet row groups of about this many rows: large enough for efficient reads, small
# enough that the writer's buffer stays a few tens of MB.
_ROW_GROUP = 262_144


class OutputError(ValueError):
    """An output that cannot be written; ``str()`` is one line: ``PATH: reason``."""

    def __init__(self, path: Union[str, Path], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def check_output(path: Union[str, Path], formats: dict, what: str = "output") -> tuple[Path, str]:
    """Check, before a run, that ``path`` can be written in a known format.

    Returns ``(path, format)``; raises :class:`OutputError` naming the path and what is
    allowed: an unknown suffix, a missing folder, a folder that is not writable, or a path
    that is a folder.
    """
    p = Path(path)
    fmt = formats.get(p.suffix.lower())
    if fmt is None:
        allowed = " or ".join(formats)
        got = f"suffix {p.suffix!r}" if p.suffix else "no suffix"
        raise OutputError(p, f"{what}: unknown format ({got}); use {allowed} (any case)")
    parent = p.parent
    if not parent.is_dir():
        raise OutputError(p, f"{what}: the folder to write it in does not exist")
    if p.is_dir():
        raise OutputError(p, f"{what}: is a folder, expected a file name")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(p, f"{what}: the folder is not writable")
    return p, fmt


class _Atomic:
    """A file written under a temporary name beside its destination, renamed on commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.done = False

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        self.done = True
        return self.path

    def abort(self) -> None:
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


class _Sink:
    """Context manager: commit (rename into place) on a clean exit, abort on an exception."""

    _file: _Atomic

    def close(self) -> Path:  # pragma: no cover - overridden
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def path(self) -> Path:
        return self._file.path


# --------------------------------------------------------------------------- the event log


def event_schema() -> pa.Schema:
    """The event log's columns and types (documented in docs/events.md): ids are 64-bit
    integers (empty where they do not apply), times float seconds, the rest strings."""
    ids = {"request", "call", "parent"}
    return pa.schema([
        pa.field(c, pa.float64() if c == "t" else pa.int64() if c in ids else pa.string())
        for c in COLUMNS
    ])


class EventWriter(_Sink):
    """Writes event-log records to Parquet (pyarrow's ``ParquetWriter``) or CSV (pyarrow's
    ``CSVWriter``), batch by batch."""

    def __init__(self, path: Union[str, Path]) -> None:
        p, self.format = check_output(path, EVENT_FORMATS, "event log")
        self._file = _Atomic(p)
        self.schema = event_schema()
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(str(self._file.tmp), self.schema, compression="zstd")
            else:
                import pyarrow.csv as pcsv

                self._writer = pcsv.CSVWriter(str(self._file.tmp), self.schema)
        except OSError as exc:
            self._file.abort()
            raise OutputError(p, f"event log: cannot write: {exc.strerror or exc}") from None

    def write(self, records: list) -> None:
        """Append ``records`` (tuples with the fields of :data:`~hailan_sim.sim.eventlog.COLUMNS`)."""
        if not records:
            return
        cols = list(zip(*records))
        batch = pa.RecordBatch.from_arrays(
            [pa.array(col, type=f.type) for col, f in zip(cols, self.schema)], schema=self.schema)
        self.rows += len(records)
        if self.format == "csv":
            self._writer.write_batch(batch)
            return
        self._pending.append(batch)
        self._pending_rows += len(records)
        if self._pending_rows >= _ROW_GROUP:
            self._flush_row_group()

    def _flush_row_group(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending, schema=self.schema),
                                     row_group_size=max(self._pending_rows, 1))
            self._pending, self._pending_rows = [], 0

    def close(self) -> Path:
        if self._file.done:
            return self._file.path
        if self.format == "parquet":
            self._flush_row_group()
        self._writer.close()
        return self._file.commit()

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away anyway
            pass
        self._file.abort()


# --------------------------------------------------------------------------- spans (OTLP JSON)


class SpanWriter(_Sink):
    """Writes every request's span tree as one OTLP/JSON ``ExportTraceServiceRequest``,
    streamed: a span is written as soon as the record that ends it arrives (see
    :class:`hailan_sim.sim.tracing.SpanBuilder` for the mapping)."""

    def __init__(self, path: Union[str, Path]) -> None:
        from hailan_sim.sim.tracing import SpanBuilder

        p, self.format = check_output(path, SPAN_FORMATS, "spans")
        self._file = _Atomic(p)
        self.builder = SpanBuilder()
        self.spans = 0
        self._first = True
        try:
            self._fh = open(self._file.tmp, "wb")  # noqa: SIM115 - closed in close/abort
        except OSError as exc:
            raise OutputError(p, f"spans: cannot write: {exc.strerror or exc}") from None
        self._fh.write(b'{"resourceSpans":[')

    def _emit(self, groups: list[dict]) -> None:
        for g in groups:
            self.spans += len(g["scopeSpans"][0]["spans"])
            if not self._first:
                self._fh.write(b",\n")
            self._first = False
            self._fh.write(orjson.dumps(g))

    def write(self, records: list) -> None:
        self._emit(self.builder.feed(records))

    def close(self) -> Path:
        if self._file.done:
            return self._file.path
        self._emit(self.builder.finish())
        self._fh.write(b"]}\n")
        self._fh.close()
        return self._file.commit()

    def abort(self) -> None:
        self._fh.close()
        self._file.abort()


def write_events(records: list, path: Union[str, Path]) -> Path:
    """Write a kept event log in one go (what ``Result.write_events`` does)."""
    with EventWriter(path) as w:
        for i in range(0, len(records), 65536):
            w.write(records[i : i + 65536])
    return w.path


def write_spans(records: list, path: Union[str, Path]) -> Path:
    """Write a kept event log's spans in one go (what ``Result.write_spans`` does)."""
    with SpanWriter(path) as w:
        for i in range(0, len(records), 65536):
            w.write(records[i : i + 65536])
    return w.path


"""Streaming exports: the event log (Parquet, CSV) and spans (OTLP/JSON), written batch by
batch during the run, atomically, and loadable by the tools they are meant for."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

import pandas as pd
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from hailan_sim import default_scenario, simulate
from hailan_sim.sim import COLUMNS, EVENTS, EventWriter, SpanWriter
from hailan_sim.sim.eventlog import canonical
from hailan_sim.sim.export import OutputError, event_schema


def _rows(table) -> list[tuple]:
    """A file's rows as event-log records (None where empty)."""
    cols = [table.column(c).to_pylist() for c in COLUMNS]
    return list(zip(*cols))


@pytest.fixture(scope="module")
def kept(small):
    return simulate(small, keep_events=True)


@pytest.mark.parametrize("name", ["events.parquet", "events.csv", "EVENTS.PARQUET", "Events.Csv"])
def test_streamed_event_log_is_the_log_itself(small, kept, tmp_path, name):
    """The file holds exactly the run's records: re-serialised canonically, they hash to
    the run's own SHA-256 (so ids are integers, times exact floats, empty fields null)."""
    path = tmp_path / name
    with EventWriter(path) as w:
        result = simulate(small, sinks=[w])
    assert result.event_log_sha256 == kept.event_log_sha256  # writing changed nothing
    if name.lower().endswith(".parquet"):
        assert pq.ParquetFile(path).schema_arrow.equals(event_schema())
        table = pq.read_table(path)
    else:
        assert path.read_text().splitlines()[1].split(",")[2].isdigit()  # request id: an integer
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            column_types=event_schema(), strings_can_be_null=True, quoted_strings_can_be_null=False))
    rows = _rows(table)
    assert len(rows) == result.event_count
    assert hashlib.sha256(canonical(rows)).hexdigest() == result.event_log_sha256


def test_the_log_reaches_the_sinks_in_batches_during_the_run(small):
    """Streaming: the sink sees many bounded batches, the first long before the end."""

    class Probe:
        def __init__(self):
            self.batches, self.first_t, self.rows = [], None, 0

        def write(self, records):
            self.batches.append(len(records))
            self.rows += len(records)
            if self.first_t is None:
                self.first_t = records[-1][0]

    from hailan_sim.sim import runner

    probe = Probe()
    long = small.with_run(duration_s=120)
    result = simulate(long, sinks=[probe])
    assert probe.rows == result.event_count
    assert len(probe.batches) >= 4
    # a batch is drained at the first slice boundary after _FLUSH_AT records (slices are
    # at most 1 s, so at most one second's records on top)
    per_second = result.event_count / long.run.duration_s
    assert max(probe.batches) <= runner._FLUSH_AT + per_second * 1.0 + 1
    assert probe.first_t < long.run.duration_s / 2


def test_kept_log_writes_the_same_file(small, kept, tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    kept.write_events(a)
    with EventWriter(b) as w:
        simulate(small, sinks=[w])
    assert pq.read_table(a).equals(pq.read_table(b))
    df = pd.read_parquet(a)
    assert len(df) == kept.event_count and list(df.columns) == list(COLUMNS)


def test_every_logged_event_kind_is_documented(kept):
    import re
    from pathlib import Path

    import hailan_sim.sim as sim_pkg

    kinds = set(kept.events()["event"].unique())
    # every kind the engine can log: the literal names in its record calls
    source = "".join(p.read_text() for p in Path(sim_pkg.__file__).parent.glob("*.py"))
    logged = set(re.findall(r'_rec\(\(\s*[^,()]+,\s*"([a-z_0-9]+)"', source))
    logged |= set(re.findall(r'_refused\([^()]*?"([a-z_0-9]+)",\s*"(?:error|rejected)"', source))
    logged |= set(re.findall(r'_fault_log\("([a-z_0-9]+)"', source))
    assert {"call_start", "short_circuit", "fault_start", "breaker"} <= logged  # the scan works
    assert kinds | logged <= set(EVENTS), (kinds | logged) - set(EVENTS)
    doc = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    for kind in EVENTS:
        assert f"`{kind}`" in doc, kind
    for col in COLUMNS:
        assert f"`{col}`" in doc, col


@pytest.mark.parametrize("name,what", [("x.json", "unknown format"), ("x", "no suffix"),
                                       ("x.parquet.tmp", "unknown format"),
                                       ("missing/x.csv", "does not exist")])
def test_bad_event_paths_fail_before_anything_is_written(tmp_path, name, what):
    with pytest.raises(OutputError, match=what):
        EventWriter(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_unknown_spans_suffix_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"use \.json"):
        SpanWriter(tmp_path / "s.csv")


def test_an_interrupted_run_leaves_no_file(small, tmp_path):
    """Atomic: the destination appears only after a complete run; the temporary goes."""

    class Stop:
        n = 0

        def write(self, records):
            self.n += 1
            if self.n == 2:
                raise KeyboardInterrupt

    path = tmp_path / "events.csv"
    with pytest.raises(KeyboardInterrupt):
        with EventWriter(path) as w, SpanWriter(tmp_path / "s.json") as s:
            simulate(small.with_run(duration_s=120), sinks=[w, s, Stop()])
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_until_the_new_one_is_complete(small, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("previous\n")
    w = EventWriter(path)
    w.write([(0.0, "request_start", 1, None, None, "client:x", "x", None, "a.b", None)])
    assert path.read_text() == "previous\n"
    w.close()
    assert path.read_text().startswith('"t","event"')


# --------------------------------------------------------------------------- OTLP spans


def _hex_ids_to_base64(obj):
    """OTLP/JSON writes trace and span ids as hex; the generic protobuf JSON mapping (what
    json_format implements) wants bytes as base64. A collector converts; so do we."""
    if isinstance(obj, dict):
        return {k: (base64.b64encode(bytes.fromhex(v)).decode() if k in ("traceId", "spanId", "parentSpanId")
                    else _hex_ids_to_base64(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hex_ids_to_base64(v) for v in obj]
    return obj


def _base64_ids_to_hex(obj):
    if isinstance(obj, dict):
        return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId")
                    else _base64_ids_to_hex(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_base64_ids_to_hex(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def otlp_file(small, tmp_path_factory):
    path = tmp_path_factory.mktemp("spans") / "spans.json"
    with SpanWriter(path) as w:
        result = simulate(small.with_run(duration_s=12, warmup_s=0), sinks=[w])
    return path, result, w


def test_spans_round_trip_through_the_otlp_protobuf_messages(otlp_file):
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    path, _, w = otlp_file
    doc = json.loads(path.read_text())
    msg = json_format.ParseDict(_hex_ids_to_base64(doc), ExportTraceServiceRequest())
    spans = [s for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == w.spans > 100
    for s in spans:
        assert len(s.trace_id) == 16 and len(s.span_id) == 8 and s.trace_id != bytes(16)
        assert s.end_time_unix_nano >= s.start_time_unix_nano
    # Round trip: the message written back as OTLP/JSON is the file, field for field.
    back = _base64_ids_to_hex(json_format.MessageToDict(msg, use_integers_for_enums=True))
    assert back == doc


def test_every_resource_names_its_service(otlp_file, small):
    path, _, _ = otlp_file
    doc = json.loads(path.read_text())
    services = set()
    for rs in doc["resourceSpans"]:
        attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
        services.add(attrs["service.name"]["stringValue"])
        for span in rs["scopeSpans"][0]["spans"]:
            keys = [a["key"] for a in span["attributes"]]
            assert len(keys) == len(set(keys))
    # callers (CLIENT spans) and the gateway that receives requests (root SERVER spans)
    names = {s.name for s in small.services} | {c.name for c in small.infrastructure}
    assert {"client", "gw", "front", "back"} <= services <= names | {"client"}


def test_spans_form_one_tree_per_request_with_the_spec_header_ids(otlp_file, small):
    """traceId is x-trace-id (the request), spanId x-span-id (the call), parentSpanId
    x-parent-span-id, hex-encoded; each trace has one root and no dangling parent."""
    path, result, _ = otlp_file
    doc = json.loads(path.read_text())
    spans = [s for rs in doc["resourceSpans"] for s in rs["scopeSpans"][0]["spans"]]
    kept = simulate(small.with_run(duration_s=12, warmup_s=0), keep_events=True).events()
    calls = kept[kept.event == "call_start"]
    by_id = {s["spanId"]: s for s in spans}
    for row in calls.head(200).itertuples():
        s = by_id[f"{int(row.call):016x}"]
        assert s["traceId"] == f"{int(row.request):032x}"
        assert int(s["startTimeUnixNano"]) == round(row.t * 1e9)
    by_trace: dict = {}
    for s in spans:
        by_trace.setdefault(s["traceId"], []).append(s)
    assert len(by_trace) == (kept.event == "request_start").sum()
    for trace in by_trace.values():
        ids = {s["spanId"] for s in trace}
        roots = [s for s in trace if "parentSpanId" not in s]
        assert len(roots) == 1 and roots[0]["kind"] == 2
        for s in trace:
            if "parentSpanId" in s:
                assert s["parentSpanId"] in ids and s["kind"] == 3


def test_kept_and_streamed_spans_are_the_same_spans(small, tmp_path):
    sc = small.with_run(duration_s=12, warmup_s=0)
    kept = simulate(sc, keep_events=True).spans()
    with SpanWriter(tmp_path / "s.json") as w:
        simulate(sc, sinks=[w])
    streamed = json.loads((tmp_path / "s.json").read_text())

    def flat(doc):
        return sorted((s["spanId"], json.dumps(s, sort_keys=True)) for rs in doc["resourceSpans"]
                      for s in rs["scopeSpans"][0]["spans"])

    assert flat(kept) == flat(streamed)


def test_default_scenario_exports_load(tmp_path):
    """The default scenario (gateway, queues, registry events) streams into both files."""
    sc = default_scenario().with_run(duration_s=5, warmup_s=1)
    with EventWriter(tmp_path / "e.parquet") as e, SpanWriter(tmp_path / "s.json") as s:
        result = simulate(sc, sinks=[e, s])
    assert pq.read_metadata(tmp_path / "e.parquet").num_rows == result.event_count
    assert json.loads((tmp_path / "s.json").read_text())["resourceSpans"]


_PEAK = """
import resource, sys
from hailan_sim import default_scenario, simulate
from hailan_sim.sim import EventWriter, SpanWriter
duration, out = float(sys.argv[1]), sys.argv[2]
with EventWriter(out + "/e.parquet") as e, SpanWriter(out + "/s.json") as s:
    simulate(default_scenario().with_run(duration_s=duration), sinks=[e, s])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_export_memory_is_flat_in_run_length(tmp_path):
    """Ten times the simulated time, the same peak: a fresh process per run (about 2 min)."""
    peaks = {}
    for duration in (60, 600):
        out = tmp_path / str(duration)
        out.mkdir()
        r = subprocess.run([sys.executable, "-c", _PEAK, str(duration), str(out)],
                           capture_output=True, text=True, check=True, timeout=1800)
        peaks[duration] = int(r.stdout.split()[-1]) / 1024
    # 300 s and 3600 s measured 269 and 285 MiB (README); allow that drift, not growth
    assert peaks[600] - peaks[60] < 48, peaks
    assert peaks[600] < 400, peaks

"""The command line: what `run`, `topology` and `schema` print, and where."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hailan_sim.cli import main

SMALL = str(Path(__file__).parent / "scenarios" / "small.yaml")


def _json(capsys, argv) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr()
    return json.loads(out.out)


def test_run_json_has_the_documented_fields(capsys):
    d = _json(capsys, ["run", SMALL, "--json", "--no-progress"])
    for key in ("seed", "duration_s", "event_log_sha256", "requests", "endpoints", "services", "sim_events", "wall_s"):
        assert key in d
    assert set(d["requests"]) >= {"ok", "error", "timeout", "rejected"}
    for group in ("endpoints", "services"):
        for row in d[group].values():
            assert set(row) >= {"ok", "error", "timeout", "rejected", "p50_ms", "p95_ms", "p99_ms"}
    assert set(d["services"]) == {"front", "back", "worker"}
    assert sum(d["requests"][k] for k in ("ok", "error", "timeout", "rejected")) == d["endpoints"]["home"]["total"]
    assert d["sim_events"] > 0 and len(d["event_log_sha256"]) == 64


def test_run_overrides_seed_and_duration(capsys):
    a = _json(capsys, ["run", SMALL, "--json", "--no-progress", "--seed", "3", "--duration", "12"])
    assert a["seed"] == 3 and a["duration_s"] == 12.0
    b = _json(capsys, ["run", SMALL, "--json", "--no-progress", "--seed", "3", "--duration", "12"])
    assert a["event_log_sha256"] == b["event_log_sha256"]


def test_run_human_output_is_a_table(capsys):
    assert main(["run", SMALL, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "endpoints" in out and "home" in out and "p99_ms" in out and "event log sha256" in out


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_run_writes_the_event_log(tmp_path, capsys, suffix):
    path = tmp_path / f"events{suffix}"
    d = _json(capsys, ["run", SMALL, "--json", "--no-progress", "--events", str(path)])
    df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    assert len(df) == d["event_count"]
    assert list(df.columns)[:3] == ["t", "event", "request"]


def test_progress_goes_to_stderr_never_stdout(capsys):
    from hailan_sim.models import load_scenario
    from hailan_sim.sim import simulate

    simulate(load_scenario(SMALL), progress=True)
    out = capsys.readouterr()
    assert out.out == ""
    assert "sim s" in out.err


def test_topology_json_on_the_default(capsys):
    d = _json(capsys, ["topology", "--json"])
    ports = {s["name"]: s["port"] for s in d["services"]}
    assert len(ports) == 12
    assert ports["user-service"] == 3001 and ports["notification-service"] == 3012
    assert ["order-service", "payment-service"] in d["cycles"]
    assert any("order-service" in w and "payment-service" in w for w in d["warnings"])
    # everything that calls user-service, directly or not, is in its blast radius
    assert {"order-service", "ai-service", "payment-service"} <= set(d["dependents"]["user-service"])


def test_topology_human_output_names_the_cycle(capsys):
    assert main(["topology"]) == 0
    out = capsys.readouterr()
    assert "order-service -> payment-service -> order-service" in out.out
    assert "warning: dependency cycle" in out.err


def test_schema_is_json_schema(capsys):
    d = _json(capsys, ["schema"])
    assert d["type"] == "object" and {"services", "workload", "run"} <= set(d["properties"])


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "run" in capsys.readouterr().out


def test_spans_are_otlp_json_with_one_tree_per_request(tmp_path, capsys):
    path = tmp_path / "spans.json"
    d = _json(capsys, ["run", SMALL, "--json", "--no-progress", "--duration", "6", "--warmup", "0",
                       "--spans", str(path)])
    doc = json.loads(path.read_text())
    spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    by_trace: dict = {}
    for s in spans:
        by_trace.setdefault(s["traceId"], []).append(s)
    assert len(by_trace) == d["endpoints"]["home"]["total"]
    for trace in by_trace.values():
        ids = {s["spanId"] for s in trace}
        roots = [s for s in trace if "parentSpanId" not in s]
        assert len(roots) == 1
        # every other span's parent is in the same trace, and starts no later than its child
        start = {s["spanId"]: int(s["startTimeUnixNano"]) for s in trace}
        for s in trace:
            if "parentSpanId" in s:
                assert s["parentSpanId"] in ids
                assert start[s["parentSpanId"]] <= int(s["startTimeUnixNano"])

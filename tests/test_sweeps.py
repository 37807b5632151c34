"""Sweep files, executors, results that survive a kill, and the analysis (hailan_sim.sweeps)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hailan_sim.cli import main
from hailan_sim.models import ScenarioError
from hailan_sim.sweeps import (
    by_point, load_results, load_sweep, pareto_front, parse_sweep, recommend, run_sweep, summary,
)
from hailan_sim.sweeps.metrics import recovery_s
from hailan_sim.sweeps.spec import run_seed

HERE = Path(__file__).parent
TINY = HERE / "sweeps" / "tiny.yaml"
SMALL = HERE / "scenarios" / "small.yaml"


def _sweep(body: str, base_dir: Path = HERE / "sweeps"):
    return parse_sweep(body, "s.yaml", base_dir)


BASE = """
name: t
base: {scenario: ../scenarios/small.yaml, profile: seed, run: {duration_s: 6, warmup_s: 1},
       policies: {tokens: {enabled: false}}}
"""


# --------------------------------------------------------------------------- the plan


def test_grid_points_runs_and_seeds():
    plan = load_sweep(TINY)
    assert plan.points == [
        {"policies.breaker.failure_threshold": a, "policies.breaker.timeout_s": b}
        for a in (2, 6) for b in (0.5, 3)
    ]
    assert list(plan.schedules) == ["none", "back-crash"]
    assert len(plan.runs) == 4 * 2 * 2
    for run in plan.runs:
        # SHA-256 of "sweep seed/point key/replication", first 8 bytes, below 2**63
        digest = hashlib.sha256(f"5/{run.point_key}/{run.replication}".encode()).digest()
        assert run.seed == int.from_bytes(digest[:8], "big") >> 1 < 2**63
        sc = plan.scenario(run)
        assert sc.run.seed == run.seed
        br = sc.policies.breaker
        assert (br.failure_threshold, br.timeout_s) == tuple(plan.points[run.point].values())
        assert br.success_threshold == 2  # the rest of the seed profile's breaker is kept
        assert len(sc.faults) == (1 if run.schedule == "back-crash" else 0)
    # a point's replications differ; the same replication has the same seed under every schedule
    seeds = {(r.point, r.schedule, r.replication): r.seed for r in plan.runs}
    assert seeds[(0, "none", 0)] != seeds[(0, "none", 1)] != seeds[(1, "none", 1)]
    assert seeds[(0, "none", 1)] == seeds[(0, "back-crash", 1)]
    # the plan is a pure function of the file
    assert load_sweep(TINY).sha256 == plan.sha256


def test_common_seeds_and_per_edge_axes():
    plan = _sweep(BASE + """
axes:
  "policies.edges[caller=front,callee=back].timeout_s": [0.2, 0.4]
  "services[name=back].instances": [2, 4]
seeds: common
replications: 2
""")
    assert len(plan.runs) == 4 * 2
    assert len({r.seed for r in plan.runs}) == 2  # common random numbers: same seeds at every point
    for run in plan.runs:
        sc = plan.scenario(run)
        values = plan.points[run.point]
        edge = [e for e in sc.policies.edges if e.caller == "front" and e.callee == "back"]
        assert edge[-1].timeout_s == values["policies.edges[caller=front,callee=back].timeout_s"]
        assert sc.service("back").instances == values["services[name=back].instances"]


@pytest.mark.parametrize("kind", ["random", "lhs", "sobol"])
def test_sampled_designs_are_reproducible_and_in_range(kind):
    text = BASE + f"""
axes:
  policies.breaker.failure_threshold: {{low: 1, high: 20, integer: true}}
  policies.breaker.timeout_s: {{low: 0.1, high: 100, log: true}}
  policies.breaker.success_threshold: [1, 2, 3]
design: {{kind: {kind}, points: 16}}
replications: 1
"""
    a, b = _sweep(text), _sweep(text)
    assert a.points == b.points and len(a.points) == 16
    ft = np.array([p["policies.breaker.failure_threshold"] for p in a.points])
    to = np.array([p["policies.breaker.timeout_s"] for p in a.points])
    assert ft.dtype.kind == "i" and ft.min() >= 1 and ft.max() <= 20
    assert to.min() >= 0.1 and to.max() <= 100
    assert {p["policies.breaker.success_threshold"] for p in a.points} <= {1, 2, 3}
    if kind in ("lhs", "sobol"):
        # Latin hypercube (and a balanced Sobol set of 2^4): one sample per sixteenth of each axis
        strata = np.floor(np.log(to / 0.1) / np.log(1000) * 16).astype(int)
        assert sorted(np.minimum(strata, 15)) == list(range(16))


def test_log_range_grid():
    plan = _sweep(BASE + """
axes:
  policies.breaker.timeout_s: {low: 0.1, high: 10, steps: 3, log: true}
replications: 1
""")
    assert [p["policies.breaker.timeout_s"] for p in plan.points] == pytest.approx([0.1, 1.0, 10.0])


@pytest.mark.parametrize("body, expect", [
    ("axes: {policies.breaker.failure_threshold: [1]}\nreplicatons: 2\n",
     r"s.yaml:\d+: unknown field 'replicatons' \(did you mean 'replications'\?"),
    ("axes: {policies.breaker.failure_threshold: [0]}\n",
     r"s.yaml:\d+: axes\['policies\.breaker\.failure_threshold'\]: the point policies.breaker.failure_threshold=0 "
     r"makes an invalid scenario: policies\.breaker\.failure_threshold: got 0, expected"),
    ("axes: {policies.breaker.timeout_s: {low: 5, high: 1, steps: 2}}\n",
     r"s.yaml:\d+: axes\['policies\.breaker\.timeout_s'\]: low \(5\) must be less than high \(1\)"),
    ("axes: {policies.breaker.timeout_s: {low: 1, high: 5}}\n",
     r"axes\['policies\.breaker\.timeout_s'\]: a grid design needs 'steps'"),
    ("axes: {policies.breaker.timeout_s: [1]}\ndesign: {kind: lhs}\n",
     r"s.yaml:\d+: design: a lhs design needs 'points'"),
    ("axes: {policies.breaker.timeout_s: [1]}\nfaults: [no-such-thing]\n",
     r"s.yaml:\d+: faults\[0\]: no shipped fault schedule 'no-such-thing' \(shipped: none, "),
    ("axes: {policies.breaker.timeout_s: [1]}\nfaults: [{name: x, faults: [{kind: crash_service, service: nope, start_s: 1}]}]\n",
     r"s.yaml:\d+: faults\[0\]: schedule 'x' does not fit the base scenario: faults\[0\]"),
    ("axes: {policies.breaker.timeout_s: [1]}\nreplications: 0\n",
     r"s.yaml:\d+: replications: got 0, expected a whole number from 1 to 10000"),
    ("axes: {\"policies.edges[caller].timeout_s\": [1]}\n",
     r"s.yaml:\d+: axes\[.policies\.edges\[caller\]\.timeout_s.\]: \[caller\] selects a list item"),
    ("axes: {policies.breaker.failure_threshold: 3}\n",
     r"s.yaml:\d+: axes\['policies\.breaker\.failure_threshold'\]: got 3, expected a list of values \(\[3, 5, 10\]\) or a range"),
    ("axes: {\"services[name=nope].instances\": [1]}\n",
     r"axes\[.services\[name=nope\]\.instances.\]: no item with name=nope"),
])
def test_bad_sweep_files_get_one_line_errors(body, expect):
    with pytest.raises(ScenarioError, match=expect) as info:
        _sweep(BASE + body)
    assert "\n" not in str(info.value)


def test_bad_sweep_file_on_the_command_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\naxes:\n  policies.breaker.failure_threshold: [3]\ndesign: {kind: grid, points: 3}\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hailan-sim: error: {bad}:4: design: a grid design has every combination")
    assert len(err.splitlines()) == 1
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_sweep_file_is_read_like_a_scenario_file(tmp_path, capsys):
    """Regular files only, bounded, UTF-8: a FIFO is refused at once rather than hanging."""
    import os

    fifo = tmp_path / "sweep.yaml"
    os.mkfifo(fifo)
    assert main(["sweep", str(fifo), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hailan-sim: error: {fifo}:") and "regular file" in err and len(err.splitlines()) == 1
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert main(["sweep", str(latin)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_schema_has_the_sweep(capsys):
    assert main(["schema", "--sweep"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"axes", "design", "faults", "replications", "metrics", "base"} <= set(schema["properties"])


# --------------------------------------------------------------------------- running


FAST = BASE + """
axes:
  policies.breaker.failure_threshold: [2, 6]
faults:
  - none
  - {name: back-crash, faults: [{kind: crash_service, service: back, start_s: 2, duration_s: 2}]}
replications: 2
seed: 3
recovery: {window_s: 1.0, success_ratio: 0.95, false_trip_grace_s: 1.0}
"""


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return run_sweep(_sweep(FAST), out, workers=1), out


def test_serial_table_has_every_run(serial):
    table, out = serial
    plan = _sweep(FAST)
    assert list(table["run"]) == list(range(len(plan.runs))) == list(range(8))
    assert list(table["seed"]) == [r.seed for r in plan.runs]
    assert set(table["policies.breaker.failure_threshold"]) == {2, 6}
    for col in ("availability", "availability.home", "p99_ms.home", "recovery_s", "recovered",
                "retry_amplification", "false_trips", "breaker_trips", "instances", "event_log_sha256"):
        assert col in table.columns, col
    # the no-fault runs have nothing to recover from, and every trip there is a false alarm
    none = table[table["schedule"] == "none"]
    crash = table[table["schedule"] == "back-crash"]
    assert (none["recovery_s"] == 0).all()
    assert (none["false_trips"] == none["breaker_trips"]).all() and (none["breaker_trips"] > 0).any()
    # trips during the crash (or just after it) are not false alarms
    assert (crash["false_trips"] < crash["breaker_trips"]).any()
    crash = table[table["schedule"] == "back-crash"]
    # the same point and seed lose requests when back crashes
    pairs = none.merge(crash, on=["point", "replication"], suffixes=("", ".crash"))
    assert (pairs["availability.crash"] < pairs["availability"]).all() and len(pairs) == 4
    assert (crash["breaker_trips"] > 0).any()
    # each run's hash is the hash of simulating its scenario directly
    from hailan_sim import simulate

    run = plan.runs[5]
    assert table.loc[5, "event_log_sha256"] == simulate(plan.scenario(run)).event_log_sha256
    # the folder reloads to the same table
    pd.testing.assert_frame_equal(load_results(out), table)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec_sha256"] == plan.sha256 and len(manifest["points"]) == 2
    assert manifest["hailan_sim_version"]


def test_two_processes_and_dask_give_the_same_table(serial, tmp_path):
    table, _ = serial
    two = run_sweep(_sweep(FAST), tmp_path / "two", workers=2, batch_size=3)
    pd.testing.assert_frame_equal(two, table)
    assert len(list((tmp_path / "two").glob("batch-*.parquet"))) == 3  # 3 + 3 + the last 2
    pytest.importorskip("distributed")
    dask = run_sweep(_sweep(FAST), tmp_path / "dask", workers=2, executor="dask")
    pd.testing.assert_frame_equal(dask, table)


def test_an_existing_folder_needs_resume(serial, tmp_path):
    _, out = serial
    with pytest.raises(ScenarioError, match="already holds a sweep.*--resume"):
        run_sweep(_sweep(FAST), out, workers=1)
    other = _sweep(FAST.replace("seed: 3", "seed: 4"))
    with pytest.raises(ScenarioError, match="written by a different sweep"):
        run_sweep(other, out, workers=1, resume=True)


def test_a_killed_sweep_resumes_with_nothing_lost(serial, tmp_path):
    """SIGKILL the CLI mid-sweep; --resume runs only what is missing; same table."""
    table, _ = serial
    spec = tmp_path / "fast.yaml"
    spec.write_text(FAST.replace("../scenarios/small.yaml", str(SMALL)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hailan_sim", "sweep", str(spec), "--workers", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers, "the sweep ran no worker processes"
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)], "workers outlived the killed sweep"
    kept = load_results(out)
    assert 3 <= len(kept) < len(table), "the kill came too late to test anything"
    pd.testing.assert_frame_equal(kept, table[table["run"].isin(kept["run"])].reset_index(drop=True))
    done = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["runs"] == len(table)
    assert report["ran_now"] == len(table) - len(kept)  # only what was missing
    pd.testing.assert_frame_equal(load_results(out), table)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # a zombie has exited


def test_a_torn_journal_line_is_redone(serial, tmp_path):
    table, _ = serial
    out = tmp_path / "out"
    plan = _sweep(FAST)
    run_sweep(plan, out, workers=1)
    # pretend the last batch never got written: its rows in the journal, the last one torn
    batches = sorted(out.glob("batch-*.parquet"))
    rows = pd.read_parquet(batches[-1]).to_dict(orient="records")
    batches[-1].unlink()
    lines = [json.dumps(r) for r in rows]
    (out / "journal.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    assert len(load_results(out)) == len(table) - 1
    again = run_sweep(plan, out, workers=1, resume=True)
    assert again.attrs["ran"] == 1
    pd.testing.assert_frame_equal(again, table)


def test_cli_sweep_prints_the_recommendation(serial, tmp_path, capsys):
    table, out = serial
    spec = tmp_path / "fast.yaml"  # the same sweep from another folder: it still resumes
    spec.write_text(FAST.replace("../scenarios/small.yaml", str(SMALL)))
    assert main(["sweep", str(spec), "--out", str(out), "--resume", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["runs"] == 8 and len(d["points"]) == 2
    assert d["recommendation"].startswith("failure_threshold ")
    assert d["recommendation"] == recommend(table)["line"]
    assert set(d["recommended"]) == {"policies.breaker.failure_threshold"}
    assert d["pareto_front"]
    assert main(["sweep", str(spec), "--out", str(out), "--resume"]) == 0
    text = capsys.readouterr().out
    assert "recommended: failure_threshold" in text and "8 in" in text and "availability" in text


# --------------------------------------------------------------------------- metrics and analysis


class _R:
    def __init__(self, windows):
        self.windows = windows


def test_recovery_is_the_time_until_every_later_window_is_healthy(small):
    sc = small.model_copy()
    from hailan_sim.models.scenario import Scenario

    data = small.model_dump(mode="python", exclude_unset=True)
    data["run"] = {"duration_s": 40, "warmup_s": 1}
    data["faults"] = [{"kind": "crash_service", "service": "back", "start_s": 5, "duration_s": 5}]
    sc = Scenario.model_validate(data)
    # windows of 1 s; bad (50% ok) until t=17, a healthy one at 12 (a lull), then healthy
    starts = np.arange(0, 40.0)
    ok = np.where((starts >= 10) & (starts < 17) & (starts != 12), 5, 10)
    w = pd.DataFrame({"window_start_s": starts, "ok": ok, "total": 10})
    # fault ends at 10; 5 s windows from there: [10,15) bad, [15,20) bad, [20,25) healthy
    assert recovery_s(_R(w), sc, success_ratio=0.99, window_s=5) == (10.0, True)
    assert recovery_s(_R(w), sc, success_ratio=0.99, window_s=1) == (7.0, True)
    assert recovery_s(_R(w), sc, success_ratio=0.4, window_s=1) == (0.0, True)
    w.loc[w.window_start_s == 39, "ok"] = 0  # never healthy to the end: censored
    assert recovery_s(_R(w), sc, success_ratio=0.99, window_s=1) == (30.0, False)


def _table():
    """Three points x two schedules x 4 replications with known means."""
    rows = []
    means = {0: (0.990, 20.0), 1: (0.999, 30.0), 2: (0.980, 40.0)}  # point 2 is dominated by 0
    rng = np.random.default_rng(1)
    for p, (av, rec) in means.items():
        for s, worse in (("a", 0.0), ("b", 0.005)):
            for r in range(4):
                rows.append({"run": len(rows), "point": p, "schedule": s, "replication": r, "seed": r,
                             "x": p, "availability": av - worse + rng.normal(0, 1e-4),
                             "recovery_s": rec + (5 if s == "b" else 0) + rng.normal(0, 0.1)})
    t = pd.DataFrame(rows)
    t.attrs["axes"] = ["x"]
    t.attrs["objectives"] = [{"metric": "availability", "goal": "max"}, {"metric": "recovery_s", "goal": "min"}]
    return t


def test_pareto_front_and_worst_schedule():
    pts = by_point(_table())
    assert list(pts["availability.worst_under"]) == ["b"] * 3
    assert pts.loc[1, "availability"] == pytest.approx(0.994, abs=1e-3)
    assert pts.loc[0, "recovery_s"] == pytest.approx(25, abs=0.5)
    front = pareto_front(pts, [("availability", "max"), ("recovery_s", "min")])
    assert list(front["point"]) == [0, 1]


def test_recommendation_follows_the_objectives_in_order():
    t = _table()
    rec = recommend(t)
    assert rec["point"] == 1  # clearly the most available
    assert rec["line"].startswith("x 1: availability 99.40% [")
    assert "recovery_s 35 s" in rec["line"] and "worst of a, b; 4 seeds" in rec["line"]
    rec2 = recommend(t, [{"metric": "recovery_s", "goal": "min"}])
    assert rec2["point"] == 0
    s = summary(t)
    assert len(s) == 6 and {"availability.low", "availability.high", "availability.n"} <= set(s.columns)


def test_among_settings_not_significantly_different_the_better_means_win():
    rows = []
    for p, av in ((0, 0.990), (1, 0.991)):
        for r, noise in enumerate((-0.01, 0.0, 0.01)):  # wide, overlapping intervals
            rows.append({"run": len(rows), "point": p, "schedule": "a", "replication": r, "seed": r, "x": p,
                         "availability": av + noise, "recovery_s": 10.0})
    t = pd.DataFrame(rows)
    t.attrs["axes"] = ["x"]
    t.attrs["objectives"] = [{"metric": "availability", "goal": "max"}, {"metric": "recovery_s", "goal": "min"}]
    rec = recommend(t)
    assert len(rec["candidates"]) == 2 and rec["point"] == 1


def test_invariant_verdicts_are_the_checkers():
    """metrics: [invariants] gives each registered invariant's verdict, as evaluate() gives
    it for the run against its fault-free baseline (an invariant registered here, which
    fails when the run lost requests the baseline served, shows a 0 comes through)."""
    from hailan_sim.properties import invariants as inv

    @inv.register("test_lost_nothing")
    def lost_nothing(record):
        lost = record.result.requests["ok"] < record.baseline.requests["ok"]
        return inv.Verdict("", not lost, "fewer ok than the baseline" if lost else "as many ok")

    try:
        plan = _sweep(BASE + """
axes: {policies.breaker.failure_threshold: [2]}
faults: [{name: back-crash, faults: [{kind: crash_service, service: back, start_s: 2, duration_s: 2}]}]
replications: 1
metrics: [availability, invariants]
""")
        table = run_sweep(plan, workers=1)
        verdicts = inv.evaluate(inv.Record.from_scenario(plan.scenario(plan.runs[0]), rerun=False))
    finally:
        inv.unregister("test_lost_nothing")
    expected = {f"holds.{v.name}": float(v.holds) for v in verdicts if v.name != "determinism"}
    assert expected["holds.test_lost_nothing"] == 0.0 and expected["holds.conservation"] == 1.0
    assert {k: table.loc[0, k] for k in expected} == expected
    assert not [c for c in table.columns if c.startswith("holds.") and c not in expected]


def test_retry_amplification_counts_the_retries():
    plan = _sweep(BASE.replace("policies: {tokens: {enabled: false}}",
                               "policies: {tokens: {enabled: false}, retry: {max_attempts: 3, idempotent_only: false}}") + """
axes: {policies.breaker.failure_threshold: [50]}
faults: [{name: back-errors, faults: [{kind: error_rate, target: back, fraction: 0.5, start_s: 2, duration_s: 3}]}]
replications: 1
metrics: [retry_amplification]
""")
    table = run_sweep(plan, workers=1)
    from hailan_sim import simulate

    r = simulate(plan.scenario(plan.runs[0]), keep_events=True)
    sent = int((r.events()["event"] == "call_start").sum())
    retries = r.mechanisms["retries"]
    assert retries > 0
    assert table.loc[0, "retry_amplification"] == pytest.approx(sent / (sent - retries))
    assert table.loc[0, "retry_amplification"] > 1.0


def test_calls_started_and_breaker_trips_are_the_logs():
    """Sweeps read retry amplification and breaker trips from Result.calls_started and
    Result.breaker_trips, without the event log: they must be what the log says (call_start
    records; the times of breaker records from closed to open), messages and trips included."""
    from pathlib import Path

    from hailan_sim import load_scenario, simulate

    root = Path(__file__).resolve().parent.parent
    sc = load_scenario(root / "findings" / "counterexamples" / "bounded_recovery.yaml")
    r = simulate(sc.with_run(duration_s=60), keep_events=True)
    ev = r._kept()
    trips = sorted(e[0] for e in ev if e[1] == "breaker" and e[8] == "closed" and e[9] == "open")
    assert trips and any(e[1] == "message_publish" for e in ev)
    assert r.calls_started == sum(1 for e in ev if e[1] == "call_start")
    assert sorted(r.breaker_trips) == trips
    assert simulate(sc.with_run(duration_s=60)).breaker_trips == r.breaker_trips  # no log needed

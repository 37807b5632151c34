"""`hailan-sim check` and `replay` as a user runs them: exit codes, JSON, files, plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from hailan_sim import __version__
from hailan_sim.cli import main
from hailan_sim.properties.checker import CPU_PARTS

SMALL = Path(__file__).parent / "scenarios" / "small.yaml"


def _broken(tmp_path: Path) -> Path:
    """small.yaml where `back` crashes at 20 s and the fault ends at 25 s, but its instances
    are not restarted: requests can never recover."""
    data = yaml.safe_load(SMALL.read_text())
    data["run"] = {"duration_s": 90, "warmup_s": 5, "seed": 3}
    data["faults"] = [{"kind": "crash_service", "service": "back", "start_s": 20, "duration_s": 5,
                       "restart": False}]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_json_reports_every_invariant_and_exits_accordingly(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as on a terminal: a progress bar
    from hailan_sim.properties import checker

    real_find = checker.find

    def find_that_warns(*args, **kwargs):
        # As Hypothesis does after 5 minutes of shrinking: a warning printed on stdout.
        print("WARNING: Hypothesis has spent more than five minutes working to shrink")
        return real_find(*args, **kwargs)

    monkeypatch.setattr(checker, "find", find_that_warns)
    code = main(["check", str(SMALL), "--json", "--max-examples", "2", "--max-faults", "1",
                 "--kinds", "crash_instance", "--invariant", "conservation",
                 "--invariant", "bounded_recovery", "--out", str(tmp_path / "cx"),
                 "--objective", "rto_s=12"])
    out = capsys.readouterr()
    d = json.loads(out.out)
    assert set(d["invariants"]) == {"conservation", "bounded_recovery"}
    assert d["objectives"]["rto_s"] == 12  # the report says what it judged by
    assert code == (0 if d["ok"] else 1)
    for name, r in d["invariants"].items():
        assert r["status"] in ("held", "violated") and r["examples"] >= 1
        if r["status"] == "violated":
            assert Path(r["counterexample"]).exists() and r["faults"]
    assert d["fault_kinds_fired"] == {"crash_instance": d["fault_kinds_fired"]["crash_instance"]}
    # The cover phase tried one crash_instance; the report says what it broke and how
    # every mechanism fared (witnessed, never witnessed, or impossible here).
    assert {c["kind"] for c in d["cover"]} == {"crash_instance"}
    assert set(d["cover"][0]["violated"]) <= set(d["invariants"])
    assert "short_circuit" in d["not_applicable"]  # small.yaml has no breaker
    assert not set(d["witnessed"]) & set(d["not_witnessed"])
    for r in d["invariants"].values():
        assert r["found_by"] in ((None,) if r["status"] == "held" else ("cover", "search"))
    assert d["simulations"] >= 2 and "sim" in out.err  # progress went to stderr
    # examples with no fault, judged on their baseline's run: among the examples, not the baselines
    assert 0 <= d["on_baseline"] <= d["simulations"] - d["determinism"]["baselines"]
    assert "five minutes" in out.err  # and so did Hypothesis's own output: stdout is the JSON
    # the version and the settings it ran with; the same report is saved beside the counterexamples
    assert d["version"] == __version__ and d["interrupted"] is False
    assert d["settings"]["max_examples"] == 2 and d["settings"]["kinds"] == ["crash_instance"]
    assert d["settings"]["out"] == str(tmp_path / "cx")
    assert json.loads((tmp_path / "cx" / "report.json").read_text()) == d
    # Determinism re-runs (issue 12): every baseline and counterexample, a sample of the rest.
    det = d["determinism"]
    assert d["settings"]["rerun_every"] == 10 and det["every"] == 10 and det["mismatches"] == []
    assert det["baselines"] >= 1
    # once per counterexample run (schedule and seed), however many invariants it violates
    runs = {(json.dumps(r["faults"], sort_keys=True), r["seed"]) for r in d["invariants"].values()
            if r["status"] == "violated"}
    assert det["counterexamples"] == len(runs)
    # Where its CPU went (issue 12): every part, the rest, and their total.
    cpu = d["cpu_s"]
    assert list(cpu) == [*CPU_PARTS, "rest", "total"] and cpu["examples: simulation"] > 0
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), abs=0.01)


def test_replay_reproduces_the_verdict_and_hash_and_plots(tmp_path, capsys):
    path = _broken(tmp_path)
    png = tmp_path / "timeline.png"
    assert main(["replay", str(path), "--json", "--plot", str(png)]) == 1
    first = json.loads(capsys.readouterr().out)
    assert first["invariants"]["bounded_recovery"]["holds"] is False
    assert png.exists() and png.stat().st_size > 10_000
    assert main(["replay", str(path), "--json"]) == 1
    second = json.loads(capsys.readouterr().out)
    assert second["event_log_sha256"] == first["event_log_sha256"]
    assert main(["replay", str(path)]) == 1
    text = capsys.readouterr().out
    assert "fault_start" in text and "instance_down" in text and "VIOLATED  bounded_recovery" in text


def test_replay_passes_once_the_fault_is_gone(tmp_path, capsys):
    path = _broken(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["faults"][0]["restart"] = True
    path.write_text(yaml.safe_dump(data))
    code = main(["replay", str(path), "--json", "--invariant", "conservation"])
    assert code == 0 and json.loads(capsys.readouterr().out)["ok"] is True


def test_exhaustive_tabulates_single_faults(tmp_path, capsys):
    code = main(["check", str(SMALL), "--exhaustive", "--kinds", "crash_service", "--json",
                 "--invariant", "conservation"])
    d = json.loads(capsys.readouterr().out)
    assert d["faults"] == 3  # one per service of small.yaml
    assert [row["kind"] for row in d["table"]] == ["crash_service"] * 3
    assert code == (1 if d["violating"] else 0)


def test_bad_check_options_exit_2(capsys):
    assert main(["check", str(SMALL), "--invariant", "nonsense"]) == 2
    assert "unknown invariant 'nonsense'" in capsys.readouterr().err
    assert main(["check", str(SMALL), "--kinds", "meteor"]) == 2
    assert "unknown fault kind 'meteor'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["check", str(SMALL), "--rerun-every", "-1"])
    assert exc.value.code == 2
    assert "--rerun-every: must be 0 or more, got -1" in capsys.readouterr().err

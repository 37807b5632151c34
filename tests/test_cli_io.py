"""The command line fails early and stops cleanly: output paths checked before a run,
atomic files, Ctrl-C (exit 130, one line), progress only on a terminal, --version
everywhere, the version and settings in JSON reports, `check --out` fresh per run, and
the shipped counterexamples replayable by name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hailan_sim import __version__
from hailan_sim.cli import main

SMALL = str(Path(__file__).parent / "scenarios" / "small.yaml")
COMMANDS = ["run", "topology", "schema", "check", "replay"]


@pytest.fixture
def no_simulation(monkeypatch):
    """Fails the test if a simulation starts: the error must come before the run."""
    import hailan_sim.sim as sim

    def refuse(*a, **k):
        raise AssertionError("the run started before the bad input was found")

    monkeypatch.setattr(sim, "simulate", refuse)


@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS)])
def test_version_on_the_command_and_every_subcommand(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"hailan-sim {__version__}"


@pytest.mark.parametrize("option,name,allowed", [
    ("--events", "events.json", ".parquet or .csv"),
    ("--events", "events", ".parquet or .csv"),
    ("--events", "events.parquet.gz", ".parquet or .csv"),
    ("--spans", "spans.csv", ".json"),
])
def test_unknown_output_suffix_exits_2_before_the_run(tmp_path, capsys, no_simulation, option, name, allowed):
    path = tmp_path / name
    assert main(["run", SMALL, "--no-progress", option, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hailan-sim: error: {path}: ")
    assert "unknown format" in err and allowed in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary


def test_missing_output_folder_exits_2_before_the_run(tmp_path, capsys, no_simulation):
    path = tmp_path / "nope" / "events.csv"
    assert main(["run", SMALL, "--events", str(path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_upper_case_parquet_is_parquet(tmp_path, capsys):
    path = tmp_path / "EVENTS.PARQUET"
    assert main(["run", SMALL, "--json", "--no-progress", "--duration", "6", "--events", str(path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert path.read_bytes()[:4] == b"PAR1"
    assert len(pd.read_parquet(path)) == d["event_count"]
    assert [p.name for p in tmp_path.iterdir()] == ["EVENTS.PARQUET"]  # the temporary is gone


def test_run_json_carries_the_version_and_settings(tmp_path, capsys):
    assert main(["run", "--json", "--no-progress", "--duration", "6", "--warmup", "1", "--seed", "4",
                 "--profile", "hardened"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["version"] == __version__
    s = d["settings"]
    assert s["scenario"] == "(built-in default)" and s["profile"] == "hardened" and s["seed"] == 4
    assert s["duration_s"] == 6.0 and s["events"] is None and s["spans"] is None
    assert main(["topology", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    assert t["version"] == __version__ and t["settings"] == {"scenario": "(built-in default)"}


def test_a_profile_that_does_not_fit_is_a_one_line_error(capsys, no_simulation):
    # small.yaml has no auth-service to issue the hardened profile's service tokens
    assert main(["run", SMALL, "--profile", "hardened"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--profile hardened" in err and "tokens" in err


@pytest.mark.parametrize("tty,expected", [(False, False), (True, None)])
def test_progress_bar_only_on_a_terminal(monkeypatch, capsys, tty, expected):
    """``progress=None`` means "a bar if the run takes over two seconds"; False none at all."""
    import hailan_sim.sim as sim

    seen = {}
    real = sim.simulate

    def spy(scenario, **kw):
        seen.update(kw)
        return real(scenario, **kw)

    monkeypatch.setattr(sim, "simulate", spy)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert main(["run", SMALL, "--duration", "6"]) == 0
    assert seen["progress"] is expected
    assert main(["run", SMALL, "--duration", "6", "--no-progress"]) == 0
    assert seen["progress"] is False


def test_check_without_a_terminal_writes_nothing_to_stderr(tmp_path, capsys):
    code = main(["check", SMALL, "--max-examples", "1", "--max-faults", "1", "--kinds", "crash_instance",
                 "--invariant", "conservation", "--no-cover", "--jobs", "1", "--out", str(tmp_path / "o")])
    assert code in (0, 1)
    out = capsys.readouterr()
    assert out.err == ""
    # The human report ends with where the check's CPU went (issue 12).
    cpu = next(line for line in out.out.splitlines() if line.startswith("CPU: "))
    for part in ("simulating examples", "their invariants", "baselines", "determinism re-runs", "the rest"):
        assert part in cpu, cpu


# --------------------------------------------------------------------------- check --out


def _check(out: Path, *extra: str) -> int:
    return main(["check", SMALL, "--json", "--max-examples", "1", "--max-faults", "1", "--jobs", "1",
                 "--kinds", "crash_service", "--invariant", "bounded_recovery", "--out", str(out), *extra])


def test_check_out_is_fresh_per_run(tmp_path, capsys):
    out = tmp_path / "cx"
    _check(out)
    first = json.loads(capsys.readouterr().out)
    assert (out / "report.json").exists()
    # a used folder is refused, before anything runs, and left as it was
    before = sorted(p.name for p in out.iterdir())
    (out / "stale_from_an_old_run.yaml").write_text("name: old\n")
    assert _check(out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "stale_from_an_old_run.yaml"])
    # --overwrite replaces the earlier results: nothing of the old run is left beside the new
    _check(out, "--overwrite")
    second = json.loads(capsys.readouterr().out)
    assert not (out / "stale_from_an_old_run.yaml").exists()
    assert sorted(p.name for p in out.iterdir()) == before
    assert second["invariants"] == first["invariants"]


def test_check_overwrite_never_empties_a_folder_check_did_not_write(tmp_path, capsys, no_simulation):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert _check(out, "--overwrite") == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "precious"


def test_check_out_that_is_a_file_exits_2(tmp_path, capsys, no_simulation):
    f = tmp_path / "file"
    f.write_text("x")
    assert _check(f) == 2
    assert "not a folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- shipped counterexamples


def test_replay_lists_the_shipped_counterexamples(capsys):
    repo = Path(__file__).parent.parent / "findings" / "counterexamples"
    assert main(["replay", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == sorted(p.stem for p in repo.glob("*.yaml"))
    for ln in lines:
        name, _, invariant = ln.split()[:3]
        header = (repo / f"{name}.yaml").read_text().splitlines()[1]
        assert header == f"# invariant: {invariant.rstrip(':')}"


def test_replay_finds_a_shipped_counterexample_by_name(tmp_path, monkeypatch):
    """From anywhere, NAME (with or without .yaml) is the installed copy; a file of that
    name in the current folder wins. (Replaying them all is .ci/install-check's job: two
    400 s simulations each.)"""
    from hailan_sim.cli import _replay_file
    from hailan_sim.findings import shipped

    monkeypatch.chdir(tmp_path)  # nowhere near the repository's findings/
    info = shipped()["conservation"]
    assert info["invariant"] == "conservation" and "crash_node" in info["fault"]
    for name in ("conservation", "conservation.yaml"):
        path = _replay_file(name)
        assert str(path) == info["path"] and path.read_text().startswith("# hailan-sim counterexample")
    Path("conservation.yaml").write_text("name: mine\n")
    assert _replay_file("conservation.yaml") == Path("conservation.yaml")


def test_replay_of_an_unknown_name_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["replay", "no_such_finding"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_finding" in err


def test_replay_plot_needs_a_png_name(tmp_path, capsys, no_simulation):
    assert main(["replay", "conservation", "--plot", str(tmp_path / "t.jpg")]) == 2
    assert ".png" in capsys.readouterr().err


# --------------------------------------------------------------------------- Ctrl-C


def _start(argv: list[str], cwd: Path) -> subprocess.Popen:
    # A session of its own: signalling its process group is what Ctrl-C in a terminal does.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "hailan_sim", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(pred, proc: subprocess.Popen, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not pred():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.05)


def test_ctrl_c_stops_run_with_130_one_line_and_no_half_files(tmp_path):
    proc = _start(["run", SMALL, "--duration", "100000", "--no-progress",
                   "--events", "events.csv", "--spans", "spans.json"], tmp_path)
    tmp = lambda: [p for p in tmp_path.iterdir() if p.name.startswith(".events.csv")]  # noqa: E731
    # started: the streamed log has passed its first batch into the temporary file
    try:
        _wait_for(lambda: tmp() and tmp()[0].stat().st_size > 100_000, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130
    assert err == "hailan-sim: interrupted\n" and out == ""
    assert list(tmp_path.iterdir()) == []  # neither the files nor their temporaries


def test_ctrl_c_stops_check_with_130_and_the_report_so_far(tmp_path):
    """Signalled as a terminal does (the whole process group: workers too), mid-search."""
    # The cover phase's crash_node breaks bounded_recovery on small.yaml in seconds;
    # conservation holds, so its search (400 examples, on 2 workers) runs until stopped.
    proc = _start(["check", SMALL, "--json", "--max-examples", "400", "--max-faults", "2", "--jobs", "2",
                   "--invariant", "conservation", "--invariant", "bounded_recovery",
                   "--kinds", "crash_node", "crash_instance", "--out", "cx"], tmp_path)
    out_dir = tmp_path / "cx"
    try:
        _wait_for(lambda: out_dir.is_dir() and any(out_dir.glob("*.yaml")), proc, limit=180)
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("hailan-sim: interrupted after ")
    d = json.loads(out)
    assert d["interrupted"] is True and d["ok"] is False
    statuses = {r["status"] for r in d["invariants"].values()}
    assert "violated" in statuses and statuses <= {"violated", "held", "unfinished"}
    for r in d["invariants"].values():
        if r["status"] == "violated":
            assert (tmp_path / r["counterexample"]).exists()
    assert json.loads((out_dir / "report.json").read_text()) == d
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no half-written files


def test_an_interrupted_worker_pool_stops_at_once_and_workers_ignore_ctrl_c():
    """check's pool: workers leave SIGINT to the main process, and an interrupted check
    stops the simulations running in them rather than waiting for them to finish."""
    from hailan_sim.properties.checker import _fork_context, _Pool

    ctx = _fork_context()
    if ctx is None:
        pytest.skip("no fork on this platform: examples run in the main process")
    with _Pool(1, ctx) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with _Pool(2, ctx) as pool:
            for _ in range(4):
                pool.submit(time.sleep, 60)
            time.sleep(0.5)
            workers = list(pool._processes.values())
            raise KeyboardInterrupt
    assert time.monotonic() - started < 15
    assert workers and not any(p.is_alive() for p in workers)

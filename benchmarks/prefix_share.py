#!/usr/bin/env python3
"""How much of a whole check's simulation comes before its examples' first fault.

Issue 12 (session 26): an example's run is the fault-free baseline of its seed until its
first fault starts (same scenario, same seed, same named random streams), so an engine that
resumed each example from a snapshot of the baseline taken at or before that instant would
skip that prefix. This script measures the most such prefix sharing could save, before
anyone builds it: it runs the whole default check as a user runs it (``hailan-sim check
--profile P --jobs 2 --json``, in this process, from an empty folder) with the checker's
``Runner._record`` wrapped to note, for every example it simulates, the fault schedule, the
run's length and the CPU seconds the simulation took (in whichever process ran it: the
forked workers inherit the wrapper and append to one file).

For each profile it reports:

  examples       the examples simulated (distinct schedule and seed), and how many of them
                 start their first fault at each time (10 s bins)
  share (exact)  the examples' simulation CPU before their first fault, as a share of it:
                 each example's CPU times its first fault's start over its run's length
                 (simulation cost is close to uniform in simulated time at steady load), with
                 a snapshot at every instant; an upper bound (a key rotation's key is
                 published ahead of its start, so its real prefix is shorter)
  share (grid)   the same with snapshots only every ``--grid`` seconds (the prefix up to the
                 last grid point at or before the first fault)
  of the check   that CPU as a share of the whole check's CPU (its report's ``cpu_s.total``):
                 the most the check's wall time could shrink by, its cores kept as busy

Usage: python benchmarks/prefix_share.py [--profiles P ...] [--grid S] [--quick] [--json FILE]
       (see benchmarks/README.md, "Issue 12: sharing the fault-free prefix, measured")
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import sys
import tempfile
from pathlib import Path

from bench_checker import QUICK_CHECK_ARGS  # noqa: E402  (benchmarks/ is on sys.path: run as a script)
from bench_engine import code_info, emit  # noqa: E402

PROFILES = ("seed", "hardened")
BIN_S = 10.0
#: ``--quick``: bench_checker's smoke check with four examples instead of one (the first
#: three its search tries have no fault, one per seed), so that one has a prefix to measure.
QUICK_ARGS = (*QUICK_CHECK_ARGS, "--max-examples", "4")


def run_check(profile: str, quick: bool, work: Path) -> tuple[dict, list[dict]]:
    """The whole default check under ``profile`` (the CLI's own ``main``, in this process) and
    one row per example simulation: its seed, faults' starts and kinds, run length, CPU s."""
    from hailan_sim import cli
    from hailan_sim.properties import checker

    rows_file = work / f"rows-{profile}.jsonl"
    record = checker.Runner._record

    def noted(self, faults, seed, baseline):
        out, cpu = checker._timed(record, self, faults, seed, baseline)  # as _judge times it
        row = {"key": self.key(faults, seed), "seed": seed, "starts": [f.start_s for f in faults],
               "kinds": [f.kind for f in faults], "duration_s": out.scenario.run.duration_s, "cpu_s": cpu}
        # One write of one line with O_APPEND: the workers' lines never interleave.
        fd = os.open(rows_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(row) + "\n").encode())
        finally:
            os.close(fd)
        return out

    argv = ["check", "--profile", profile, "--jobs", "2", "--json", "--out", str(work / f"out-{profile}"),
            *(QUICK_ARGS if quick else ())]
    stdout = io.StringIO()
    checker.Runner._record = noted
    try:
        with contextlib.redirect_stdout(stdout):
            code = cli.main(argv)
    finally:
        checker.Runner._record = record
    if code not in (0, 1):  # 1: an invariant was violated, as the default seed check finds
        raise SystemExit(f"prefix_share: hailan-sim {shlex.join(argv)} exited {code}")
    report = json.loads(stdout.getvalue())
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    return report, rows


def shares(report: dict, rows: list[dict], grid_s: float) -> dict:
    """What the rows say a shared prefix would save (see the module's docstring). A schedule
    judged twice (a speculative copy's, then the main process's) counts once: its first row."""
    seen: dict[str, dict] = {}
    for r in rows:
        seen.setdefault(r["key"], r)
    examples = list(seen.values())
    cpu = sum(r["cpu_s"] for r in examples)
    exact = grid = 0.0
    bins: dict[str, int] = {}
    for r in examples:
        # No fault: the run is its seed's baseline, all of it shared.
        first = min(r["starts"]) if r["starts"] else r["duration_s"]
        snap = math.floor(first / grid_s) * grid_s if r["starts"] else first
        exact += r["cpu_s"] * first / r["duration_s"]
        grid += r["cpu_s"] * snap / r["duration_s"]
        label = "none" if not r["starts"] else f"{math.floor(first / BIN_S) * BIN_S:g}"
        bins[label] = bins.get(label, 0) + 1
    total = report["cpu_s"]["total"]
    return {
        "examples": len(examples),
        "rows": len(rows),
        "simulations": report["simulations"],
        "baselines": report["determinism"]["baselines"],
        "duration_s": sorted({r["duration_s"] for r in examples}),
        "first_fault_bins": dict(sorted(bins.items(), key=lambda kv: math.inf if kv[0] == "none" else float(kv[0]))),
        "examples_cpu_s": cpu,
        "check_cpu_s": total,
        "check_wall_s": report["wall_s"],
        "examples_per_minute": report["examples_per_minute"],
        "prefix_cpu_s_exact": exact,
        "prefix_cpu_s_grid": grid,
        "share_exact": exact / cpu if cpu else 0.0,
        "share_grid": grid / cpu if cpu else 0.0,
        "share_of_check_exact": exact / total if total else 0.0,
        "share_of_check_grid": grid / total if total else 0.0,
        "per_minute_if_free_grid": (60.0 * report["simulations"] / (report["wall_s"] * (1 - grid / total))
                                    if total and report["wall_s"] else None),
    }


def format_report(res: dict) -> str:
    lines = [f"prefix sharing, measured{' (QUICK: figures meaningless)' if res['quick'] else ''}: "
             f"snapshots every {res['grid_s']:g} s for the grid figures"]
    lines += ["", f"{'check --profile':<18}{'examples':>9}{'sim CPU s':>11}{'check CPU s':>13}"
                  f"{'share (exact)':>15}{'share (grid)':>14}{'of the check':>14}{'examples/min':>14}{'if skipped':>12}"]
    for p, s in res["profiles"].items():
        if_free = f"{s['per_minute_if_free_grid']:.1f}" if s["per_minute_if_free_grid"] else "-"
        lines.append(f"{p:<18}{s['examples']:>9}{s['examples_cpu_s']:>11.1f}{s['check_cpu_s']:>13.1f}"
                     f"{100 * s['share_exact']:>14.1f}%{100 * s['share_grid']:>13.1f}%"
                     f"{100 * s['share_of_check_grid']:>13.1f}%{s['examples_per_minute']:>14.1f}{if_free:>12}")
    lines += ["", "examples by the start of their first fault (s; 'none': no fault)"]
    for p, s in res["profiles"].items():
        lines.append(f"  {p:<16}" + "  ".join(f"{k}: {v}" for k, v in s["first_fault_bins"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", nargs="+", choices=PROFILES, default=list(PROFILES),
                    help="which default checks to run (default: both)")
    ap.add_argument("--grid", type=float, default=10.0, metavar="S",
                    help="seconds between the snapshots of the grid figures (default 10)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: the check's shortest run, four examples, no cover phase")
    ap.add_argument("--json", metavar="FILE", help="also write every figure and row as JSON to FILE")
    args = ap.parse_args(argv)
    if not (args.grid > 0 and math.isfinite(args.grid)):
        ap.error(f"--grid must be a positive number of seconds, not {args.grid:g}")
    res = {"quick": args.quick, "grid_s": args.grid, "code": code_info(), "profiles": {}, "rows": {},
           "command": shlex.join([Path(sys.executable).name, *sys.argv])}
    with tempfile.TemporaryDirectory(prefix="prefix-share-") as tmp:
        for p in args.profiles:
            report, rows = run_check(p, args.quick, Path(tmp))
            res["profiles"][p] = shares(report, rows, args.grid)
            res["rows"][p] = rows
    emit(format_report(res), res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

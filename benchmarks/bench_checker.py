#!/usr/bin/env python3
"""Checker throughput benchmark (not a test: nothing here is asserted in CI).

Four parts, all on the built-in default scenario as ``hailan-sim check --profile P`` runs it
(warm-up 10 s, duration ``check_duration``: 10 s + 120 s of faults + 110 s to recover and
be judged = 240 s under both profiles):

  throughput  examples judged per minute by the checker's loop (``checker.Runner``, what
              ``check`` runs), for ``--profile seed`` and ``--profile hardened``, with
              ``--jobs 1`` and ``--jobs 2``. Each case judges the same fixed budget: the first
              ``--examples`` fault schedules the default check's search generates (search
              seed 0, up to 2 faults, simulation seeds 0-2), plus the fault-free baseline of
              each simulation seed they use, on a fresh Runner (nothing cached). The rate is
              examples / wall time of the whole loop (baselines, simulations, event logs,
              invariants, determinism re-runs, worker start-up). Shrinking is not included: its
              length depends on what is found, not on the budget.
  split       where one example's time goes, on the first generated schedule of each profile:
              simulation (no event log), event-log building (with it, minus without), the
              fault-free baseline (events kept, as the checker keeps them; once per seed), a
              determinism re-run (hash only), what the invariants derive from the baseline
              (once per seed: the first record of a seed minus a later one), the run's log
              columns, and each invariant in the order ``evaluate`` runs them on a later record
              of the seed (the first to use a shared view pays for it), plus the invariants'
              per-example total (log columns included) as a share of the simulation with its
              event log. The split is
              in CPU seconds of this process (wall time on a shared machine measures the
              neighbours); throughput is given per wall minute and per CPU minute (this
              process and its workers).

  check       the whole default check, as a user runs it (``hailan-sim check --profile P
              --jobs 2 --json``, in a subprocess, from an empty folder), for each profile: its
              own examples a minute (``examples_per_minute`` in its report: simulations over
              wall minutes) and CPU time. This is the figure issue 12's target names ("30
              examples a minute for the default check"); the throughput cases above judge a
              small fixed budget that carries three baselines, so they understate it. About
              two minutes a profile per round; ``--no-whole-check`` leaves it out.
              With it, where the check's CPU went (its report's ``cpu_s``, measured by the
              check: its examples' simulations and invariants, the baselines, the
              determinism re-runs by kind, the rest) and its measured ceiling
              (:func:`ceiling`: the same CPU seconds on both cores with none idle; the same
              without the sampled re-runs; the simulations the issue requires alone; and
              the share of the cores it kept busy).

  shrink      (``--shrink``) the wall and CPU time of one check that finds a violation early
              and shrinks it (issue 12 item 6), with ``--jobs 1`` and ``--jobs 2``: the default
              scenario under ``seed`` as ``check`` runs it, ``bounded_recovery`` searched over
              crashes of whole services (``--kinds crash_service``, one fault, 4 examples, one
              simulation seed, no cover phase). The shrink phase is timed from the first
              violation the search finds (the end of the generate phase) to the report. With
              ``--jobs 2`` a forked copy judges ahead the shrink request Hypothesis will
              probably make next (``Runner.speculating``); the counterexample must be the same.

Cases are interleaved over ``--rounds`` rounds (order rotated each round) and medians
reported, as in bench_engine.py: this 2-core machine is shared and drifts by 50%.

Usage: python benchmarks/bench_checker.py [--quick] [--json FILE] [--rounds N] [--examples N]
       [--no-throughput] [--no-split] [--no-whole-check] [--shrink [--shrink-kinds KIND ...] [--shrink-max-faults N]]
       [--label TEXT]    (see benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

from bench_engine import code_info, emit  # noqa: E402  (benchmarks/ is on sys.path: run as a script)

PROFILES = ("seed", "hardened")
JOBS = (1, 2)
TARGET_PER_MINUTE = 30.0  # issue 12: the default check at 30 examples a minute with --jobs 2


def check_scenario(profile: str, quick: bool = False):
    """The default scenario as ``hailan-sim check --profile PROFILE`` runs it; ``quick``: 8 s
    simulated (1 s warm-up), too short for the check's recovery window, only for the smoke run."""
    from hailan_sim.models import default_scenario
    from hailan_sim.properties.checker import check_duration

    sc = default_scenario().with_profile(profile)
    if quick:
        return sc.with_run(warmup_s=1.0, duration_s=8.0)
    sc = sc.with_run(warmup_s=min(sc.run.warmup_s, 10.0))
    return sc.with_run(duration_s=check_duration(sc))


def generated(sc, n: int, quick: bool = False) -> list:
    """The first ``n`` ``(faults, seed)`` the default check's search generates (seed 0);
    ``quick``: faults between 1 and 4 s."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import strategies as st

    from hailan_sim.properties.checker import _generated, fault_horizon
    from hailan_sim.properties.strategies import fault_schedules

    strategy = st.tuples(fault_schedules(sc, max_faults=2, min_faults=0,
                                                 horizon=(1.0, 4.0) if quick else fault_horizon(sc)),
                         st.integers(0, 2))
    search = settings(max_examples=n, derandomize=False, database=None, deadline=None,
                      phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    return _generated(strategy, search, 0)[:n]


def names() -> list[str]:
    from hailan_sim.properties import invariants as inv

    return [n for n in inv.INVARIANTS if n != "determinism"]  # what check judges by default


def run_throughput(sc, examples: list, jobs: int) -> dict:
    from hailan_sim.properties.checker import Runner

    runner = Runner(sc, names(), None, jobs)
    k0 = _children_cpu()
    c0, t0 = time.process_time(), time.perf_counter()
    runner.prefetch(examples)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cpu += _children_cpu() - k0  # the forked workers' CPU (reaped when their pool shut down)
    judged = len({runner.key(f, s) for f, s in examples})
    return {"examples": judged, "simulations": runner.simulations, "wall_s": wall, "cpu_s": cpu,
            "per_minute": judged / wall * 60.0, "per_cpu_minute": judged / cpu * 60.0,
            "reruns": runner.determinism.reruns}


SHRINK_CASE = {"invariants": ["bounded_recovery"], "kinds": ["crash_service"], "max_faults": 1,
               "max_examples": 4, "n_seeds": 1, "seed": 0, "cover": False}


def run_shrink(sc, jobs: int, case: dict) -> dict:
    """One ``check`` that finds and shrinks a violation; the shrink phase timed from the
    first violating answer the main process gives (its search's last generated example)."""
    from hailan_sim.properties import checker

    marks: dict = {}
    violates = checker.Runner.violates

    def timed(self, name, faults, seed):  # the main process only: a copy never returns here twice
        out = violates(self, name, faults, seed)
        if out and "found" not in marks:
            marks["found"] = (time.perf_counter(), time.process_time(), _children_cpu())
        return out

    checker.Runner.violates = timed
    try:
        k0 = _children_cpu()
        c0, t0 = time.process_time(), time.perf_counter()
        report = checker.check(sc, jobs=jobs, **case)
        t1, c1, k1 = time.perf_counter(), time.process_time(), _children_cpu()
    finally:
        checker.Runner.violates = violates
    (r,) = report.invariants
    tf, cf, kf = marks.get("found", (t1, c1, k1))
    return {"status": r.status, "faults": [f.model_dump(mode="json") for f in r.faults], "seed": r.seed,
            "event_log_sha256": r.replay_hash, "examples": r.examples, "simulations": report.simulations,
            "speculation": report.speculation, "wall_s": t1 - t0, "cpu_s": (c1 - c0) + (k1 - k0),
            "shrink_wall_s": t1 - tf, "shrink_cpu_s": (c1 - cf) + (k1 - kf)}


#: What ``--quick`` adds to the whole check: the shortest run the check accepts, one
#: example of one invariant, no cover phase (seconds instead of minutes).
QUICK_CHECK_ARGS = ("--duration", "125", "--max-examples", "1", "--max-faults", "1", "--no-cover",
                    "--invariant", "conservation")


def run_check(profile: str, quick: bool) -> dict:
    """The whole default check under ``profile``, run as a user runs it: the installed CLI
    in a subprocess, from an empty folder (its counterexamples are written there and
    removed). The rate is the check's own (its report's ``examples_per_minute``)."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-check-{profile}-"))
    cmd = [sys.executable, "-m", "hailan_sim", "check",
           "--profile", profile, "--jobs", "2", "--json", "--out", str(work / "out"),
           *(QUICK_CHECK_ARGS if quick else ())]
    try:
        k0, t0 = _children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - k0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode not in (0, 1):  # 1: an invariant was violated, as the default seed check finds
        raise SystemExit(f"bench_checker: {shlex.join(cmd[3:])} exited {proc.returncode}:\n{proc.stderr}")
    report = json.loads(proc.stdout)
    return {"profile": report["profile"], "jobs": report["settings"]["jobs"],
            "simulations": report["simulations"], "wall_s": report["wall_s"],
            "per_minute": report["examples_per_minute"], "process_wall_s": wall, "cpu_s": cpu,
            "reruns": report["determinism"]["reruns"],
            "reruns_by": {k: report["determinism"][k] for k in ("baselines", "counterexamples", "examples")},
            "violated": sorted(n for n, v in report["invariants"].items() if v["status"] == "violated"),
            **ceiling(report)}


def ceiling(report: dict) -> dict:
    """The measured ceiling of one whole check, from its report: the rate it would reach with
    the same work (its CPU seconds, ``cpu_s.total``) and no core ever idle; the same
    without the sampled determinism re-runs (the work issue 12 requires: every example,
    baseline and counterexample re-run); and with nothing but the simulations it requires
    (the examples', the baselines', the baselines' and counterexamples' re-runs: the
    invariants, the sampled re-runs and the rest free), the most any change outside the
    engine could give. ``utilisation``: the share of its cores' time, over its own wall
    time, that it kept busy. ``cpu_parts``: where its CPU went, as the check measures it
    (``CPU_PARTS``, the rest, the total)."""
    cpu, jobs, sims = report["cpu_s"], report["settings"]["jobs"], report["simulations"]
    total = cpu["total"]
    simulations = sum(cpu[k] for k in ("examples: simulation", "baselines", "re-runs: baselines",
                                       "re-runs: counterexamples"))
    return {"utilisation": total / (jobs * report["wall_s"]),
            "ceiling_per_minute": 60.0 * sims * jobs / total,
            "ceiling_without_sampled_reruns_per_minute": 60.0 * sims * jobs / (total - cpu["re-runs: examples"]),
            "ceiling_simulations_alone_per_minute": 60.0 * sims * jobs / simulations,
            "cpu_parts": dict(cpu)}


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _t(fn):
    """``fn()`` and the CPU seconds it took in this process (steadier than wall time on a
    shared machine, and the split runs in this process only)."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def run_split(sc, example) -> dict:
    """One example's time, part by part (seconds)."""
    from hailan_sim.properties import invariants as inv
    from hailan_sim.properties.strategies import with_faults
    from hailan_sim.sim import simulate

    faults, seed = example
    s = with_faults(sc, faults).with_run(seed=seed)
    _, plain = _t(lambda: simulate(s))
    result, with_log = _t(lambda: simulate(s, keep_events=True))
    baseline, base = _t(lambda: simulate(inv.without_faults(s), keep_events=True))
    again, rerun = _t(lambda: simulate(s).event_log_sha256)
    from hailan_sim.properties import record as rec_mod

    # First a record as the first example of a seed sees it (the baseline's log and what the
    # invariants derive from it not built yet), then a second record of the same run and
    # baseline, as every later example of that seed sees it: the checker shares a seed's
    # baseline (and, from issue 12, what is derived from it) across its examples.
    # The kept log's columns are joined from its batches once per run (sim.eventlog.KeptLog):
    # part of this example's log columns, not of the baseline's views.
    _, joined = _t(lambda: result._events.columns())
    cold = inv.Record(scenario=s, result=result, baseline=baseline)
    _, first = _t(lambda: (cold.log, cold.baseline_log, inv.evaluate(cold, names())))
    rec_mod._LOGS.pop(id(result), None)  # the run's own log is built again for each example
    from hailan_sim.properties import causes

    causes._TREES.pop(id(result), None)  # and so are its span trees
    record = inv.Record(scenario=s, result=result, baseline=baseline)
    _, columns = _t(lambda: record.log)
    columns += joined
    per = {}
    for n in names():
        _, per[n] = _t(lambda n=n: inv.get(n)(record))
    total = columns + sum(per.values())
    return {"simulation": plain, "event_log": with_log - plain, "simulation_with_log": with_log,
            "baseline": base, "rerun": rerun, "log_columns": columns, "invariants": per,
            "baseline_views": max(0.0, first - total),
            "invariants_total": total, "invariants_share_of_simulation": total / with_log,
            "deterministic": again == result.event_log_sha256, "faults": len(faults), "seed": seed}


# --------------------------------------------------------------------------- driver


def machine_info() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_benchmark(quick: bool, rounds: int | None, n_examples: int | None, throughput: bool = True,
                  split: bool = True, shrink: bool = False, shrink_case: dict | None = None,
                  whole_check: bool = True) -> dict:
    machine = machine_info()
    rounds = rounds or (1 if quick else 2)
    n_examples = n_examples or (2 if quick else 8)
    scenarios = {p: check_scenario(p, quick) for p in PROFILES}
    budgets = {p: generated(scenarios[p], n_examples, quick) for p in PROFILES}
    # The split's example: the first generated schedule with a fault in it.
    split_example = {p: next((e for e in budgets[p] if e[0]), budgets[p][0]) for p in PROFILES}
    cases = ([("throughput", p, j) for p in PROFILES for j in JOBS] if throughput else []) + \
        ([("split", p, None) for p in PROFILES] if split else []) + \
        ([("shrink", "seed", j) for j in JOBS] if shrink else []) + \
        ([("check", p, 2) for p in PROFILES] if whole_check else [])
    shrink_case = dict(SHRINK_CASE, **(shrink_case or {}),
                       **({"max_examples": 2, "horizon": (1.0, 4.0)} if quick else {}))
    raw: dict[str, list] = {}
    t_start = time.perf_counter()
    for r in range(rounds):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for kind, p, j in order:
            key = {"throughput": f"{p} --jobs {j}", "split": f"split {p}", "shrink": f"shrink {p} --jobs {j}",
                   "check": f"check --profile {p} --jobs {j}"}[kind]
            print(f"round {r + 1}/{rounds}: {key}", file=sys.stderr, flush=True)
            if kind == "throughput":
                raw.setdefault(key, []).append(run_throughput(scenarios[p], budgets[p], j))
            elif kind == "shrink":
                raw.setdefault(key, []).append(run_shrink(scenarios[p], j, shrink_case))
            elif kind == "check":
                raw.setdefault(key, []).append(run_check(p, quick))
            else:
                raw.setdefault(key, []).append(run_split(scenarios[p], split_example[p]))
    res = {"quick": quick, "machine": machine, "code": code_info(("sim", "models", "properties"), "hailan_sim.properties"),
           "settings": {"rounds": rounds, "examples": n_examples,
                        "duration_s": {p: scenarios[p].run.duration_s for p in PROFILES},
                        "invariants": names()},
           "wall_s": time.perf_counter() - t_start, "throughput": {}, "split": {}, "shrink": {}, "check": {}}
    res["machine"]["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for p in PROFILES:
        for j in JOBS if throughput else ():
            runs = raw[f"{p} --jobs {j}"]
            res["throughput"][f"{p} --jobs {j}"] = {
                "profile": p, "jobs": j, "examples": runs[0]["examples"],
                "simulations": runs[0]["simulations"], "reruns": runs[0]["reruns"],
                "median_per_minute": statistics.median(x["per_minute"] for x in runs),
                "per_minute": [x["per_minute"] for x in runs], "wall_s": [x["wall_s"] for x in runs],
                "median_per_cpu_minute": statistics.median(x["per_cpu_minute"] for x in runs),
                "cpu_s": [x["cpu_s"] for x in runs],
                "target_per_minute": TARGET_PER_MINUTE if j == 2 else None,
            }
        if whole_check:
            runs = raw[f"check --profile {p} --jobs 2"]
            res["check"][p] = {
                "profile": p, "jobs": 2, "args": list(QUICK_CHECK_ARGS if quick else ()),
                "median_per_minute": statistics.median(x["per_minute"] for x in runs),
                "target_per_minute": TARGET_PER_MINUTE, "runs": runs,
                "median_utilisation": statistics.median(x["utilisation"] for x in runs),
                "median_ceiling_per_minute": statistics.median(x["ceiling_per_minute"] for x in runs),
                "median_ceiling_without_sampled_reruns_per_minute": statistics.median(
                    x["ceiling_without_sampled_reruns_per_minute"] for x in runs),
                "median_ceiling_simulations_alone_per_minute": statistics.median(
                    x["ceiling_simulations_alone_per_minute"] for x in runs),
            }
        if not split:
            continue
        runs = raw[f"split {p}"]
        med = {k: statistics.median(x[k] for x in runs)
               for k in ("simulation", "event_log", "simulation_with_log", "baseline", "rerun",
                         "log_columns", "baseline_views", "invariants_total",
                         "invariants_share_of_simulation")}
        med["invariants"] = {n: statistics.median(x["invariants"][n] for x in runs) for n in names()}
        med["deterministic"] = all(x["deterministic"] for x in runs)
        med["example"] = {"faults": runs[0]["faults"], "seed": runs[0]["seed"]}
        res["split"][p] = med
    for j in JOBS if shrink else ():
        runs = raw[f"shrink seed --jobs {j}"]
        res["shrink"][f"seed --jobs {j}"] = {
            "jobs": j, "case": shrink_case, "runs": runs,
            **{f"median_{k}": statistics.median(x[k] for x in runs)
               for k in ("wall_s", "cpu_s", "shrink_wall_s", "shrink_cpu_s")},
        }
    if shrink:
        a, b = (res["shrink"][f"seed --jobs {j}"]["runs"] for j in JOBS)
        same = ("status", "faults", "seed", "event_log_sha256", "examples")
        res["shrink_same_counterexample"] = all({k: x[k] for k in same} == {k: y[k] for k in same}
                                                for x in a for y in b)
    return res


def format_report(res: dict) -> str:
    m = res["machine"]
    lines = [f"checker benchmark{' (QUICK: figures meaningless)' if res['quick'] else ''}: "
             f"{res['settings']['examples']} examples per case, {res['settings']['rounds']} round(s), "
             f"{m['cpu_count']} CPUs, load {m['load_avg_at_start']} -> {m['load_avg_at_end']}"]
    if res["throughput"]:
        lines += ["", f"{'throughput':<22}{'examples/min':>14}{'/CPU-min':>10}{'sims':>7}{'re-runs':>9}   per round"]
    for key, c in res["throughput"].items():
        target = f"  (target {c['target_per_minute']:g})" if c["target_per_minute"] else ""
        lines.append(f"{key:<22}{c['median_per_minute']:>14.1f}{c['median_per_cpu_minute']:>10.1f}"
                     f"{c['simulations']:>7}{c['reruns']:>9}   "
                     + " ".join(f"{x:.1f}" for x in c["per_minute"]) + target)
    if res["check"]:
        lines += ["", f"{'whole default check':<26}{'examples/min':>10}{'CPU s':>8}{'sims':>7}{'re-runs':>9}"
                      f"   per round (wall s)   violated"]
        for p, c in res["check"].items():
            r0 = c["runs"][0]
            lines.append(f"{'check --profile ' + p:<26}{c['median_per_minute']:>10.1f}"
                         f"{statistics.median(x['cpu_s'] for x in c['runs']):>8.1f}{r0['simulations']:>7}{r0['reruns']:>9}   "
                         + " ".join(f"{x['per_minute']:.1f} ({x['wall_s']:.0f})" for x in c["runs"])
                         + f"   {len(r0['violated'])}  (target {c['target_per_minute']:g}, --jobs 2"
                         + (f" {' '.join(c['args'])})" if c["args"] else ")"))
        lines += ["", "its ceiling: the same CPU seconds with both cores busy from start to end (median)",
                  f"{'':<26}{'cores busy':>11}{'ceiling/min':>13}{'without sampled re-runs':>25}"
                  f"{'simulations alone':>19}"]
        for p, c in res["check"].items():
            lines.append(f"{'check --profile ' + p:<26}{100 * c['median_utilisation']:>10.1f}%"
                         f"{c['median_ceiling_per_minute']:>13.1f}"
                         f"{c['median_ceiling_without_sampled_reruns_per_minute']:>25.1f}"
                         f"{c['median_ceiling_simulations_alone_per_minute']:>19.1f}")
        lines += ["", "where each check's CPU went (its report's cpu_s): CPU s per round, median share"]
        lines.append(f"  {'':<26}" + "".join(f"{'--profile ' + p:>26}" for p in res["check"]))
        for k in next(iter(res["check"].values()))["runs"][0]["cpu_parts"]:
            cells = []
            for c in res["check"].values():
                seconds = " ".join(f"{x['cpu_parts'][k]:.1f}" for x in c["runs"])
                share = statistics.median(x["cpu_parts"][k] / x["cpu_parts"]["total"] for x in c["runs"])
                cells.append(f"{seconds:>16}{100 * share:>9.1f}%")
            lines.append(f"  {k:<26}" + "".join(cells))
    for p, s in res["split"].items():
        lines += ["", f"split of one example, --profile {p} ({s['example']['faults']} fault(s), seed "
                      f"{s['example']['seed']}; {res['settings']['duration_s'][p]:g} s simulated), median CPU s:"]
        for k in ("simulation", "event_log", "baseline", "rerun", "baseline_views", "log_columns"):
            lines.append(f"  {k:<32}{s[k]:>8.3f}" + ("   (once per seed)" if k in ("baseline", "baseline_views") else ""))
        for n, v in s["invariants"].items():
            lines.append(f"  invariant {n:<22}{v:>8.3f}")
        lines.append(f"  {'invariants total':<32}{s['invariants_total']:>8.3f}   = "
                     f"{100 * s['invariants_share_of_simulation']:.1f}% of the simulation with its log (target 15%)")
    if res["shrink"]:
        case = next(iter(res["shrink"].values()))["case"]
        lines += ["", f"shrink (check --profile seed --no-cover --invariant {' '.join(case['invariants'])} --kinds "
                      f"{' '.join(case['kinds'])} --max-faults {case['max_faults']} --max-examples {case['max_examples']}; "
                      f"median s; same counterexample with --jobs 1 and 2: {res['shrink_same_counterexample']})",
                  f"{'':<18}{'wall':>8}{'CPU':>8}{'shrink wall':>13}{'shrink CPU':>12}{'sims':>6}   speculation"]
        for key, c in res["shrink"].items():
            lines.append(f"{key:<18}{c['median_wall_s']:>8.1f}{c['median_cpu_s']:>8.1f}{c['median_shrink_wall_s']:>13.1f}"
                         f"{c['median_shrink_cpu_s']:>12.1f}{c['runs'][0]['simulations']:>6}   {c['runs'][0]['speculation']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 s runs, 2 examples, one round")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 2; 1 with --quick)")
    ap.add_argument("--examples", type=int, help="examples per throughput case (default 8; 2 with --quick)")
    ap.add_argument("--no-throughput", dest="throughput", action="store_false",
                    help="only the split of one example's time (minutes instead of tens of minutes)")
    ap.add_argument("--no-split", dest="split", action="store_false", help="leave out the split of one example")
    ap.add_argument("--no-whole-check", dest="whole_check", action="store_false",
                    help="leave out the whole default check per profile (hailan-sim check --profile P --jobs 2)")
    ap.add_argument("--shrink", action="store_true",
                    help="also time one check's shrink phase with --jobs 1 and 2 (issue 12 item 6)")
    ap.add_argument("--shrink-kinds", nargs="+", metavar="KIND",
                    help=f"fault kinds of the --shrink case (default {' '.join(SHRINK_CASE['kinds'])})")
    ap.add_argument("--shrink-max-faults", type=int, metavar="N",
                    help=f"faults per schedule in the --shrink case (default {SHRINK_CASE['max_faults']})")
    ap.add_argument("--label", help="free text kept with the figures (e.g. 'before', a commit)")
    args = ap.parse_args(argv)
    case = {k: v for k, v in (("kinds", args.shrink_kinds), ("max_faults", args.shrink_max_faults)) if v}
    res = run_benchmark(args.quick, args.rounds, args.examples, args.throughput, args.split, args.shrink, case,
                        args.whole_check)
    res["command"] = shlex.join([Path(sys.executable).name, *sys.argv])
    res["label"] = args.label
    emit(format_report(res), res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

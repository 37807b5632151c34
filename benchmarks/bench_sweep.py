"""Sweep throughput: runs per minute with 1 and 2 local workers and a 2-worker Dask
LocalCluster, and the per-run overhead of a sweep over a bare ``simulate`` call.

    python benchmarks/bench_sweep.py --runs 12 --duration 60 --rounds 5 [--json bench-sweep.json]
    python benchmarks/bench_sweep.py --quick      # smoke run: figures meaningless

Every case runs the same ``--runs`` runs: the default scenario with the ``seed`` profile,
``--duration`` simulated seconds, seeds derived by the sweep (one point, ``--runs``
replications, no faults). ``bare`` simulates them one after another in this process (what a
hand-written loop does); ``local-1`` is the sweep with one worker (in process: the overhead
is building each run's scenario, measuring it and writing it to Parquet); ``lean-1`` is the
same with only availability, p99, recovery and cost (no sweep metric but `invariants` keeps
the event log any more: retry amplification and breaker trips come from counts the engine
keeps); ``local-2`` and ``dask-2`` use two worker processes.

Method (the same as bench_engine.py's, for the same reason: this shared machine drifts by
50% from minute to minute): ``--rounds`` interleaved rounds, each running every case once,
the order rotated every round (round 1 ``A B C D E``, round 2 ``B C D E A``, ...), after one
small untimed warm-up of every case (imports, Dask's first start, first-use caches);
``gc.collect()`` before each timed case. Each figure is the **median over rounds**, and
each comparison is also given **per round** (two cases measured minutes apart at most), so
the spread shows how far the machine's moods reach. The overhead of ``local-1`` and
``lean-1`` is judged on this process's CPU time too: they run in this process like
``bare``, so their CPU times compare even when other processes take the cores; wall time
does not. Since two timed totals differ by the machine's drift as much as by the overhead,
each round also runs the sweep's work run by run with each part timed on CPU as it
happens (``_parts``: build the run's scenario, simulate, measure, store): the **overhead by
parts** is what is not ``simulate`` over ``simulate``, measured in the same seconds. Exit 1
if any case's runs give other event-log hashes than ``bare``'s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import yaml

#: Issue 11 item 8's targets.
SPEEDUP_TARGET = 1.8
OVERHEAD_TARGET = 0.05
CASES = ("bare", "local-1", "lean-1", "local-2", "dask-2")


def _plan(runs: int, duration: float, metrics: list[str]):
    from hailan_sim.sweeps import parse_sweep

    spec = {
        "name": "bench",
        "base": {"profile": "seed", "run": {"duration_s": duration, "warmup_s": min(10.0, duration / 4)}},
        "axes": {"policies.breaker.failure_threshold": [5]},
        "faults": ["none"],
        "replications": runs,
        "metrics": metrics,
    }
    return parse_sweep(yaml.safe_dump(spec), "<bench>")


def _case(case: str, plans: dict, scenarios: list) -> list[str]:
    """Run one case; the event-log hashes of its runs, in run order."""
    from hailan_sim import simulate
    from hailan_sim.sweeps import run_sweep

    if case == "bare":
        return [simulate(s).event_log_sha256 for s in scenarios]
    kind, workers = case.split("-")
    with tempfile.TemporaryDirectory() as d:
        table = run_sweep(plans["lean" if kind == "lean" else "full"], d, workers=int(workers),
                          executor="dask" if kind == "dask" else "local")
    return table.sort_values("run")["event_log_sha256"].tolist()


def _parts(plan) -> dict:
    """One sweep's work, run by run in this process, each part timed on CPU as it happens:
    the run's scenario built from its point (``_payloads``), ``simulate`` (and the baseline
    ``invariants`` needs), the metrics (``run_metrics``), the row stored (journal, Parquet
    batch, manifest: ``SweepStore``) and the table loaded back. The overhead is what is not
    ``simulate``, over ``simulate``: measured in the same seconds as the simulation it is
    compared with, so the machine's drift cancels, unlike the difference of two timed runs."""
    from hailan_sim.sweeps.execute import SweepStore, _payloads, load_results, run_task

    cpu = {"build": 0.0, "simulate": 0.0, "metrics": 0.0, "store": 0.0}
    clock = time.process_time
    with tempfile.TemporaryDirectory() as d:
        store = SweepStore(d, plan, resume=False)
        payloads = _payloads(plan, plan.runs)
        while True:
            t = clock()
            item = next(payloads, None)
            cpu["build"] += clock() - t
            if item is None:
                break
            row = run_task(item, cpu)  # the sweep's own task: adds "simulate" and "metrics"
            t = clock()
            store.add(row)
            cpu["store"] += clock() - t
        t = clock()
        store.close()
        load_results(d)
        cpu["store"] += clock() - t
    rest = cpu["build"] + cpu["metrics"] + cpu["store"]
    return {**{k: round(v, 4) for k, v in cpu.items()}, "overhead": round(rest / cpu["simulate"], 4)}


def _ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b)]


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "per_round": [round(v, 4) for v in values]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12, help="runs per case and round")
    ap.add_argument("--duration", type=float, default=60.0, help="simulated seconds per run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians over them)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES,
                    help="lean-1: one worker, only the metrics availability, p99, recovery, cost")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 runs of 4 s, 1 round")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.rounds = 2, 4.0, 1

    from hailan_sim import simulate
    from hailan_sim.sweeps.spec import DEFAULT_METRICS

    plans = {"full": _plan(args.runs, args.duration, list(DEFAULT_METRICS)),
             "lean": _plan(args.runs, args.duration, ["availability", "p99", "recovery", "cost"])}
    scenarios = [plans["full"].scenario(r) for r in plans["full"].runs]
    cases = list(dict.fromkeys(args.cases))

    # Untimed warm-up of every case: imports (Dask's above all), first-use caches.
    warm = {"full": _plan(1, 2.0, list(DEFAULT_METRICS)), "lean": _plan(1, 2.0, ["availability"])}
    warm_scenarios = [warm["full"].scenario(r) for r in warm["full"].runs]
    for case in cases:
        _case(case, warm, warm_scenarios)
    simulate(scenarios[0].with_run(duration_s=2, warmup_s=0))

    out: dict = {"settings": {"runs": args.runs, "duration_s": args.duration, "rounds": args.rounds,
                              "cases": cases, "quick": args.quick},
                 "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                             "loadavg_before": os.getloadavg()},
                 "cases": {}}
    parts: dict[str, list[dict]] = {"full": [], "lean": []}
    wall: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[float]] = {c: [] for c in cases}
    hashes: dict[str, list[str]] = {}
    for r in range(args.rounds):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for case in order:
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            got = _case(case, plans, scenarios)
            wall[case].append(time.perf_counter() - t0)
            cpu[case].append(time.process_time() - c0)
            hashes.setdefault(case, got)
            if got != hashes[case]:
                hashes[case] = []  # not even the same case agrees with itself
            print(f"round {r + 1}/{args.rounds} {case:>8}: {wall[case][-1]:7.1f} s wall, "
                  f"{args.runs / wall[case][-1] * 60:6.1f} runs/min", file=sys.stderr)
        for kind in ("full", "lean"):
            gc.collect()
            parts[kind].append(_parts(plans[kind]))

    for case in cases:
        med = statistics.median(wall[case])
        out["cases"][case] = {"wall_s": [round(w, 3) for w in wall[case]],
                              "cpu_s_this_process": [round(c, 3) for c in cpu[case]],
                              "median_wall_s": round(med, 3),
                              "runs_per_min": round(args.runs / med * 60, 2),
                              "spread": round((max(wall[case]) - min(wall[case])) / med, 3)}
    ref = hashes[cases[0]]
    out["same_hashes"] = bool(ref) and all(h == ref for h in hashes.values())

    # Overheads: a sweep run against a bare simulate() of the same scenario. In process, so
    # CPU time compares too. 1 - ratio would be a saving; figures below the noise show as such.
    ratios: dict = {}
    for case in ("local-1", "lean-1"):
        if "bare" in wall and case in wall:
            ratios[f"overhead_{case}"] = {
                "wall": _summary([x - 1 for x in _ratios(wall[case], wall["bare"])]),
                "cpu": _summary([x - 1 for x in _ratios(cpu[case], cpu["bare"])]),
                "target": OVERHEAD_TARGET}
    for case in ("local-2", "dask-2"):
        if "local-1" in wall and case in wall:
            ratios[f"speedup_{case}"] = {**_summary(_ratios(wall["local-1"], wall[case])),
                                         "target": SPEEDUP_TARGET}
    for name, v in ratios.items():
        if name.startswith("overhead"):
            v["pass"] = v["cpu"]["median"] < OVERHEAD_TARGET
        else:
            v["pass"] = v["median"] >= SPEEDUP_TARGET
    out["ratios"] = ratios
    # The overhead by parts: CPU of what is not simulate() over simulate(), per round.
    out["overhead_by_parts"] = {
        kind: {**_summary([p["overhead"] for p in runs]), "target": OVERHEAD_TARGET,
               "pass": statistics.median(p["overhead"] for p in runs) < OVERHEAD_TARGET,
               "cpu_s": runs}
        for kind, runs in parts.items()}
    out["machine"]["loadavg_after"] = os.getloadavg()

    print(f"{args.runs} runs x {args.duration:g} simulated s, {args.rounds} interleaved rounds; "
          f"load average {out['machine']['loadavg_before'][0]:.1f} -> {out['machine']['loadavg_after'][0]:.1f}")
    print(f"{'case':>8} {'runs/min (median)':>18} {'spread':>7}")
    for case in cases:
        c = out["cases"][case]
        print(f"{case:>8} {c['runs_per_min']:18.1f} {c['spread']:7.2f}")
    for name, v in ratios.items():
        if name.startswith("overhead"):
            print(f"{name}: cpu {v['cpu']['median']:+.1%} (rounds {', '.join(f'{x:+.1%}' for x in v['cpu']['per_round'])}),"
                  f" wall {v['wall']['median']:+.1%}; target < {OVERHEAD_TARGET:.0%}: {'met' if v['pass'] else 'not met'}")
        else:
            print(f"{name}: {v['median']:.2f}x (rounds {', '.join(f'{x:.2f}' for x in v['per_round'])});"
                  f" target >= {SPEEDUP_TARGET}x: {'met' if v['pass'] else 'not met'}")
    for kind, v in out["overhead_by_parts"].items():
        last = v["cpu_s"][-1]
        print(f"overhead by parts ({kind} metrics): {v['median']:+.2%} of simulate's CPU (rounds "
              f"{', '.join(f'{x:+.2%}' for x in v['per_round'])}; last round: build {last['build']:.3f} s, "
              f"metrics {last['metrics']:.3f} s, store {last['store']:.3f} s, simulate {last['simulate']:.2f} s);"
              f" target < {OVERHEAD_TARGET:.0%}: {'met' if v['pass'] else 'not met'}")
    print(f"same event-log hashes in every case and round: {out['same_hashes']}")
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(out, indent=2))
    return 0 if out["same_hashes"] else 1


if __name__ == "__main__":
    sys.exit(main())

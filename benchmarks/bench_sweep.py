"""Sweep throughput: runs per minute with 1 and 2 local workers and a 2-worker Dask
LocalCluster, and the per-run overhead of a sweep over a bare ``simulate`` call.

    python benchmarks/bench_sweep.py --runs 12 --duration 60 [--json bench-sweep.json]

Every case runs the same ``--runs`` runs: the default scenario with the ``seed`` profile,
``--duration`` simulated seconds, seeds derived by the sweep (one point, ``--runs``
replications, no faults). ``bare`` simulates them one after another in this process (what a
hand-written loop does); ``local-1`` is the sweep with one worker (in process: the overhead
is building each run's scenario, measuring it and writing it to Parquet); ``lean-1`` is the same
with only availability, p99, recovery and cost (no sweep metric but `invariants` keeps
the event log any more: retry amplification and breaker trips come from counts the engine
keeps);
``local-2`` and ``dask-2`` use two worker processes. Wall-clock times: on a shared machine, compare ratios
measured in one invocation, and say what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import yaml


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--cases", nargs="+", default=["bare", "local-1", "lean-1", "local-2", "dask-2"],
                    help="lean-1: one worker, only the metrics "
                         "(availability, p99, recovery, cost)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)

    from hailan_sim import simulate
    from hailan_sim.sweeps import run_sweep
    from hailan_sim.sweeps.spec import DEFAULT_METRICS

    plan = _plan(args.runs, args.duration, list(DEFAULT_METRICS))
    lean = _plan(args.runs, args.duration, ["availability", "p99", "recovery", "cost"])
    scenarios = [plan.scenario(r) for r in plan.runs]
    simulate(scenarios[0].with_run(duration_s=2, warmup_s=0))  # warm imports and caches
    out: dict = {"runs": args.runs, "duration_s": args.duration, "cpus": os.cpu_count(),
                 "loadavg_before": os.getloadavg(), "cases": {}}
    hashes = {}
    for case in args.cases:
        t0, c0 = time.perf_counter(), time.process_time()
        if case == "bare":
            hashes[case] = [simulate(s).event_log_sha256 for s in scenarios]
        else:
            kind, workers = case.split("-")
            with tempfile.TemporaryDirectory() as d:
                table = run_sweep(lean if kind == "lean" else plan, d, workers=int(workers),
                                  executor="dask" if kind == "dask" else "local")
            hashes[case] = table["event_log_sha256"].tolist()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        out["cases"][case] = {"wall_s": round(wall, 2), "runs_per_min": round(args.runs / wall * 60, 2),
                              "s_per_run": round(wall / args.runs, 3), "cpu_s_this_process": round(cpu, 2)}
        print(f"{case:>8}: {wall:7.1f} s wall, {args.runs / wall * 60:6.1f} runs/min", file=sys.stderr)
    ref = next(iter(hashes.values()))
    out["same_hashes"] = all(h == ref for h in hashes.values())
    c = out["cases"]
    # local-1 and lean-1 run in this process, so their CPU time is comparable with bare's
    # even when other processes share the machine; wall time is not.
    for case in ("local-1", "lean-1"):
        if "bare" in c and case in c:
            out[f"overhead_{case}_wall"] = round(c[case]["wall_s"] / c["bare"]["wall_s"] - 1, 4)
            out[f"overhead_{case}_cpu"] = round(c[case]["cpu_s_this_process"] / c["bare"]["cpu_s_this_process"] - 1, 4)
    if "local-1" in c and "local-2" in c:
        out["speedup_local_2"] = round(c["local-1"]["wall_s"] / c["local-2"]["wall_s"], 3)
    if "local-1" in c and "dask-2" in c:
        out["speedup_dask_2"] = round(c["local-1"]["wall_s"] / c["dask-2"]["wall_s"], 3)
    out["loadavg_after"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if out["same_hashes"] else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Where one checker example's CPU goes, by area of the code (issue 12: "the measured ceiling
and where the time goes, with the profile to show it").

One example of the default check, as ``hailan-sim check --profile P`` judges it: the first
generated schedule with a fault (``bench_checker.generated``), simulated with its event log
kept, then every invariant evaluated against the fault-free baseline of its seed (the
baseline is simulated and its views built before profiling starts: the checker shares them
across the examples of a seed). The determinism re-run is left out: the checker samples it
(``--rerun-every``). cProfile's own overhead inflates Python-heavy code, so the shares are
what to read, not the seconds.

Areas, by the file a function is defined in (its own time, ``tottime``):

  engine     hailan_sim/sim/ (client pipeline, kernel, control plane, faults, messaging)
  models     hailan_sim/models/ (registry, balancers, breakers, tokens, distributions)
  event log  hailan_sim/sim/eventlog.py (hashing and keeping the records)
  simpy      the SimPy package
  invariants hailan_sim/properties/
  numpy/pandas
  other      the interpreter's built-ins and everything else

Usage: python benchmarks/profile_example.py [--profile seed|hardened] [--quick]
       [--top N] [--pstats FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_checker import check_scenario, generated, names  # noqa: E402

AREAS = ("engine", "models", "event log", "simpy", "invariants", "numpy/pandas", "other")


def _package_areas() -> dict[str, str]:
    """Each hailan_sim subpackage's directory on disk -> its area (an editable install runs
    the source tree's sim/, models/, properties/, not .../hailan_sim/...)."""
    import hailan_sim.models
    import hailan_sim.properties
    import hailan_sim.sim

    return {str(Path(hailan_sim.sim.__file__).parent) + "/": "engine",
            str(Path(hailan_sim.models.__file__).parent) + "/": "models",
            str(Path(hailan_sim.properties.__file__).parent) + "/": "invariants"}


def classify(filename: str, packages: dict[str, str]) -> str:
    for d, a in packages.items():
        if a == "engine" and filename == d + "eventlog.py":
            return "event log"
    for d, a in packages.items():
        if filename.startswith(d):
            return a
    if "/simpy/" in filename:
        return "simpy"
    if "/numpy/" in filename or "/pandas/" in filename:
        return "numpy/pandas"
    return "other"


def profile_example(profile: str, quick: bool) -> tuple[pstats.Stats, dict]:
    from hailan_sim.properties import invariants as inv
    from hailan_sim.properties.strategies import with_faults
    from hailan_sim.sim import simulate

    sc = check_scenario(profile, quick)
    budget = generated(sc, 2 if quick else 8, quick)
    faults, seed = next((e for e in budget if e[0]), budget[0])
    s = with_faults(sc, faults).with_run(seed=seed)
    baseline = simulate(inv.without_faults(s), keep_events=True, progress=False)
    # The seed's shared views (the baseline's log columns and what invariants derive from
    # it), built once per seed by the checker: built here by judging the baseline itself.
    inv.evaluate(inv.Record(scenario=s, result=baseline, baseline=baseline), names())
    prof = cProfile.Profile()
    prof.enable()
    result = simulate(s, keep_events=True, progress=False)
    inv.evaluate(inv.Record(scenario=s, result=result, baseline=baseline), names())
    prof.disable()
    return pstats.Stats(prof), {"profile": profile, "faults": [f.model_dump() for f in faults],
                                "seed": seed, "events": result.event_count}


def by_area(stats: pstats.Stats) -> tuple[dict[str, float], list[tuple]]:
    packages = _package_areas()
    totals = dict.fromkeys(AREAS, 0.0)
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        a = classify(filename, packages)
        totals[a] += tt
        rows.append((tt, nc, a, f"{Path(filename).name}:{line}({func})"))
    rows.sort(key=lambda r: (-r[0], r[3]))
    return totals, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=("seed", "hardened"), default="seed")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 s simulated")
    ap.add_argument("--top", type=int, default=25, help="functions to list by own time (default 25)")
    ap.add_argument("--pstats", metavar="FILE", help="also save the raw profile (snakeviz, pstats)")
    ap.add_argument("--json", metavar="FILE", help="also write the areas and the top functions as JSON")
    args = ap.parse_args(argv)

    stats, info = profile_example(args.profile, args.quick)
    if args.pstats:
        stats.dump_stats(args.pstats)
    totals, rows = by_area(stats)
    total = sum(totals.values()) or 1.0
    print(f"one {args.profile} example of the default check: {info['faults']} seed {info['seed']}")
    print(f"{'area':14s} {'own s':>8s} {'share':>7s}")
    for a in AREAS:
        print(f"{a:14s} {totals[a]:8.2f} {totals[a] / total:7.1%}")
    print(f"{'total':14s} {total:8.2f}  (under cProfile)")
    print(f"\ntop {args.top} functions by own time")
    for tt, nc, a, name in rows[:args.top]:
        print(f"{tt:8.3f} s {tt / total:6.1%} {nc:>10d} calls  {a:12s} {name}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            **info, "areas_s": totals, "total_s": total,
            "top": [{"own_s": tt, "calls": nc, "area": a, "function": n} for tt, nc, a, n in rows[:args.top]],
        }, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

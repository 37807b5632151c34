#!/usr/bin/env python3
"""CPU seconds of each invariant on one example, as the checker pays them per example.

Simulates one schedule of the default check (``--profile P``, the first generated schedule
with a fault, as benchmarks/bench_checker.py's split) and its baseline once, then judges a
first record (the baseline's views built) and times a second record of the same run and
baseline, its own log columns rebuilt: what every later example of that seed costs. With
``--save FILE`` / ``--load FILE`` the simulated pair is pickled, so the same runs can be
judged by two versions of properties/ (e.g. an exported tree on PYTHONPATH) back to back.

    python tools/invariant_cost.py --profile seed --save /tmp/pair.pkl
    PYTHONPATH=/tmp/old-tree python tools/invariant_cost.py --load /tmp/pair.pkl
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="seed", choices=("seed", "hardened"))
    ap.add_argument("--save", metavar="FILE", help="pickle the simulated run and baseline to FILE")
    ap.add_argument("--load", metavar="FILE", help="judge the pair pickled in FILE instead of simulating")
    args = ap.parse_args(argv)

    from hailan_sim.properties import invariants as inv
    from hailan_sim.properties import record as rec_mod

    if args.load:
        s, result, baseline = pickle.loads(Path(args.load).read_bytes())
        try:  # a pair pickled before the kept log was columnar (issue 12): its tuples
            import dataclasses

            from hailan_sim.sim.eventlog import KeptLog

            if isinstance(result._events, list):
                result = dataclasses.replace(result, _events=KeptLog.from_records(result._events))
                baseline = dataclasses.replace(baseline, _events=KeptLog.from_records(baseline._events))
        except ImportError:  # a version before KeptLog reads the tuples itself
            pass
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_checker import check_scenario, generated

        from hailan_sim.properties.strategies import with_faults
        from hailan_sim.sim import simulate

        sc = check_scenario(args.profile)
        faults, seed = next(e for e in generated(sc, 8) if e[0])
        s = with_faults(sc, faults).with_run(seed=seed)
        t = time.process_time()
        result = simulate(s, keep_events=True)
        print(f"{'simulation with its log':<32}{time.process_time() - t:7.3f}")
        baseline = simulate(inv.without_faults(s), keep_events=True)
        if args.save:
            Path(args.save).write_bytes(pickle.dumps((s, result, baseline)))
    names = [n for n in inv.INVARIANTS if n != "determinism"]
    # A kept log's batches are joined into columns once per run (sim.eventlog.KeptLog,
    # issue 12): part of this run's log columns.
    t = time.process_time()
    if hasattr(result._events, "columns"):
        result._events.columns()
    joined = time.process_time() - t
    inv.evaluate(inv.Record(scenario=s, result=result, baseline=baseline), names)  # the seed's first
    rec_mod._LOGS.pop(id(result), None)
    from hailan_sim.properties import causes

    causes._TREES.pop(id(result), None)  # the span trees, also built once per run
    record = inv.Record(scenario=s, result=result, baseline=baseline)
    per = {}
    t0 = time.process_time()
    _ = record.log
    per["log columns"] = time.process_time() - t0 + joined
    for n in names:
        t = time.process_time()
        inv.get(n)(record)
        per[n] = time.process_time() - t
    for k, v in per.items():
        print(f"{k:<32}{v:7.3f}")
    print(f"{'total per example':<32}{sum(per.values()):7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

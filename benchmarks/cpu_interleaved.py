#!/usr/bin/env python3
"""CPU time of ``simulate`` on the default scenario, per profile and per tree, interleaved.

For comparisons on a shared machine where wall time means little: each run is a fresh
subprocess (imports and a 0.5 s warm-up run untimed) that reports ``time.process_time`` of
one ``simulate`` call; the cases (tree x profile) are rotated round by round and the median
of each is reported with its calls and event-log hash (which must agree across trees for a
behaviour-preserving change).

    python benchmarks/cpu_interleaved.py --tree before=/tmp/a/inst --tree after=/tmp/b/inst \\
        --profiles none hardened --duration 60 --rounds 5 [--keep-events]

A tree is a directory to put on PYTHONPATH (e.g. ``git archive C | tar -x -C /tmp/c/src``
then ``pip install --no-deps --target /tmp/c/inst /tmp/c/src``); ``--tree here=`` (empty)
uses whatever ``hailan_sim`` this Python imports. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = """
import gc, sys, time
from hailan_sim import default_scenario, simulate
prof = None if sys.argv[1] == "none" else sys.argv[1]
sc = default_scenario().with_run(duration_s=float(sys.argv[2]), warmup_s=0, seed=int(sys.argv[3]))
keep = sys.argv[4] == "keep"
warm = default_scenario().with_run(duration_s=0.5, warmup_s=0, seed=int(sys.argv[3]))
if prof:
    sc, warm = sc.with_profile(prof), warm.with_profile(prof)
simulate(warm, progress=False)
gc.collect()
t = time.process_time()
r = simulate(sc, progress=False, keep_events=keep)
t = time.process_time() - t
print(t, int(r.services["total"].sum()), r.event_log_sha256)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, metavar="LABEL=PATH")
    ap.add_argument("--profiles", nargs="+", default=["none", "hardened"])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep-events", action="store_true",
                    help="keep the event log, as the checker's runs do (simulate(..., keep_events=True))")
    a = ap.parse_args(argv)
    trees = dict(t.split("=", 1) for t in a.tree)
    cases = [(t, p) for t in trees for p in a.profiles]
    runs: dict = {}
    for i in range(a.rounds):
        k = i % len(cases)
        for tree, prof in cases[k:] + cases[:k]:
            env = dict(os.environ)
            if trees[tree]:
                env["PYTHONPATH"] = trees[tree]
            out = subprocess.run([sys.executable, "-c", _CHILD, prof, str(a.duration), str(a.seed),
                                  "keep" if a.keep_events else "nokeep"],
                                 env=env, capture_output=True, text=True, check=True).stdout.split()
            runs.setdefault(f"{tree}/{prof}", []).append((float(out[0]), int(out[1]), out[2]))
            print(f"round {i + 1}: {tree}/{prof} {float(out[0]):.3f} s cpu, load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr)
    summary = {k: {"median_cpu_s": statistics.median(r[0] for r in v), "cpu_s": [r[0] for r in v],
                   "calls": v[0][1], "sha256": v[0][2], "same_log_every_round": len({r[2] for r in v}) == 1}
               for k, v in runs.items()}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Record every invariant's verdict (holds + message) for a fixed set of runs, and compare.

A guard for performance work on ``properties/`` (issue 12): a refactor of how the invariants
read the record must not change any verdict. The runs:

* every scenario in ``tests/scenarios/`` (as written);
* every shipped counterexample in ``findings/counterexamples/`` (as written);
* on the default scenario with ``--profile seed`` and ``--profile hardened``, at the check's
  duration (``check_duration``, warm-up 10 s, as ``hailan-sim check`` runs it): the first
  ``--generated`` fault schedules the default check's search generates (seed 0, up to 2
  faults) and the cover phase's single faults at indices ``--cover`` (default 0, 3, 6, ...).

Each run's entry: its label, the event-log hash, and per invariant (all but ``determinism``)
``[holds, explanation]``. ``--write FILE`` stores them; ``--compare FILE`` recomputes and
exits 1 listing every difference (0 when identical). Runs are simulated ``--jobs`` at a
time in forked processes (verdicts do not depend on it).

    python tools/verdicts.py --write /tmp/verdicts-before.json --jobs 2
    python tools/verdicts.py --compare /tmp/verdicts-before.json --jobs 2
    python tools/verdicts.py --list            # the runs' labels only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check_scenario(profile: str):
    """The default scenario as ``hailan-sim check --profile PROFILE`` runs it."""
    from hailan_sim.models import default_scenario
    from hailan_sim.properties.checker import check_duration

    sc = default_scenario().with_profile(profile)
    sc = sc.with_run(warmup_s=min(sc.run.warmup_s, 10.0))
    return sc.with_run(duration_s=check_duration(sc))


def runs(generated: int, cover_every: int) -> list[tuple[str, object]]:
    """``(label, scenario)`` for every run of the set, in a fixed order."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import strategies as st

    from hailan_sim.models.loader import load_scenario
    from hailan_sim.properties.alphabet import cover_faults
    from hailan_sim.properties.checker import _generated, fault_horizon
    from hailan_sim.properties.strategies import fault_schedules, with_faults

    out = []
    for path in sorted((ROOT / "tests" / "scenarios").glob("*.yaml")):
        out.append((f"tests/scenarios/{path.name}", load_scenario(path)))
    for path in sorted((ROOT / "findings" / "counterexamples").glob("*.yaml")):
        out.append((f"findings/counterexamples/{path.name}", load_scenario(path)))
    for profile in ("seed", "hardened"):
        sc = check_scenario(profile)
        horizon = fault_horizon(sc)
        if generated:
            # The default check's search (checker.check with seed 0, max_faults 2, n_seeds 3).
            strategy = st.tuples(fault_schedules(sc, max_faults=2, min_faults=0, horizon=horizon),
                                 st.integers(0, 2))
            search = settings(max_examples=generated, derandomize=False, database=None, deadline=None,
                              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
            for i, (faults, seed) in enumerate(_generated(strategy, search, 0)[:generated]):
                out.append((f"{profile} generated #{i} seed {seed}",
                            with_faults(sc, faults).with_run(seed=seed)))
        if cover_every:
            for i, f in enumerate(cover_faults(sc, horizon)):
                if i % cover_every == 0:
                    out.append((f"{profile} cover #{i} {f.kind}", with_faults(sc, [f]).with_run(seed=0)))
    return out


def judge(scenario) -> dict:
    from hailan_sim.properties import invariants as inv

    names = [n for n in inv.INVARIANTS if n != "determinism"]
    record = inv.Record.from_scenario(scenario, rerun=False)
    return {"event_log_sha256": record.result.event_log_sha256,
            "verdicts": {v.name: [bool(v.holds), v.explanation] for v in inv.evaluate(record, names)}}


_SCENARIOS: list = []


def _judge_nth(i: int) -> dict:
    return judge(_SCENARIOS[i])


def record_all(labelled, jobs: int) -> dict:
    import multiprocessing

    _SCENARIOS[:] = [sc for _, sc in labelled]
    if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_judge_nth, range(len(labelled)), chunksize=1)
    else:
        results = [judge(sc) for _, sc in labelled]
    return {label: res for (label, _), res in zip(labelled, results)}


def differences(before: dict, after: dict) -> list[str]:
    out = []
    for label in sorted(set(before) | set(after)):
        if label not in before or label not in after:
            out.append(f"{label}: only in {'after' if label in after else 'before'}")
            continue
        b, a = before[label], after[label]
        if b["event_log_sha256"] != a["event_log_sha256"]:
            out.append(f"{label}: event-log hash {b['event_log_sha256'][:12]} -> {a['event_log_sha256'][:12]}")
        for name in sorted(set(b["verdicts"]) | set(a["verdicts"])):
            if b["verdicts"].get(name) != a["verdicts"].get(name):
                out.append(f"{label}: {name}: {b['verdicts'].get(name)} -> {a['verdicts'].get(name)}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", metavar="FILE", help="record the verdicts to FILE (JSON)")
    what.add_argument("--compare", metavar="FILE", help="recompute and compare with FILE; exit 1 on a difference")
    what.add_argument("--list", action="store_true", help="list the runs and exit")
    ap.add_argument("--generated", type=int, default=4, help="generated schedules per profile (default 4)")
    ap.add_argument("--cover", type=int, default=3, metavar="K",
                    help="every K-th cover fault per profile (default 3; 0: none)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, in forked processes (default 1)")
    args = ap.parse_args(argv)

    labelled = runs(args.generated, args.cover)
    if args.list:
        for label, _ in labelled:
            print(label)
        return 0
    t0 = time.perf_counter()
    got = record_all(labelled, args.jobs)
    print(f"{len(got)} runs judged in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.write:
        Path(args.write).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return 0
    diff = differences(json.loads(Path(args.compare).read_text(encoding="utf-8")), got)
    for line in diff:
        print(line)
    print(f"{len(diff)} difference(s) over {len(got)} runs", file=sys.stderr)
    return 1 if diff else 0


if __name__ == "__main__":
    raise SystemExit(main())

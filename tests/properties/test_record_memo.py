"""What invariants derive from a baseline is computed once per baseline and shared by every
record of it (issue 12), without changing any verdict."""

from __future__ import annotations

import pickle
from pathlib import Path

from hailan_sim.models.loader import load_scenario
from hailan_sim.properties import invariants as inv
from hailan_sim.properties.strategies import with_faults
from hailan_sim.sim import simulate

SMALL = Path(__file__).parent.parent / "scenarios" / "small.yaml"


def test_baseline_views_are_shared_and_change_no_verdict():
    sc = load_scenario(SMALL)
    crash = {"kind": "crash_instance", "instance": "back-0", "start_s": 8.0, "duration_s": 6.0}
    slow = {"kind": "slow", "target": "back", "factor": 10.0, "start_s": 10.0, "duration_s": 5.0}
    baseline = simulate(inv.without_faults(sc), keep_events=True)
    names = [n for n in inv.INVARIANTS if n != "determinism"]
    for fault in (crash, slow):
        s = with_faults(sc, [fault])
        result = simulate(s, keep_events=True)
        shared = inv.Record(scenario=s, result=result, baseline=baseline)
        got = [(v.name, v.holds, v.explanation, repr(v.details)) for v in inv.evaluate(shared, names)]
        # A copy of the baseline is another result: nothing derived from it is cached yet.
        fresh = inv.Record(scenario=s, result=result, baseline=pickle.loads(pickle.dumps(baseline)))
        assert fresh.baseline_log is not shared.baseline_log
        want = [(v.name, v.holds, v.explanation, repr(v.details)) for v in inv.evaluate(fresh, names)]
        assert got == want
    # Both records of the first baseline read the same derived views, computed once.
    again = inv.Record(scenario=s, result=result, baseline=baseline)
    assert again.baseline_requests is shared.baseline_requests
    assert ("orphans" in shared.baseline_log._memo and "requests" in shared.baseline_log._memo)

"""An example of hailan-sim in your own CI: property tests over fault schedules.

Copy this file into your test suite and point SCENARIO at your scenario file. Each test
runs the simulator under faults Hypothesis generates from the scenario's own topology and
checks invariants on the run's record. When one fails, Hypothesis shrinks the schedule to
a minimal one and prints it; save it with ``properties.checker.write_counterexample`` and
replay it with ``hailan-sim replay``.

Run it with: ``python -m pytest examples/test_resilience_example.py``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hailan_sim.models import default_scenario
from hailan_sim.properties import fault_schedules, with_faults
from hailan_sim.properties.checker import check_duration, fault_horizon
from hailan_sim.properties.invariants import Record, Verdict, evaluate, register, unregister

# Your scenario: a file (models.load_scenario("my-platform.yaml")) or the built-in one.
# Runs must be long enough to watch recovery: check_duration adds the policies' own
# recovery time after a 40 s fault window.
BASE = default_scenario().with_profile("hardened").with_run(warmup_s=10, duration_s=60)
SCENARIO = BASE.with_run(duration_s=check_duration(BASE, fault_window_s=20))

# One crash or one hang at a time, anywhere, ending early enough to watch the recovery.
schedules = fault_schedules(SCENARIO, max_faults=1, kinds=["crash_instance", "hang"],
                            horizon=fault_horizon(SCENARIO))


@settings(max_examples=2, deadline=None, derandomize=True, database=None)  # nightly: more examples
@given(faults=schedules, seed=st.integers(0, 1))
def test_one_crash_never_cascades(faults, seed):
    record = Record.from_scenario(with_faults(SCENARIO, faults).with_run(seed=seed), rerun=False)
    for verdict in evaluate(record, ["no_cascading_failure", "bounded_recovery", "conservation"]):
        assert verdict.holds, str(verdict)


def test_a_custom_invariant_of_your_own():
    """Register your own rule with the same interface: a function of the record that
    returns a Verdict. Here: login's p99 never exceeds 2 s in any window."""

    @register("login_p99_under_2s")
    def login_fast(record: Record) -> Verdict:
        w = record.result.windows
        slow = w[(w.endpoint == "login") & (w.p99_ms > 2000)]
        if slow.empty:
            return Verdict("login_p99_under_2s", True, "login's p99 stayed under 2 s in every window")
        first = float(slow.window_start_s.iloc[0])
        return Verdict("login_p99_under_2s", False,
                       f"login's p99 was {slow.p99_ms.iloc[0]:.0f} ms at {first:g} s", (first, first + 1))

    try:
        record = Record.from_scenario(with_faults(SCENARIO, []), rerun=False)
        (verdict,) = evaluate(record, ["login_p99_under_2s"])
        assert verdict.holds, str(verdict)
    finally:
        unregister("login_p99_under_2s")

"""The committed findings (docs/findings.md) still reproduce: each counterexample file in
findings/counterexamples/ violates the invariants the document says it violates under the
spec's `seed` profile, and replays to the same event-log hash. (Under `hardened` they all
hold; that replay is the slow test below.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from hailan_sim.models.loader import load_scenario
from hailan_sim.properties.invariants import Record, evaluate

FINDINGS = Path(__file__).parent.parent / "findings" / "counterexamples"

# file -> the invariants it violates under the objectives (issue 10; the others hold). The
# files predate issue 10 and will be regenerated (item 8); what changed, by design: every
# one is now also a cascade (every endpoint is checked, request by request), recovery is
# judged against rto_s (30 s), the dead-instance bound is the 20 s objective, the spec
# breaker's declared half-open limit is checked (bounded_recovery.yaml's breaker admits
# more), and the pay request's redeliveries are no longer counted as retry amplification.
# Since issue 9 (the spec's gRPC client has no breaker, so HTTP calls alone drive the
# client-wide breaker) conservation.yaml's breaker also admits more than its declared
# half-open limit (5 calls against 3 at 191.6 s). Since discovery lookups are no longer
# counted as calls or repeats (issue 10 item 3), conservation.yaml violates
# bounded_retry_amplification again, as finding A says: notification-service's retries add
# 15.0% to its calls to services (1239 repeats of 3206); seed's lookup before every call
# had diluted that share.
VIOLATES = {
    "conservation.yaml": {"conservation", "no_traffic_to_dead_instances", "bounded_recovery",
                          "no_cascading_failure", "breaker_legality", "bounded_retry_amplification"},
    "bounded_recovery.yaml": {"bounded_recovery", "breaker_legality", "no_cascading_failure"},
    "registry_outage.yaml": {"bounded_recovery", "no_cascading_failure"},
}
CHECKED = ["no_cascading_failure", "bounded_recovery", "conservation", "breaker_legality",
           "no_traffic_to_dead_instances", "token_safety", "bounded_retry_amplification"]


def test_every_committed_counterexample_is_listed_here():
    files = {p.name for p in FINDINGS.glob("*.yaml")}
    # The three files of finding A are one schedule, found by three invariants.
    assert files == set(VIOLATES) | {"no_traffic_to_dead_instances.yaml", "bounded_retry_amplification.yaml"}
    same = {load_scenario(FINDINGS / n).faults[0] for n in
            ("conservation.yaml", "no_traffic_to_dead_instances.yaml", "bounded_retry_amplification.yaml")}
    assert len(same) == 1


@pytest.mark.parametrize("name", sorted(VIOLATES))
def test_finding_reproduces_under_seed(name):
    scenario = load_scenario(FINDINGS / name)
    assert scenario.profile == "seed"
    record = Record.from_scenario(scenario, rerun=True)
    broken = {v.name for v in evaluate(record, [*CHECKED, "determinism"]) if not v.holds}
    assert broken == VIOLATES[name]  # determinism held: a re-run gave the same hash


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VIOLATES))
def test_finding_is_prevented_by_hardened(name):
    scenario = load_scenario(FINDINGS / name).with_profile("hardened")
    record = Record.from_scenario(scenario, rerun=False)
    assert all(v.holds for v in evaluate(record, CHECKED)), [str(v) for v in evaluate(record, CHECKED)]

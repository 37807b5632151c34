"""The project's own property test: the hardened profile holds every invariant on the
default topology, for the CI example budget (HAILAN_CHECK_EXAMPLES, default 3).

The seed profile is the spec as written and fails several invariants (docs/findings.md);
hardened is what we recommend, so a violation here is either a weakness of our
recommendation or a false alarm of an invariant, and both must be fixed.
"""

from __future__ import annotations

import os

import pytest

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hailan_sim.models import default_scenario
from hailan_sim.properties import fault_schedules, with_faults
from hailan_sim.properties.checker import check_duration, fault_horizon
from hailan_sim.properties.invariants import Record, evaluate, without_faults
from hailan_sim.properties.reach import lost_for_good
from hailan_sim.sim import simulate

BASE = default_scenario().with_profile("hardened").with_run(warmup_s=10, duration_s=60)
SCENARIO = BASE.with_run(duration_s=check_duration(BASE, fault_window_s=30))
EXAMPLES = int(os.environ.get("HAILAN_CHECK_EXAMPLES", "3"))

# Objectives hardened does not meet yet under the default objectives are named in NOT_MET_YET
# (docs/profiles.md, "hardened against the default objectives").
# Met since issue 10 item 7 (docs/profiles.md, "hardened against the default objectives"):
# - redundancy: a crash of an *entry* instance (iot-service-0) cost iot_sync 1.85% (budget
#   1%) while the gateway kept routing to it; hardened's gateway now retries connect failures
#   on another entry instance and ejects a dead one (policies.gateway);
# - token_safety: a key rotation at 18.075 s refused 71 calls (PyJWKClient's 30 s cooldown);
#   hardened publishes keys 300 s before they sign (tokens.key_publish_ahead_s);
# - endpoint_objectives: losing node-a1 left one ai-service instance at 100% and ai_chat's
#   p99 at 11.9 s; hardened runs a third (policies.min_instances, N+1);
# - bounded_retry_amplification: tokens.on_401: refresh_retry re-sent a call after a 401
#   without counting an attempt, so one call could reach its service 4 times against the
#   objective's 3; the resend is now one of retry.max_attempts (sim/client.py).
# The cascade through per-instance breakers that no_cascading_failure and redundancy saw when
# one of auth-service's two instances crashed is gone since hardened ejects failing hosts
# (Envoy outlier detection).
# - bounded_retry_amplification under clock_skew(node-a1, 3554 s) at 32.1 s, seed 0 (found by
#   HAILAN_CHECK_EXAMPLES=12): two callers of one list_orders drew a 401 from a skewed
#   verifier, each fetched a token and re-sent once: 4 calls to auth-service, but two
#   operations twice each. The invariant counted calls per service; it counts attempts per
#   operation now (the SRE book's limit is per request, ch. 22; docs/invariants.md 7).
NOT_MET_YET: set[str] = set()


@settings(max_examples=EXAMPLES, deadline=None)
@given(faults=fault_schedules(SCENARIO, max_faults=2, min_faults=1, horizon=fault_horizon(SCENARIO)),
       seed=st.integers(0, 1))
def test_hardened_holds_every_invariant(faults, seed):
    _assert_holds(faults, seed)


_BASELINES: dict = {}


def _assert_holds(faults, seed):
    scenario = with_faults(SCENARIO, faults).with_run(seed=seed)
    # A schedule that leaves no instance of a component for good (the only api-gateway,
    # consul or rabbitmq in a zone lost without restart; every instance of a service) breaks
    # bounded_recovery and endpoint_objectives under any profile: what brings a component
    # back is another instance of it, which is the topology's business, not a policy's
    # (docs/profiles.md, "Still not met"). The property is hardened's promise for every
    # schedule the default topology can survive; `hailan-sim check` still reports the others.
    assume(not lost_for_good(scenario))
    # Every schedule of one seed has the same fault-free baseline: run it once.
    if seed not in _BASELINES:
        _BASELINES[seed] = simulate(without_faults(scenario), keep_events=True)
    record = Record(scenario, simulate(scenario, keep_events=True), _BASELINES[seed])
    broken = [str(v) for v in evaluate(record)
              if not v.holds and v.name != "determinism" and v.name not in NOT_MET_YET]
    assert not broken, "\n".join(broken)


SLOW_EXAMPLES = 200


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, deadline=None, database=None)
@given(faults=fault_schedules(SCENARIO, max_faults=2, min_faults=1, horizon=fault_horizon(SCENARIO)),
       seed=st.integers(0, 1))
def test_hardened_holds_every_invariant_over_many_schedules(faults, seed):
    """The same property over SLOW_EXAMPLES generated schedules (issue 10: at least 200
    against hardened with no alarm), with the same NOT_MET_YET left out and the same
    schedules beyond any policy (reach.lost_for_good) set aside."""
    _assert_holds(faults, seed)


def test_the_example_file_runs():
    """examples/test_resilience_example.py is documentation that must keep working."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(root / "examples" / "test_resilience_example.py")],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

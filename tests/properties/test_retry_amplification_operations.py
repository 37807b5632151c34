"""bounded_retry_amplification counts attempts per operation, not per service (issue 10).

Found by the hardened property test (HAILAN_CHECK_EXAMPLES=12): node-a1's clock skewed by
3554 s makes the verifiers on it (auth-service-0, product-service-0) see nearly every token
as expired. A list_orders request then draws two 401s from two callers (user-service's
verify_token at auth-service-0, order-service's get_product at product-service-0); each
caller fetches a new token from auth-service and re-sends once. auth-service sees four
calls from one request, against one in the baseline, but no call was attempted more than
twice: the SRE book's limit is on attempts of the same request (ch. 22), and the four are
two operations, each twice.
"""

from __future__ import annotations

import numpy as np

from hailan_sim.models import default_scenario
from hailan_sim.properties.invariants import Record, get
from hailan_sim.properties.record import _log_of


def _skewed() -> Record:
    sc = (default_scenario().with_profile("hardened")
          .with_run(warmup_s=10, duration_s=45, seed=0))
    d = sc.model_dump()
    d["faults"] = [{"kind": "clock_skew", "node": "node-a1", "start_s": 20, "duration_s": 20, "skew_s": 3554}]
    return Record.from_scenario(type(sc).model_validate(d), rerun=False)


def test_two_callers_resending_after_a_401_are_two_operations_not_four_attempts():
    record = _skewed()
    log = _log_of(record.result)
    cs = log.rows("call_start")
    to_auth = cs[log.target[cs] == "auth-service"]
    # Independently of the invariant: some request made more calls to auth-service than the
    # objective's 3 attempts, so counted per service this run would break it.
    per_request = np.bincount(log.request[to_auth])
    assert per_request.max() > 3
    v = get("bounded_retry_amplification")(record)
    assert v.holds, str(v)
    assert v.details["max_ratio"] <= 2.0


def test_one_operation_attempted_beyond_the_objective_still_breaks_it():
    """The same run judged with a 1x objective: the resent calls are 2 attempts of one
    operation, so they are still seen (and named with their operation)."""
    v = get("bounded_retry_amplification")(_skewed(), factor=1)
    assert not v.holds
    assert v.details["worst"]["calls"] == 2 and v.details["worst"]["operation"] is not None
    assert f"calls to {v.details['worst']['target']}.{v.details['worst']['operation']}," in v.explanation

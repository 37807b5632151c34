"""policies.max_queue_wait_s: load shedding by service, the rule `hardened` carries for
ai-service (docs/profiles.md, "Load shedding at ai-service"). It does what a service's own
``max_queue_wait_s`` does, a service's own value wins, and bad names are one-line errors."""

from __future__ import annotations

import pytest

from hailan_sim.models import default_scenario
from hailan_sim.models.scenario import Scenario
from hailan_sim.sim import simulate
from tests._build import build, endpoint, op, svc, trace


def _scenario(service_wait=None, policy_wait=None):
    """One worker serving 100 ms calls, 30 arriving at once: the last waits 2.9 s."""
    extra = {} if service_wait is None else {"max_queue_wait_s": service_wait}
    policies = {"timeout_s": 60}
    if policy_wait is not None:
        policies["max_queue_wait_s"] = {"a": policy_wait}
    return build([svc("a", 3001, {"op": op(100)}, **extra)],
                 [endpoint("a.op", trace(*[1.0] * 30), timeout_s=60)], policies=policies)


def _shed(sc) -> int:
    return simulate(sc).mechanisms["shed"]


def test_the_policy_sheds_what_waited_too_long():
    assert _shed(_scenario()) == 0
    # Served at 1.0, 1.1, ..., the call started after waiting 1 s or more is refused: 20.
    assert _shed(_scenario(policy_wait=0.95)) == 20


def test_the_policy_does_what_the_service_field_does_and_the_field_wins():
    by_policy = simulate(_scenario(policy_wait=0.95)).event_log_sha256
    by_field = simulate(_scenario(service_wait=0.95)).event_log_sha256
    assert by_policy == by_field
    assert _shed(_scenario(service_wait=2.45, policy_wait=0.95)) == 5


def test_an_unknown_service_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"policies.max_queue_wait_s.nope: no such service; services are a"):
        Scenario.model_validate({**_scenario().model_dump(mode="python", exclude_unset=True),
                                 "policies": {"max_queue_wait_s": {"nope": 1.0}}})


def test_hardened_sheds_at_ai_service_and_its_names_are_skipped_elsewhere():
    hard = default_scenario().with_profile("hardened")
    assert hard.effective_policies().max_queue_wait_s == {"ai-service": 5.0}
    assert default_scenario().with_profile("seed").effective_policies().max_queue_wait_s is None
    # A scenario without an ai-service still takes the profile (and without an issuer,
    # no tokens).
    sc = Scenario.model_validate({**_scenario().model_dump(mode="python", exclude_unset=True),
                                  "profile": "hardened", "policies": {"tokens": {"enabled": False}}})
    assert sc.effective_policies().max_queue_wait_s == {"ai-service": 5.0}
    assert _shed(sc) == 0

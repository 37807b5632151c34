"""policies.min_instances: the N+1 capacity rule `hardened` carries (docs/profiles.md,
"ai-service's capacity"). A profile raises a service's instance count, never lowers it;
dumps keep the count the scenario set; bad names are one-line errors."""

from __future__ import annotations

import pytest

from hailan_sim.models import default_scenario
from hailan_sim.models.scenario import Scenario
from hailan_sim.sim import simulate


def _with(scenario: Scenario, **policies) -> Scenario:
    d = scenario.model_dump(mode="python", exclude_unset=True)
    d.setdefault("policies", {}).update(policies)
    return Scenario.model_validate(d)


def test_hardened_runs_three_ai_service_instances_one_per_zone():
    hard = default_scenario().with_profile("hardened")
    ai = [p for p in hard.placements() if p.instance.startswith("ai-service-")]
    assert [p.instance for p in ai] == ["ai-service-0", "ai-service-1", "ai-service-2"]
    assert sorted(p.zone for p in ai) == sorted({n.zone for n in hard.nodes})  # a, b, c
    assert default_scenario().with_profile("seed").service("ai-service").instances == 2
    assert default_scenario().service("ai-service").instances == 2


def test_a_minimum_raises_and_never_lowers():
    base = default_scenario()
    s = _with(base, min_instances={"ai-service": 4, "user-service": 1})
    assert s.service("ai-service").instances == 4
    assert s.service("user-service").instances == base.service("user-service").instances == 3


def test_dumps_keep_the_scenarios_own_count_and_load_back_the_same():
    hard = default_scenario().with_profile("hardened")
    assert hard.with_profile("seed").service("ai-service").instances == 2
    assert hard.with_profile(None).service("ai-service").instances == 2
    assert hard.with_run(seed=5).service("ai-service").instances == 3
    again = Scenario.model_validate(hard.model_dump(mode="python", exclude_unset=True))
    assert again == hard


def test_unknown_service_and_a_minimum_above_autoscaling_are_refused():
    with pytest.raises(ValueError, match=r"policies\.min_instances\.ai-servic: no such service"):
        _with(default_scenario(), min_instances={"ai-servic": 3})
    d = default_scenario().model_dump(mode="python", exclude_unset=True)
    i = next(i for i, s in enumerate(d["services"]) if s["name"] == "ai-service")
    d["services"][i]["autoscaling"] = {"min_instances": 1, "max_instances": 2}
    d["policies"] = {"min_instances": {"ai-service": 3}}
    with pytest.raises(ValueError, match=r"policies\.min_instances\.ai-service: 3 is above "
                                         rf"services\[{i}\]\.autoscaling\.max_instances \(2\)"):
        Scenario.model_validate(d)


def test_the_third_instance_serves_calls():
    s = default_scenario().with_profile("hardened").with_run(duration_s=20, warmup_s=2)
    ev = simulate(s, keep_events=True).events()
    served = ev[(ev.event == "work_end") & (ev.instance == "ai-service-2")]
    assert len(served) > 0 and (served.outcome == "ok").all()

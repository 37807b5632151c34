"""A scenario written out and read back means the same thing.

"Written out" is every way a user or the project writes one: ``Scenario.to_yaml()`` and
pydantic's dumps (``model_dump()``, ``exclude_none``, ``exclude_unset``,
``exclude_defaults``, ``model_dump_json()``), written as YAML with PyYAML's own
``safe_dump`` as a user would. Two promises, over generated scenarios and every profile:

1. dump -> load gives the same scenario: the same effective policies, the same dump;
2. dump -> add ``profile: P`` -> load is the scenario started from profile P
   (``with_profile(P)``): a policy default that a dump merely wrote out must not override
   the profile's value. (issue 8: ``default_scenario()`` dumped with ``exclude_none`` and
   given ``profile: hardened`` ran exactly as with no profile.)

And for a few examples, the same event-log hash on a short run.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hailan_sim.models.loader import default_scenario, parse_scenario
from hailan_sim.models.policies import PROFILES
from hailan_sim.models.scenario import Scenario
from hailan_sim.properties.strategies import balancers, retry_policies, sliding_window_breakers, spec_breakers


def examples(n: int) -> int:
    return n * 10 if os.environ.get("HAILAN_HYPOTHESIS_PROFILE") == "deep" else n


SMALL = """\
name: rt
run: {duration_s: 5, seed: 3}
infrastructure:
  - {name: consul, kind: registry, port: 8500, capacity: 16, latency_ms: {dist: constant, value: 0.3}}
services:
  - name: front
    port: 3001
    instances: 2
    workers: 4
    depends_on: [back, auth-service]
    operations:
      home:
        service_time_ms: {dist: exponential, mean: 2}
        calls:
          seq:
            - {call: back.item}
            - {call: back.item, timeout_s: 0.5}
  - name: back
    port: 3002
    instances: 2
    workers: 2
    operations:
      item: {service_time_ms: {dist: exponential, mean: 3}, idempotent: true}
  - name: auth-service
    port: 3003
    instances: 1
    workers: 4
    operations:
      issue_token: {service_time_ms: {dist: constant, value: 2}}
workload:
  endpoints:
    - {name: home, entry: front.home, arrival: {kind: poisson, rate: 50}, timeout_s: 2}
"""

BASES = {"small": parse_scenario(SMALL, "small.yaml"), "default": default_scenario()}
CALLEES = {"small": ["back", "auth-service"], "default": ["inventory-service", "payment-service"]}


def _data(model) -> dict:
    return model.model_dump(mode="json")


def _edges(base: str) -> st.SearchStrategy:
    return st.lists(
        st.fixed_dictionaries(
            {"callee": st.sampled_from(CALLEES[base])},
            optional={
                "timeout_s": st.none() | st.sampled_from([0.25, 1.0, 5.0]),  # null: no timeout on this edge
                "breaker": st.none(),  # null: no breaker on this edge, whatever the defaults say
                "retry": st.fixed_dictionaries({"max_attempts": st.integers(1, 4)}),
                "bulkhead": st.none() | st.integers(1, 32),
            },
        ),
        max_size=2,
    )


def _own_policies(base: str) -> st.SearchStrategy:
    """What a scenario's own ``policies:`` may say: whole configs, single nested fields
    (merged over a profile's), explicit nulls, and defaults written on purpose."""
    return st.fixed_dictionaries(
        {},
        optional={
            "timeout_s": st.none() | st.sampled_from([0.5, 2.0, 5.0]),  # 5.0 is the default, said on purpose
            "breaker": st.none() | spec_breakers().map(_data) | sliding_window_breakers().map(_data),
            "retry": retry_policies().map(_data) | st.fixed_dictionaries({"max_attempts": st.integers(1, 4)}),
            "balancer": balancers().map(_data),
            "bulkhead": st.none() | st.integers(1, 64),
            "deadline_propagation": st.booleans(),
            "breaker_scope": st.sampled_from(["client", "service", "instance"]),
            "health_check": st.fixed_dictionaries(
                {}, optional={"deregister_critical_after_s": st.none() | st.sampled_from([30.0, 90.0]),
                              "content": st.sampled_from(["deep", "shallow"])}
            ),
            "edges": _edges(base),
        },
    )


@st.composite
def scenarios(draw, bases=tuple(BASES)) -> Scenario:
    base = draw(st.sampled_from(bases))
    data = BASES[base].model_dump(mode="json", exclude_unset=True)
    data["profile"] = draw(st.sampled_from((None, *PROFILES)))
    data["policies"] = draw(_own_policies(base))
    if draw(st.booleans()):
        data["workload"]["endpoints"][0]["timeout_s"] = None  # wait for ever (not the 60 s default)
    try:
        return Scenario.model_validate(data)
    except ValidationError:
        assume(False)


def _yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)  # PyYAML's own writer, as a user would


# Each way of writing a scenario out: (name, scenario -> plain data).
DUMPS = {
    "model_dump": lambda s: s.model_dump(mode="json"),
    "exclude_none": lambda s: s.model_dump(mode="json", exclude_none=True),
    "exclude_unset": lambda s: s.model_dump(mode="json", exclude_unset=True),
    "exclude_defaults": lambda s: s.model_dump(mode="json", exclude_defaults=True),
    "model_dump_json": lambda s: json.loads(s.model_dump_json()),
    "model_dump_json_exclude_none": lambda s: json.loads(s.model_dump_json(exclude_none=True)),
    "to_yaml": lambda s: yaml.safe_load(s.to_yaml()),
}


def _same(a: Scenario, b: Scenario) -> None:
    assert a.effective_policies() == b.effective_policies()
    assert a.model_dump(mode="json") == b.model_dump(mode="json")
    assert a.workload == b.workload and a.services == b.services and a.profile == b.profile


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from(sorted(DUMPS)))
def test_dump_and_load_give_the_same_scenario(scenario, how):
    data = DUMPS[how](scenario)
    _same(parse_scenario(_yaml(data), f"{how}.yaml"), scenario)
    # In Python too (python-mode dumps hold tuples, which YAML cannot write).
    _same(Scenario.model_validate(scenario.model_dump()), scenario)
    # to_yaml's own text, read by the project's YAML 1.2 loader.
    _same(parse_scenario(scenario.to_yaml(), "to_yaml.yaml"), scenario)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from(sorted(DUMPS)), st.sampled_from((None, *PROFILES)))
def test_a_profile_given_to_a_dump_applies_as_it_does_to_the_scenario(scenario, how, profile):
    data = DUMPS[how](scenario)
    data["profile"] = profile
    loaded = parse_scenario(_yaml(data), f"{how}.yaml")
    expected = scenario.with_profile(profile)
    assert loaded.effective_policies() == expected.effective_policies()
    assert loaded.model_dump(mode="json") == expected.model_dump(mode="json")


@pytest.mark.parametrize("how", sorted(DUMPS))
@pytest.mark.parametrize("profile", PROFILES)
def test_the_issue_case_default_scenario_dumped_then_given_a_profile(how, profile):
    """issue 8's report, for every dump and profile: the profile's policies apply."""
    data = DUMPS[how](default_scenario())
    data["profile"] = profile
    loaded = parse_scenario(_yaml(data), f"{how}.yaml")
    assert loaded.effective_policies() == default_scenario().with_profile(profile).effective_policies()
    if profile == "hardened":
        assert loaded.effective_policies().timeout_s == 2.0  # the profile's, not the 5 s default


def test_explicit_nulls_survive_exclude_none():
    """null means something where the default is not null: no timeout (endpoint, policies,
    an edge), never reap (health_check), no breaker over a profile's breaker."""
    text = SMALL.replace("timeout_s: 2}", "timeout_s: null}") + (
        "profile: hardened\n"
        "policies:\n"
        "  timeout_s: null\n"
        "  breaker: null\n"
        "  health_check: {deregister_critical_after_s: null}\n"
        "  edges: [{callee: back, timeout_s: null}]\n"
    )
    s = parse_scenario(text, "nulls.yaml")
    p = s.effective_policies()
    assert p.timeout_s is None and p.breaker is None and p.health_check.deregister_critical_after_s is None
    for dump in (s.model_dump(mode="json", exclude_none=True), json.loads(s.model_dump_json(exclude_none=True))):
        back = parse_scenario(_yaml(dump), "back.yaml")
        assert back.workload.endpoints[0].timeout_s is None
        assert back.effective_policies() == p
        assert back.effective_policies().edges[-1].overrides() == {"timeout_s": None}


def test_to_yaml_quotes_what_yaml_would_misread(tmp_path):
    s = BASES["small"]
    data = s.model_dump(mode="json", exclude_unset=True)
    data["description"] = "1e3"
    data["services"][1]["operations"] = {"on": data["services"][1]["operations"]["item"]}
    data["services"][0]["operations"]["home"]["calls"] = {"call": "back.on"}
    s = Scenario.model_validate({**data, "description": "1e3"})
    text = s.to_yaml(tmp_path / "s.yaml")
    assert (tmp_path / "s.yaml").read_text() == text
    back = parse_scenario(text)
    assert back.description == "1e3" and list(back.service("back").operations) == ["on"]
    assert yaml.safe_load(text)["description"] == "1e3"  # YAML 1.1 readers agree
    assert "on" in yaml.safe_load(text)["services"][1]["operations"]


def test_to_yaml_writes_a_file_trace_as_its_reference(tmp_path):
    from hailan_sim.models.datafiles import MAX_INLINE_TIMES

    times = [i * 0.001 for i in range(MAX_INLINE_TIMES + 5)]
    (tmp_path / "t.csv").write_text("t_s\n" + "".join(f"{t!r}\n" for t in times))
    text = SMALL.replace("arrival: {kind: poisson, rate: 50}", "arrival: {kind: trace, file: t.csv}")
    s = parse_scenario(text, "s.yaml", base_dir=tmp_path)
    out = s.to_yaml()
    assert "times_s" not in out and "file: t.csv" in out
    assert parse_scenario(out, "again.yaml", base_dir=tmp_path) == s
    inline = s.model_dump(mode="json", exclude_unset=True)
    del inline["workload"]["endpoints"][0]["arrival"]["file"]
    with pytest.raises(ValueError, match=r"workload.endpoints\[0\].arrival.times_s: 10005 times cannot be written inline"):
        Scenario.model_validate(inline).to_yaml()


@settings(max_examples=examples(4), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(bases=("small",)), st.sampled_from(["to_yaml", "exclude_none", "model_dump"]))
def test_a_round_trip_runs_the_same(scenario, how):
    from hailan_sim.sim import simulate

    scenario = scenario.with_run(duration_s=2.0, drain_s=2.0)
    loaded = parse_scenario(_yaml(DUMPS[how](scenario)), f"{how}.yaml")
    assert simulate(loaded).event_log_sha256 == simulate(scenario).event_log_sha256


@pytest.mark.parametrize("exclude_none", [False, True])
def test_a_file_dumped_the_old_way_with_a_profile_is_refused(tmp_path, exclude_none):
    """Files written before dumps kept to what a scenario set spell out every policy
    default; given a profile they silently meant "no profile" (issue 8: "Nothing warns").
    Loading one now says so, pointing at policies."""
    from hailan_sim.models.loader import ScenarioError, load_scenario
    from hailan_sim.models.policies import Policies

    data = default_scenario().model_dump(mode="json", exclude_unset=True)
    data["policies"] = {**Policies().model_dump(mode="json", exclude_none=exclude_none),
                        "edges": data["policies"]["edges"]}  # what the old serializer wrote
    data["profile"] = "hardened"
    (tmp_path / "old.yaml").write_text(_yaml(data))
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "old.yaml")
    msg = str(info.value)
    line = _yaml(data).splitlines().index("policies:") + 1
    assert msg.startswith(f"{tmp_path / 'old.yaml'}:{line}: policies: spells out every default"), msg
    assert "profile 'hardened' would change nothing" in msg and "Scenario.to_yaml()" in msg
    del data["profile"]  # without a profile the same file is fine: it means what it says
    (tmp_path / "old.yaml").write_text(_yaml(data))
    assert load_scenario(tmp_path / "old.yaml").effective_policies() == default_scenario().effective_policies()

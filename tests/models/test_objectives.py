"""Objectives as data: defaults shipped and sourced, validated, overridable, in the schema."""

from __future__ import annotations

import json

import pytest

from hailan_sim.cli import main
from hailan_sim.models import default_scenario, load_scenario
from hailan_sim.models.objectives import OBJECTIVE_KEYS, Objectives, describe_objectives, override_objectives

SMALL = """\
version: 1
name: small
services:
  - {name: a, port: 3001, instances: 1, workers: 1, depends_on: [],
     operations: {op: {service_time_ms: {dist: constant, value: 1}}}}
workload:
  arrival: {kind: poisson, rate: 1}
  endpoints:
    - {name: e, entry: a.op, weight: 1}
"""


def test_the_default_scenario_ships_the_model_defaults_and_overrides_ai_chat():
    shipped = default_scenario().objectives
    defaults = Objectives()
    for k in OBJECTIVE_KEYS:
        assert getattr(shipped, k) == getattr(defaults, k), k
    assert shipped.for_endpoint("ai_chat") == (0.999, 10000.0)
    assert shipped.for_endpoint("login") == (0.999, 1000.0)


def test_each_shipped_objective_has_a_source_comment():
    from importlib import resources

    text = resources.files("hailan_sim.models").joinpath("data/default.yaml").read_text(encoding="utf-8")
    block = text[text.index("\nobjectives:"):]
    for source in ("SRE book, ch. 4", "ch. 21", "ch. 22", "Static stability", "Consul", "Envoy", "PyJWKClient"):
        assert source in block, source


def test_a_scenario_without_objectives_gets_the_defaults(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SMALL)
    assert load_scenario(p).objectives == Objectives()


@pytest.mark.parametrize("section, message", [
    ("objectives: {rto_s: -3}", "objectives.rto_s"),
    ("objectives: {success_ratio: 1.5}", "objectives.success_ratio"),
    ("objectives: {endpoints: {nope: {p99_ms: 3}}}", "objectives.endpoints.nope: no such endpoint"),
    ("objectives: {rto: 3}", "objectives"),
])
def test_bad_objectives_are_one_line_errors(tmp_path, capsys, section, message):
    p = tmp_path / "bad.yaml"
    p.write_text(SMALL + section + "\n")
    assert main(["run", str(p), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(p) in err and message in err, err


def test_overrides_are_validated_and_name_what_is_allowed():
    o = override_objectives(Objectives(), [("rto_s", "60"), ("endpoints.login.p99_ms", "250")])
    assert o.rto_s == 60 and o.for_endpoint("login") == (0.999, 250.0)
    assert "rto_s=60" in describe_objectives(o) and "endpoints.login.p99_ms=250" in describe_objectives(o)
    with pytest.raises(ValueError, match="unknown objective; allowed: success_ratio"):
        override_objectives(Objectives(), [("rto", "60")])
    with pytest.raises(ValueError, match="rto_s"):
        override_objectives(Objectives(), [("rto_s", "soon")])


def test_schema_has_the_objectives_section(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "objectives" in schema["properties"]
    assert "rto_s" in json.dumps(schema)


def test_replay_prints_the_objectives_it_judged_by_with_command_line_overrides(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(SMALL.replace("name: small", "name: small\nrun: {duration_s: 20, warmup_s: 2}"))
    main(["replay", str(p), "--invariant", "conservation", "--objective", "rto_s=60", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["objectives"]["rto_s"] == 60
    assert main(["replay", str(p), "--invariant", "conservation", "--objective", "rto_s=0"]) == 2
    assert "--objective rto_s" in capsys.readouterr().err

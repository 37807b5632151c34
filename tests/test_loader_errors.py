"""Bad scenario files are rejected with one clear line: file, line, field path, what is allowed.

Every case starts from GOOD (a valid scenario written one field per line, so each field
has its own line number), breaks one thing, and checks the whole message: a single line,
``FILE:LINE: PATH: ...``, the problem, what would be allowed instead, and none of
pydantic's internal vocabulary. The CLI must turn the same errors into exit code 2 and
``hailan-sim: error: <that line>`` on stderr, in-process and as a real subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hailan_sim.cli import main
from hailan_sim.models.loader import ScenarioError, load_scenario, parse_scenario

GOOD = """\
name: shop
run:
  duration_s: 60
  seed: 1
infrastructure:
  - name: mq
    kind: queue
    port: 5672
    capacity: 8
    latency_ms: {dist: constant, value: 1}
services:
  - name: front
    port: 3001
    instances: 1
    workers: 2
    depends_on: [back, mq]
    operations:
      home:
        service_time_ms: {dist: exponential, mean: 2}
        calls:
          seq:
            - call: back.item
            - publish: back.audit
  - name: back
    port: 3002
    instances: 1
    workers: 2
    operations:
      item:
        service_time_ms:
          dist: empirical
          quantiles: [[0, 1], [0.5, 2], [1, 5]]
      audit:
        service_time_ms: {dist: constant, value: 1}
workload:
  endpoints:
    - name: home
      entry: front.home
      arrival:
        kind: poisson
        rate: 10
"""

# pydantic's own words and bookkeeping; none of it belongs in a message for people.
NOISE = ("tagged-union", "constrained-", "function-after", "Value error", "[key]",
         "Input should", "Field required", "Traceback", "\n")


def edit(old: str, new: str, text: str = GOOD) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once"
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """1-based number of the line where the only occurrence of ``needle`` starts."""
    assert text.count(needle) == 1, f"{needle!r} must occur exactly once"
    return text[: text.index(needle)].count("\n") + 1


def reject(tmp_path: Path, text: str | bytes, name: str = "scenario.yaml") -> tuple[Path, ScenarioError]:
    file = tmp_path / name
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(file)
    return file, info.value


def check(exc: ScenarioError, file, *, line: int | None, path: str | None, allowed: list[str]) -> str:
    msg = str(exc)
    assert msg.splitlines() == [msg], msg
    where = f"{file}:{line}" if line is not None else f"{file}"
    assert msg.startswith(where + ": "), f"expected {where!r} at the start of: {msg}"
    assert exc.line == line
    if path is not None:
        assert msg.startswith(f"{where}: {path}: "), f"expected field path {path!r} in: {msg}"
        assert exc.path == path
    for fragment in allowed:
        assert fragment in msg, f"expected {fragment!r} in: {msg}"
    for word in NOISE:
        assert word not in msg, f"{word!r} in: {msg}"
    return msg


def test_good_is_valid(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD)
    assert load_scenario(tmp_path / "good.yaml").name == "shop"


# --------------------------------------------------------------------------- one field broken

# (id, broken text, the line's needle, field path, fragments that say what is wrong / allowed)
FIELD_CASES = [
    ("yaml-syntax-unclosed-bracket",
     edit("depends_on: [back, mq]", "depends_on: [back, mq"), "operations:\n      home:", None,
     ["YAML syntax error", "expected ',' or ']'", "check the indentation, quotes and brackets"]),
    ("yaml-syntax-tab-indent",
     edit("    port: 3002", "\tport: 3002"), "\tport: 3002", None,
     ["YAML syntax error", "YAML indents with spaces, never tabs"]),
    ("yaml-duplicate-key",
     edit("    workers: 2\n    depends_on", "    workers: 2\n    workers: 3\n    depends_on"),
     "workers: 3", "services[0].workers",
     ["key 'workers' appears twice", "keep only one"]),
    ("unknown-field",
     edit("    workers: 2\n    depends_on", "    wrkers: 2\n    depends_on"),
     "wrkers: 2", "services[0].wrkers",
     ["unknown field 'wrkers'", "did you mean 'workers'?", "allowed here: name, port, instances, workers"]),
    ("unknown-top-level-field",
     edit("name: shop\n", "name: shop\nservice:\n  - {}\n"), "service:", "service",
     ["unknown field 'service'", "did you mean 'services'?"]),
    ("wrong-type-port-text",
     edit("port: 3001", "port: http"), "port: http", "services[0].port",
     ["got 'http'", "expected a whole number from 1 to 65535"]),
    ("wrong-type-port-boolean",
     edit("port: 3001", "port: true"), "port: true", "services[0].port",
     ["got true", "expected a whole number from 1 to 65535"]),
    ("wrong-type-port-fraction",
     edit("port: 3001", "port: 3001.5"), "port: 3001.5", "services[0].port",
     ["got 3001.5", "expected a whole number"]),
    ("wrong-type-services-not-a-list",
     edit("services:\n  - name: front", "services: front\nunused:\n  - name: front"),
     "services: front", "services",
     ["got 'front'", "expected a list of mappings (Service)"]),
    # YAML 1.2 (models/yaml12.py): no dates, no base-60 numbers, no yes/no/on/off booleans.
    ("name-like-a-date-is-text",
     edit("name: shop", "name: 2024-01-01"), "name: 2024-01-01", "name",
     ["got '2024-01-01'", "lower-case letters, digits and '-', starting with a letter"]),
    ("base-60-is-text",
     edit("  seed: 1\n", "  seed: 1\n  duration_s: 1:30\n", edit("  duration_s: 60\n", "")),
     "duration_s: 1:30", "run.duration_s",
     ["got '1:30'", "expected a number > 0", "not as a base-60 number (YAML 1.1 read 1:30 as 90)"]),

    ("negative-rate",
     edit("rate: 10", "rate: -10"), "rate: -10", "workload.endpoints[0].arrival.rate",
     ["got -10", "expected a number > 0"]),
    ("zero-rate",
     edit("rate: 10", "rate: 0"), "rate: 0", "workload.endpoints[0].arrival.rate",
     ["got 0", "expected a number > 0"]),
    ("nan-rate",
     edit("rate: 10", "rate: .nan"), "rate: .nan", "workload.endpoints[0].arrival.rate",
     ["got .nan", "expected a number > 0", ".nan and .inf are not allowed"]),
    ("zero-capacity",
     edit("capacity: 8", "capacity: 0"), "capacity: 0", "infrastructure[0].capacity",
     ["got 0", "expected a whole number from 1 to 1000000"]),
    ("zero-workers",
     edit("    workers: 2\n    operations", "    workers: 0\n    operations"), "workers: 0",
     "services[1].workers", ["got 0", "expected a whole number from 1 to 100000"]),
    ("negative-instances",
     edit("    instances: 1\n    workers: 2\n    depends_on", "    instances: -2\n    workers: 2\n    depends_on"),
     "instances: -2", "services[0].instances", ["got -2", "expected a whole number from 1 to 10000"]),
    ("negative-service-time",
     edit("{dist: exponential, mean: 2}", "{dist: exponential, mean: -2}"), "mean: -2",
     "services[0].operations.home.service_time_ms.mean", ["got -2", "expected a number > 0"]),
    ("unknown-distribution",
     edit("{dist: exponential, mean: 2}", "{dist: expo, mean: 2}"), "dist: expo",
     "services[0].operations.home.service_time_ms.dist",
     ["got 'expo'", "expected one of exponential | constant | uniform | lognormal | gamma | empirical"]),
    ("unknown-arrival-kind",
     edit("kind: poisson", "kind: poison"), "kind: poison", "workload.endpoints[0].arrival.kind",
     ["got 'poison'", "expected one of poisson | piecewise"]),
    ("arrival-without-kind",
     edit("        kind: poisson\n", ""), "arrival:", "workload.endpoints[0].arrival.kind",
     ["required field is missing", "one of poisson | piecewise"]),
    ("not-a-call-tree-node",
     edit("- publish: back.audit", "- send: back.audit"), "send: back.audit",
     "services[0].operations.home.calls.seq[1]",
     ["got {'send': 'back.audit'}", "exactly one of the keys call, publish, seq, par, maybe, choice, repeat"]),
    ("unknown-field-in-call-node",
     edit("- call: back.item", "- call: back.item\n              retries: 3"), "retries: 3",
     "services[0].operations.home.calls.seq[0].retries",
     ["unknown field 'retries'", "allowed here: call, timeout_s"]),
    ("missing-required-field",
     edit("    port: 3002\n", ""), "- name: back", "services[1].port",
     ["required field is missing", "add it: a whole number from 1 to 65535"]),
    ("missing-workload",
     GOOD.split("workload:")[0], "name: shop", "workload",
     ["required field is missing", "required: endpoints"]),
    ("bad-service-name",
     edit("- name: back", "- name: Back_End"), "name: Back_End", "services[1].name",
     ["got 'Back_End'", "lower-case letters, digits and '-', starting with a letter"]),
    ("empirical-quantiles-not-increasing",
     edit("[[0, 1], [0.5, 2], [1, 5]]", "[[0, 1], [0.7, 2], [0.5, 3], [1, 5]]"), "quantiles:",
     "services[1].operations.item.service_time_ms.quantiles",
     ["probabilities must be strictly increasing (p=0.5 follows p=0.7)"]),
    ("empirical-values-decreasing",
     edit("[[0, 1], [0.5, 2], [1, 5]]", "[[0, 3], [0.5, 2], [1, 5]]"), "quantiles:",
     "services[1].operations.item.service_time_ms.quantiles",
     ["values must be non-decreasing (2 follows 3)"]),
    ("empirical-not-from-zero-to-one",
     edit("[[0, 1], [0.5, 2], [1, 5]]", "[[0.1, 1], [0.5, 2], [0.9, 5]]"), "quantiles:",
     "services[1].operations.item.service_time_ms.quantiles",
     ["the first p must be 0 and the last 1 (got p=0.1 ... p=0.9)"]),
    ("empirical-probability-above-one",
     edit("[[0, 1], [0.5, 2], [1, 5]]", "[[0, 1], [5, 2], [1, 5]]"), "quantiles:",
     "services[1].operations.item.service_time_ms.quantiles[1][0]",
     ["got 5", "expected a number from 0 to 1"]),
    ("warmup-not-below-duration",
     edit("  seed: 1\n", "  seed: 1\n  warmup_s: 60\n"), "warmup_s: 60", "run.warmup_s",
     ["warmup_s (60.0) must be less than duration_s (60.0)"]),
    ("seed-negative",
     edit("  seed: 1\n", "  seed: -1\n"), "seed: -1", "run.seed",
     ["got -1", "expected a whole number from 0 up to (not including) 2**63"]),
    # Cross-references (models.topology): the path comes from the message, the line from it.
    ("duplicate-service-name",
     edit("- name: back", "- name: front"), "- name: front\n    port: 3002", "services[1].name",
     ["duplicate name 'front' (also services[0])"]),
    ("duplicate-port",
     edit("port: 3002", "port: 3001"), "    port: 3001\n    instances: 1\n    workers: 2\n    operations",
     "services[1].port", ["port 3001 is already used by services[0] (front)"]),
    ("port-shared-with-infrastructure",  # services are numbered first, whatever the file order
     edit("port: 3002", "port: 5672"), "port: 5672\n    capacity", "infrastructure[0].port",
     ["port 5672 is already used by services[1] (back)"]),
    ("call-to-undeclared-dependency",
     edit("depends_on: [back, mq]", "depends_on: [mq]"), "- call: back.item",
     "services[0].operations.home.calls.seq[0].call",
     ["front calls 'back', which is not a declared dependency", "add it to services[0].depends_on"]),
    ("call-to-unknown-operation",
     edit("- call: back.item", "- call: back.items"), "- call: back.items",
     "services[0].operations.home.calls.seq[0].call", ["back has no operation 'items'", "(it has: audit, item)"]),
    ("call-to-unknown-service",
     edit("- call: back.item", "- call: shelf.item"), "- call: shelf.item",
     "services[0].operations.home.calls.seq[0].call",
     ["unknown service or component 'shelf'", "known: front.home, back.item, back.audit, mq"]),
    ("depends-on-unknown-service",
     edit("depends_on: [back, mq]", "depends_on: [back, mq, cart]"), "depends_on: [back, mq, cart]",
     "services[0].depends_on[2]", ["unknown service or component 'cart'", "known: back, front, mq"]),
    ("endpoint-entry-unknown",
     edit("entry: front.home", "entry: front.index"), "entry: front.index",
     "workload.endpoints[0].entry",
     ["'front.index' is not an operation of a service", "known: front.home, back.item, back.audit"]),
    ("zero-redelivery-delay",
     edit("    capacity: 8\n", "    capacity: 8\n    redelivery_delay_s: 0\n"), "redelivery_delay_s: 0",
     "infrastructure[0].redelivery_delay_s", ["got 0", "expected a number > 0"]),
    ("negative-key-publish-ahead",
     edit("run:\n", "policies:\n  tokens:\n    key_publish_ahead_s: -5\nrun:\n"), "key_publish_ahead_s: -5",
     "policies.tokens.key_publish_ahead_s", ["got -5", "expected a number >= 0"]),
    ("min-instances-of-unknown-service",
     edit("run:\n", "policies:\n  min_instances: {cart: 2}\nrun:\n"), "min_instances: {cart: 2}",
     "policies.min_instances.cart", ["no such service", "services are front, back"]),
    ("publish-needs-queue-dependency",
     edit("depends_on: [back, mq]", "depends_on: [back]"), "- publish: back.audit",
     "services[0].operations.home.calls.seq[1]",
     ["front publishes through 'mq' but does not list it in services[0].depends_on"]),
]


@pytest.mark.parametrize("text, needle, path, allowed", [c[1:] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES])
def test_field_errors_name_file_line_path_and_what_is_allowed(tmp_path, text, needle, path, allowed):
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, needle), path=path, allowed=allowed)


# back.item calls front.home, which calls back.item.
RECURSIVE = edit(
    "    workers: 2\n    operations:\n      item",
    "    workers: 2\n    depends_on: [front]\n    operations:\n      item",
    edit(
        "          quantiles: [[0, 1], [0.5, 2], [1, 5]]\n",
        "          quantiles: [[0, 1], [0.5, 2], [1, 5]]\n        calls: {call: front.home}\n",
    ),
)


def test_recursive_call_tree_through_two_services(tmp_path):
    text = RECURSIVE
    file, exc = reject(tmp_path, text)
    msg = str(exc)
    # networkx may report the loop from either end; the message points at a call in it.
    if exc.path.startswith("services[0]"):
        line, path, loop = line_of(text, "- call: back.item"), "services[0].operations.home.calls.seq[0].call", "front.home -> back.item -> front.home"
    else:
        line, path, loop = line_of(text, "calls: {call: front.home}"), "services[1].operations.item.calls.call", "back.item -> front.home -> back.item"
    check(exc, file, line=line, path=path, allowed=[f"call trees recurse: {loop}", "a request would never finish"])
    assert msg.count(" -> ") == 2


def test_first_of_several_problems_is_reported_with_a_count(tmp_path):
    text = edit("rate: 10", "rate: -1")
    text = edit("port: 3001", "port: 0", text)
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "port: 0"), path="services[0].port",
          allowed=["got 0", "(and 1 more problem)"])


def test_repeat_count_union_is_described_as_a_whole(tmp_path):
    text = edit("- call: back.item", "- repeat: {call: back.item}\n              count: 5000")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "count: 5000"),
          path="services[0].operations.home.calls.seq[0].count",
          allowed=["got 5000", "expected a whole number from 0 to 1000, or a count distribution",
                   "dist: poisson | uniform_int | discrete"])
    assert "more problem" not in str(exc)  # one mistake, not one per union member


def test_repeat_count_distribution_reports_the_mapping_member(tmp_path):
    """A mapping was meant as a count distribution: its own field is blamed, not 'not a whole number'."""
    text = edit("- call: back.item", "- repeat: {call: back.item}\n              count: {dist: poisson, mean: -1}")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "count: {dist: poisson"),
          path="services[0].operations.home.calls.seq[0].count.mean",
          allowed=["got -1", "expected a number from 0 to 800"])
    assert "more problem" not in str(exc)


# --------------------------------------------------------------------------- YAML 1.2, not 1.1


def test_yaml_1_1_booleans_are_text_in_keys_and_values(tmp_path):
    """YAML 1.1 read on/off/yes/no/y/n as booleans: an operation named `on` became the key
    True, and a service named `no` the value False. YAML 1.2 reads them as text."""
    text = edit("      audit:", "      on:", edit("- publish: back.audit", "- publish: back.on"))
    text = edit("name: shop", "name: y", text)
    text = edit("      item:", "      off:", edit("- call: back.item", "- call: back.off", text))
    (tmp_path / "s.yaml").write_text(text)
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.name == "y"
    assert list(scenario.service("back").operations) == ["off", "on"]


def test_yaml_1_2_numbers(tmp_path):
    """1e3 is a number (1.1 wanted 1.0e+3), 010 is ten (1.1: octal eight), 0o10 is eight."""
    text = edit("rate: 10", "rate: 1e3", edit("port: 3001", "port: 010", edit("capacity: 8", "capacity: 0o10")))
    (tmp_path / "s.yaml").write_text(text)
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.workload.endpoints[0].arrival.rate == 1000.0
    assert scenario.services[0].port == 10
    assert scenario.infrastructure[0].capacity == 8


@pytest.mark.parametrize("tagged", ["!!bool yes", "!!int 1:30", "!!float 1:30"])
def test_explicit_tags_asking_for_yaml_1_1_readings_are_refused(tmp_path, tagged):
    text = edit("  seed: 1\n", f"  seed: 1\n  cold_start: {tagged}\n")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "cold_start:"), path=None,
          allowed=["YAML syntax error", "in YAML 1.2", "remove the !!tag"])


def test_libyaml_and_pure_python_parsers_give_the_same_tree():
    """The fast parser (libyaml) and the pure-Python one compose the same nodes and lines."""
    from hailan_sim.models import yaml12

    if not yaml12.HAVE_LIBYAML:
        pytest.skip("PyYAML without libyaml")

    def flat(node):
        out = [(type(node).__name__, node.tag, node.start_mark.line, node.start_mark.column)]
        if isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node.value, list):
            for item in node.value:
                for part in item if isinstance(item, tuple) else (item,):
                    out.extend(flat(part))
        return out

    for text in (GOOD, RECURSIVE):
        fast = yaml12._compose_with(yaml12.FastLoader, text)
        pure = yaml12._compose_with(yaml12.PureLoader, text)
        assert flat(fast) == flat(pure)


@pytest.mark.parametrize("text", [
    GOOD,
    "a: &x [1, -2, 2.5, .5, 1., 1e3, .inf, -.inf, true, False, null, ~, '', x, on, 0x1F, 0o17, 010]\nb: *x\n",
    "a: &a {b: 1}\nc: [*a, *a]\n",
    "a: !!str 5\nb: !!float 1\n",
], ids=["good", "scalars", "aliases", "explicit-core-tags"])
def test_fast_constructor_builds_what_pyyaml_builds(text):
    """The plain-tree constructor (no per-node generic machinery) against PyYAML's safe
    constructor with the same YAML 1.2 readings."""
    from hailan_sim.models import yaml12

    fast = yaml12._fast_construct(yaml12.compose(text))
    slow = yaml12.Constructor12().construct_document(yaml12.compose(text))
    assert repr(fast) == repr(slow)  # repr: nan != nan, and types (1 vs 1.0 vs True) count
    if "&a" in text:
        assert fast["c"][0] is fast["c"][1] is fast["a"]  # shared, as PyYAML shares them


@pytest.mark.parametrize("text", ["a: {<<: {p: 1}, q: 2}\n", "a: !!set {x}\n", "a: !!timestamp 2024-01-01\n"])
def test_unusual_nodes_go_to_pyyaml(text):
    from hailan_sim.models import yaml12

    with pytest.raises(yaml12._Unusual):
        yaml12._fast_construct(yaml12.compose(text))
    assert yaml12.construct(yaml12.compose(text)) == yaml12.Constructor12().construct_document(yaml12.compose(text))


# --------------------------------------------------------------------------- bounded counts

REPEAT = "- repeat: {call: back.item}\n              count: %s"


@pytest.mark.parametrize(
    "count, field, allowed",
    [
        ("{dist: poisson, mean: 1e6}", "count.mean", ["got 1000000.0", "expected a number from 0 to 800"]),
        ("{dist: poisson, mean: 1e12}", "count.mean", ["got 1000000000000.0", "from 0 to 800"]),
        ("{dist: poisson, mean: 801}", "count.mean", ["got 801", "from 0 to 800"]),
        ("{dist: uniform_int, low: 0, high: 1001}", "count.high", ["got 1001", "a whole number from 0 to 1000"]),
        ("{dist: uniform_int, low: 5000, high: 6000}", "count.low", ["got 5000", "a whole number from 0 to 1000"]),
        ("{dist: discrete, weights: [[1, 1], [1000000, 1]]}", "count.weights[1][0]",
         ["got 1000000", "a whole number from 0 to 1000"]),
    ],
    ids=["poisson-1e6", "poisson-1e12", "poisson-801", "uniform-high", "uniform-low", "discrete"],
)
def test_drawn_repeat_counts_are_capped_like_fixed_ones(tmp_path, count, field, allowed):
    """A count drawn from a distribution is bounded like a fixed one (at most 1000 calls):
    a Poisson mean of 1e6 used to pass and fill memory, 1e12 ended in a MemoryError."""
    text = edit("- call: back.item", REPEAT % count)
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "count: {dist"),
          path=f"services[0].operations.home.calls.seq[0].{field}", allowed=allowed)


def test_counts_at_the_caps_are_accepted(tmp_path):
    for count in ("1000", "{dist: poisson, mean: 800}", "{dist: uniform_int, low: 1000, high: 1000}",
                  "{dist: discrete, weights: [[1000, 1]]}"):
        (tmp_path / "s.yaml").write_text(edit("- call: back.item", REPEAT % count))
        load_scenario(tmp_path / "s.yaml")


def test_poisson_count_draws_are_clipped_at_the_cap():
    """The cap is also enforced on the draws themselves (a safety net: at mean 800 a draw
    above 1000 has probability < 1e-11, so below the cap the draws are numpy's own)."""
    import numpy as np

    from hailan_sim.models.distributions import MAX_COUNT, Poisson

    draws = Poisson(dist="poisson", mean=800).draw(np.random.default_rng(1), 100_000)
    assert draws.max() <= MAX_COUNT
    assert (draws == np.random.default_rng(1).poisson(800, 100_000)).all()
    # Past the validated range (built without validation) the clip is what bounds a draw.
    wild = Poisson.model_construct(dist="poisson", mean=5000.0).draw(np.random.default_rng(1), 1000)
    assert wild.max() == MAX_COUNT


def test_token_issuer_from_a_profile_must_be_an_operation(tmp_path):
    """`profile: hardened` turns service tokens on; without the issuing operation the
    scenario is refused when loaded (not when the engine is built), pointing at the profile."""
    text = edit("name: shop\n", "name: shop\nprofile: hardened\n")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "profile: hardened"), path="policies.tokens.issuer",
          allowed=["'auth-service.issue_token' is not an operation of a service", "policies.tokens.enabled: false"])


# --------------------------------------------------------------------------- whole-file problems


def test_file_that_does_not_exist(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "nope.yaml")
    check(info.value, tmp_path / "nope.yaml", line=None, path=None,
          allowed=["no such file", "give the path of a scenario .yaml file"])


def test_a_directory(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path)
    check(info.value, tmp_path, line=None, path=None, allowed=["is a directory", "scenario .yaml file"])


def test_non_utf8_bytes(tmp_path):
    data = edit("name: shop\n", "name: shop\ndescription: caf\udce9\n").encode("utf-8", "surrogateescape")
    file, exc = reject(tmp_path, data)
    check(exc, file, line=2, path=None, allowed=["byte 0xe9 is not UTF-8 text", "save the file as UTF-8"])


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"], ids=["empty", "blank-lines", "comment"])
def test_empty_file(tmp_path, text):
    file, exc = reject(tmp_path, text)
    check(exc, file, line=1, path=None, allowed=["the file is empty", "a YAML mapping with at least name, services and workload"])


def test_yaml_list_instead_of_mapping(tmp_path):
    file, exc = reject(tmp_path, "- name: shop\n- services: []\n")
    check(exc, file, line=1, path=None, allowed=["got a list at the top level", "expected a mapping with at least name, services and workload"])


def test_two_yaml_documents(tmp_path):
    text = GOOD + "---\nname: other\n"
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "---"), path=None, allowed=["another document", "remove the '---' separator"])


def test_recursive_yaml_alias(tmp_path):
    text = edit("name: shop\n", "name: shop\ndescription: &d [*d]\n")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=2, path="description[0]", allowed=["alias refers to the anchor it is inside", "must be a tree"])


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    file, exc = reject(tmp_path, "\n".join(lines) + "\n")
    check(exc, file, line=1, path=None, allowed=["expands to", "through aliases", "use fewer aliases"])


def test_control_character(tmp_path):
    text = edit("name: shop", "name: sh\x07op")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=1, path=None, allowed=["character #x0007 is not allowed", "escape inside double quotes"])


def test_parse_scenario_names_its_source():
    with pytest.raises(ScenarioError) as info:
        parse_scenario(edit("rate: 10", "rate: 0"), "inline.yaml")
    check(info.value, "inline.yaml", line=line_of(GOOD, "rate: 10"), path="workload.endpoints[0].arrival.rate",
          allowed=["expected a number > 0"])


# --------------------------------------------------------------------------- piecewise arrivals from CSV

PIECEWISE = "kind: piecewise\n        csv: {csv}"


def _with_csv(name: str) -> str:
    return edit("kind: poisson\n        rate: 10", PIECEWISE.format(csv=name))


def test_piecewise_csv_missing_file(tmp_path):
    text = _with_csv("load.csv")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "csv: load.csv"), path="workload.endpoints[0].arrival.csv",
          allowed=["cannot read the arrival table", "load.csv", "No such file",
                   "expected a CSV file with header t_s,rate"])


def test_piecewise_csv_relative_to_the_scenario_file(tmp_path):
    (tmp_path / "load.csv").write_text("t_s,rate\n0,5\n10,8\n")
    (tmp_path / "s.yaml").write_text(_with_csv("load.csv"))
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.workload.endpoints[0].arrival.steps == [(0.0, 5.0), (10.0, 8.0)]


@pytest.mark.parametrize(
    "content, allowed",
    [
        ("t_s,rate\n0,5\nten,8\n", ["load.csv:3: expected numeric columns 't_s' and 'rate'"]),
        ("time,rate\n0,5\n", ["load.csv:2: expected numeric columns 't_s' and 'rate'"]),
        ("t_s,rate\n0,5\n10,-1\n", ["in the table 'load.csv', data row 2, column rate", "got -1.0", "expected a number >= 0"]),
        ("t_s,rate\n5,5\n", ["in the table 'load.csv'", "the first step must start at t_s = 0"]),
        ("t_s,rate\n", ["in the table 'load.csv': has no rows", "header t_s,rate and at least one row"]),
    ],
    ids=["not-a-number", "wrong-header", "negative-rate", "not-from-zero", "no-rows"],
)
def test_piecewise_csv_malformed(tmp_path, content, allowed):
    (tmp_path / "load.csv").write_text(content)
    text = _with_csv("load.csv")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "csv: load.csv"), path="workload.endpoints[0].arrival.csv", allowed=allowed)


def test_piecewise_csv_with_a_byte_order_mark(tmp_path):
    (tmp_path / "load.csv").write_bytes(b"\xef\xbb\xbft_s,rate\r\n0,5\r\n")  # as Excel saves it
    (tmp_path / "s.yaml").write_text(_with_csv("load.csv"))
    assert load_scenario(tmp_path / "s.yaml").workload.endpoints[0].arrival.steps == [(0.0, 5.0)]


def test_piecewise_csv_not_utf8(tmp_path):
    (tmp_path / "load.csv").write_bytes(b"t_s,rate\n0,5\xff\n")
    text = _with_csv("load.csv")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "csv: load.csv"), path="workload.endpoints[0].arrival.csv",
          allowed=["in the table 'load.csv'", "not UTF-8 text", "save it as UTF-8"])


# --------------------------------------------------------------------------- data files: where, what, how large

CSV_PATH = "workload.endpoints[0].arrival.csv"


@pytest.mark.parametrize("name", ["../load.csv", "sub/../../load.csv", "{abs}"], ids=["dotdot", "dotdot-deep", "absolute"])
def test_data_file_outside_the_scenario_folder_is_refused(tmp_path, name):
    (tmp_path / "load.csv").write_text("t_s,rate\n0,5\n")
    inner = tmp_path / "inner"
    (inner / "sub").mkdir(parents=True)
    text = _with_csv(name.format(abs=tmp_path / "load.csv"))
    file, exc = reject(inner, text)
    check(exc, file, line=line_of(text, "csv: "), path=CSV_PATH,
          allowed=["the arrival table", "is outside", str(inner), "--data-root DIR"])
    # A wider data root allows it (relative paths still start at the scenario's folder).
    scenario = load_scenario(file, data_root=tmp_path)
    assert scenario.workload.endpoints[0].arrival.steps == [(0.0, 5.0)]


def test_symbolic_link_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "load.csv").write_text("t_s,rate\n0,5\n")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "load.csv").symlink_to(tmp_path / "load.csv")
    text = _with_csv("load.csv")
    file, exc = reject(inner, text)
    check(exc, file, line=line_of(text, "csv: "), path=CSV_PATH, allowed=["is outside"])


def test_fifo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "load.csv")  # opening it for reading would wait for a writer
    text = _with_csv("load.csv")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "csv: "), path=CSV_PATH,
          allowed=["arrival table 'load.csv' is a FIFO; only regular files are read"])


def test_device_is_refused_even_inside_the_data_root(tmp_path):
    text = _with_csv("/dev/zero")
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "s.yaml", data_root="/")
    check(info.value, tmp_path / "s.yaml", line=line_of(text, "csv: "), path=CSV_PATH,
          allowed=["arrival table '/dev/zero' is a device; only regular files are read"])


def test_oversized_table_is_refused_before_it_is_read(tmp_path):
    from hailan_sim.models.datafiles import MAX_TABLE_BYTES

    with open(tmp_path / "load.csv", "wb") as fh:  # sparse: no disk used
        fh.truncate(MAX_TABLE_BYTES + 1)
    text = _with_csv("load.csv")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "csv: "), path=CSV_PATH,
          allowed=["arrival table 'load.csv' is 16.0 MiB; at most 16.0 MiB is allowed"])


def test_oversized_or_special_scenario_file_is_refused(tmp_path):
    from hailan_sim.models.datafiles import MAX_SCENARIO_BYTES

    with open(tmp_path / "big.yaml", "wb") as fh:
        fh.truncate(MAX_SCENARIO_BYTES + 1)
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "big.yaml")
    check(info.value, tmp_path / "big.yaml", line=None, path=None, allowed=["at most 1.0 MiB is allowed"])
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "fifo.yaml")
    check(info.value, tmp_path / "fifo.yaml", line=None, path=None, allowed=["is a FIFO"])
    with pytest.raises(ScenarioError) as info:
        parse_scenario("#" * (MAX_SCENARIO_BYTES + 1), "text.yaml")
    check(info.value, "text.yaml", line=None, path=None, allowed=["at most 1048576 are allowed", "data files"])


# --------------------------------------------------------------------------- traces: inline, or from a file

TRACE = "kind: trace\n        {what}"
TRACE_PATH = "workload.endpoints[0].arrival"


def _with_trace(what: str) -> str:
    return edit("kind: poisson\n        rate: 10", TRACE.format(what=what))


def test_long_inline_trace_is_refused_with_a_pointer_to_files(tmp_path):
    from hailan_sim.models.datafiles import MAX_INLINE_TIMES

    times = ", ".join(str(i) for i in range(MAX_INLINE_TIMES + 1))
    text = _with_trace(f"times_s: [{times}]")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "times_s:"), path=f"{TRACE_PATH}.times_s",
          allowed=["10001 times written inline", "at most 10000", "CSV or Parquet file with a column t_s",
                   "'file: NAME'"])
    (tmp_path / "ok.yaml").write_text(_with_trace(f"times_s: [{times.rsplit(', ', 1)[0]}]"))
    assert len(load_scenario(tmp_path / "ok.yaml").workload.endpoints[0].arrival.times_s) == MAX_INLINE_TIMES


def test_trace_from_csv_and_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    times = [i * 0.01 for i in range(50_000)]  # five times the inline limit
    (tmp_path / "t.csv").write_text("user,t_s\n" + "".join(f"u{i},{t!r}\n" for i, t in enumerate(times)))
    pq.write_table(pa.table({"t_s": times}), tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        (tmp_path / "s.yaml").write_text(_with_trace(f"file: {name}"))
        arrival = load_scenario(tmp_path / "s.yaml").workload.endpoints[0].arrival
        assert arrival.times_s == times and arrival.file == name


@pytest.mark.parametrize(
    "name, content, allowed",
    [
        ("t.csv", "t_s\n0\n2\n1\n", ["the trace file 't.csv', line 4: t_s 1 comes after 2", "non-decreasing"]),
        ("t.csv", "t_s\n0\n-1\n", ["the trace file 't.csv', line 3: t_s -1.0 is not a finite number >= 0"]),
        ("t.csv", "t_s\n0\nnan\n", ["line 3: t_s nan is not a finite number >= 0"]),
        ("t.csv", "t_s\n0\nten\n", ["cannot read the trace file 't.csv'", "numeric column t_s"]),
        ("t.csv", "time\n0\n", ["cannot read the trace file 't.csv'", "numeric column t_s"]),
        ("t.csv", "t_s\n", ["the trace file 't.csv' has no times"]),
        ("t.json", "[0, 1]", ["the trace file 't.json': expected a .csv or .parquet file with a column t_s"]),
        ("t.parquet", "not parquet", ["cannot read the trace file 't.parquet'", "Parquet file with a numeric column t_s"]),
        ("missing.csv", None, ["cannot read the trace file", "No such file"]),
    ],
    ids=["unsorted", "negative", "nan", "not-a-number", "no-column", "empty", "suffix", "bad-parquet", "missing"],
)
def test_bad_trace_files(tmp_path, name, content, allowed):
    if content is not None:
        (tmp_path / name).write_text(content)
    text = _with_trace(f"file: {name}")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "file: "), path=f"{TRACE_PATH}.file", allowed=allowed)


def test_trace_needs_times_or_a_file(tmp_path):
    text = edit("kind: poisson\n        rate: 10", "kind: trace")
    file, exc = reject(tmp_path, text)
    check(exc, file, line=line_of(text, "arrival:"), path=TRACE_PATH,
          allowed=["give either 'times_s' (a list of times) or 'file' (a CSV or Parquet file)"])


# --------------------------------------------------------------------------- the CLI, in-process

CLI_CASES = {
    "syntax": (edit("depends_on: [back, mq]", "depends_on: [back, mq"), "YAML syntax error"),
    "unknown-field": (edit("capacity: 8", "capacty: 8"), "infrastructure[0].capacty: unknown field"),
    "zero-rate": (edit("rate: 10", "rate: 0"), "workload.endpoints[0].arrival.rate: got 0"),
    "recursion": (RECURSIVE, "call trees recurse"),
}


@pytest.mark.parametrize("command", ["run", "topology"])
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_scenario_exits_2_with_one_line(tmp_path, capsys, command, case):
    text, fragment = CLI_CASES[case]
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    assert main([command, str(file)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"hailan-sim: error: {file}:"), err
    assert fragment in err
    assert "Traceback" not in err


@pytest.mark.parametrize("target", ["missing.yaml", "."], ids=["missing-file", "directory"])
def test_cli_unreadable_scenario_exits_2(tmp_path, capsys, target):
    path = tmp_path / target
    assert main(["run", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"hailan-sim: error: {path}: ")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seed", "-1"], "argument --seed: must be in [0, 2**63), got -1"),
        (["--seed", "1.5"], "argument --seed: expected a whole number"),
        (["--duration", "0"], "argument --duration: must be a finite number > 0, got 0"),
        (["--duration", "-3"], "argument --duration: must be a finite number > 0, got -3"),
        (["--duration", "nan"], "argument --duration: must be a finite number > 0, got nan"),
        (["--duration", "abc"], "argument --duration: expected a number, got 'abc'"),
    ],
    ids=["seed-negative", "seed-fraction", "duration-zero", "duration-negative", "duration-nan", "duration-text"],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, args, fragment):
    file = tmp_path / "good.yaml"
    file.write_text(GOOD)
    with pytest.raises(SystemExit) as info:
        main(["run", *args, str(file)])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("hailan-sim: error: ") and fragment in last, err
    assert "Traceback" not in err


def test_cli_warmup_override_beyond_duration_exits_2(tmp_path, capsys):
    file = tmp_path / "good.yaml"
    file.write_text(GOOD)
    assert main(["run", "--warmup", "100", str(file)]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("hailan-sim: error: ")
    assert "warmup_s (100.0) must be less than duration_s (60.0)" in err


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_cli_bad_warmup_names_the_option(tmp_path, capsys, value):
    file = tmp_path / "good.yaml"
    file.write_text(GOOD)
    assert main(["run", "--warmup", value, str(file)]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("hailan-sim: error: ")
    assert "--warmup" in err or "warmup_s" in err
    assert "Input should" not in err


# --------------------------------------------------------------------------- the CLI, as a real process


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([sys.executable, "-m", "hailan_sim", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_subprocess_run_with_bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text(edit("    port: 3002", "\tport: 3002"))
    proc = _run_cli("run", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("hailan-sim: error: bad.yaml:25: YAML syntax error"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_subprocess_topology_with_unknown_dependency(tmp_path):
    (tmp_path / "bad.yaml").write_text(edit("depends_on: [back, mq]", "depends_on: [back, mq, cart]"))
    proc = _run_cli("topology", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "hailan-sim: error: bad.yaml:16: services[0].depends_on[2]: unknown service or component "
        "'cart' (known: back, front, mq)\n"
    )


def test_subprocess_bad_argument(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD)
    proc = _run_cli("run", "--duration", "abc", "good.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == "hailan-sim: error: argument --duration: expected a number, got 'abc'"
    assert "Traceback" not in proc.stderr

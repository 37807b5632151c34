"""The built-in default scenario and the analytic offered load (models.capacity).

The default must be spec 074's platform (section 3.1.2, written out below from the spec,
not read from the YAML) under a load that puts its busiest service at about 50%; the
analytic load must agree with what the simulator measures, within sampling error.
"""

from __future__ import annotations

import math

import pytest

from hailan_sim.models import analyse, default_scenario
from hailan_sim.models.capacity import offered_load, sampling_se, second_moment
from hailan_sim.models.distributions import (
    Constant, Discrete, Empirical, Exponential, Gamma, LogNormal, Poisson, Uniform, UniformInt,
)
from hailan_sim.models.scenario import (
    CallNode, ChoiceNode, MaybeNode, ParNode, PublishNode, RepeatNode, Scenario, SeqNode,
    split_target,
)
from hailan_sim.models.topology import walk_tree

# Spec 074, 3.1.2 服务列表: (服务代码, 端口, 依赖服务), in the spec's order. The spec writes
# "Auth Service", "User Service", ... and "Redis"; these are their service codes.
SPEC_SERVICES = [
    ("user-service", 3001, {"auth-service"}),
    ("auth-service", 3002, {"redis"}),
    ("order-service", 3003, {"user-service", "product-service", "payment-service"}),
    ("product-service", 3004, {"inventory-service"}),
    ("inventory-service", 3005, {"redis"}),
    ("payment-service", 3006, {"order-service"}),
    ("supply-service", 3007, {"inventory-service"}),
    ("ai-service", 3008, {"user-service"}),
    ("iot-service", 3009, {"user-service"}),
    ("community-service", 3010, {"user-service"}),
    ("member-service", 3011, {"user-service"}),
    ("notification-service", 3012, {"user-service"}),
]

# The architecture diagram (3.1.1): gateway on top, registry, cache, queue and database
# beneath; ports are the products' defaults (Consul HTTP 8500, Redis 6379, AMQP 5672,
# MySQL 3306).
SPEC_INFRASTRUCTURE = {
    "api-gateway": ("gateway", None),
    "consul": ("registry", 8500),
    "redis": ("cache", 6379),
    "rabbitmq": ("queue", 5672),
    "mysql": ("database", 3306),
}

ENDPOINTS = {
    "login", "browse_products", "place_order", "pay", "list_orders",
    "ai_chat", "iot_sync", "community_feed", "member_points", "notifications",
}


@pytest.fixture(scope="module")
def sc() -> Scenario:
    return default_scenario()


# --------------------------------------------------------------------------- the spec's platform


def test_default_loads_with_the_documented_run(sc):
    assert sc.name == "hailan-default"
    assert (sc.run.duration_s, sc.run.warmup_s, sc.run.seed) == (300, 30, 1)
    assert sc.policies.timeout_s == 5.0  # the spec's axios timeout: 5000 ms


def test_services_are_the_spec_table(sc):
    assert [s.name for s in sc.services] == [name for name, _, _ in SPEC_SERVICES]
    services = {name for name, _, _ in SPEC_SERVICES}
    infra = {c.name for c in sc.infrastructure}
    for name, port, deps in SPEC_SERVICES:
        s = sc.service(name)
        assert s.port == port, name
        declared = set(s.depends_on)
        assert deps <= declared, f"{name} lacks spec dependencies {deps - declared}"
        # Only infrastructure may be added; service-to-service edges are exactly the spec's.
        assert declared & services == deps & services, name
        assert declared - deps <= infra, f"{name} depends on unknown {declared - deps - infra}"


def test_infrastructure_is_the_architecture_diagram(sc):
    got = {c.name: (c.kind, c.port) for c in sc.infrastructure}
    assert set(got) == set(SPEC_INFRASTRUCTURE)
    for name, (kind, port) in SPEC_INFRASTRUCTURE.items():
        assert got[name][0] == kind
        if port is not None:
            assert got[name][1] == port
    for c in sc.infrastructure:
        assert c.capacity >= 1 and c.latency_ms.expected() > 0


def test_every_declared_dependency_is_used(sc):
    """depends_on is the blast-radius graph; an unused edge would overstate it. The only
    edges not in a call tree are consumers' links to the broker they consume from, and the
    registry, which the engine asks before every service-to-service call (discovery)."""
    consumers = set()
    for s in sc.services:
        for op in s.operations.values():
            for node, _ in walk_tree(op.calls, ""):
                if isinstance(node, PublishNode):
                    consumers.add(split_target(node.publish)[0])
    for s in sc.services:
        used = set()
        for op in s.operations.values():
            for node, _ in walk_tree(op.calls, ""):
                if isinstance(node, CallNode):
                    used.add(split_target(node.call)[0])
                elif isinstance(node, PublishNode):
                    used.add(node.via or "rabbitmq")
        if used & {x.name for x in sc.services}:
            used.update(c.name for c in sc.infrastructure if c.kind == "registry")
        unused = set(s.depends_on) - used
        if s.name in consumers:
            unused.discard("rabbitmq")
        assert not unused, f"{s.name} declares {unused} but never calls them"


def test_the_spec_cycle_order_payment_is_reported(sc):
    report = analyse(sc)
    # The spec's table has exactly one cycle; the added infrastructure adds none.
    assert report.cycles == [["order-service", "payment-service"]]
    assert any("order-service -> payment-service -> order-service" in w for w in report.warnings)


def test_every_call_tree_node_kind_is_used(sc):
    kinds, counts = set(), set()
    for s in sc.services:
        for op in s.operations.values():
            for node, _ in walk_tree(op.calls, ""):
                kinds.add(type(node))
                if isinstance(node, RepeatNode):
                    counts.add("fixed" if isinstance(node.count, int) else "distribution")
    assert kinds == {CallNode, PublishNode, SeqNode, ParNode, MaybeNode, ChoiceNode, RepeatNode}
    assert counts == {"fixed", "distribution"}


def test_ten_endpoints_share_one_poisson_arrival(sc):
    wl = sc.workload
    assert {ep.name for ep in wl.endpoints} == ENDPOINTS
    assert wl.arrival is not None and wl.arrival.kind == "poisson"
    assert all(ep.arrival is None and ep.weight for ep in wl.endpoints)
    assert math.isclose(sum(wl.shares().values()), 1.0)


def test_instances_spread_so_one_node_fault_leaves_every_service_up(sc):
    zones = {}
    for n in sc.nodes:
        zones.setdefault(n.zone, []).append(n.name)
    assert len(zones) == 3 and all(len(v) == 2 for v in zones.values())
    by_service: dict[str, set[str]] = {}
    for p in sc.placements():
        by_service.setdefault(p.instance.rsplit("-", 1)[0], set()).add(p.node)
    for s in sc.services:
        assert len(by_service[s.name]) >= 2, f"{s.name} lives on one node"


# --------------------------------------------------------------------------- load


def test_busiest_component_is_about_half_utilised(sc):
    load = offered_load(sc)
    assert list(load.index) == [s.name for s in sc.services] + [c.name for c in sc.infrastructure]
    assert 0.45 <= load["utilisation"].max() <= 0.55
    # Every component carries traffic: no service of the spec is dead weight.
    assert (load["calls_per_s"] > 0).all()


# With z = 4 a correct engine fails one comparison with probability 6.3e-5 (two-sided
# normal tail); over 17 components x 2 quantities the family-wise rate is below 0.3%.
Z = 4.0


@pytest.fixture(scope="module")
def short_run(sc):
    from hailan_sim.sim import simulate

    run = sc.with_run(duration_s=120.0, warmup_s=20.0)
    return run, simulate(run)


def test_short_run_is_healthy(short_run):
    _, result = short_run
    assert result.requests["ok"] > 0
    assert result.requests["error"] == result.requests["timeout"] == result.requests["rejected"] == 0
    assert result.unfinished_requests == 0 and result.messages_pending == 0


def test_simulated_utilisation_matches_offered_load(short_run):
    """Measured utilisation (busy workers / workers, after the warm-up) against the
    analytic figure, per component.

    Tolerance: the busy time requests put on a component in T = 100 s is a compound Poisson
    sum (independent Poisson requests, each contributing its own visits' service times), so
    its standard error is sqrt(T * sum_e rate_e * E[X_e^2]) / (capacity * T) with X_e the
    busy time one request of endpoint e causes there (models.capacity.sampling_se, which
    includes the correlation between visits of one request, e.g. the repeated product
    lookups of one order list). Across 12 seeds the z-scores of this comparison had a
    standard deviation of 1.07, as the formula predicts.
    """
    run, result = short_run
    measured = run.run.duration_s - run.run.warmup_s
    load = offered_load(run)
    se = sampling_se(run, measured)
    sim = result.services["utilisation"]
    assert set(sim.index) == set(load.index)
    for name in load.index:
        expected, got, s = load.at[name, "utilisation"], sim[name], se.at[name, "utilisation"]
        assert s > 0
        assert abs(got - expected) <= Z * s, (
            f"{name}: simulated {got:.5f}, analytic {expected:.5f}, z = {(got - expected) / s:.2f}"
        )


def test_simulated_call_rates_match_offered_load(short_run):
    """Calls served per second after the warm-up against calls_per_s; the same compound
    Poisson argument with visit counts in place of busy time gives the standard error."""
    run, result = short_run
    measured = run.run.duration_s - run.run.warmup_s
    load = offered_load(run)
    se = sampling_se(run, measured)
    for name in load.index:
        got = result.services.at[name, "served"] / measured
        expected, s = load.at[name, "calls_per_s"], se.at[name, "calls_per_s"]
        assert abs(got - expected) <= Z * s, (
            f"{name}: {got:.2f} calls/s simulated, {expected:.2f} analytic, z = {(got - expected) / s:.2f}"
        )


# --------------------------------------------------------------------------- offered_load by hand


def _const(ms):
    return {"dist": "constant", "value": ms}


TINY = {
    "name": "tiny",
    "run": {"duration_s": 10, "seed": 1},
    "infrastructure": [
        {"name": "gw", "kind": "gateway", "capacity": 2, "latency_ms": _const(1)},
        {"name": "mq", "kind": "queue", "capacity": 1, "latency_ms": _const(2)},
        {"name": "cache", "kind": "cache", "capacity": 4,
         "latency_ms": {"dist": "exponential", "mean": 0.5}},
    ],
    "services": [
        {"name": "front", "port": 1, "instances": 2, "workers": 1,
         "depends_on": ["back", "cache", "mq"],
         "operations": {"handle": {"service_time_ms": _const(10), "calls": {"seq": [
             {"call": "back.read"},
             {"maybe": {"call": "cache"}, "p": 0.25},
             {"choice": [{"weight": 3, "do": {"call": "back.read"}},
                         {"weight": 1, "do": {"call": "back.write"}}]},
             {"repeat": {"call": "cache"}, "count": 2},
             {"repeat": {"call": "back.read"}, "count": {"dist": "poisson", "mean": 1.5},
              "parallel": True},
             {"publish": "back.consume"},
         ]}}}},
        {"name": "back", "port": 2, "instances": 1, "workers": 4, "depends_on": ["cache"],
         "operations": {
             "read": {"service_time_ms": _const(4)},
             "write": {"service_time_ms": {"dist": "uniform", "low": 2, "high": 8},
                       "calls": {"call": "cache"}},
             "consume": {"service_time_ms": {"dist": "exponential", "mean": 6},
                         "calls": {"call": "cache"}},
         }},
        {"name": "idle", "port": 3, "instances": 1, "workers": 2,
         "operations": {"noop": {"service_time_ms": _const(1)}}},
    ],
    "workload": {
        "arrival": {"kind": "poisson", "rate": 8},
        "endpoints": [
            # 10/s for 5 s then 30/s for 5 s: 20/s on average over the 10 s run.
            {"name": "e1", "entry": "front.handle",
             "arrival": {"kind": "piecewise", "steps": [[0, 10], [5, 30]]}},
            {"name": "e2", "entry": "back.write", "weight": 1},  # all of workload.arrival: 8/s
        ],
    },
}


def test_offered_load_by_hand():
    load = offered_load(Scenario.model_validate(TINY))
    # One e1 request (20/s): gw 1; front.handle 1; back.read 1 + 3/4 (choice) + 1.5
    # (Poisson repeat) = 3.25; back.write 1/4; cache 0.25 (maybe) + 2 (repeat) + 0.25 (via
    # write) + 1 (via consume) = 3.5; mq 1 (the publish); back.consume 1 (the delivery).
    # One e2 request (8/s): gw 1, back.write 1, cache 1.
    expected = {
        #          calls/s  mean ms         capacity  utilisation
        "front": (20.0, 10.0, 2, 20 * 0.010 / 2),
        # back: read 65/s x 4 ms + write 13/s x 5 ms + consume 20/s x 6 ms = 445 ms/s.
        "back": (98.0, 445.0 / 98.0, 4, 0.445 / 4),
        "gw": (28.0, 1.0, 2, 28 * 0.001 / 2),
        "mq": (20.0, 2.0, 1, 20 * 0.002 / 1),
        "cache": (78.0, 0.5, 4, 78 * 0.0005 / 4),
    }
    assert list(load.index) == ["front", "back", "idle", "gw", "mq", "cache"]
    assert list(load["kind"]) == ["service", "service", "service", "gateway", "queue", "cache"]
    for name, (calls, mean, cap, util) in expected.items():
        row = load.loc[name]
        assert row["calls_per_s"] == pytest.approx(calls, rel=1e-12), name
        assert row["mean_service_ms"] == pytest.approx(mean, rel=1e-12), name
        assert row["capacity"] == cap, name
        assert row["utilisation"] == pytest.approx(util, rel=1e-12), name
    idle = load.loc["idle"]
    assert idle["calls_per_s"] == 0 and idle["utilisation"] == 0 and math.isnan(idle["mean_service_ms"])
    assert idle["capacity"] == 2


def test_sampling_se_by_hand():
    sc = Scenario.model_validate({
        "name": "se",
        "run": {"duration_s": 200, "seed": 1},
        "services": [
            {"name": "a", "port": 1, "instances": 1, "workers": 1, "depends_on": ["b"],
             "operations": {"x": {"service_time_ms": _const(2), "calls": {
                 "repeat": {"call": "b.y"}, "count": {"dist": "poisson", "mean": 3}}}}},
            {"name": "b", "port": 2, "instances": 1, "workers": 1,
             "operations": {"y": {"service_time_ms": {"dist": "exponential", "mean": 1}}}},
        ],
        "workload": {"endpoints": [{"name": "e", "entry": "a.x",
                                    "arrival": {"kind": "poisson", "rate": 50}}]},
    })
    se = sampling_se(sc, 100.0)
    # a: X = 2 ms per request, E[X^2] = 4; Var over 100 s = 100 * 50 * 4 = 2e4 ms^2.
    assert se.at["a", "utilisation"] == pytest.approx(math.sqrt(2e4) / 100 / 1000)
    assert se.at["a", "calls_per_s"] == pytest.approx(math.sqrt(100 * 50 * 1) / 100)
    # b: X = sum of N ~ Poisson(3) exponential(1 ms) times: E[X^2] = E[N]Var(S) + E[N^2]E[S]^2
    # = 3 * 1 + 12 * 1 = 15; visits: E[N^2] = 12.
    assert se.at["b", "utilisation"] == pytest.approx(math.sqrt(100 * 50 * 15) / 100 / 1000)
    assert se.at["b", "calls_per_s"] == pytest.approx(math.sqrt(100 * 50 * 12) / 100)


@pytest.mark.parametrize("dist, expected", [
    (Exponential(dist="exponential", mean=2), 8.0),
    (Constant(dist="constant", value=4), 16.0),
    (Uniform(dist="uniform", low=0, high=3), 3.0),
    (LogNormal(dist="lognormal", median=1, sigma=1), math.e**2),
    (Gamma(dist="gamma", shape=2, scale=3), 54.0),
    (Empirical(dist="empirical", quantiles=[(0, 0), (1, 1)]), 1 / 3),       # uniform(0, 1)
    (Empirical(dist="empirical", quantiles=[(0, 1), (0.5, 1), (1, 3)]), 0.5 * 1 + 0.5 * 13 / 3),
    (Poisson(dist="poisson", mean=2), 6.0),
    (UniformInt(dist="uniform_int", low=1, high=3), 14 / 3),
    (Discrete(dist="discrete", weights=[(1, 1), (3, 1)]), 5.0),
    (4, 16.0),
])
def test_second_moments(dist, expected):
    assert second_moment(dist) == pytest.approx(expected)

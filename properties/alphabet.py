"""The alphabet of single faults that ``hailan-sim check --exhaustive`` enumerates.

Every fault kind the scenario can have, against every target the scenario offers (every
instance, service, node, zone, infrastructure component, dependency edge and endpoint),
at one start time and one duration (a quarter of the window after warm-up, so recovery
is observed in the rest), with a fixed, clearly harmful
parameter per kind. The coverage claim is exactly this list: "every single fault of these
kinds, on every target, was tried".
"""

from __future__ import annotations

from typing import Optional, Sequence

from pydantic import TypeAdapter

from hailan_sim.models.faults import FAULT_KINDS, Fault
from hailan_sim.models.scenario import CallNode, Scenario, split_target
from hailan_sim.models.topology import walk_tree

__all__ = ["cover_faults", "single_faults"]

_FAULT = TypeAdapter(Fault)

# The fixed, clearly harmful parameter of each kind that has one (both phases use these).
_HARMFUL = {
    "error_rate": {"fraction": 0.5},
    "slow": {"factor": 10.0},
    "link_latency": {"added_ms": 200.0, "loss": 0.1},
    "clock_skew": {"skew_s": 300.0},
    "load_spike": {"factor": 3.0},
}


def single_faults(
    scenario: Scenario,
    *,
    kinds: Optional[Sequence[str]] = None,
    durations_s: Optional[Sequence[float]] = None,
    start_s: Optional[float] = None,
) -> list:
    """Every single fault of ``kinds`` (default: all) on every target, in a fixed order."""
    for k in kinds or ():
        if k not in FAULT_KINDS:
            raise ValueError(f"{k=} is not a fault kind; kinds: {', '.join(FAULT_KINDS)}")
    run = scenario.run
    window = run.duration_s - run.warmup_s
    start = run.warmup_s + 0.2 * window if start_s is None else start_s
    durations = list(durations_s or (round(0.25 * window, 3),))
    services = [s.name for s in scenario.services]
    instances = [p.instance for p in scenario.placements()]
    used_nodes = list(dict.fromkeys([p.node for p in scenario.placements()]))
    zones = list(dict.fromkeys(n.zone for n in scenario.nodes if n.name in used_nodes))
    registry = [c.name for c in scenario.infrastructure if c.kind == "registry"]
    infra = [c.name for c in scenario.infrastructure if c.kind != "registry"]
    edges = [(s.name, d) for s in scenario.services for d in s.depends_on if d in services]
    endpoints = [e.name for e in scenario.workload.endpoints]

    targets = {
        "crash_instance": [{"instance": i} for i in instances],
        "drain_instance": [{"instance": i} for i in instances],
        "hang": [{"instance": i} for i in instances],
        "error_rate": [{"target": s, **_HARMFUL["error_rate"]} for s in services],
        "slow": [{"target": s, **_HARMFUL["slow"]} for s in services],
        "crash_service": [{"service": s} for s in services],
        "crash_node": [{"node": n} for n in used_nodes],
        "crash_zone": [{"zone": z} for z in zones],
        "partition": [{"a": a, "b": b} for a, b in edges],
        "link_latency": [{"a": a, "b": b, **_HARMFUL["link_latency"]} for a, b in edges],
        "registry_outage": [{}] if registry else [],
        "infra_outage": [{"component": c} for c in infra],
        "clock_skew": [{"node": n, **_HARMFUL["clock_skew"]} for n in used_nodes],
        "key_rotation": [{}],
        "load_spike": [{"endpoint": e, **_HARMFUL["load_spike"]} for e in endpoints],
    }
    out = []
    for kind in kinds or FAULT_KINDS:
        for fields in targets[kind]:
            for d in durations:
                out.append(_FAULT.validate_python({"kind": kind, "start_s": start, "duration_s": d, **fields}))
    return out


def cover_faults(
    scenario: Scenario,
    horizon: tuple[float, float],
    *,
    kinds: Optional[Sequence[str]] = None,
    targets: Optional[Sequence[str]] = None,
) -> list:
    """One single fault of each kind, aimed where it hurts most: the checker's first phase.

    Hypothesis draws kinds and targets at random, so a small budget leaves kinds untried (a
    default check once fired 7 of 15). This phase tries each kind once, which is also the
    anti-vacuity claim of a check ("every fault kind fired"). The target of each kind is the
    one with the widest blast radius, ties going to the first in document order:

    * services (crash, error rate) and their instance 0 (crash, drain, hang): the most
      transitive dependents in the declared dependency graph (``hailan-sim topology``);
    * slowness: the busiest service (highest analytic utilisation,
      :func:`hailan_sim.models.capacity.offered_load`), which a slowdown pushes into overload: queues,
      rejections, timeouts, bulkheads and deadline drops get exercised;
    * partition and link latency: the first caller of that service (a service-to-service
      dependency edge);
    * infrastructure outage: the component, other than the registry and the gateway, with
      the most transitive dependents (the registry has its own kind; a gateway outage is
      every endpoint down at once, which says nothing about resilience);
    * node, zone, clock skew: the host (or zone) that runs the most instances and components;
      for a node crash, the host that runs the most instances and no shared component;
    * load spike: the busiest endpoint (highest mean arrival rate).

    Then roles, not only the widest blast radius (issue 10 item 6): a crash, for good, of
    instance 0 of every other service that has two or more instances (losing one of several
    should cost almost nothing: ``redundancy``), and the total loss (restarting) of the leaf
    service (one calling no other service) with the most dependents, unless it is already the
    crash_service pick. The registry outage and key rotation above are the control plane's.

    Each fault lasts the whole ``horizon`` (the longest a fault may last and still leave the
    run time to recover: a short outage often hides what a long one shows, such as a
    registry outage outlasting Consul's deregistration timer; the checker then tries it
    shorter). The crash of one instance, and of a node that runs no
    shared component, does not restart (the harsher case: the registry and the clients must
    route around a permanent loss); crashes of a service or a zone do, and so does a node
    crash when every node runs a shared component (the permanent loss of the only instance
    of the database or the broker is not something policies can recover from). Parameters are
    the alphabet's clearly harmful ones (error fraction 0.5, slowness x10, +200 ms with 10%
    loss, clock skew 300 s, load x3). ``kinds`` and ``targets`` restrict as in
    :func:`hailan_sim.properties.strategies.fault_schedules`; a kind with no allowed target is left out.
    """
    from collections import Counter

    from hailan_sim.models.capacity import _endpoint_rates, offered_load
    from hailan_sim.models.topology import analyse
    from hailan_sim.properties.strategies import _candidates

    for k in kinds or ():
        if k not in FAULT_KINDS:
            raise ValueError(f"{k=} is not a fault kind; kinds: {', '.join(FAULT_KINDS)}")
    c = _candidates(scenario)
    allowed = (lambda name: True) if targets is None else set(targets).__contains__
    radius = {n: len(d) for n, d in analyse(scenario).dependents.items()}  # blast radius

    def widest(names):
        names = [n for n in names if allowed(n)]
        # max() keeps the first of equals: ties go to document order.
        return max(names, key=lambda n: radius.get(n, 0)) if names else None

    def first(names):
        names = [n for n in names if allowed(n)]
        return names[0] if names else None

    placements = scenario.placements()
    hosted = Counter([p.node for p in placements] + [x.placement for x in scenario.infrastructure if x.placement])
    zone_of = {n.name: n.zone for n in scenario.nodes}
    zone_load = Counter()
    for node, n in hosted.items():
        zone_load[zone_of[node]] += n
    busiest_node = first(sorted(c["nodes"], key=lambda n: -hosted[n]))
    with_infra = {x.placement for x in scenario.infrastructure if x.placement}
    # A node whose permanent loss the policies can route around: it runs no shared component.
    busiest_bare = first(sorted([n for n in c["nodes"] if n not in with_infra], key=lambda n: -hosted[n]))
    busiest_zone = first(sorted(c["zones"], key=lambda z: -zone_load[z]))
    svc = widest(c["services"])
    by_service = {s: [p.instance for p in placements if p.instance.rpartition("-")[0] == s] for s in c["services"]}
    instance = None
    for s in sorted(c["services"], key=lambda s: -radius.get(s, 0)):
        instance = first(by_service[s])
        if instance is not None:
            break
    callee_pairs = [p for p in c["pairs"] if p[0] in c["services"] and p[1] in c["services"]
                    and allowed(p[0]) and allowed(p[1])]
    pair = max(callee_pairs, key=lambda p: radius.get(p[1], 0)) if callee_pairs else None
    gateways = {x.name for x in scenario.infrastructure if x.kind == "gateway"}
    component = widest([x for x in c["components"] if x not in gateways])
    rates = _endpoint_rates(scenario)
    load = offered_load(scenario)["utilisation"].to_dict()
    busiest_svc = first(sorted(c["services"], key=lambda s: -load.get(s, 0.0)))
    endpoint = first(sorted(c["endpoints"], key=lambda e: -rates.get(e, 0.0)))
    registry = c["registries"][0] if c["registries"] and allowed(c["registries"][0]) else None

    choices = {
        "crash_instance": instance and {"instance": instance, "restart": False},
        "crash_service": svc and {"service": svc, "restart": True},
        "crash_node": ({"node": busiest_bare, "restart": False} if busiest_bare else
                       busiest_node and {"node": busiest_node, "restart": True}),
        "crash_zone": busiest_zone and {"zone": busiest_zone, "restart": True},
        "drain_instance": instance and {"instance": instance},
        "hang": instance and {"instance": instance},
        "slow": busiest_svc and {"target": busiest_svc, **_HARMFUL["slow"]},
        "error_rate": svc and {"target": svc, **_HARMFUL["error_rate"]},
        "partition": pair and {"a": pair[0], "b": pair[1]},
        "link_latency": pair and {"a": pair[0], "b": pair[1], **_HARMFUL["link_latency"]},
        "registry_outage": registry and {},
        "infra_outage": component and {"component": component},
        "clock_skew": busiest_node and {"node": busiest_node, **_HARMFUL["clock_skew"]},
        "key_rotation": {} if targets is None else None,
        "load_spike": endpoint and {"endpoint": endpoint, **_HARMFUL["load_spike"]},
    }
    lo, hi = horizon
    start, duration = round(lo, 3), round(hi - lo, 3)
    out = []
    wanted = list(kinds or FAULT_KINDS)
    for kind in wanted:
        fields = choices[kind]
        if fields is None:
            continue
        out.append(_FAULT.validate_python({"kind": kind, "start_s": start, "duration_s": duration, **fields}))
    # Roles, not only the widest blast radius (issue 10 item 6): the loss of one instance of
    # every service that has others (redundancy: it should cost almost nothing), and the
    # total loss of a leaf service (one that calls no other service), the one with the most
    # dependents. After the per-kind picks, in document order.
    if "crash_instance" in wanted:
        for s in scenario.services:
            inst = first(by_service.get(s.name, [])) if s.instances >= 2 else None
            if inst is not None and inst != instance:
                out.append(_FAULT.validate_python({"kind": "crash_instance", "start_s": start,
                                                   "duration_s": duration, "instance": inst, "restart": False}))
    if "crash_service" in wanted:
        services = {x.name for x in scenario.services}
        leaves = [x.name for x in scenario.services if x.name in c["services"] and not any(
            split_target(n.call)[0] in services
            for op in x.operations.values() for n, _ in walk_tree(op.calls, "calls") if isinstance(n, CallNode))]
        leaf = widest(leaves)
        if leaf is not None and leaf != svc:
            out.append(_FAULT.validate_python({"kind": "crash_service", "start_s": start, "duration_s": duration,
                                               "service": leaf, "restart": True}))
    return out

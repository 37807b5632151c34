"""Topology analysis with networkx: reference checks, recursion, cycles and blast radius.

Two graphs matter. The *declared* graph has an edge A -> B for every name in A's
``depends_on``; a cycle in it (the spec has one: order-service <-> payment-service) is
legal but worth a warning. The *operation* graph has an edge A.op -> B.op2 for every call
or publish in A.op's call tree; a cycle there means a request could recurse for ever, so
it is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

import networkx as nx

if TYPE_CHECKING:
    from hailan_sim.models.scenario import Scenario

__all__ = ["TopologyReport", "analyse", "check_references", "declared_graph", "walk_tree"]


def walk_tree(node, path: str) -> Iterator[tuple[object, str]]:
    """Every node of a call tree with its field path, depth first, in document order."""
    from hailan_sim.models.scenario import ChoiceNode, MaybeNode, ParNode, RepeatNode, SeqNode

    if node is None:
        return
    yield node, path
    if isinstance(node, SeqNode):
        for i, child in enumerate(node.seq):
            yield from walk_tree(child, f"{path}.seq[{i}]")
    elif isinstance(node, ParNode):
        for i, child in enumerate(node.par):
            yield from walk_tree(child, f"{path}.par[{i}]")
    elif isinstance(node, MaybeNode):
        yield from walk_tree(node.maybe, f"{path}.maybe")
    elif isinstance(node, ChoiceNode):
        for i, opt in enumerate(node.choice):
            yield from walk_tree(opt.do, f"{path}.choice[{i}].do")
    elif isinstance(node, RepeatNode):
        yield from walk_tree(node.repeat, f"{path}.repeat")


def _queue_for(scenario: Scenario, via: Optional[str]):
    queues = [c for c in scenario.infrastructure if c.kind == "queue"]
    if via is None:
        return queues[0] if len(queues) == 1 else None
    return next((q for q in queues if q.name == via), None)


def check_references(scenario: Scenario) -> None:
    """Raise ``ValueError`` naming the field path of the first broken cross-reference."""
    from hailan_sim.models.scenario import CallNode, PublishNode, split_target

    components: dict[str, str] = {}
    ports: dict[int, str] = {}
    for label, items in (("services", scenario.services), ("infrastructure", scenario.infrastructure)):
        for i, c in enumerate(items):
            where = f"{label}[{i}]"
            if c.name in components:
                raise ValueError(f"{where}.name: duplicate name {c.name!r} (also {components[c.name]})")
            components[c.name] = where
            if c.port is not None:
                if c.port in ports:
                    raise ValueError(f"{where}.port: port {c.port} is already used by {ports[c.port]}")
                ports[c.port] = f"{where} ({c.name})"

    services = {s.name: s for s in scenario.services}
    infra = {c.name: c for c in scenario.infrastructure}
    nodes = {n.name for n in scenario.nodes}
    gateways = [c.name for c in scenario.infrastructure if c.kind == "gateway"]
    if len(gateways) > 1:
        raise ValueError(f"infrastructure: at most one gateway is allowed, found {gateways}")

    for i, c in enumerate(scenario.infrastructure):
        if c.placement is not None and c.placement not in nodes:
            raise ValueError(f"infrastructure[{i}].placement: unknown node {c.placement!r}; nodes are {sorted(nodes)}")
    for i, s in enumerate(scenario.services):
        for j, dep in enumerate(s.depends_on):
            if dep not in components:
                raise ValueError(
                    f"services[{i}].depends_on[{j}]: unknown service or component {dep!r} "
                    f"(known: {', '.join(sorted(components))})"
                )
        for j, node in enumerate(s.placement or []):
            if node not in nodes:
                raise ValueError(f"services[{i}].placement[{j}]: unknown node {node!r}; nodes are {sorted(nodes)}")
    for i, link in enumerate(scenario.network.links):
        for end in ("src", "dst"):
            name = getattr(link, end)
            if name not in components and name not in ("client",):
                raise ValueError(f"network.links[{i}].{end}: unknown component {name!r}")

    ops = nx.DiGraph()
    for i, s in enumerate(scenario.services):
        declared = set(s.depends_on)
        for op_name, op in s.operations.items():
            here = (s.name, op_name)
            ops.add_node(here)
            for node, path in walk_tree(op.calls, f"services[{i}].operations.{op_name}.calls"):
                if isinstance(node, CallNode):
                    name, sub = split_target(node.call)
                    where = f"{path}.call"
                elif isinstance(node, PublishNode):
                    name, sub = split_target(node.publish)
                    where = f"{path}.publish"
                    queue = _queue_for(scenario, node.via)
                    if queue is None:
                        raise ValueError(
                            f"{path}.via: no queue component {node.via!r}"
                            if node.via
                            else f"{path}: publishing needs exactly one infrastructure component of kind 'queue' (or name one in 'via')"
                        )
                    if queue.name not in declared:
                        raise ValueError(
                            f"{path}: {s.name} publishes through {queue.name!r} but does not "
                            f"list it in services[{i}].depends_on"
                        )
                    if name not in services or sub is None:
                        raise ValueError(f"{where}: {node.publish!r} must name a service operation 'service.operation'")
                else:
                    continue
                if name not in components:
                    raise ValueError(f"{where}: unknown service or component {name!r}")
                if name in infra:
                    if sub is not None:
                        raise ValueError(f"{where}: infrastructure component {name!r} has no operations; write just {name!r}")
                elif sub is None or sub not in services[name].operations:
                    known = ", ".join(sorted(services[name].operations))
                    raise ValueError(f"{where}: {name} has no operation {sub!r} (it has: {known})")
                if isinstance(node, CallNode) and name not in declared:
                    raise ValueError(
                        f"{where}: {s.name} calls {name!r}, which is not a declared dependency; "
                        f"add it to services[{i}].depends_on"
                    )
                if name in services:
                    ops.add_edge(here, (name, sub))

    names: set[str] = set()
    for i, ep in enumerate(scenario.workload.endpoints):
        if ep.name in names:
            raise ValueError(f"workload.endpoints[{i}].name: duplicate endpoint {ep.name!r}")
        names.add(ep.name)
        svc, sub = split_target(ep.entry)
        if svc not in services or sub is None or sub not in services[svc].operations:
            raise ValueError(
                f"workload.endpoints[{i}].entry: {ep.entry!r} is not an operation of a service "
                "(write 'service.operation')"
            )

    _check_faults(scenario, components)
    for i, edge in enumerate(scenario.policies.edges):
        for end in ("caller", "callee"):
            name = getattr(edge, end)
            if name is not None and name not in services:
                what = ("an infrastructure component: client policies apply to calls between services"
                        if name in infra else "an unknown service")
                raise ValueError(
                    f"policies.edges[{i}].{end}: {name!r} is {what} "
                    f"(services: {', '.join(sorted(services))}); leave it out to mean any service"
                )
    tokens = scenario.effective_policies().tokens
    if tokens.enabled and tokens.signing == "issuer":  # local signing calls nobody
        svc, _, op = tokens.issuer.partition(".")
        if svc not in services or op not in services[svc].operations:
            raise ValueError(
                f"policies.tokens.issuer: {tokens.issuer!r} is not an operation of a service; "
                "name the operation that issues service tokens (e.g. 'auth-service.issue_token') "
                "or set policies.tokens.signing: local or policies.tokens.enabled: false"
            )

    try:
        cycle = nx.find_cycle(ops)
    except nx.NetworkXNoCycle:
        return
    loop = " -> ".join(f"{a}.{o}" for (a, o), _ in cycle) + f" -> {cycle[0][0][0]}.{cycle[0][0][1]}"
    raise ValueError(f"call trees recurse: {loop}; a request would never finish")


def _check_faults(scenario: Scenario, components: dict) -> None:
    """Every fault names things the scenario has."""
    instances = {p.instance for p in scenario.placements()}
    services = {s.name for s in scenario.services}
    nodes = {n.name for n in scenario.nodes}
    zones = {n.zone for n in scenario.nodes}
    infra = {c.name: c for c in scenario.infrastructure}
    endpoints = {e.name for e in scenario.workload.endpoints}
    ends = set(components) | instances

    def need(ok: bool, where: str, what: str, allowed) -> None:
        if not ok:
            shown = ", ".join(sorted(allowed)[:12]) + (" ..." if len(allowed) > 12 else "")
            raise ValueError(f"{where}: {what}; expected one of: {shown}")

    for i, f in enumerate(scenario.faults):
        where = f"faults[{i}]"
        kind = f.kind
        if kind in ("crash_instance", "drain_instance", "hang"):
            need(f.instance in instances, f"{where}.instance", f"no instance {f.instance!r}", instances)
        elif kind == "crash_service":
            need(f.service in services, f"{where}.service", f"no service {f.service!r}", services)
        elif kind == "crash_node":
            need(f.node in nodes, f"{where}.node", f"no node {f.node!r}", nodes)
        elif kind == "crash_zone":
            need(f.zone in zones, f"{where}.zone", f"no zone {f.zone!r}", zones)
        elif kind in ("slow", "error_rate"):
            need(f.target in services or f.target in instances, f"{where}.target",
                 f"no service or instance {f.target!r}", services | instances)
        elif kind in ("partition", "link_latency"):
            for side in ("a", "b"):
                v = getattr(f, side)
                need(v in ends, f"{where}.{side}", f"no component or instance {v!r}", ends)
        elif kind == "registry_outage":
            need(any(c.kind == "registry" for c in infra.values()), where,
                 "the scenario has no registry component", {"(add one of kind: registry)"})
        elif kind == "infra_outage":
            need(f.component in infra, f"{where}.component", f"no infrastructure component {f.component!r}", infra)
        elif kind == "clock_skew":
            need(f.node in nodes, f"{where}.node", f"no node {f.node!r}", nodes)
        elif kind == "load_spike":
            need(f.endpoint in endpoints, f"{where}.endpoint", f"no endpoint {f.endpoint!r}", endpoints)


def declared_graph(scenario: Scenario) -> nx.DiGraph:
    """Edge A -> B for each B in A's ``depends_on``; nodes in document order."""
    g = nx.DiGraph()
    for c in (*scenario.services, *scenario.infrastructure):
        g.add_node(c.name)
    for s in scenario.services:
        for dep in s.depends_on:
            g.add_edge(s.name, dep)
    return g


def _canonical_cycle(cycle: list[str]) -> list[str]:
    i = cycle.index(min(cycle))
    return cycle[i:] + cycle[:i]


@dataclass(frozen=True)
class TopologyReport:
    services: list[dict]
    infrastructure: list[dict]
    cycles: list[list[str]]
    dependents: dict[str, list[str]]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "services": self.services,
            "infrastructure": self.infrastructure,
            "cycles": self.cycles,
            "dependents": self.dependents,
            "warnings": self.warnings,
        }


def analyse(scenario: Scenario) -> TopologyReport:
    """Services, ports, dependencies, declared cycles and transitive dependents."""
    g = declared_graph(scenario)
    cycles = sorted(_canonical_cycle(c) for c in nx.simple_cycles(g))
    warnings = [
        "dependency cycle: " + " -> ".join([*c, c[0]]) for c in cycles
    ]
    dependents = {name: sorted(nx.ancestors(g, name)) for name in g.nodes}
    services = [
        {
            "name": s.name,
            "port": s.port,
            "instances": s.instances,
            "workers": s.workers,
            "depends_on": list(s.depends_on),
            "operations": list(s.operations),
        }
        for s in scenario.services
    ]
    infrastructure = [
        {"name": c.name, "kind": c.kind, "port": c.port, "capacity": c.capacity}
        for c in scenario.infrastructure
    ]
    return TopologyReport(services, infrastructure, cycles, dependents, warnings)

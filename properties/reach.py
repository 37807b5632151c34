"""Reach and faulted components, and what the policies' own timers predict.

Functions of a scenario only (never of a run): which components each endpoint's requests
depend on (:func:`endpoint_reach`), which components each fault faults
(:func:`faulted_components`), and the bounds the scenario's own policies imply
(:func:`dead_instance_bound_s`, :func:`default_recovery_s`,
:func:`default_amplification_factor`). The invariants judge by the objectives; these
predictions are shown beside them.
"""

from __future__ import annotations

import math
from typing import Optional

from hailan_sim.models.policies import EDGE_FIELDS
from hailan_sim.models.registry import CHECK_REAP_INTERVAL_S
from hailan_sim.models.scenario import CallNode, Infrastructure, PublishNode, Scenario, split_target
from hailan_sim.models.topology import walk_tree

#: The pseudo-component "service tokens" (the signing keys and every verifier's checks):
#: reached by every service-to-service call when tokens are enabled; faulted by a key
#: rotation, or (``signing: issuer``) by a clock skew on a node the issuer runs on. With
#: ``signing: local`` every caller signs on its own clock, so a skewed node faults only what
#: runs there. Parenthesised so it can never collide with a component's name.
TOKENS = "(tokens)"


# --------------------------------------------------------------------------- topology helpers


def token_issuer(scenario: Scenario) -> Optional[str]:
    """The service callers fetch tokens from: ``tokens.issuer``'s service with tokens
    enabled and ``signing: issuer``; None otherwise (``signing: local``: each caller signs its
    own, the spec's ServiceAuth.generateToken, 3.7.1, so no service is on the token path)."""
    tok = scenario.effective_policies().tokens
    return split_target(tok.issuer)[0] if tok.enabled and tok.signing == "issuer" else None


def _registry_name(scenario: Scenario) -> Optional[str]:
    return next((c.name for c in scenario.infrastructure if c.kind == "registry"), None)


def _gateway_name(scenario: Scenario) -> Optional[str]:
    return next((c.name for c in scenario.infrastructure if c.kind == "gateway"), None)


def _service_of(scenario: Scenario, instance: str) -> str:
    """``order-service-2`` -> ``order-service`` (also infrastructure ``redis-0`` -> ``redis``)."""
    return instance.rsplit("-", 1)[0]


def _component_of(scenario: Scenario, name: str) -> str:
    """A fault's side (a component or an instance) -> the component."""
    names = {c.name for c in (*scenario.services, *scenario.infrastructure)}
    return name if name in names else _service_of(scenario, name)


def _caller_service(scenario: Scenario, source: Optional[str]) -> Optional[str]:
    """The service whose instance ``source`` is; None for clients, the gateway, brokers."""
    if source is None:
        return None
    name, _, idx = source.rpartition("-")
    if idx.isdigit() and any(s.name == name for s in scenario.services):
        return name
    return None


def _node_of(scenario: Scenario, instance: str) -> Optional[str]:
    """Where an instance runs (autoscaled ones too: placement is cycled by index)."""
    name, _, idx = instance.rpartition("-")
    for s in scenario.services:
        if s.name == name:
            order = s.placement or [n.name for n in scenario.nodes]
            return order[int(idx) % len(order)]
    for c in scenario.infrastructure:
        if c.name == name:
            return c.placement or scenario.nodes[0].name
    return None


def _components_on_nodes(scenario: Scenario, nodes: set) -> list[str]:
    out = []
    for p in scenario.placements():
        if p.node in nodes:
            svc = _service_of(scenario, p.instance)
            if svc not in out:
                out.append(svc)
    for c in scenario.infrastructure:
        if (c.placement or scenario.nodes[0].name) in nodes and c.name not in out:
            out.append(c.name)
    return out


def _op_reach(scenario: Scenario, service: str, op: str, acc: list, seen: list,
              *, through_fallback: bool, consumers: bool) -> None:
    """Add what ``service.op`` reaches to ``acc`` (and the operations visited to ``seen``)."""
    if (service, op) in seen:
        return
    seen.append((service, op))
    if service not in acc:
        acc.append(service)
    queues = [c.name for c in scenario.infrastructure if c.kind == "queue"]
    for node, _ in walk_tree(scenario.service(service).operations[op].calls, "calls"):
        if isinstance(node, CallNode):
            if node.fallback and not through_fallback:
                continue
            name, sub = split_target(node.call)
            if isinstance(scenario.component(name), Infrastructure):
                if name not in acc:
                    acc.append(name)
            else:
                _op_reach(scenario, name, sub, acc, seen, through_fallback=through_fallback,
                          consumers=consumers)
        elif isinstance(node, PublishNode):
            via = node.via or (queues[0] if len(queues) == 1 else None)
            if via is not None and via not in acc:
                acc.append(via)
            if consumers:
                name, sub = split_target(node.publish)
                _op_reach(scenario, name, sub, acc, seen, through_fallback=through_fallback,
                          consumers=consumers)


def _makes_service_call(scenario: Scenario, service: str, op: str, through_fallback: bool) -> bool:
    return any(
        isinstance(n, CallNode) and (through_fallback or not n.fallback)
        and not isinstance(scenario.component(split_target(n.call)[0]), Infrastructure)
        for n, _ in walk_tree(scenario.service(service).operations[op].calls, "calls")
    )


def _reach(scenario: Scenario, entry: str, *, through_fallback: bool = False,
           consumers: bool = False) -> list[str]:
    svc, op = split_target(entry)
    acc: list[str] = []
    gw = _gateway_name(scenario)
    if gw is not None:
        acc.append(gw)
    seen: list = []
    _op_reach(scenario, svc, op, acc, seen, through_fallback=through_fallback, consumers=consumers)
    # Any service-to-service call below the entry goes through discovery and (with tokens)
    # carries a token; the entry call itself comes from the gateway, which does neither.
    if any(_makes_service_call(scenario, s, o, through_fallback) for s, o in seen):
        reg = _registry_name(scenario)
        if reg is not None and reg not in acc:
            acc.append(reg)
        if scenario.effective_policies().tokens.enabled:
            acc.append(TOKENS)
    return acc


def endpoint_reach(scenario: Scenario) -> dict[str, list[str]]:
    """Per endpoint, the components its requests depend on for their outcome.

    The entry service, then what its call tree calls, transitively through service
    operations, *except* through calls with ``fallback: true`` (their failure does not fail
    the caller); a publish reaches the queue (the publisher waits for the broker's confirm)
    but not the consumer. The gateway is reached by every endpoint (every request passes
    it). An endpoint whose tree makes a service-to-service call also reaches the registry
    (discovery runs before such calls) and, with tokens enabled, :data:`TOKENS`.
    """
    return {ep.name: _reach(scenario, ep.entry) for ep in scenario.workload.endpoints}


def faulted_components(scenario: Scenario) -> dict[int, list[str]]:
    """Per fault (by index), the components it faults.

    ``crash_instance``/``hang``/``drain_instance``: the instance's service;
    ``crash_service``: the service; ``crash_node``/``crash_zone``: every service and
    component with an instance there; ``slow``/``error_rate``: the target's service;
    ``partition``/``link_latency``: both sides; ``registry_outage``: the registry;
    ``infra_outage``: the component; ``clock_skew``: what runs on the node, plus
    :data:`TOKENS` if the token issuer does (``signing: issuer``); ``key_rotation``:
    :data:`TOKENS` and, with ``signing: issuer``, the issuer (with ``signing: local`` every
    caller signs its own tokens: auth-service is on no token's path); ``load_spike``: everything the spiked endpoint's requests touch
    (through fallbacks and message consumers too: the extra load goes everywhere), except
    the gateway and the registry, which are shared by design and must absorb it.
    """
    out: dict[int, list[str]] = {}
    pol = scenario.effective_policies()
    issuer = token_issuer(scenario)
    for i, f in enumerate(scenario.faults):
        k = f.kind
        if k in ("crash_instance", "hang", "drain_instance"):
            comps = [_service_of(scenario, f.instance)]
        elif k == "crash_service":
            comps = [f.service]
        elif k == "crash_node":
            comps = _components_on_nodes(scenario, {f.node})
        elif k == "crash_zone":
            comps = _components_on_nodes(scenario, {n.name for n in scenario.nodes if n.zone == f.zone})
        elif k in ("slow", "error_rate"):
            comps = [_component_of(scenario, f.target)]
        elif k in ("partition", "link_latency"):
            comps = list(dict.fromkeys([_component_of(scenario, f.a), _component_of(scenario, f.b)]))
        elif k == "registry_outage":
            comps = [_registry_name(scenario)]
        elif k == "infra_outage":
            comps = [f.component]
        elif k == "clock_skew":
            comps = _components_on_nodes(scenario, {f.node})
            if issuer is not None and issuer in comps:
                comps.append(TOKENS)
        elif k == "key_rotation":
            comps = [issuer, TOKENS] if pol.tokens.enabled else []
        elif k == "load_spike":
            ep = next(e for e in scenario.workload.endpoints if e.name == f.endpoint)
            shared = {_gateway_name(scenario), _registry_name(scenario)}
            comps = [c for c in _reach(scenario, ep.entry, through_fallback=True, consumers=True)
                     if c not in shared]
        else:  # pragma: no cover - a new fault kind must be classified here
            raise ValueError(f"faults[{i}]: no rule for fault kind {k!r} in faulted_components")
        out[i] = [c for c in comps if c is not None]
    return out



_CRASHES = ("crash_instance", "crash_service", "crash_node", "crash_zone")


def lost_for_good(scenario: Scenario) -> dict[str, str]:
    """The components whose every instance the scenario's faults take away for good, each
    with the fault that does it: a crash without restart (or without an end), of the last
    instances of a service, of a whole service, or of a node or zone that holds a
    single-instance infrastructure component or every instance of a service. Nothing a
    client policy does can bring such a component back; only the topology can (another
    instance elsewhere: AWS, "Static stability using Availability Zones"). Outages that end
    (``infra_outage``, ``registry_outage``, crashes that restart) are not losses for good."""
    lost: dict[str, set] = {}
    why: dict[str, list] = {}
    instances = {p.instance: p.node for p in scenario.placements()}
    zone_nodes = {}
    for n in scenario.nodes:
        zone_nodes.setdefault(n.zone, set()).add(n.name)
    for f in scenario.faults:
        if f.kind not in _CRASHES or (f.restart and f.duration_s is not None):
            continue
        if f.kind == "crash_instance":
            gone, what = {f.instance}, f"crash_instance({f.instance})"
        elif f.kind == "crash_service":
            gone, what = {i for i in instances if _service_of(scenario, i) == f.service}, f"crash_service({f.service})"
            if any(c.name == f.service for c in scenario.infrastructure):
                gone.add(f.service)
        else:
            nodes = {f.node} if f.kind == "crash_node" else zone_nodes.get(f.zone, set())
            gone = {i for i, node in instances.items() if node in nodes}
            gone |= {c.name for c in scenario.infrastructure if (c.placement or scenario.nodes[0].name) in nodes}
            what = f"{f.kind}({f.node if f.kind == 'crash_node' else f.zone})"
        for i in sorted(gone):
            comp = _component_of(scenario, i)
            if i not in lost.setdefault(comp, set()):
                lost[comp].add(i)
                if what not in why.setdefault(comp, []):
                    why[comp].append(what)
    out: dict[str, str] = {}
    for c in scenario.infrastructure:
        if c.name in lost:
            out[c.name] = f"{' and '.join(why[c.name])} without restart: no {c.name} left (it has one instance)"
    for s in scenario.services:
        if s.name in lost and len(lost[s.name]) >= s.instances:
            out[s.name] = f"{' and '.join(why[s.name])} without restart: no instance of {s.name} left"
    return out


# --------------------------------------------------------------------------- policy-derived defaults


def _edges(scenario: Scenario) -> list[tuple[str, str]]:
    """(caller, callee) service pairs that calls can use, in document order (token
    fetches to the issuer included)."""
    issuer = token_issuer(scenario)
    out: list[tuple[str, str]] = []
    for s in scenario.services:
        for op in s.operations.values():
            for node, _ in walk_tree(op.calls, "calls"):
                if isinstance(node, CallNode):
                    name = split_target(node.call)[0]
                    if not isinstance(scenario.component(name), Infrastructure):
                        if (s.name, name) not in out:
                            out.append((s.name, name))
                        if issuer is not None and (s.name, issuer) not in out:
                            out.append((s.name, issuer))
    return out


def _edge_policy(scenario: Scenario, caller: str, callee: str) -> dict:
    """The policies of calls from ``caller`` to ``callee``: the defaults, then every
    matching ``edges`` entry in order (later wins) -- the rule docs/profiles.md states."""
    p = scenario.effective_policies()
    fields = {f: getattr(p, f) for f in EDGE_FIELDS}
    for ov in p.edges:
        if ov.caller in (None, caller) and ov.callee in (None, callee):
            fields.update(ov.overrides())
    return fields


def _staleness_s(discovery) -> float:
    if discovery.timing == "cached":
        return float(discovery.ttl_s)
    if discovery.timing == "watch":
        return float(discovery.watch_delay_s)
    return 0.0


def _removal_s(hc) -> Optional[float]:
    """From critical to deregistered: the effective deregistration timeout (Consul clamps
    it to >= 60 s) plus, with Consul timing, the 30 s reaper's period (agent.go
    reapServicesInternal runs every CheckReapInterval); None: never reaped."""
    after = hc.effective_deregister_after_s()
    if after is None:
        return None
    return after + (CHECK_REAP_INTERVAL_S if hc.deregister_timing == "consul" else 0.0)


def _breaker_wait_s(edge: dict) -> float:
    """The longest an edge's breaker (spec: ``timeout_s``; sliding window:
    ``wait_in_open_s + max_wait_in_half_open_s``) or outlier ejection
    (``base_ejection_s + interval_s``) keeps calls off a callee before trying it again."""
    wait = 0.0
    br = edge["breaker"]
    if br is not None:
        wait = br.timeout_s if br.kind == "spec" else br.wait_in_open_s + br.max_wait_in_half_open_s
    if edge["outlier"] is not None:
        wait = max(wait, edge["outlier"].base_ejection_s + edge["outlier"].interval_s)
    return wait


def longest_timer_s(scenario: Scenario) -> float:
    """The longest timer of the policies under test that a fault still on when it expires
    can meet: a breaker's or outlier ejection's wait on any edge (:func:`_breaker_wait_s`;
    seed: the spec breaker's 60 s) and, with a registry, the time from an instance's death
    to its deregistration (detection ``max(1, failures_before_critical) x (interval +
    timeout)`` then :func:`_removal_s`; seed: 15 + 60 + 30 = 105 s, Consul's reaping).
    Fault durations must reach past it (issue 10 item 6) so that what happens when such a
    timer expires with the fault still on is seen. The verifiers' key-cache TTL (300 s) is
    left out: it only matters around a key rotation, and a window past it would make every
    check run five minutes longer."""
    pol = scenario.effective_policies()
    longest = max([_breaker_wait_s(_edge_policy(scenario, a, b)) for a, b in _edges(scenario)] or [0.0])
    if _registry_name(scenario) is not None:
        hc = pol.health_check
        removal = _removal_s(hc)
        if removal is not None:
            longest = max(longest, max(1, hc.failures_before_critical) * (hc.interval_s + hc.timeout_s) + removal)
    return float(longest)


def dead_instance_bound_s(scenario: Scenario, caller: Optional[str] = None,
                          callee: Optional[str] = None) -> float:
    """How long after an instance dies its callers may still send it calls, by the
    registry policy of the edge (the largest over all edges when not given).

    ``agent_list`` discovery lists an instance until it is reaped: detection (a failing
    check: ``max(1, failures_before_critical) x (interval + timeout)``), then the
    deregistration delay (Consul clamps it to >= 60 s and reaps every 30 s; ``exact``:
    as configured, no reaper), then the view's staleness (cache TTL or watch delay).
    ``health_passing`` hides it at the first failing check: detection plus staleness.
    Without a registry callers pick among up instances only: 0. Never reaped: infinite.
    """
    if _registry_name(scenario) is None:
        return 0.0
    pol = scenario.effective_policies()
    hc = pol.health_check
    detect = max(1, hc.failures_before_critical) * (hc.interval_s + hc.timeout_s)
    if caller is not None and callee is not None:
        edges = [(caller, callee)]
    else:
        edges = _edges(scenario) or [("", "")]
    bound = 0.0
    for a, b in edges:
        disc = _edge_policy(scenario, a, b)["discovery"]
        if disc.path == "agent_list":
            removal = _removal_s(hc)
            if removal is None:
                return math.inf
            b_s = detect + removal + _staleness_s(disc)
        else:
            b_s = detect + _staleness_s(disc)
        bound = max(bound, b_s)
    return bound


def default_recovery_s(scenario: Scenario, *, slack_s: float = 10.0) -> float:
    """R, the time after the last fault ends by which every endpoint must be back, from the
    policies' own timers, taken in sequence (each can start only when the previous ended):

    restart (the largest ``startup_s`` of a service a fault restarts) + detection (health
    check ``interval + timeout``; the dead-instance bound instead when a fault leaves an
    instance dead) + the largest discovery staleness + the largest breaker wait (spec:
    ``timeout_s``; sliding window: ``wait_in_open_s + max_wait_in_half_open_s``; outlier
    ejection: ``base_ejection_s + interval_s``) + the verifiers' key-cache TTL after a key
    rotation when they do not refetch unknown keys + ``slack_s``.
    """
    pol = scenario.effective_policies()
    restart = 0.0
    leaves_dead = False
    for f in scenario.faults:
        if f.kind in ("crash_instance", "hang", "drain_instance"):
            svcs = [_service_of(scenario, f.instance)]
        elif f.kind == "crash_service":
            svcs = [f.service]
        elif f.kind in ("crash_node", "crash_zone"):
            nodes = ({f.node} if f.kind == "crash_node"
                     else {n.name for n in scenario.nodes if n.zone == f.zone})
            svcs = _components_on_nodes(scenario, nodes)
        else:
            continue
        if getattr(f, "restart", True) is False:
            leaves_dead = True
        for s in scenario.services:
            if s.name in svcs:
                restart = max(restart, s.startup_s)
    hc = pol.health_check
    detect = hc.interval_s + hc.timeout_s
    if leaves_dead:
        detect = max(detect, dead_instance_bound_s(scenario))
    stale = 0.0
    breaker = 0.0
    for a, b in _edges(scenario) or [("", "")]:
        e = _edge_policy(scenario, a, b)
        stale = max(stale, _staleness_s(e["discovery"]))
        breaker = max(breaker, _breaker_wait_s(e))
    keys = 0.0
    tok = pol.tokens
    if tok.enabled and not tok.refetch_on_unknown_kid and (
        tok.key_rotations_s or any(f.kind == "key_rotation" for f in scenario.faults)
    ):
        keys = tok.key_cache_ttl_s
    return restart + detect + stale + breaker + keys + slack_s


def default_amplification_factor(scenario: Scenario) -> float:
    """The most one retrying layer can multiply a request's calls to any one target: the
    largest ``retry.max_attempts`` of any edge, at least 2 when a 401 is refreshed and resent
    (the resend is one of the attempts), or the gateway's ``num_retries + 1``; at least 2, because one-off work (a token
    fetch, a discovery refresh) and random fan-out (repeat counts) can exceed the
    baseline's largest count but not double it. More than this means retries compounded
    across layers (the SRE book's 3 x 3 x 3) or redeliveries piled up."""
    pol = scenario.effective_policies()
    attempts = max([_edge_policy(scenario, a, b)["retry"].max_attempts
                    for a, b in _edges(scenario)] or [pol.retry.max_attempts])
    if pol.tokens.enabled and pol.tokens.on_401 == "refresh_retry":
        attempts = max(attempts, 2)  # the refresh-and-resend is one of the attempts
    if pol.gateway is not None and pol.gateway.retry is not None:
        # The gateway's own attempts at an entry service (policies.gateway; it sends no token).
        attempts = max(attempts, pol.gateway.retry.num_retries + 1)
    return float(max(2, attempts))

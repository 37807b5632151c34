"""Analytic offered load: how busy each component is expected to be, without simulating.

:func:`offered_load` walks every endpoint's call tree once, turning arrival rates into the
expected number of visits per second at each service operation and infrastructure
component, and from those into utilisation (the offered load in Erlangs per worker):

    utilisation = calls_per_s * mean service time / (instances * workers)

This is the utilisation law (U = X * S, Denning & Buzen 1978), which holds for any arrival
and service distribution as long as the component is stable and nothing is lost; it is
what the simulator's measured ``utilisation`` (busy workers / workers) estimates.
:func:`sampling_se` gives the standard error with which a run of a given length measures
each figure, so a test can compare the two with a derived tolerance.

Nothing here imports SimPy; everything is a pure function of the scenario.
"""

from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from hailan_sim.models.scenario import (
    CallNode,
    ChoiceNode,
    Infrastructure,
    MaybeNode,
    ParNode,
    PublishNode,
    RepeatNode,
    Scenario,
    SeqNode,
    split_target,
)

__all__ = [
    "COLUMNS",
    "MAX_BACKLOG",
    "MAX_RUN_CALLS",
    "CapacityError",
    "capacity_problems",
    "check_capacity",
    "offered_load",
    "sampling_se",
    "second_moment",
    "visits_per_request",
]

COLUMNS = ["kind", "calls_per_s", "mean_service_ms", "capacity", "utilisation"]

# A visit key: (component, operation) for a service operation, (component, None) for an
# infrastructure component.
_Key = tuple[str, Optional[str]]


def _add(into: dict[_Key, float], other: dict[_Key, float], factor: float = 1.0) -> None:
    for key, n in other.items():
        into[key] = into.get(key, 0.0) + factor * n


def _count_mean(count) -> float:
    return float(count) if isinstance(count, int) else float(count.expected())


def _lookup_registry(scenario: Scenario):
    """A function (caller, callee) -> the registry component a service-to-service call asks
    first (per-call discovery, as the engine models the spec's callService), or None."""
    registry = next((c for c in scenario.infrastructure if c.kind == "registry"), None)
    if registry is None:
        return lambda caller, callee: None
    policies = scenario.effective_policies()

    def lookup(caller: str, callee: str):
        discovery = policies.discovery
        protocol, channel = policies.protocol, policies.grpc_channel
        for edge in policies.edges:
            if edge.caller in (None, caller) and edge.callee in (None, callee):
                if edge.discovery is not None:
                    discovery = edge.discovery
                if edge.protocol is not None:
                    protocol = edge.protocol
                if edge.grpc_channel is not None:
                    channel = edge.grpc_channel
        # A gRPC edge with a cached channel looks up once per caller instance (the spec's
        # GrpcClient.getClient, 3.3.2), and cached/watch lookups refresh at most once per
        # TTL per caller: negligible load.
        if protocol == "grpc" and channel != "per_call":
            return None
        return registry if discovery.timing == "per_call" else None

    return lookup


class _Visits:
    """Expected visits per call of each operation, memoised (the operation graph is acyclic:
    the loader rejects recursion)."""

    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        self.memo: dict[_Key, dict[_Key, float]] = {}
        queues = [c.name for c in scenario.infrastructure if c.kind == "queue"]
        self.default_queue = queues[0] if len(queues) == 1 else None
        self.lookup = _lookup_registry(scenario)

    def of_op(self, service: str, op: Optional[str]) -> dict[_Key, float]:
        """Visits caused by one call of ``service.op`` (itself included)."""
        key = (service, op)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        out: dict[_Key, float] = {key: 1.0}
        comp = self.sc.component(service)
        if not isinstance(comp, Infrastructure):
            tree = comp.operations[op].calls
            if tree is not None:
                _add(out, self.of_tree(tree, service))
        self.memo[key] = out
        return out

    def of_tree(self, node, caller: str) -> dict[_Key, float]:
        out: dict[_Key, float] = {}
        if isinstance(node, CallNode):
            target, op = split_target(node.call)
            registry = self.lookup(caller, target) if op is not None else None
            if registry is not None:
                _add(out, {(registry.name, None): 1.0})  # discovery before the call
            _add(out, self.of_op(target, op))
        elif isinstance(node, PublishNode):
            broker = node.via or self.default_queue
            _add(out, self.of_op(broker, None))  # the publish and its confirm
            _add(out, self.of_op(*split_target(node.publish)))  # the delivery, later
        elif isinstance(node, SeqNode):
            for child in node.seq:
                _add(out, self.of_tree(child, caller))
        elif isinstance(node, ParNode):
            for child in node.par:
                _add(out, self.of_tree(child, caller))
        elif isinstance(node, MaybeNode):
            _add(out, self.of_tree(node.maybe, caller), node.p)
        elif isinstance(node, ChoiceNode):
            total = sum(o.weight for o in node.choice)
            for o in node.choice:
                _add(out, self.of_tree(o.do, caller), o.weight / total)
        elif isinstance(node, RepeatNode):
            _add(out, self.of_tree(node.repeat, caller), _count_mean(node.count))
        else:  # pragma: no cover - the schema admits no other node
            raise TypeError(f"unknown call-tree node {node!r}")
        return out


def _endpoint_rates(scenario: Scenario) -> dict[str, float]:
    """Mean arrivals per second of each endpoint over ``[0, duration_s)``."""
    from hailan_sim.models.arrivals import schedule_for

    horizon = scenario.run.duration_s
    shares = scenario.workload.shares()
    rates: dict[str, float] = {}
    for ep in scenario.workload.endpoints:
        if ep.arrival is not None:
            schedule = schedule_for(ep.arrival)
        else:
            schedule = schedule_for(scenario.workload.arrival, shares[ep.name])
        rates[ep.name] = schedule.integral(0.0, horizon) / horizon
    return rates


def visits_per_request(scenario: Scenario) -> dict[str, dict[_Key, float]]:
    """For each endpoint, the expected visits one request makes to every
    ``(component, operation)`` (``operation`` is None for infrastructure), gateway included."""
    walker = _Visits(scenario)
    gateway = next((c.name for c in scenario.infrastructure if c.kind == "gateway"), None)
    out: dict[str, dict[_Key, float]] = {}
    for ep in scenario.workload.endpoints:
        visits: dict[_Key, float] = {}
        if gateway is not None:
            visits[(gateway, None)] = 1.0
        _add(visits, walker.of_op(*split_target(ep.entry)))
        out[ep.name] = visits
    return out


def offered_load(scenario: Scenario) -> pd.DataFrame:
    """Expected load on every service and infrastructure component, from the scenario alone.

    Returns a DataFrame indexed by component name (services in document order, then
    infrastructure), with columns:

    ``kind``
        ``"service"`` or the infrastructure kind (as in ``Result.services``).
    ``calls_per_s``
        Expected visits per second: each endpoint's arrival rate averaged over
        ``[0, run.duration_s)`` (piecewise rates by their integral), times the expected
        visits one of its requests makes. Call trees are expanded as: ``seq``/``par`` the sum
        of their children; ``maybe`` p x child; ``choice`` the weight-averaged options;
        ``repeat`` E[count] x child; ``publish`` one call to the broker plus one delivery to
        the consumer operation (whose own tree is followed); ``call`` one visit to the
        callee (followed recursively). With a gateway, every request visits it once.
    ``mean_service_ms``
        Visit-weighted mean of the operations' service-time means; for infrastructure,
        the mean of ``latency_ms``. NaN for a service nobody calls.
    ``capacity``
        ``instances x workers`` (infrastructure: ``capacity``).
    ``utilisation``
        ``calls_per_s x mean_service_ms / 1000 / capacity``: busy workers over workers.

    Assumptions, each of which the simulator may depart from:

    * Nothing fails: every tree is followed in full. Errors (``error_probability``, a
      failing child stopping a ``seq``), timeouts and rejections cut trees short, and failed
      deliveries are redelivered, so under faults these are estimates, not expectations.
    * For a service with ``blocking_calls: true`` a worker is held until its downstream
      calls return, so its real hold time includes downstream latency and queueing; the
      utilisation here counts only the operation's own service time and is a lower bound.
    * Everything is up: all instances serve (no cold start, no outages).
    """
    rates = _endpoint_rates(scenario)
    per_request = visits_per_request(scenario)
    calls: dict[_Key, float] = {}
    for ep in scenario.workload.endpoints:  # document order: a fixed summation order
        _add(calls, per_request[ep.name], rates[ep.name])

    rows = []
    for s in scenario.services:
        n = busy_ms = 0.0
        for op_name, op in s.operations.items():
            k = calls.get((s.name, op_name), 0.0)
            n += k
            busy_ms += k * op.service_time_ms.expected()
        capacity = s.instances * s.workers
        rows.append({
            "component": s.name,
            "kind": "service",
            "calls_per_s": n,
            "mean_service_ms": busy_ms / n if n > 0 else math.nan,
            "capacity": capacity,
            "utilisation": busy_ms / 1000.0 / capacity,
        })
    for c in scenario.infrastructure:
        n = calls.get((c.name, None), 0.0)
        mean_ms = c.latency_ms.expected()
        rows.append({
            "component": c.name,
            "kind": c.kind,
            "calls_per_s": n,
            "mean_service_ms": mean_ms,
            "capacity": c.capacity,
            "utilisation": n * mean_ms / 1000.0 / c.capacity,
        })
    return pd.DataFrame(rows, columns=["component", *COLUMNS]).set_index("component")


# --------------------------------------------------------------------------- can the run finish?

# The most calls (visits to services and infrastructure) one run may be expected to make:
# the engine simulates about 50,000 calls per second of wall time on one core (README,
# "Benchmarks"), so this is about three hours; a scenario over it was almost certainly
# meant with other units (rate: 1e9 is a billion requests per second).
MAX_RUN_CALLS = 5e8
# The most calls that may be expected to wait in one unbounded queue at the end of the
# run. Every waiting call is a live object in the engine: measured, about 800 bytes each
# (an M/M/1 scenario at utilisation 2 with 200,000 calls waiting at the end: +150 MB peak
# RSS), so this is under a gigabyte. An overloaded component with queue_limit: null grows
# its queue for the whole run (a caller's timeout does not remove the call).
MAX_BACKLOG = 1e6


class CapacityError(ValueError):
    """A scenario whose expected work or queues cannot fit in one run; ``str()`` is one
    line starting with the field path to change; ``keys`` is that path as a list."""

    def __init__(self, keys: list, message: str) -> None:
        self.keys = keys
        super().__init__(message)


def _path(keys: list) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(keys))


def capacity_problems(
    scenario: Scenario, max_calls: Optional[float] = None, max_backlog: Optional[float] = None
) -> list[tuple[list, str]]:
    """What makes ``scenario`` unable to finish in memory or in reasonable time, from the
    analytic offered load alone (nothing is simulated): ``(field path keys, message)``
    pairs, the most important first. Empty when the run fits. The limits default to
    ``MAX_RUN_CALLS`` and ``MAX_BACKLOG``.

    * the expected number of calls over ``run.duration_s`` exceeds ``max_calls``;
    * a component offered more than it can serve (utilisation > 1) with an unbounded
      queue would hold more than ``max_backlog`` waiting calls at the end of the run:
      its queue grows at ``calls_per_s x (1 - 1/utilisation)`` per second: arrivals
      ``lambda`` less completions ``mu = lambda / utilisation``, the fluid approximation of an
      overloaded queue (Kleinrock, Queueing Systems Vol. 2, 1976, ch. 2; Newell, Applications
      of Queueing Theory, 1982). Downstream of an overloaded component this over-estimates
      (it passes on at most its own capacity), but then that component is refused as well.
    """
    max_calls = MAX_RUN_CALLS if max_calls is None else max_calls
    max_backlog = MAX_BACKLOG if max_backlog is None else max_backlog
    out: list[tuple[list, str]] = []
    duration = scenario.run.duration_s
    rates = _endpoint_rates(scenario)
    per_request = visits_per_request(scenario)
    work = {name: rates[name] * sum(per_request[name].values()) for name in rates}
    total = sum(work.values()) * duration
    if total > max_calls:
        i, ep = max(enumerate(scenario.workload.endpoints), key=lambda p: (work[p[1].name], -p[0]))
        if ep.arrival is not None:
            keys: list = ["workload", "endpoints", i, "arrival"]
            arrival = ep.arrival
        else:
            keys, arrival = ["workload", "arrival"], scenario.workload.arrival
        if getattr(arrival, "kind", None) == "poisson":
            keys = [*keys, "rate"]
        out.append((keys, (
            f"about {total:.2g} calls expected in {duration:g} s of simulated time "
            f"({sum(rates.values()):.3g} requests/s, most of them for endpoint {ep.name!r}); "
            f"at most {max_calls:.2g} are simulated in one run (hours of wall time): lower the rates, "
            "the repeat counts or run.duration_s (or pass --no-capacity-check)"
        )))
    load = offered_load(scenario)
    queues = {s.name: (["services", i], s.queue_limit) for i, s in enumerate(scenario.services)}
    queues.update({c.name: (["infrastructure", i], c.queue_limit) for i, c in enumerate(scenario.infrastructure)})
    for name, row in load.iterrows():  # services in document order, then infrastructure
        keys, limit = queues[name]
        rho = row["utilisation"]
        if limit is not None or not rho > 1:
            continue
        backlog = row["calls_per_s"] * (1 - 1 / rho) * duration
        if backlog > max_backlog:
            out.append(([*keys, "queue_limit"], (
                f"{name} is offered {rho:.3g} times what it can serve ({row['calls_per_s']:.3g} calls/s); "
                f"with no queue_limit about {backlog:.2g} calls would be waiting by the end of the run, "
                f"at most {max_backlog:.2g} fit in memory: set a queue_limit, add capacity or lower the load "
                "(or pass --no-capacity-check)"
            )))
    return out


def check_capacity(scenario: Scenario, max_calls: Optional[float] = None, max_backlog: Optional[float] = None) -> None:
    """Raise :class:`CapacityError` (one line: the field path, what is wrong, what to do)
    if :func:`capacity_problems` finds any; the CLI runs this before every simulation."""
    problems = capacity_problems(scenario, max_calls, max_backlog)
    if problems:
        keys, msg = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise CapacityError(keys, f"{_path(keys)}: {msg}{more}")


# --------------------------------------------------------------------------- sampling error


def second_moment(dist) -> float:
    """E[X^2] of a service-time or count distribution (or a fixed ``int`` count)."""
    from hailan_sim.models.distributions import (
        Constant, Discrete, Empirical, Exponential, Gamma, LogNormal, Poisson, Uniform, UniformInt,
    )

    if isinstance(dist, int):
        return float(dist * dist)
    if isinstance(dist, Exponential):
        return 2.0 * dist.mean**2
    if isinstance(dist, Constant):
        return dist.value**2
    if isinstance(dist, Uniform):
        return (dist.low**2 + dist.low * dist.high + dist.high**2) / 3.0
    if isinstance(dist, LogNormal):
        return dist.median**2 * math.exp(2.0 * dist.sigma**2)
    if isinstance(dist, Gamma):
        return dist.shape * (dist.shape + 1.0) * dist.scale**2
    if isinstance(dist, Empirical):
        # The inverse CDF is linear on each [p0, p1]: integrate x(p)^2 exactly.
        return sum(
            (p1 - p0) * (x0 * x0 + x0 * x1 + x1 * x1) / 3.0
            for (p0, x0), (p1, x1) in zip(dist.quantiles, dist.quantiles[1:])
        )
    if isinstance(dist, Poisson):
        return dist.mean + dist.mean**2
    if isinstance(dist, UniformInt):
        n = dist.high - dist.low + 1
        return dist.expected() ** 2 + (n * n - 1) / 12.0
    if isinstance(dist, Discrete):
        total = sum(w for _, w in dist.weights)
        return sum(k * k * w for k, w in dist.weights) / total
    raise TypeError(f"no second moment for {dist!r}")  # pragma: no cover


# Per component: (E[X], E[X^2]) of what one call or one request puts on it, where X is
# either its busy time (ms) or its number of visits.
_Moments = dict[str, tuple[float, float]]


def _plus(a: _Moments, b: _Moments) -> _Moments:
    """Moments of the sum of two independent vectors, per component."""
    out = dict(a)
    for c, (b1, b2) in b.items():
        a1, a2 = out.get(c, (0.0, 0.0))
        out[c] = (a1 + b1, a2 + 2.0 * a1 * b1 + b2)
    return out


class _Moments2:
    """First and second moments, per component, of the busy time (``visits=False``) or of
    the number of visits (``visits=True``) one call of an operation causes."""

    def __init__(self, scenario: Scenario, visits: bool) -> None:
        self.sc = scenario
        self.visits = visits
        self.memo: dict[_Key, _Moments] = {}
        queues = [c.name for c in scenario.infrastructure if c.kind == "queue"]
        self.default_queue = queues[0] if len(queues) == 1 else None
        self.lookup = _lookup_registry(scenario)

    def own(self, name: str, dist) -> _Moments:
        if self.visits:
            return {name: (1.0, 1.0)}
        return {name: (dist.expected(), second_moment(dist))}

    def of_op(self, service: str, op: Optional[str]) -> _Moments:
        key = (service, op)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        comp = self.sc.component(service)
        if isinstance(comp, Infrastructure):
            out = self.own(service, comp.latency_ms)
        else:
            operation = comp.operations[op]
            out = self.own(service, operation.service_time_ms)
            if operation.calls is not None:
                out = _plus(out, self.of_tree(operation.calls, service))
        self.memo[key] = out
        return out

    def of_tree(self, node, caller: str) -> _Moments:
        if isinstance(node, CallNode):
            target, op = split_target(node.call)
            registry = self.lookup(caller, target) if op is not None else None
            if registry is not None:  # discovery before the call
                return _plus(self.own(registry.name, registry.latency_ms), self.of_op(target, op))
            return self.of_op(target, op)
        if isinstance(node, PublishNode):
            broker = node.via or self.default_queue
            return _plus(self.of_op(broker, None), self.of_op(*split_target(node.publish)))
        if isinstance(node, (SeqNode, ParNode)):
            out: _Moments = {}
            for child in node.seq if isinstance(node, SeqNode) else node.par:
                out = _plus(out, self.of_tree(child, caller))
            return out
        if isinstance(node, MaybeNode):
            return {c: (node.p * m1, node.p * m2) for c, (m1, m2) in self.of_tree(node.maybe, caller).items()}
        if isinstance(node, ChoiceNode):
            total = sum(o.weight for o in node.choice)
            out = {}
            for o in node.choice:
                w = o.weight / total
                for c, (m1, m2) in self.of_tree(o.do, caller).items():
                    a1, a2 = out.get(c, (0.0, 0.0))
                    out[c] = (a1 + w * m1, a2 + w * m2)
            return out
        if isinstance(node, RepeatNode):
            # N independent copies of Y: E[S] = E[N]E[Y]; E[S^2] = E[N]Var(Y) + E[N^2]E[Y]^2.
            n1, n2 = _count_mean(node.count), second_moment(node.count)
            return {
                c: (n1 * m1, n1 * (m2 - m1 * m1) + n2 * m1 * m1)
                for c, (m1, m2) in self.of_tree(node.repeat, caller).items()
            }
        raise TypeError(f"unknown call-tree node {node!r}")  # pragma: no cover

    def per_request(self, entry: str) -> _Moments:
        gateway = next((c for c in self.sc.infrastructure if c.kind == "gateway"), None)
        m = self.of_op(*split_target(entry))
        if gateway is not None:
            m = _plus(self.own(gateway.name, gateway.latency_ms), m)
        return m


def sampling_se(scenario: Scenario, measured_s: float) -> pd.DataFrame:
    """Standard errors of ``calls_per_s`` and ``utilisation`` as a run measures them over a
    window of ``measured_s`` seconds in steady state (same index as :func:`offered_load`).

    Requests of an endpoint arrive as a Poisson process and do not depend on each other, so
    the total that they put on a component in a window of length T (visits, or busy time)
    is a compound Poisson sum, with variance ``T * sum_e rate_e * E[X_e^2]``, where ``X_e``
    is what one request of endpoint e puts there: all its visits, with every ``repeat``,
    ``maybe`` and ``choice`` drawn as the tree says and every service time drawn from its
    distribution. Dividing the square root by T (and, for utilisation, by the capacity)
    gives the standard error. Because ``X_e`` sums a whole request, the correlation between,
    e.g., the product lookups of one order list is accounted for (a per-call
    ``sqrt((1 + cv^2) / n)`` would miss it).

    Ignored: work straddling the window's ends (of the order of one request, against T),
    and the variance of piecewise rates beyond their mean. Same no-failure assumptions as
    :func:`offered_load`.
    """
    rates = _endpoint_rates(scenario)
    rows = {}
    for column, visits in (("calls_per_s", True), ("utilisation", False)):
        walker = _Moments2(scenario, visits)
        var: dict[str, float] = {}
        for ep in scenario.workload.endpoints:
            for c, (_, m2) in walker.per_request(ep.entry).items():
                var[c] = var.get(c, 0.0) + rates[ep.name] * m2
        col = {}
        for comp in (*scenario.services, *scenario.infrastructure):
            se = math.sqrt(var.get(comp.name, 0.0) * measured_s) / measured_s
            if not visits:
                cap = comp.capacity if isinstance(comp, Infrastructure) else comp.instances * comp.workers
                se = se / 1000.0 / cap  # ms of busy time per second -> busy workers / workers
            col[comp.name] = se
        rows[column] = col
    out = pd.DataFrame(rows)
    out.index.name = "component"
    return out

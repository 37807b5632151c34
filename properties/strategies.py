"""Hypothesis strategies over a scenario's own topology: fault schedules, seeds, policies.

Faults are generated as *data*: every field of every fault is drawn from a strategy, so
Hypothesis shrinks a failing schedule directly (fewer faults, shorter, later, simpler kinds,
milder parameters) and prints it as readable models, never as a seed that expands into faults.

Numbers are drawn as integers on a fixed grid (times on 1 ms, factors on 0.1, fractions on
0.01) and divided once, so values print as ``299.0`` or ``0.05`` rather than
``0.30000000000000004``, and the direction of shrinking is exact: Hypothesis shrinks an integer
towards zero (or the bound nearest it), whereas a bounded float shrinks towards whatever is
"simplest" (``floats(0.05, 1.0)`` shrinks to ``1.0``).

Typical use::

    from hypothesis import given
    from hailan_sim.properties.strategies import fault_schedules, seeds, with_faults

    @given(faults=fault_schedules(scenario, max_faults=2), seed=seeds())
    def test_recovers(faults, seed):
        result = simulate(with_faults(scenario, faults).with_run(seed=seed))
        ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Collection, Iterable, Mapping, Optional, Sequence

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from pydantic import BaseModel, TypeAdapter, ValidationError

from hailan_sim.models.balancers import (
    LeastConnectionsConfig,
    P2CLeastRequestConfig,
    PeakEwmaConfig,
    RandomConfig,
    RingHashConfig,
    RoundRobinConfig,
    WeightedRandomConfig,
)
from hailan_sim.models.breakers import SlidingWindowConfig, SpecBreakerConfig
from hailan_sim.models.faults import FAULT_KINDS, Fault
from hailan_sim.models.policies import EdgePolicy, Policies
from hailan_sim.models.retry import (
    ConstantBackoff,
    DecorrelatedJitterBackoff,
    EqualJitterBackoff,
    FullJitterBackoff,
    RetryPolicy,
)
from hailan_sim.models.scenario import Scenario

__all__ = [
    "KINDS_SIMPLEST_FIRST",
    "balancers",
    "fault_schedules",
    "retry_policies",
    "seeds",
    "sliding_window_breakers",
    "spec_breakers",
    "with_faults",
    "with_policies",
]

# Simplest first: Hypothesis shrinks ``sampled_from`` towards the front, so a counterexample
# ends up with the simplest kind that still fails. One instance before a whole service, a
# node, a zone (blast radius); a clean stop before a degradation; then the network between
# two parties, shared infrastructure that everyone uses, extra load, and last the faults
# whose effect is indirect (host clocks and signing keys, seen only through tokens).
KINDS_SIMPLEST_FIRST: tuple[str, ...] = (
    "crash_instance",
    "drain_instance",
    "hang",
    "error_rate",
    "slow",
    "crash_service",
    "crash_node",
    "crash_zone",
    "partition",
    "link_latency",
    "infra_outage",
    "registry_outage",
    "load_spike",
    "clock_skew",
    "key_rotation",
)
assert sorted(KINDS_SIMPLEST_FIRST) == sorted(FAULT_KINDS), "every fault kind, each once"

_FAULT = TypeAdapter(Fault)
_MS = 1000  # the time grid: 1 ms

# Parameter ranges for faults, as (lowest = what shrinking reaches, highest, grid units per 1).
_SLOW_FACTOR = (2.0, 100.0, 10)  # model: (1, 1000]
_ERROR_FRACTION = (0.05, 1.0, 100)  # model: (0, 1]
_ADDED_MS = (10.0, 2000.0)  # model: >= 0 (0 would be no fault)
_LOSS = (0.0, 0.5, 100)  # model: [0, 1]
_SKEW_S = (1.0, 7200.0)  # |skew|, then a sign (ahead first); model: [-86400, 86400]
_SPIKE_FACTOR = (2.0, 10.0, 10)  # model: (1, 100]


# =========================================================================== helpers


def _around(default: float, lo: float, hi: float, units: int) -> SearchStrategy[float]:
    """``k / units`` for integers k in ``[lo * units, hi * units]``, shrinking towards
    ``default`` (which must lie in ``[lo, hi]``)."""
    a, b, d = round(lo * units), round(hi * units), round(default * units)
    return st.integers(a - d, b - d).map(lambda k: (d + k) / units)


def _ints_around(default: int, lo: int, hi: int) -> SearchStrategy[int]:
    """Integers in ``[lo, hi]`` shrinking towards ``default``."""
    return st.integers(lo - default, hi - default).map(lambda k: default + k)


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _names(value: Any, option: str) -> list[str]:
    """A collection of names as a list (a lone string is refused: it would iterate by letter)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        hint = f", e.g. {option}=[{value!r}]" if isinstance(value, str) else ""
        raise TypeError(f"{option}={value!r} must be a collection of names (a list, tuple or set){hint}")
    out = list(value)
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{option}={value!r} contains {v!r}, which is not a string")
    return out


def _scenario_data(scenario: Scenario) -> dict:
    """The scenario as the mapping it was built from (``exclude_unset``: defaults stay defaults).

    With a profile the scenario's *own* policies are used, as :meth:`Scenario.with_profile`
    does: validation merges the profile in again, and dumping the merged policies instead
    would repeat the profile's edges.
    """
    data = scenario.model_dump(mode="python", exclude_unset=True)
    own = scenario._own_policies
    if own is not None:
        data["policies"] = own
    return data


def with_faults(scenario: Scenario, faults: Iterable[Any]) -> Scenario:
    """A copy of ``scenario`` whose ``faults`` are ``faults`` (models or mappings), validated
    again, so a fault naming something the scenario lacks raises ``ValidationError``.

    The scenario's own faults are replaced, not extended: pass
    ``[*scenario.faults, *extra]`` to keep them.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a hailan_sim.models.Scenario, not {type(scenario).__name__}")
    data = _scenario_data(scenario)
    data["faults"] = [f.model_dump(mode="python") if isinstance(f, BaseModel) else f for f in faults]
    return Scenario.model_validate(data)


# =========================================================================== faults


@dataclass(frozen=True)
class _Plan:
    """What one ``fault_schedules`` call can draw: the kinds in order, each kind's
    parameters, and the time window on its 1 ms grid."""

    kinds: tuple[str, ...]
    params: Mapping[str, tuple[_Param, ...]]
    lo: float
    hi: float
    lo_ms: int
    hi_ms: int
    min_d: float
    min_ms: int
    max_ms: int
    allow_permanent: bool
    # Token renewals inside the window (sim.client.token_renewals_s) and the kinds that may
    # be placed around them: clock skew and key rotation, and with signing: issuer every
    # kind (any of them can cut callers off the issuer).
    anchors: tuple[float, ...] = ()
    anchored: frozenset = frozenset()


def _candidates(scenario: Scenario) -> dict[str, Any]:
    """Everything in the scenario a fault can name, each list in document order."""
    placements = scenario.placements()
    instances = [p.instance for p in placements]
    services = [s.name for s in scenario.services]
    service_set = set(services)
    # Only hosts that run something: crashing or skewing an empty node tests nothing.
    used = {p.node for p in placements} | {c.placement for c in scenario.infrastructure if c.placement}
    nodes = [n.name for n in scenario.nodes if n.name in used]
    zones = list(dict.fromkeys(n.zone for n in scenario.nodes if n.name in used))
    infra = {c.name: c for c in scenario.infrastructure}
    registries = [c.name for c in scenario.infrastructure if c.kind == "registry"]
    components = [c.name for c in scenario.infrastructure if c.kind != "registry"]
    endpoints = [e.name for e in scenario.workload.endpoints]

    # Pairs for partitions and link latency, the interesting ones first: a service and a
    # service it calls; an instance and the registry (it cannot register or discover); a
    # service and a component it uses; the gateway and an entry service.
    pairs: list[tuple[str, str]] = []
    for s in scenario.services:
        pairs += [(s.name, d) for d in s.depends_on if d in service_set]
    for r in registries:
        pairs += [(i, r) for i in instances]
    for s in scenario.services:
        pairs += [(s.name, d) for d in s.depends_on if d in infra and infra[d].kind != "registry"]
    for g in (c.name for c in scenario.infrastructure if c.kind == "gateway"):
        entries = dict.fromkeys(e.entry.partition(".")[0] for e in scenario.workload.endpoints)
        pairs += [(g, e) for e in entries]
    pairs = list(dict.fromkeys(pairs))

    return {
        "instances": instances,
        "services": services,
        "nodes": nodes,
        "zones": zones,
        "registries": registries,
        "components": components,
        "endpoints": endpoints,
        "pairs": pairs,
        "known": set(instances) | service_set | {n.name for n in scenario.nodes}
        | {n.zone for n in scenario.nodes} | set(infra) | set(endpoints),
    }


# A parameter of a fault kind: how many values it takes and how an index picks one. Index 0
# is what shrinking reaches, so it is the first name or the mildest value.
@dataclass(frozen=True)
class _Param:
    field: Optional[str]  # None: fills a slot the kind does not use
    size: int
    value: Callable[[int], Any]


def _choice(field: str, values: list) -> Optional[_Param]:
    return _Param(field, len(values), values.__getitem__) if values else None


def _grid(field: str, lo: float, hi: float, units: int) -> _Param:
    a, b = round(lo * units), round(hi * units)
    return _Param(field, b - a + 1, lambda i: (a + i) / units)


_UNUSED = _Param(None, 1, lambda i: None)
_SLOTS = 3
"""Every kind draws exactly this many parameter choices (after kind, duration and start), so
changing a fault's kind never changes how many choices it takes. Otherwise lowering
``drain_instance`` (one parameter) to ``crash_instance`` (two) in the last fault needs a
choice past the end of the recorded sequence, which the shrinker counts as invalid, and a
counterexample can stay at a needlessly complex kind (seen with an earlier design)."""


def _kind_params(c: dict[str, Any], allowed: Callable[[str], bool]) -> dict[str, Optional[tuple[_Param, ...]]]:
    """Each kind's parameters over the names ``allowed`` keeps, or None when the scenario
    (so filtered) offers nothing for the kind to name."""

    def names(field: str, key: str) -> Optional[_Param]:
        return _choice(field, [n for n in c[key] if allowed(n)])

    def kind(*params: Optional[_Param]) -> Optional[tuple[_Param, ...]]:
        if any(p is None for p in params):
            return None
        return (*params, *[_UNUSED] * (_SLOTS - len(params)))

    restart = _choice("restart", [True, False])  # a restart is the milder crash
    instance = names("instance", "instances")
    node = names("node", "nodes")
    # One instance before a whole service (blast radius).
    target = _choice("target", [n for n in c["instances"] + c["services"] if allowed(n)])
    pair = _choice("pair", [p for p in c["pairs"] if allowed(p[0]) and allowed(p[1])])
    has_registry = any(allowed(r) for r in c["registries"])  # the registry is what it names
    return {
        "crash_instance": kind(instance, restart),
        "drain_instance": kind(instance),
        "hang": kind(instance),
        "error_rate": kind(target, _grid("fraction", *_ERROR_FRACTION)),
        "slow": kind(target, _grid("factor", *_SLOW_FACTOR)),
        "crash_service": kind(names("service", "services"), restart),
        "crash_node": kind(node, restart),
        "crash_zone": kind(names("zone", "zones"), restart),
        "partition": kind(pair),
        "link_latency": kind(pair, _grid("added_ms", *_ADDED_MS, 1), _grid("loss", *_LOSS)),
        "infra_outage": kind(names("component", "components")),
        "registry_outage": kind() if has_registry else None,
        "load_spike": kind(names("endpoint", "endpoints"), _grid("factor", *_SPIKE_FACTOR)),
        # |skew| then its sign, ahead of true time first.
        "clock_skew": kind(node, _grid("skew_s", *_SKEW_S, 1), _choice("sign", [1, -1])),
        "key_rotation": kind() if allowed is _ANY else None,  # it names nothing to filter on
    }


def _fields(params: tuple[_Param, ...], indices: Sequence[int]) -> dict[str, Any]:
    out = {p.field: p.value(i) for p, i in zip(params, indices) if p.field is not None}
    if "pair" in out:
        out["a"], out["b"] = out.pop("pair")
    if "sign" in out:
        out["skew_s"] *= out.pop("sign")
    return out


def _ANY(name: str) -> bool:
    return True


_WHY_NOT = {
    "registry_outage": "the scenario has no registry component",
    "infra_outage": "the scenario has no infrastructure besides a registry",
    "partition": "the scenario has no pair of connected parties",
    "link_latency": "the scenario has no pair of connected parties",
}


def _plan(
    scenario: Scenario,
    *,
    max_faults: Any,
    min_faults: Any,
    horizon: Any,
    kinds: Any,
    targets: Any,
    min_duration_s: Any,
    max_duration_s: Any,
    allow_permanent: Any,
) -> _Plan:
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a hailan_sim.models.Scenario, not {type(scenario).__name__}")
    for name, v in (("max_faults", max_faults), ("min_faults", min_faults)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name}={v!r} must be an int")
    if max_faults < 0:
        raise ValueError(f"{max_faults=} must be >= 0")
    if not 0 <= min_faults <= max_faults:
        raise ValueError(f"{min_faults=} must be between 0 and max_faults ({max_faults})")
    if not isinstance(allow_permanent, bool):
        raise TypeError(f"{allow_permanent=} must be True or False")

    # --- time window
    run = scenario.run
    if horizon is None:
        lo, hi = run.warmup_s, run.duration_s
    else:
        if (
            isinstance(horizon, (str, bytes))
            or not isinstance(horizon, (tuple, list))
            or len(horizon) != 2
            or not all(_is_number(x) for x in horizon)
        ):
            raise ValueError(
                f"{horizon=} must be a pair (start_s, end_s) of finite numbers, "
                f"e.g. ({run.warmup_s:g}, {run.duration_s:g}) (the default: after warm-up)"
            )
        lo, hi = float(horizon[0]), float(horizon[1])
        if lo < 0:
            raise ValueError(f"{horizon=} starts before 0")
        if hi <= lo:
            raise ValueError(f"{horizon=} must end after it starts")
    if not _is_number(min_duration_s) or min_duration_s <= 0:
        raise ValueError(f"{min_duration_s=} must be a finite number > 0")
    # Whole milliseconds: the nearest inside the bounds, compared as the floats they become.
    lo_ms, hi_ms = _ms_at_least(lo), _ms_at_most(hi)
    min_ms = _ms_at_least(min_duration_s)
    if max_duration_s is None:
        max_ms = hi_ms - lo_ms
    elif not _is_number(max_duration_s) or max_duration_s < min_duration_s:
        raise ValueError(f"{max_duration_s=} must be a finite number >= min_duration_s ({min_duration_s})")
    else:
        max_ms = _ms_at_most(max_duration_s)
        if max_ms > hi_ms - lo_ms:
            raise ValueError(
                f"{max_duration_s=} exceeds the horizon [{lo:g}, {hi:g}) ({hi - lo:g} s); "
                "a fault must end within it"
            )
    if min_ms > max_ms or min_ms > hi_ms - lo_ms or lo + min_duration_s > hi:
        raise ValueError(
            f"{min_duration_s=} leaves no duration on the 1 ms grid that fits "
            f"[{lo:g}, {hi:g})" + ("" if max_duration_s is None else f" and {max_duration_s=}")
            + "; widen the horizon or shorten the faults"
        )

    # --- what may be named
    c = _candidates(scenario)
    allowed = _ANY
    if targets is not None:
        names = _names(targets, "targets")
        unknown = sorted(set(names) - c["known"])
        if unknown:
            shown = ", ".join(sorted(c["known"])[:20]) + (" ..." if len(c["known"]) > 20 else "")
            raise ValueError(
                f"{targets=} contains {unknown[0]!r}, which scenario {scenario.name!r} does not "
                f"have; targets are instances, services, nodes, zones, infrastructure or endpoints: {shown}"
            )
        wanted = frozenset(names)

        def allowed(name: str) -> bool:
            return name in wanted

    params = _kind_params(c, allowed)

    if kinds is None:
        chosen = [k for k in KINDS_SIMPLEST_FIRST if params[k] is not None]
        if not chosen:
            raise ValueError(f"{targets=} leaves no fault that scenario {scenario.name!r} can have")
    else:
        given = _names(kinds, "kinds")
        for k in given:
            if k not in FAULT_KINDS:
                raise ValueError(f"{kinds=} contains unknown kind {k!r}; kinds are: {', '.join(FAULT_KINDS)}")
        if not given:
            raise ValueError(f"{kinds=} is empty; give at least one of: {', '.join(FAULT_KINDS)}, or None for all")
        for k in given:
            if params[k] is None:
                if k == "key_rotation":
                    why = "it names no target, so it cannot be restricted to targets; leave targets=None"
                elif targets is not None:
                    why = f"{targets=} names nothing it could affect"
                else:
                    why = _WHY_NOT.get(k, "the scenario offers nothing it could name")
                raise ValueError(f"{kinds=} contains {k!r}, which cannot be generated here: {why}")
        chosen = [k for k in KINDS_SIMPLEST_FIRST if k in given]  # our order, for shrinking

    anchors: tuple[float, ...] = ()
    tok = scenario.effective_policies().tokens
    if tok.enabled and tok.first_token == "steady_state":
        from hailan_sim.sim.client import token_renewals_s

        anchors = tuple(dict.fromkeys(t for t in token_renewals_s(scenario) if lo <= t < hi))
    anchored = frozenset(chosen if tok.signing == "issuer" else ("clock_skew", "key_rotation"))
    return _Plan(
        anchors=anchors,
        anchored=anchored,
        kinds=tuple(chosen),
        params={k: params[k] for k in chosen},
        lo=lo,
        hi=hi,
        lo_ms=lo_ms,
        hi_ms=hi_ms,
        min_d=float(min_duration_s),
        min_ms=min_ms,
        max_ms=max_ms,
        allow_permanent=allow_permanent,
    )


def _ms_at_least(x: float) -> int:
    """The fewest whole milliseconds ``m`` with ``m / 1000 >= x`` (as floats)."""
    m = round(x * _MS)
    while m / _MS < x:
        m += 1
    while (m - 1) / _MS >= x:
        m -= 1
    return m


def _ms_at_most(x: float) -> int:
    """The most whole milliseconds ``m`` with ``m / 1000 <= x`` (as floats)."""
    m = round(x * _MS)
    while m / _MS > x:
        m -= 1
    while (m + 1) / _MS <= x:
        m += 1
    return m


def _place(plan: _Plan, start_ms: int, d_ms: int) -> tuple[float, float]:
    """Start and duration in seconds with ``lo <= start`` and ``start + duration <= hi``
    holding for the floats themselves: ``0.1 + 0.2 > 0.3``, so an end that rounds past the
    horizon moves the start, or failing that the duration, down by an ulp or two (never
    below ``lo`` or ``min_duration_s``: :func:`_plan` checked that ``lo + min_d <= hi``)."""
    start, duration = start_ms / _MS, d_ms / _MS
    while start + duration > plan.hi and start > plan.lo:
        start = max(plan.lo, math.nextafter(start, -math.inf))
    while start + duration > plan.hi and duration > plan.min_d:
        duration = max(plan.min_d, math.nextafter(duration, 0.0))
    return start, duration


def _fault(plan: _Plan) -> SearchStrategy:
    kind_s = st.sampled_from(plan.kinds)
    permanent_s = st.sampled_from((False, True))  # finite first
    extra_ms_s = st.integers(0, plan.max_ms - plan.min_ms)
    span_ms = plan.hi_ms - plan.lo_ms
    # One integer strategy per slot size, built once (a strategy is validated on first use).
    index_s = {
        p.size: st.integers(0, p.size - 1) for params in plan.params.values() for p in params
    }
    anchor_s = st.integers(0, len(plan.anchors))  # 0: no anchor, what shrinking reaches
    lead_s = st.integers(0, 1000)  # thousandths of the duration before the anchor

    @st.composite
    def fault(draw):
        kind = draw(kind_s)
        permanent = plan.allow_permanent and draw(permanent_s)
        d_ms = plan.min_ms + draw(extra_ms_s)
        # Drawn as the gap between the fault's end and the horizon's end, so that shrinking
        # (towards 0) makes the fault end exactly at the horizon: the latest start it allows.
        gap_ms = draw(st.integers(0, span_ms - d_ms))
        start_ms = plan.hi_ms - gap_ms - d_ms
        if plan.anchors:
            # Drawn for every kind (so a kind change never changes how many choices a fault
            # takes, see _SLOTS), used by the token-related ones: the fault covers a token
            # renewal, starting up to its whole duration before it (a key rotation, which
            # acts at its start, comes before the renewal that first signs with the new key).
            a, lead = draw(anchor_s), draw(lead_s)
            if a and kind in plan.anchored:
                at_ms = _ms_at_least(plan.anchors[a - 1])
                start_ms = min(max(at_ms - (lead * d_ms) // 1000, plan.lo_ms), plan.hi_ms - d_ms)
        start, duration = _place(plan, start_ms, d_ms)
        params = plan.params[kind]
        fields = _fields(params, [draw(index_s[p.size]) for p in params])
        return _FAULT.validate_python(
            {"kind": kind, "start_s": start, "duration_s": None if permanent else duration, **fields}
        )

    return fault()


def fault_schedules(
    scenario: Scenario,
    *,
    max_faults: int = 3,
    min_faults: int = 0,
    horizon: Optional[tuple[float, float]] = None,
    kinds: Optional[Collection[str]] = None,
    targets: Optional[Collection[str]] = None,
    min_duration_s: float = 1.0,
    max_duration_s: Optional[float] = None,
    allow_permanent: bool = False,
) -> SearchStrategy[list]:
    """Lists of faults (models from :mod:`hailan_sim.models.faults`) that ``scenario`` accepts.

    Every name comes from the scenario itself: instances from ``scenario.placements()``,
    its services, the nodes that host something and their zones, its infrastructure
    (``registry_outage`` only if it has a registry component, ``infra_outage`` over the
    others), its endpoints (load spikes), and for partitions and link latency the pairs
    that carry traffic: a service and a service in its ``depends_on``, every instance and
    the registry, a service and a component it uses, the gateway and each entry service.
    ``with_faults(scenario, schedule)`` always validates.

    Options (keyword-only, checked when the strategy is built):

    ``max_faults`` / ``min_faults``
        How many faults a schedule has (default 0 to 3). Their order in the list means
        nothing; each fault has its own start.
    ``horizon``
        ``(start_s, end_s)``: every fault starts in ``[start_s, end_s)`` and ends by
        ``end_s``. Default: the run after warm-up, ``(run.warmup_s, run.duration_s)``, so
        the summaries see the fault, and since it ends before arrivals stop they also see
        the recovery.
    ``kinds``
        Only these kinds (names from ``models.faults.FAULT_KINDS``). A kind the scenario
        cannot have (``registry_outage`` without a registry) is an error. Order does not
        matter: kinds are always drawn in :data:`KINDS_SIMPLEST_FIRST` order.
    ``targets``
        Only faults every one of whose targets is in this collection (instance, service,
        node, zone, component or endpoint names). A partition or link fault needs *both*
        ends listed; ``registry_outage`` needs the registry's name; ``key_rotation`` names
        nothing and is left out.
    ``min_duration_s`` / ``max_duration_s``
        Fault durations (default: 1 s up to the whole horizon). Times are on a 1 ms grid.
    ``allow_permanent``
        Default False: every fault has a duration and ends inside the horizon, so a property
        can watch the system recover. True: a fault may also be permanent
        (``duration_s=None``), still starting in the horizon.

    Token renewals: with ``tokens.first_token: steady_state`` every caller's held token
    falls due at a time computed from the scenario and its ``run.seed`` without simulating
    (``sim.client.token_renewals_s``; about 1.4 inside a 240 s run of the default scenario).
    A clock skew or key rotation (with ``signing: issuer``, any fault: each can cut callers
    off the issuer) may be placed to cover one of those inside the horizon, starting up to
    its whole duration before it, so that expiries meet skewed clocks, rotated keys and
    issuer outages in ordinary runs (issue 10 item 5). Shrinks to the unanchored placement.

    Parameters stay in sensible ranges: slow factor 2-100, error fraction 0.05-1, added
    latency 10-2000 ms with loss 0-0.5, clock skew 1 s-2 h either way, load spike factor
    2-10; crashes restart or not.

    Shrinks towards fewer faults; kinds earlier in :data:`KINDS_SIMPLEST_FIRST` (a single
    instance crash first); the first target in document order; ``min_duration_s``; the
    latest start the horizon allows (the fault ends exactly at the horizon's end); restarting
    crashes; and the mildest parameters (factor 2, fraction 0.05, 10 ms without loss, +1 s
    skew), and finite over permanent faults.
    """
    plan = _plan(
        scenario,
        max_faults=max_faults,
        min_faults=min_faults,
        horizon=horizon,
        kinds=kinds,
        targets=targets,
        min_duration_s=min_duration_s,
        max_duration_s=max_duration_s,
        allow_permanent=allow_permanent,
    )
    if max_faults == 0:
        return st.just([])
    return _schedule(_fault(plan), min_faults, max_faults)


def _schedule(fault: SearchStrategy, min_faults: int, max_faults: int) -> SearchStrategy[list]:
    """``min_faults`` faults, then ``max_faults - min_faults`` slots each holding a fault or
    nothing.

    Not ``st.lists``: its shrinker deletes an element only by deleting a run of at most five
    choices (``node_program``), and a fault is six or seven (kind, duration, start, three
    parameters, and with ``allow_permanent`` whether it is permanent), so ``[crash, slow]``
    did not shrink to ``[slow]``. A slot is a span of its own whose first choice is "absent"
    (``False``); the shrinker's pass that zeroes a whole span turns the slot into that one
    choice, which deletes the fault.
    """

    present_s = st.booleans()  # absent (False) first

    @st.composite
    def slot(draw):
        return draw(fault) if draw(present_s) else None

    slot_s = slot()

    @st.composite
    def schedule(draw):
        out = [draw(fault) for _ in range(min_faults)]
        for _ in range(max_faults - min_faults):
            f = draw(slot_s)
            if f is not None:
                out.append(f)
        return out

    return schedule()


# =========================================================================== seeds


def seeds() -> SearchStrategy[int]:
    """Simulation seeds (``run.seed``), integers in ``[0, 2**32)``.

    Shrinks towards 0.
    """
    return st.integers(min_value=0, max_value=2**32 - 1)


# =========================================================================== policies

_OUTCOME_SETS: tuple[tuple[str, ...], ...] = (
    ("error", "timeout", "rejected"),  # every failure counts: the spec and R4J default first
    ("error", "timeout"),
    ("error", "rejected"),
    ("timeout", "rejected"),
    ("error",),
    ("timeout",),
    ("rejected",),
)


def _config(
    model: type[BaseModel],
    fields: dict[str, SearchStrategy],
    fixed: dict[str, Any],
    check: Optional[dict[str, Any]] = None,
) -> SearchStrategy:
    """``model(**drawn)``, drawing each field in order; ``fixed`` holds values (or
    strategies) that replace the default strategies. Checked now: unknown names, and fixed
    values the model rejects (validated together with ``check``, an example of the rest)."""
    for name in fixed:
        if name not in model.model_fields:
            raise ValueError(
                f"{name}= is not a field of {model.__name__}; fields are: "
                f"{', '.join(k for k in model.model_fields if k != 'kind')}"
            )
        if name == "kind":
            raise ValueError(f"kind= is fixed by the strategy ({model.__name__})")
    values = {k: v for k, v in fixed.items() if not isinstance(v, SearchStrategy)}
    if values:
        try:
            model.model_validate({**(check or {}), **values})
        except ValidationError as exc:
            raise ValueError(
                f"fixed values {values!r} are not a valid {model.__name__}: "
                f"{exc.errors()[0]['msg']} (at {'.'.join(map(str, exc.errors()[0]['loc'])) or 'the model'})"
            ) from None
    strategies = {k: fixed.get(k, s) for k, s in fields.items()}

    @st.composite
    def build(draw):
        drawn = {}
        for k, s in strategies.items():
            drawn[k] = draw(s) if isinstance(s, SearchStrategy) else s
        return model.model_validate(drawn)

    return build()


# The seed profile's breaker (models/data/profiles/seed.yaml): the spec gives no values.
_SEED_SPEC_BREAKER = {
    "failure_threshold": 5,
    "success_threshold": 2,
    "timeout_s": 60.0,
    "half_open_max_calls": 3,
}


def spec_breakers(**fixed: Any) -> SearchStrategy[SpecBreakerConfig]:
    """The spec's breaker (:class:`hailan_sim.models.breakers.SpecBreakerConfig`) with drawn settings:
    failure threshold 1-20, success threshold 1-10, timeout 0.1-120 s (0.1 s grid), a
    half-open limit 1-10, enforced or not (the spec never enforces it), and which outcomes
    count as failures. Keyword arguments fix a field to a value (or draw it from a strategy
    you give), e.g. ``spec_breakers(enforce_half_open_limit=True)``.

    Shrinks towards the seed profile's breaker (5 failures, 2 successes, 60 s, limit 3 not
    enforced, every failure outcome).
    """
    d = _SEED_SPEC_BREAKER
    return _config(
        SpecBreakerConfig,
        {
            "failure_threshold": _ints_around(d["failure_threshold"], 1, 20),
            "success_threshold": _ints_around(d["success_threshold"], 1, 10),
            "timeout_s": _around(d["timeout_s"], 0.1, 120.0, 10),
            "half_open_max_calls": _ints_around(d["half_open_max_calls"], 1, 10),
            "enforce_half_open_limit": st.sampled_from((False, True)),
            "failure_on": st.sampled_from(_OUTCOME_SETS),
        },
        fixed,
        check=d,
    )


def sliding_window_breakers(**fixed: Any) -> SearchStrategy[SlidingWindowConfig]:
    """resilience4j breakers (:class:`hailan_sim.models.breakers.SlidingWindowConfig`) with drawn
    settings: count- or time-based window of 1-200 (calls or seconds), minimum calls
    1-200, failure and slow-call rate thresholds 1-100 %, slow call 0.1-60 s, 1-20
    half-open calls, wait in open 0.1-120 s, automatic transition or not, maximum half-open
    wait 0-60 s, and the outcomes recorded as failures and ignored. Keyword arguments fix a
    field (a value or a strategy), e.g. ``sliding_window_breakers(window_type="time_based")``.

    Shrinks towards resilience4j's defaults (``SlidingWindowConfig()``: count-based 100/100,
    50 %, 100 % over 60 s, 10 half-open calls, 60 s open, no automatic transition, no
    half-open limit, every failure recorded, nothing ignored).
    """
    d = SlidingWindowConfig()

    fields = {
        "window_type": st.sampled_from(("count_based", "time_based")),
        "window_size": _ints_around(d.window_size, 1, 200),
        "minimum_calls": _ints_around(d.minimum_calls, 1, 200),
        "failure_rate_threshold": _around(d.failure_rate_threshold, 1, 100, 1),
        "slow_call_rate_threshold": _around(d.slow_call_rate_threshold, 1, 100, 1),
        "slow_call_duration_s": _around(d.slow_call_duration_s, 0.1, 60.0, 10),
        "permitted_calls_in_half_open": _ints_around(d.permitted_calls_in_half_open, 1, 20),
        "wait_in_open_s": _around(d.wait_in_open_s, 0.1, 120.0, 10),
        "automatic_transition": st.sampled_from((False, True)),
        "max_wait_in_half_open_s": _around(d.max_wait_in_half_open_s, 0.0, 60.0, 10),
        "failure_on": st.sampled_from(_OUTCOME_SETS),
        # Nothing ignored first, then one outcome, two, all three (ignore_on wins over
        # failure_on, so an ignored outcome is never a failure).
        "ignore_on": st.sampled_from(((),) + tuple(sorted(_OUTCOME_SETS, key=len))),
    }
    return _config(SlidingWindowConfig, fields, fixed)


def _backoffs() -> SearchStrategy:
    """Backoff configs, constant first; each shrinks towards its model's defaults."""
    c, e = ConstantBackoff(), FullJitterBackoff()

    def expo(model: type[BaseModel]) -> SearchStrategy:
        @st.composite
        def build(draw):
            base_ms = draw(_ints_around(round(e.base_s * _MS), 1, 1000))  # 1 ms - 1 s
            cap_ms = draw(_ints_around(round(e.cap_s * _MS), base_ms, 30 * _MS))  # base - 30 s
            return model(base_s=base_ms / _MS, cap_s=cap_ms / _MS)

        return build()

    constant = _around(c.delay_s, 0.0, 2.0, _MS).map(lambda v: ConstantBackoff(delay_s=v))
    return st.one_of(
        constant,
        expo(FullJitterBackoff),
        expo(EqualJitterBackoff),
        expo(DecorrelatedJitterBackoff),
    )


def retry_policies(**fixed: Any) -> SearchStrategy[RetryPolicy]:
    """Retry policies (:class:`hailan_sim.models.retry.RetryPolicy`): 1-6 attempts; constant backoff
    (0-2 s) or AWS full / equal / decorrelated jitter (base 1 ms-1 s, cap from base to
    30 s); which outcomes are retried; idempotent operations only or all. Keyword arguments
    fix a field (a value or a strategy), e.g. ``retry_policies(max_attempts=3)``.

    Shrinks towards ``RetryPolicy()``: one attempt (no retries), constant backoff of 0 s,
    retrying errors and timeouts, idempotent operations only.
    """
    return _config(
        RetryPolicy,
        {
            "max_attempts": st.integers(1, 6),
            "backoff": _backoffs(),
            "retry_on": st.sampled_from(
                (
                    ("error", "timeout"),  # the model's default first
                    *(s for s in _OUTCOME_SETS if s != ("error", "timeout")),
                )
            ).map(list),
            "idempotent_only": st.sampled_from((True, False)),
        },
        fixed,
    )


def balancers() -> SearchStrategy:
    """Balancer configs of every kind in :mod:`hailan_sim.models.balancers`: the spec's random,
    round robin, least connections (released on end or, as the spec, never) and weighted
    random; Envoy P2C least request (2-5 choices, with or without replacement); peak EWMA
    (initial RTT 1 ms-1 s, decay 1-60 s); ring hash (1-1000 virtual nodes per host).

    Shrinks towards ``RandomConfig()`` (the spec's HttpClient), and within a kind towards
    its model's defaults.
    """
    p2c, ewma, ring = P2CLeastRequestConfig(), PeakEwmaConfig(), RingHashConfig()
    return st.one_of(
        st.just(RandomConfig()),
        st.just(RoundRobinConfig()),
        st.sampled_from((False, True)).map(lambda r: LeastConnectionsConfig(release_on_end=r)),
        st.just(WeightedRandomConfig()),
        st.builds(
            P2CLeastRequestConfig,
            choice_count=_ints_around(p2c.choice_count, 2, 5),
            with_replacement=st.sampled_from((False, True)),
        ),
        st.builds(
            PeakEwmaConfig,
            default_rtt_s=_around(ewma.default_rtt_s, 0.001, 1.0, _MS),
            decay_s=_around(ewma.decay_s, 1.0, 60.0, 10),
        ),
        st.builds(RingHashConfig, vnodes_per_host=_ints_around(ring.vnodes_per_host, 1, 1000)),
    )


def _as_data(value: Any) -> Any:
    """Policy values as the mappings a scenario is validated from. A config model is dumped
    whole (it replaces what the profile had), except an :class:`EdgePolicy`, where only the
    fields it sets are kept: a field an edge leaves out is inherited."""
    if isinstance(value, EdgePolicy):
        return {k: _as_data(getattr(value, k)) for k in value.model_fields_set}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if isinstance(value, (list, tuple)):
        return [_as_data(v) for v in value]
    return value


def with_policies(scenario: Scenario, **policies: Any) -> Scenario:
    """A copy of ``scenario`` with these ``policies`` fields set (config models, mappings
    or plain values), validated again, e.g.
    ``with_policies(s, breaker=cfg, breaker_scope="instance", retry=RetryPolicy(...))``.

    A config model replaces the field whole, even under a profile (the profile's other
    settings for that field do not leak in); a mapping is merged over the profile's as the
    scenario's own YAML would be. ``edges=[...]`` replaces the scenario's own edges (a
    profile's edges still come first). Unknown field names raise ``ValueError``; values the
    policies reject raise ``ValidationError``.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a hailan_sim.models.Scenario, not {type(scenario).__name__}")
    for name in policies:
        if name not in Policies.model_fields:
            raise ValueError(
                f"{name}= is not a policies field; fields are: {', '.join(Policies.model_fields)}"
            )
    data = _scenario_data(scenario)
    own = dict(data.get("policies") or {})
    own.update({k: _as_data(v) for k, v in policies.items()})
    data["policies"] = own
    # A model is dumped with every field, so merging it over a profile's mapping of the
    # same kind overrides every key: nothing of the profile's is left in that field.
    return Scenario.model_validate(data)

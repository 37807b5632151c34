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

from models.faults import FAULT_KINDS, Fault
from models.scenario import Scenario

__all__ = ["single_faults"]

_FAULT = TypeAdapter(Fault)


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
        "error_rate": [{"target": s, "fraction": 0.5} for s in services],
        "slow": [{"target": s, "factor": 10.0} for s in services],
        "crash_service": [{"service": s} for s in services],
        "crash_node": [{"node": n} for n in used_nodes],
        "crash_zone": [{"zone": z} for z in zones],
        "partition": [{"a": a, "b": b} for a, b in edges],
        "link_latency": [{"a": a, "b": b, "added_ms": 200.0, "loss": 0.1} for a, b in edges],
        "registry_outage": [{}] if registry else [],
        "infra_outage": [{"component": c} for c in infra],
        "clock_skew": [{"node": n, "skew_s": 300.0} for n in used_nodes],
        "key_rotation": [{}],
        "load_spike": [{"endpoint": e, "factor": 3.0} for e in endpoints],
    }
    out = []
    for kind in kinds or FAULT_KINDS:
        for fields in targets[kind]:
            for d in durations:
                out.append(_FAULT.validate_python({"kind": kind, "start_s": start, "duration_s": d, **fields}))
    return out

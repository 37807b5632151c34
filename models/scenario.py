"""The scenario: everything a run depends on, as validated, immutable data.

A scenario is loaded from YAML (see :mod:`hailan_sim.models.loader`) or built in code; either way it
passes through these pydantic models, so a run never starts from data it cannot honour.
Cross-references (dependencies, call targets, recursion) are checked by
:mod:`hailan_sim.models.topology` once the fields themselves are valid.

Units are in the field names: ``*_s`` seconds, ``*_ms`` milliseconds, ``rate`` per second.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    SerializationInfo,
    Tag,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from hailan_sim.models._base import Frozen
from hailan_sim.models.autoscaling import AutoscalingPolicy
from hailan_sim.models.datafiles import MAX_TABLE_BYTES, read_data_file, read_trace
from hailan_sim.models.distributions import MAX_COUNT, Constant, CountDistribution, Distribution
from hailan_sim.models.faults import Fault
from hailan_sim.models.objectives import Objectives
from hailan_sim.models.policies import PROFILES, Policies, merge_policies, profile_policies, spells_out_defaults

__all__ = [
    "Arrival",
    "CallNode",
    "ChoiceNode",
    "ChoiceOption",
    "Endpoint",
    "Infrastructure",
    "Link",
    "MaybeNode",
    "Network",
    "Node",
    "Operation",
    "ParNode",
    "PiecewiseArrival",
    "Placement",
    "PoissonArrival",
    "Policies",
    "PROFILES",
    "PublishNode",
    "RepeatNode",
    "Run",
    "Scenario",
    "SeqNode",
    "Service",
    "TreeNode",
    "TraceArrival",
    "Workload",
    "split_target",
]

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Name = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9-]*$",
        max_length=63,
        description="lower-case letters, digits and '-', starting with a letter",
    ),
]
# "service.operation", or the bare name of an infrastructure component.
Target = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9-]*(\.[A-Za-z_][A-Za-z0-9_]*)?$",
        description="'service.operation', or the name of an infrastructure component",
    ),
]


def split_target(target: str) -> tuple[str, Optional[str]]:
    """``"user-service.get_user"`` -> ``("user-service", "get_user")``; ``"redis"`` -> ``("redis", None)``."""
    name, _, op = target.partition(".")
    return name, (op or None)


# --------------------------------------------------------------------------- call trees


class CallNode(Frozen):
    """A synchronous call: the caller waits for the answer (or its timeout)."""

    call: Target
    timeout_s: Optional[PositiveFloat] = Field(
        None, description="overrides policies.timeout_s for this call site"
    )
    fallback: bool = Field(
        False, description="on failure, answer with a degraded result instead (the call site succeeds)"
    )


class PublishNode(Frozen):
    """An asynchronous call through the message queue: the caller waits only for the
    broker's confirm; the consumer's operation runs when a consumer instance takes it."""

    publish: Target
    via: Optional[Name] = Field(
        None, description="the queue component; default: the scenario's only one"
    )


class SeqNode(Frozen):
    """Children one after another; the first failure stops the sequence (as ``await`` does)."""

    seq: list[TreeNode] = Field(min_length=1)


class ParNode(Frozen):
    """Children at once; fails as soon as one fails, like ``Promise.all`` (the others run on)."""

    par: list[TreeNode] = Field(min_length=1)


class MaybeNode(Frozen):
    """The child with probability ``p``, otherwise nothing (a cache miss, an optional step)."""

    maybe: TreeNode
    p: Probability


class ChoiceOption(Frozen):
    weight: PositiveFloat
    do: TreeNode


class ChoiceNode(Frozen):
    """Exactly one option, chosen with probability proportional to its weight."""

    choice: list[ChoiceOption] = Field(min_length=1)


class RepeatNode(Frozen):
    """The child ``count`` times (a fixed number or a count distribution), in sequence or in parallel."""

    repeat: TreeNode
    count: Union[Annotated[int, Field(ge=0, le=MAX_COUNT)], CountDistribution]
    parallel: bool = False


_NODE_KEYS = ("call", "publish", "seq", "par", "maybe", "choice", "repeat")


def _node_tag(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        keys = [k for k in _NODE_KEYS if k in value]
        return keys[0] if len(keys) == 1 else None
    for key, cls in zip(
        _NODE_KEYS,
        (CallNode, PublishNode, SeqNode, ParNode, MaybeNode, ChoiceNode, RepeatNode),
    ):
        if isinstance(value, cls):
            return key
    return None


TreeNode = Annotated[
    Union[
        Annotated[CallNode, Tag("call")],
        Annotated[PublishNode, Tag("publish")],
        Annotated[SeqNode, Tag("seq")],
        Annotated[ParNode, Tag("par")],
        Annotated[MaybeNode, Tag("maybe")],
        Annotated[ChoiceNode, Tag("choice")],
        Annotated[RepeatNode, Tag("repeat")],
    ],
    Discriminator(
        _node_tag,
        custom_error_type="call_tree_node",
        custom_error_message=(
            "a call-tree node is a mapping with exactly one of the keys "
            "call, publish, seq, par, maybe, choice, repeat"
        ),
    ),
]

for _m in (SeqNode, ParNode, MaybeNode, ChoiceOption, ChoiceNode, RepeatNode):
    _m.model_rebuild()


# --------------------------------------------------------------------------- topology


class Operation(Frozen):
    """One operation a service offers: its own work, then its downstream calls."""

    service_time_ms: Distribution
    error_probability: Probability = Field(
        0.0, description="chance the operation fails on its own after its service time"
    )
    calls: Optional[TreeNode] = Field(
        None, description="downstream calls made after the operation's own service time"
    )
    idempotent: bool = Field(
        False, description="safe to retry (retry policies with idempotent_only retry only these)"
    )


class Service(Frozen):
    name: Name
    port: Annotated[int, Field(ge=1, le=65535)]
    instances: Annotated[int, Field(ge=1, le=10_000)]
    workers: Annotated[int, Field(ge=1, le=100_000)] = Field(
        description="calls one instance serves at once"
    )
    queue_limit: Optional[Annotated[int, Field(ge=0)]] = Field(
        None, description="calls that may wait for a worker; a full queue rejects; null: unbounded"
    )
    startup_s: NonNegativeFloat = Field(
        0.0, description="time from (re)start until an instance can serve"
    )
    max_queue_wait_s: Optional[PositiveFloat] = Field(
        None,
        description="load shedding: a call that waited longer for a worker is rejected instead of served",
    )
    autoscaling: Optional[AutoscalingPolicy] = Field(
        None, description="reactive autoscaling between min_instances and max_instances"
    )
    weights: Optional[list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]] = Field(
        None,
        min_length=1,
        description="metadata.weight registered by instance 0, 1, ... (cycled), read by weighted balancers",
    )

    @model_validator(mode="after")
    def _within_autoscaling_bounds(self) -> Service:
        a = self.autoscaling
        if a is not None and not a.min_instances <= self.instances <= a.max_instances:
            raise ValueError(
                f"instances ({self.instances}) must lie within autoscaling's "
                f"[{a.min_instances}, {a.max_instances}]"
            )
        return self
    blocking_calls: bool = Field(
        False,
        description=(
            "true: a worker stays busy while its downstream calls are outstanding "
            "(thread-per-request servers); false: it is freed after the operation's own "
            "service time (an event loop, like the spec's Node.js services)"
        ),
    )
    depends_on: list[Name] = Field(
        default_factory=list, description="services and infrastructure this service calls"
    )
    placement: Optional[list[Name]] = Field(
        None,
        min_length=1,
        description="nodes for instance 0, 1, ... (cycled); default: spread over all nodes",
    )
    operations: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], Operation
    ] = Field(min_length=1)


class Infrastructure(Frozen):
    """A shared component the spec names (gateway, registry, Redis, RabbitMQ, MySQL/PG):
    a capacity-limited server whose every use costs ``latency_ms``."""

    name: Name
    kind: Literal["gateway", "registry", "cache", "queue", "database"]
    port: Optional[Annotated[int, Field(ge=1, le=65535)]] = None
    capacity: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        description="operations served at once"
    )
    queue_limit: Optional[Annotated[int, Field(ge=0)]] = None
    latency_ms: Distribution
    timeout_s: Optional[PositiveFloat] = Field(
        None, description="client timeout for calls to it; null: wait (most DB/Redis clients' default)"
    )
    placement: Optional[Name] = None
    prefetch: Annotated[int, Field(ge=1)] = Field(
        10, description="queue only: unacknowledged messages per consumer instance"
    )
    heartbeat_timeout_s: PositiveFloat = Field(
        60.0,
        description="queue only: a consumer silent this long loses its connection and its unacknowledged messages are requeued (RabbitMQ heartbeat: 60 s)",
    )
    redelivery_delay_s: PositiveFloat = Field(
        1.0, description="queue only: delay before a failed delivery is retried"
    )


class Node(Frozen):
    """A host; every instance placed on it shares its fate (zone/node faults)."""

    name: Name
    zone: Name
    clock_skew_s: Annotated[float, Field(allow_inf_nan=False)] = Field(
        0.0, description="this host's clock minus true time (tokens are issued and checked on host clocks)"
    )


class Link(Frozen):
    """Latency of one direction between two components, overriding the network default."""

    src: Name
    dst: Name
    latency_ms: Distribution


class Network(Frozen):
    latency_ms: Distribution = Field(
        default_factory=lambda: Constant(dist="constant", value=0.0),
        description="one-way latency of every hop (request and response each pay one)",
    )
    links: list[Link] = Field(default_factory=list)


# --------------------------------------------------------------------------- workload


class PoissonArrival(Frozen):
    kind: Literal["poisson"]
    rate: PositiveFloat = Field(description="arrivals per second")


class PiecewiseArrival(Frozen):
    """A Poisson process whose rate is a step function of time.

    ``steps`` are ``[t_s, rate]`` pairs: from ``t_s`` on the rate is ``rate`` (per second)
    until the next step. Or ``csv``: a file with header ``t_s,rate`` giving the same table
    (read when the scenario is loaded; the table is then part of the scenario). ``scale``
    multiplies every rate; ``period_s`` repeats the table with that period.
    """

    kind: Literal["piecewise"]
    steps: Optional[
        list[tuple[NonNegativeFloat, NonNegativeFloat]]
    ] = Field(None, min_length=1)
    csv: Optional[str] = None
    scale: PositiveFloat = 1.0
    period_s: Optional[PositiveFloat] = None

    @model_validator(mode="before")
    @classmethod
    def _read_csv(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or data.get("steps") is not None:
            return data
        path = data.get("csv")
        if not isinstance(path, str):
            return data
        # Resolved in the scenario file's folder, confined to the data root, a regular
        # file of bounded size (models/datafiles.py).
        file, raw = read_data_file(path, info.context, "the arrival table", MAX_TABLE_BYTES)
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the header.
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        steps = []
        for lineno, row in enumerate(rows, start=2):
            try:
                steps.append((float(row["t_s"]), float(row["rate"])))
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"{file}:{lineno}: expected numeric columns 't_s' and 'rate'"
                ) from None
        return {**data, "steps": steps}

    @model_validator(mode="after")
    def _check(self) -> PiecewiseArrival:
        if self.steps is None:
            raise ValueError("give either 'steps' or 'csv'")
        ts = [t for t, _ in self.steps]
        if ts[0] != 0:
            raise ValueError("the first step must start at t_s = 0")
        if any(b <= a for a, b in zip(ts, ts[1:])):
            raise ValueError("step times must be strictly increasing")
        if not any(r > 0 for _, r in self.steps):
            raise ValueError("at least one step must have a rate > 0")
        if self.period_s is not None and self.period_s <= ts[-1]:
            raise ValueError(f"period_s ({self.period_s}) must exceed the last step time ({ts[-1]})")
        return self

    def mean_rate(self, horizon_s: float) -> float:
        """Average rate over ``[0, horizon_s)`` (for capacity estimates)."""
        from hailan_sim.models.arrivals import cumulative_rate

        return cumulative_rate(self, horizon_s) / horizon_s


class TraceArrival(Frozen):
    """Requests at exactly the listed times (seconds): replay recorded traffic, or pin a
    test's arrivals.

    ``times_s`` lists them inline (at most ``MAX_INLINE_TIMES`` in a YAML file), or
    ``file`` names a CSV or Parquet file with a column ``t_s`` (read when the scenario is
    loaded, like a piecewise ``csv``; the times are then part of the scenario). Given both,
    ``times_s`` is used and the file is not read: that is how a dump keeps the times.
    """

    kind: Literal["trace"]
    times_s: Optional[list[NonNegativeFloat]] = Field(None, min_length=1)
    file: Optional[str] = Field(
        None, description="a .csv or .parquet file with a column t_s, relative to the scenario file"
    )

    @model_validator(mode="before")
    @classmethod
    def _read_file(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or data.get("times_s") is not None or not isinstance(data.get("file"), str):
            return data
        return {**data, "times_s": read_trace(data["file"], info.context)}

    @model_validator(mode="after")
    def _sorted(self) -> TraceArrival:
        times = self.times_s
        if times is None:
            raise ValueError("give either 'times_s' (a list of times) or 'file' (a CSV or Parquet file)")
        if any(b < a for a, b in zip(times, times[1:])):
            raise ValueError("times_s must be in non-decreasing order")
        return self


Arrival = Annotated[
    Union[PoissonArrival, PiecewiseArrival, TraceArrival], Field(discriminator="kind")
]


class Endpoint(Frozen):
    """A user-facing operation: requests enter through the gateway to ``entry``."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
    entry: Target = Field(description="'service.operation' the request calls first")
    weight: Optional[PositiveFloat] = Field(
        None, description="share of workload.arrival (the mix); needs workload.arrival"
    )
    arrival: Optional[Arrival] = Field(None, description="this endpoint's own arrival process")
    timeout_s: Optional[PositiveFloat] = Field(
        60.0,
        description="how long the gateway waits for the entry service (nginx proxy_read_timeout default: 60 s)",
    )
    idempotent: bool = False

    @model_serializer(mode="wrap")
    def _keep_no_timeout(self, handler, info: SerializationInfo) -> dict:
        # timeout_s: null means "wait for ever", not the 60 s default: a dump with
        # exclude_none must not drop it (that would change what the scenario means).
        out = handler(self)
        if info.exclude_none and self.timeout_s is None and isinstance(out, dict):
            out = {k: (out[k] if k in out else None) for k in type(self).model_fields if k in out or k == "timeout_s"}
        return out


class Workload(Frozen):
    arrival: Optional[Arrival] = Field(
        None, description="total arrivals, split over endpoints by weight"
    )
    endpoints: list[Endpoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _mix(self) -> Workload:
        if isinstance(self.arrival, TraceArrival):
            raise ValueError(
                "workload.arrival cannot be a trace (a list of times cannot be split by weight); "
                "give each endpoint its own 'arrival: {kind: trace, ...}'"
            )
        for i, ep in enumerate(self.endpoints):
            if ep.arrival is None and ep.weight is None:
                raise ValueError(
                    f"endpoints[{i}] ({ep.name}) needs a 'weight' (share of workload.arrival) "
                    "or its own 'arrival'"
                )
            if ep.arrival is None and self.arrival is None:
                raise ValueError(
                    f"endpoints[{i}] ({ep.name}) has a weight but workload.arrival is not set"
                )
            if ep.arrival is not None and ep.weight is not None:
                raise ValueError(
                    f"endpoints[{i}] ({ep.name}) has both 'weight' and 'arrival'; give one"
                )
        return self

    def shares(self) -> dict[str, float]:
        """Each weighted endpoint's fraction of ``arrival``."""
        total = sum(ep.weight or 0.0 for ep in self.endpoints)
        return {ep.name: (ep.weight or 0.0) / total for ep in self.endpoints if ep.weight}


# --------------------------------------------------------------------------- run & policies


class Run(Frozen):
    duration_s: PositiveFloat = Field(300.0, description="arrivals stop at this time")
    warmup_s: NonNegativeFloat = Field(
        0.0, description="requests starting earlier are left out of the summaries"
    )
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    window_s: PositiveFloat = Field(1.0, description="width of the per-window series")
    cold_start: bool = Field(
        False, description="true: every instance starts at t=0 and pays its startup_s"
    )
    drain_s: NonNegativeFloat = Field(
        120.0,
        description="after duration_s, how long in-flight requests may still finish",
    )

    @model_validator(mode="after")
    def _warmup(self) -> Run:
        if self.warmup_s >= self.duration_s:
            raise ValueError(
                f"warmup_s ({self.warmup_s}) must be less than duration_s ({self.duration_s})"
            )
        return self


class Placement(Frozen):
    """Where one instance runs (resolved from the scenario; not written by users)."""

    instance: str
    node: str
    zone: str


def _service_names(services: list) -> list:
    return [s.get("name") if isinstance(s, dict) else getattr(s, "name", None) for s in services]


def _check_named_services(field: str, named, names: list) -> None:
    """Every service ``policies.<field>`` names must exist: a one-line error otherwise."""
    for name in named:
        if name not in names:
            raise ValueError(f"policies.{field}.{name}: no such service; services are "
                             f"{', '.join(str(n) for n in names)}")


def _raise_to_min_instances(data: dict, named: Optional[dict] = None) -> tuple[dict, dict]:
    """``policies.min_instances`` applied: each named service's ``instances`` raised to at
    least its minimum (never lowered), before validation, so that every reader of
    ``instances`` (placements, the engine, capacity) sees the count that runs. A dump of the
    scenario writes the count it set itself (returned: index -> that count). Names are checked
    here: an unknown service, or a minimum above the service's autoscaling maximum, is a
    one-line error; with a profile only the names in ``named`` (the scenario's own
    ``policies.min_instances``) must exist, a profile's are skipped where absent."""
    pol = data.get("policies")
    mins = pol.get("min_instances") if isinstance(pol, dict) else getattr(pol, "min_instances", None)
    services = data.get("services")
    if not mins or not isinstance(mins, dict) or not isinstance(services, list):
        return data, {}
    names = _service_names(services)
    _check_named_services("min_instances", mins if named is None else named, names)
    out, raised = [], {}
    for i, s in enumerate(services):
        n = mins.get(names[i])
        if not isinstance(n, int) or isinstance(n, bool):
            out.append(s)  # not named, or not a count: validation reports it
            continue
        fields = s if isinstance(s, dict) else s.model_dump(mode="python", exclude_unset=True)
        have = fields.get("instances")
        if not isinstance(have, int) or have >= n:
            out.append(s)
            continue
        auto = fields.get("autoscaling")
        top = auto.get("max_instances") if isinstance(auto, dict) else getattr(auto, "max_instances", None)
        if isinstance(top, int) and n > top:
            raise ValueError(f"policies.min_instances.{names[i]}: {n} is above services[{i}].autoscaling."
                             f"max_instances ({top}); raise that maximum or lower the minimum")
        out.append({**fields, "instances": n})
        raised[i] = have
    return {**data, "services": out}, raised


def _check_shedding_names(data: dict, own: Optional[dict]) -> None:
    """The services the scenario's own ``policies.max_queue_wait_s`` names must exist (a
    profile's names are those of the default scenario and are skipped where absent)."""
    pol = own if own is not None else data.get("policies")
    waits = pol.get("max_queue_wait_s") if isinstance(pol, dict) else getattr(pol, "max_queue_wait_s", None)
    services = data.get("services")
    if isinstance(waits, dict) and isinstance(services, list):
        _check_named_services("max_queue_wait_s", waits, _service_names(services))


class Scenario(Frozen):
    """A complete, self-contained description of one simulated system and run."""

    version: Literal[1] = 1
    name: Name
    description: str = ""
    run: Run = Field(default_factory=Run)
    network: Network = Field(default_factory=Network)
    nodes: list[Node] = Field(
        default_factory=lambda: [Node(name="node-1", zone="zone-a")], min_length=1
    )
    infrastructure: list[Infrastructure] = Field(default_factory=list)
    services: list[Service] = Field(min_length=1)
    workload: Workload
    profile: Optional[Literal["seed", "hardened"]] = Field(
        None, description="shipped policies to start from (seed: the spec as written; hardened: recommended)"
    )
    policies: Policies = Field(
        default_factory=Policies, description="client and platform policies; explicit values override the profile's"
    )
    faults: list[Fault] = Field(
        default_factory=list, description="what goes wrong during the run (models/faults.py)"
    )
    objectives: Objectives = Field(
        default_factory=Objectives,
        description="what the checker judges the run by (models/objectives.py; docs/invariants.md)",
    )
    _own_policies: Optional[dict] = PrivateAttr(default=None)
    _own_instances: Optional[dict] = PrivateAttr(default=None)  # index -> count before min_instances

    @model_validator(mode="wrap")
    @classmethod
    def _apply_profile(cls, data: Any, handler) -> Scenario:
        """With a profile, ``policies`` is the profile's policies overridden (deep-merged) by
        what the scenario itself sets; the scenario's own settings are kept for
        :meth:`with_profile`."""
        own = None
        if isinstance(data, dict) and data.get("profile") in PROFILES:
            own = data.get("policies") or {}
            if isinstance(own, Policies):
                own = own.model_dump(mode="python", exclude_unset=True)
            if spells_out_defaults(own):
                raise ValueError(
                    f"policies: spells out every default (as a whole-model dump wrote them), so profile "
                    f"{data['profile']!r} would change nothing but add its edges; keep only the policies "
                    "you mean to set (Scenario.to_yaml() writes only those), or remove 'profile'"
                )
            if isinstance(own, dict):
                data = {**data, "policies": merge_policies(profile_policies(data["profile"]), own)}
        raised: dict = {}
        if isinstance(data, dict):
            _check_shedding_names(data, own)
            # A profile's minimums name the default scenario's services: on a scenario
            # without one, that name is skipped; the scenario's own names must exist.
            named = (own.get("min_instances") or {}) if isinstance(own, dict) else None
            data, raised = _raise_to_min_instances(data, named)
        scenario = handler(data)
        if own is not None:
            scenario._own_policies = own
        if raised:
            scenario._own_instances = raised
        return scenario

    @field_serializer("services", mode="wrap")
    def _serialise_services(self, value: list, handler, info: SerializationInfo):
        """Dumps write the instance counts the scenario set itself, not those raised by
        ``policies.min_instances`` (which loading applies again), so that a dump taken under
        one profile and loaded under another runs the other's counts."""
        out = handler(value)
        for i, n in (self._own_instances or {}).items():
            if isinstance(out[i], dict) and "instances" in out[i]:
                out[i]["instances"] = n
        return out

    @field_serializer("policies", mode="wrap")
    def _serialise_policies(self, value: Policies, handler, info: SerializationInfo):
        """Every dump (``model_dump()``, ``exclude_none``, ``exclude_defaults``, JSON) writes
        only the policies the scenario set itself, never a default: with a profile, the
        profile's values would otherwise be frozen into the file, and without one, a
        ``profile:`` added to the file later would be overridden field by field by
        defaults merely written out. Explicit nulls the scenario set (no timeout, no
        breaker) are kept whatever ``exclude_none`` says: they mean something."""
        if self.profile is not None and self._own_policies is not None:
            return self._own_policies
        return value.model_dump(mode=info.mode, exclude_unset=True)

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        from hailan_sim.models.topology import check_references

        check_references(self)
        return self

    @model_validator(mode="after")
    def _objective_endpoints(self) -> Scenario:
        names = [e.name for e in self.workload.endpoints]
        for name in self.objectives.endpoints:
            if name not in names:
                raise ValueError(
                    f"objectives.endpoints.{name}: no such endpoint; endpoints are {', '.join(names)}"
                )
        return self

    # ------------------------------------------------------------------ conveniences

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def component(self, name: str) -> Union[Service, Infrastructure]:
        for c in (*self.services, *self.infrastructure):
            if c.name == name:
                return c
        raise KeyError(name)

    def with_run(self, **changes: Any) -> Scenario:
        """A copy with ``run`` fields changed, validated again (e.g. ``seed=7``)."""
        # exclude_unset: what was left to defaults stays so (a profile can still fill it).
        data = self.model_dump(mode="python", exclude_unset=True)
        data["run"] = {**data.get("run", {}), **changes}
        return Scenario.model_validate(data)

    def to_yaml(self, path: Union[str, Path, None] = None) -> str:
        """The scenario as YAML that loads back to the same scenario; written to ``path``
        too if given. Use this, not a pydantic dump, to save a scenario.

        What is written is what the scenario set (``exclude_unset``): defaults stay
        defaults, and with a ``profile`` only the scenario's own policies are written, so
        the file still starts from the profile. A trace read from a ``file`` is written
        as that reference (the times are not copied in; a relative path is relative to the
        folder of the file it was loaded from, so save beside it). Strings YAML 1.1 or 1.2
        would read as something else (``'yes'``, ``'1:30'``, ``'1e3'``) are quoted. A
        trace of more than ``MAX_INLINE_TIMES`` inline times is refused: the loader would
        refuse the file (put the times in a CSV or Parquet file and set ``file``).
        """
        from hailan_sim.models import yaml12
        from hailan_sim.models.datafiles import MAX_INLINE_TIMES

        data = self.model_dump(mode="json", exclude_unset=True)
        workload = data["workload"]
        places = [("workload.arrival", workload)] + [
            (f"workload.endpoints[{i}].arrival", ep) for i, ep in enumerate(workload["endpoints"])
        ]
        for where, holder in places:
            arrival = holder.get("arrival")
            if not isinstance(arrival, dict) or arrival.get("kind") != "trace":
                continue
            if arrival.get("file") is not None:
                holder["arrival"] = {k: v for k, v in arrival.items() if k != "times_s"}
            elif len(arrival.get("times_s") or ()) > MAX_INLINE_TIMES:
                raise ValueError(
                    f"{where}.times_s: {len(arrival['times_s'])} times cannot be written inline "
                    f"(at most {MAX_INLINE_TIMES}); put them in a CSV or Parquet file with a column t_s "
                    "and give the arrival 'file: NAME'"
                )
        text = yaml12.safe_dump(data)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def effective_policies(self) -> Policies:
        """The policies a run uses (with a profile: already merged with it)."""
        return self.policies

    def with_profile(self, profile: Optional[str]) -> Scenario:
        """A copy that starts from a shipped profile; the policies this scenario set
        itself still win over the profile's."""
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
        data = self.model_dump(mode="python", exclude_unset=True)  # policies: our own only
        data["profile"] = profile
        return Scenario.model_validate(data)

    def with_load(self, factor: float) -> Scenario:
        """A copy with every arrival rate multiplied by ``factor`` (trace arrivals unchanged
        is not possible, so a scenario with one is refused)."""
        if not factor > 0:
            raise ValueError(f"{factor=} must be > 0")
        data = self.model_dump(mode="python", exclude_unset=True)

        def scale(arrival: Optional[dict], where: str) -> None:
            if arrival is None:
                return
            if arrival["kind"] == "poisson":
                arrival["rate"] *= factor
            elif arrival["kind"] == "piecewise":
                arrival["scale"] = arrival.get("scale", 1.0) * factor
            else:
                raise ValueError(f"{where} is a trace; its times cannot be scaled")

        scale(data["workload"].get("arrival"), "workload.arrival")
        for i, ep in enumerate(data["workload"]["endpoints"]):
            scale(ep.get("arrival"), f"workload.endpoints[{i}].arrival")
        return Scenario.model_validate(data)

    def placements(self) -> list[Placement]:
        """Every service instance with its node and zone, in a fixed order."""
        zone = {n.name: n.zone for n in self.nodes}
        out = []
        for s in self.services:
            order = s.placement or [n.name for n in self.nodes]
            for i in range(s.instances):
                node = order[i % len(order)]
                out.append(Placement(instance=f"{s.name}-{i}", node=node, zone=zone[node]))
        return out

    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, nodes: list[Node]) -> list[Node]:
        seen: set[str] = set()
        for i, n in enumerate(nodes):
            if n.name in seen:
                raise ValueError(f"nodes[{i}]: duplicate node name {n.name!r}")
            seen.add(n.name)
        return nodes

"""Objectives: what the user needs, stated as data beside the scenario.

The checker judges a run by these, never by bounds derived from the policies under test: a
bound computed from a design's own timers can never say "your timers are too slow". What the
timers predict is shown beside the objective (``properties.reach``), not used as the bound.

Every default is sourced (see docs/invariants.md, "Objectives"), and the built-in scenario
(``models/data/default.yaml``) writes them out with the same sources in comments:

- Google SRE book, ch. 4 "Service Level Objectives": an SLO is a target for a ratio of good
  events (here: successful requests per endpoint) and a latency percentile; the error budget
  is ``1 - SLO``.
- SRE book ch. 21 "Handling Overload" and ch. 22 "Addressing Cascading Failures": at most 3
  attempts per request; retries while they are under about 10% of requests.
- AWS Builders' Library, "Static stability using Availability Zones": the data plane keeps
  serving in its last known good state while the control plane is impaired, and capacity is
  provisioned so that one loss leaves enough.
- Consul (``agent/checks/check.go``; /work/shared/reference/resilience-semantics.md section 4):
  health-filtered queries drop a dead instance at its first failed check, within one check
  interval + timeout (10 s + 5 s with the checks the spec registers).
- Envoy outlier detection (``outlier_detection.proto``): a failing host is ejected inline,
  after 5 consecutive 5xx, not after a health-check period.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

from hailan_sim.models._base import Frozen

__all__ = ["OBJECTIVE_KEYS", "EndpointObjectives", "Objectives", "describe_objectives", "override_objectives"]

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class EndpointObjectives(Frozen):
    """One endpoint's SLO; what it leaves out is the scenario-wide default."""

    success_ratio: Optional[Ratio] = Field(None, description="share of requests that succeed (SLO)")
    p99_ms: Optional[PositiveFloat] = Field(None, description="99th percentile latency, ms")


class Objectives(Frozen):
    """What the user needs from the design; the invariants' bounds (docs/invariants.md)."""

    # SRE book ch. 4: the book's example SLO is 99.9% of requests succeeding.
    success_ratio: Ratio = Field(0.999, description="default SLO: share of requests that succeed, per endpoint")
    # SRE book ch. 4 states latency SLOs on percentiles; 1 s is this project's default for an
    # interactive call (override per endpoint, e.g. LLM generation).
    p99_ms: PositiveFloat = Field(1000.0, description="default p99 latency objective per endpoint, ms")
    endpoints: dict[str, EndpointObjectives] = Field(
        default_factory=dict, description="per-endpoint overrides of success_ratio and p99_ms, by endpoint name"
    )
    # Recovery time objective. Consul's health-filtered queries drop a dead instance within
    # one check interval + timeout (15 s) and Envoy ejects inline; twice that leaves room for
    # a restart to pass its first check.
    rto_s: PositiveFloat = Field(
        30.0, description="after the last fault ends, every endpoint is back within this long"
    )
    # Redundancy (AWS static stability, N+1): losing one of several instances costs at most
    # what detection takes (Consul: interval 10 s + timeout 5 s) and at most the error budget.
    detection_s: NonNegativeFloat = Field(
        15.0, description="redundancy: how long an endpoint may be below its SLO after a redundant loss"
    )
    redundancy_budget: Ratio = Field(
        0.01, description="redundancy: share of requests a redundant loss may fail beyond the baseline's"
    )
    # Static stability (AWS): a control plane outage shorter than the caches' lifetime costs
    # the data plane nothing. PyJWKClient caches keys for 300 s (resilience-semantics.md 5).
    control_plane_horizon_s: NonNegativeFloat = Field(
        300.0, description="static stability: control plane outages shorter than this cost the data plane nothing beyond the budget"
    )
    # SRE book ch. 21-22: at most 3 attempts per request; retries under about 10% of requests.
    max_attempts: Annotated[int, Field(ge=1)] = Field(
        3, description="most calls one request may make to any one target, relative to the baseline's most"
    )
    retry_extra_load: NonNegativeFloat = Field(
        0.10, description="most extra load retries may add to a target, as a share of its calls"
    )
    # RFC 7519 section 4.1.4: leeway for clock skew of "usually no more than a few minutes";
    # .NET's default is 5 min (resilience-semantics.md 5). Clocks within this of each other
    # must not make a valid token fail.
    max_clock_skew_s: NonNegativeFloat = Field(
        300.0, description="clock differences the platform must tolerate without a 401"
    )
    # RabbitMQ quorum queues: a default delivery limit of 20 since RabbitMQ 4.0.
    max_deliveries: Annotated[int, Field(ge=1)] = Field(
        20, description="most times one message may be delivered (first delivery and redeliveries)"
    )
    # SRE book ch. 22: propagate deadlines so that a server drops work whose caller has
    # given up; what it serves anyway is wasted. This project's default tolerance: 1% of
    # the calls, beyond what the fault-free run wastes.
    wasted_share: NonNegativeFloat = Field(
        0.01, description="share of calls that may be served after their caller gave up, beyond the baseline's"
    )
    # A herd on a restarted or surviving instance (thundering herd): no instance takes more
    # than this multiple of its fair share (1 / instances up) of its service's calls for
    # longer than fair_share_s. Project defaults: twice its share, for at most 10 s.
    fair_share_factor: Annotated[float, Field(gt=1, allow_inf_nan=False)] = Field(
        2.0, description="most an instance may take, as a multiple of its fair share of its service's calls"
    )
    fair_share_s: NonNegativeFloat = Field(
        10.0, description="how long an instance may take more than fair_share_factor times its share"
    )
    # Consul: health-filtered discovery stops returning a dead instance at its first failed
    # check (interval 10 s + timeout 5 s), plus one 5 s cache refresh.
    dead_instance_s: NonNegativeFloat = Field(
        20.0, description="how long after an instance dies calls may still be sent to it"
    )

    def for_endpoint(self, name: str) -> tuple[float, float]:
        """``(success_ratio, p99_ms)`` of endpoint ``name``."""
        o = self.endpoints.get(name)
        ratio = o.success_ratio if o is not None and o.success_ratio is not None else self.success_ratio
        p99 = o.p99_ms if o is not None and o.p99_ms is not None else self.p99_ms
        return ratio, p99


#: The scalar objectives ``--objective KEY=VALUE`` can set (``endpoints.NAME.success_ratio``
#: and ``endpoints.NAME.p99_ms`` too).
OBJECTIVE_KEYS = tuple(k for k in Objectives.model_fields if k != "endpoints")


def override_objectives(objectives: Objectives, pairs: list[tuple[str, str]]) -> Objectives:
    """``objectives`` with ``KEY=VALUE`` overrides applied (validated again).

    Keys are the scalar fields (:data:`OBJECTIVE_KEYS`) or ``endpoints.NAME.FIELD``. Raises
    ``ValueError`` with one line naming the key and what is allowed.
    """
    data = objectives.model_dump(mode="python", exclude_unset=True)
    for key, value in pairs:
        parts = key.split(".")
        if len(parts) == 1 and key in OBJECTIVE_KEYS:
            data[key] = value
        elif len(parts) == 3 and parts[0] == "endpoints" and parts[2] in EndpointObjectives.model_fields:
            eps = data.setdefault("endpoints", {})
            eps[parts[1]] = {**eps.get(parts[1], {}), parts[2]: value}
        else:
            raise ValueError(
                f"--objective {key}: unknown objective; allowed: {', '.join(OBJECTIVE_KEYS)}, "
                "endpoints.NAME.success_ratio, endpoints.NAME.p99_ms"
            )
    from pydantic import ValidationError

    try:
        return Objectives.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"--objective {where}: {err['msg']} (got {err.get('input')!r})") from None


def describe_objectives(objectives: Objectives) -> str:
    """The objectives as one line a report prints (``key=value``, endpoint overrides last)."""
    parts = [f"{k}={getattr(objectives, k):g}" for k in OBJECTIVE_KEYS]
    for name, o in objectives.endpoints.items():
        for k in ("success_ratio", "p99_ms"):
            v = getattr(o, k)
            if v is not None:
                parts.append(f"endpoints.{name}.{k}={v:g}")
    return " ".join(parts)

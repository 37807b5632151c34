"""Faults as data: what goes wrong, where, when and for how long.

A fault is a frozen pydantic model discriminated on ``kind``, with ``start_s`` and
``duration_s`` (``null``: permanent, until the run ends). A scenario lists them under
``faults:``; the engine applies each at its start, undoes it at its end, and logs both
(``fault_start`` / ``fault_end``). Targets name things the scenario defines: instances are
``<service>-<index>`` as the engine names them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field

from hailan_sim.models._base import Frozen

__all__ = ["FAULT_KINDS", "Fault", "describe"]

NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Instance = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*-[0-9]+$", description="<service>-<index>")]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]


class _Timed(Frozen):
    start_s: NonNegativeFloat
    duration_s: Optional[PositiveFloat] = Field(None, description="null: permanent")

    def end_s(self) -> Optional[float]:
        return None if self.duration_s is None else self.start_s + self.duration_s


class CrashInstance(_Timed):
    """The process dies: in-flight work is lost (callers see errors), it stays registered
    until reaped. With ``restart``, it starts again after ``duration_s`` (paying its
    start-up and registering again)."""

    kind: Literal["crash_instance"] = "crash_instance"
    instance: Instance
    restart: bool = True


class CrashService(_Timed):
    """Every instance of a service dies (a bad deploy, a poison message)."""

    kind: Literal["crash_service"] = "crash_service"
    service: Name
    restart: bool = True


class CrashNode(_Timed):
    """A host dies: every instance and component placed on it."""

    kind: Literal["crash_node"] = "crash_node"
    node: Name
    restart: bool = True


class CrashZone(_Timed):
    """An availability zone is lost: every node in it."""

    kind: Literal["crash_zone"] = "crash_zone"
    zone: Name
    restart: bool = True


class DrainInstance(_Timed):
    """A graceful stop (a deploy): deregister, finish in-flight work, stop; back after
    ``duration_s`` (start-up and registration again)."""

    kind: Literal["drain_instance"] = "drain_instance"
    instance: Instance


class Hang(_Timed):
    """The instance accepts connections but never answers (a deadlock, a full GC): calls
    to it, and its health checks, time out. Work it held is lost when it recovers."""

    kind: Literal["hang"] = "hang"
    instance: Instance


class Slow(_Timed):
    """Service times multiplied by ``factor`` (a noisy neighbour, a cold cache)."""

    kind: Literal["slow"] = "slow"
    target: str = Field(description="a service or an instance")
    factor: Annotated[float, Field(gt=1, le=1000, allow_inf_nan=False)] = 10.0


class ErrorRate(_Timed):
    """A fraction of the target's calls fail fast after their service time."""

    kind: Literal["error_rate"] = "error_rate"
    target: str = Field(description="a service or an instance")
    fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5


class Partition(_Timed):
    """Packets between ``a`` and ``b`` are dropped, both ways: calls across time out.
    Each side is a service, an instance, or an infrastructure component (the registry
    included, so an instance can be cut off from Consul)."""

    kind: Literal["partition"] = "partition"
    a: str
    b: str


class LinkLatency(_Timed):
    """Extra one-way latency (and optional loss) on every hop between ``a`` and ``b``."""

    kind: Literal["link_latency"] = "link_latency"
    a: str
    b: str
    added_ms: NonNegativeFloat = 100.0
    loss: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0


class RegistryOutage(_Timed):
    """The registry (Consul) is unreachable: discovery queries and registrations fail."""

    kind: Literal["registry_outage"] = "registry_outage"


class InfraOutage(_Timed):
    """A shared component (Redis, the database, the message queue, the gateway) is down:
    calls to it are refused."""

    kind: Literal["infra_outage"] = "infra_outage"
    component: Name


class ClockSkew(_Timed):
    """A host's clock is off by ``skew_s`` (tokens are issued and checked on host clocks)."""

    kind: Literal["clock_skew"] = "clock_skew"
    node: Name
    skew_s: Annotated[float, Field(allow_inf_nan=False, ge=-86400, le=86400)] = 60.0


class KeyRotation(_Timed):
    """The token issuer starts signing with a new key at ``start_s``."""

    kind: Literal["key_rotation"] = "key_rotation"


class LoadSpike(_Timed):
    """The endpoint's arrival rate times ``factor`` (extra Poisson arrivals on their own
    stream, so the baseline's arrivals are unchanged)."""

    kind: Literal["load_spike"] = "load_spike"
    endpoint: str
    factor: Annotated[float, Field(gt=1, le=100, allow_inf_nan=False)] = 3.0


Fault = Annotated[
    Union[
        CrashInstance, CrashService, CrashNode, CrashZone, DrainInstance, Hang, Slow, ErrorRate,
        Partition, LinkLatency, RegistryOutage, InfraOutage, ClockSkew, KeyRotation, LoadSpike,
    ],
    Field(discriminator="kind"),
]

FAULT_KINDS = (
    "crash_instance", "crash_service", "crash_node", "crash_zone", "drain_instance", "hang",
    "slow", "error_rate", "partition", "link_latency", "registry_outage", "infra_outage",
    "clock_skew", "key_rotation", "load_spike",
)


def describe(fault) -> str:
    """One line for reports: ``crash_instance(order-service-1) at 40s for 30s``."""
    fields = fault.model_dump(exclude={"kind", "start_s", "duration_s"})
    args = ", ".join(str(v) if k in ("instance", "service", "node", "zone", "target", "component", "endpoint")
                     else f"{k}={v}" for k, v in fields.items())
    span = "permanently" if fault.duration_s is None else f"for {fault.duration_s:g}s"
    return f"{fault.kind}({args}) at {fault.start_s:g}s {span}"

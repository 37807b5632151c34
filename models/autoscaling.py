"""Reactive autoscaling, as a pure decision rule.

Every ``interval_s`` the engine measures one metric over the interval just ended (mean
utilisation of the service's serving instances, or mean queue length per instance) and
asks :meth:`Autoscaler.decide` what to do. The rule is the common threshold controller of
cloud autoscalers (AWS step scaling, the Kubernetes HPA's tolerance band): above
``scale_out_above`` add ``step`` instances, below ``scale_in_below`` remove ``step``,
within ``[min_instances, max_instances]``, and never twice within ``hold_s`` (the
cool-down). A new instance is not capacity at once: the engine makes it pay its
start-up time, register, and pass its health check first, as a real one does.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from hailan_sim.models._base import Frozen

__all__ = ["AutoscalingPolicy", "Autoscaler"]


class AutoscalingPolicy(Frozen):
    metric: Literal["utilisation", "queue"] = Field(
        "utilisation", description="utilisation: busy workers / workers; queue: waiting calls per instance"
    )
    scale_out_above: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.7
    scale_in_below: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.3
    interval_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 15.0
    hold_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        60.0, description="cool-down: no scaling action within this long of the last one"
    )
    min_instances: Annotated[int, Field(ge=1)] = 1
    max_instances: Annotated[int, Field(ge=1, le=10_000)] = 10
    step: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingPolicy:
        if self.scale_in_below >= self.scale_out_above:
            raise ValueError(
                f"scale_in_below ({self.scale_in_below}) must be below scale_out_above ({self.scale_out_above})"
            )
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) must be <= max_instances ({self.max_instances})")
        return self


class Autoscaler:
    """Decides scaling actions; remembers only when it last acted."""

    __slots__ = ("policy", "last_action")

    def __init__(self, policy: AutoscalingPolicy) -> None:
        self.policy = policy
        self.last_action: Optional[float] = None

    def decide(self, now: float, metric: float, instances: int) -> int:
        """Instances to add (> 0) or remove (< 0) given ``metric`` over the last interval
        and the ``instances`` currently counted (starting ones included)."""
        p = self.policy
        if self.last_action is not None and now - self.last_action < p.hold_s:
            return 0
        if metric > p.scale_out_above and instances < p.max_instances:
            delta = min(p.step, p.max_instances - instances)
        elif metric < p.scale_in_below and instances > p.min_instances:
            delta = -min(p.step, instances - p.min_instances)
        else:
            return 0
        self.last_action = now
        return delta

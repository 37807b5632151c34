"""The API gateway's own routing policies: what an edge proxy does when an entry instance dies.

The spec (074) shows no gateway code; with no ``gateway:`` policy the gateway routes each
request once to an instance Consul's DNS interface returns (passing checks only) and passes
on whatever it gets, as it always has. ``policies.gateway`` adds what Envoy's router and
cluster manager do at an edge (reference: resilience-semantics.md sections 1 and 3):

* ``retry``: Envoy's route retry policy (``route.RetryPolicy``, docs
  ``configuration/http/http_filters/router_filter.rst``, ``x-envoy-retry-on``).
  ``retry_on: connect-failure`` retries a request whose connection to the upstream failed
  (here: the instance was not up when the request reached it); ``reset`` one whose upstream
  reset the stream before answering (here: the instance crashed while serving it). Nothing
  else is retried: an entry service's own error answer (a 5xx) is passed on, since its
  operations may not be idempotent and its failure is not the gateway's to mask.
  ``num_retries`` defaults to Envoy's 1. With ``retry_host_predicate: previous_hosts``
  (``envoy.retry_host_predicates.previous_hosts``) host selection for a retry rejects hosts
  already tried, re-picking up to ``host_selection_retry_max_attempts`` times (Envoy's
  default 1; the docs' example sets 3) and then keeping the last pick
  (``LoadBalancerBase::chooseHost``: ``max_attempts = hostSelectionRetryCount() + 1``).
  Backoff: Envoy's ``JitteredExponentialBackOffStrategy``, ``U[0, (2^n - 1) * base)`` for the
  n-th retry, the bound capped at ``max_interval`` (default 10 x base; base 25 ms).
  The route timeout (the endpoint's ``timeout_s``) *includes* the retries (Envoy: "the
  route timeout includes all retries"): each attempt gets what is left of it, and no retry
  starts once it has passed. The cluster's ``max_retries`` circuit breaker (Envoy default 3,
  ``circuit_breaker.proto``) bounds the retries waiting in backoff at once per entry
  service; a retry over it is not made (``upstream_rq_retry_overflow``).
* ``outlier``: Envoy outlier detection (the same model as the client pipeline's
  ``policies.outlier``, models/breakers.py ``OutlierDetector``), one detector per entry
  service at the gateway, fed every attempt's result. A connect failure or reset is a
  *local-origin* failure, which Envoy (``split_external_local_origin_errors: false``, its
  default) counts as HTTP 503 (``DetectorHostMonitorImpl::resultToHttpCode``:
  ``LocalOriginConnectFailed`` -> ServiceUnavailable); it is fed as ``rejected`` (this
  project's 503). An ejected host leaves the gateway's balancing set (the DNS list) until
  un-ejected; the panic threshold applies.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator, model_validator

from hailan_sim.models._base import Frozen
from hailan_sim.models.breakers import OutlierConfig

__all__ = ["GatewayPolicy", "GatewayRetry", "RETRY_ON", "envoy_backoff_s"]

#: Envoy's ``retry_on`` conditions the model knows (the gateway's attempt failures it can tell apart).
RETRY_ON = ("connect-failure", "reset")

_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class GatewayRetry(Frozen):
    """Envoy's route retry policy, for the conditions the model has (see the module doc)."""

    num_retries: int = Field(1, ge=0, le=10, description="retries per request (Envoy's default: 1)")
    retry_on: tuple[Literal["connect-failure", "reset"], ...] = Field(
        ("connect-failure",),
        min_length=1,
        description="connect-failure: the instance was down when the request reached it; "
        "reset: it crashed while serving the request",
    )
    retry_host_predicate: Optional[Literal["previous_hosts"]] = Field(
        "previous_hosts", description="previous_hosts: a retry avoids the hosts already tried"
    )
    host_selection_retry_max_attempts: int = Field(
        1, ge=0, le=10, description="re-picks when a pick is rejected by the predicate (Envoy's default: 1)"
    )
    base_interval_s: _Seconds = Field(0.025, description="backoff base (Envoy: 25 ms)")
    max_interval_s: Optional[_Seconds] = Field(None, description="backoff cap (Envoy: 10 x base)")
    max_retries: int = Field(
        3, ge=0, description="retries in backoff at once per entry service (Envoy's circuit breaker: 3)"
    )

    @field_validator("retry_on")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("retry_on lists a condition twice")
        return v

    @model_validator(mode="after")
    def _cap_at_least_base(self) -> "GatewayRetry":
        if self.max_interval_s is not None and self.max_interval_s < self.base_interval_s:
            raise ValueError(
                f"max_interval_s ({self.max_interval_s}) must be >= base_interval_s ({self.base_interval_s})"
            )
        return self

    def cap_s(self) -> float:
        # Envoy RetryStateImpl: max_interval defaults to 10 times base_interval.
        return self.max_interval_s if self.max_interval_s is not None else 10 * self.base_interval_s


class GatewayPolicy(Frozen):
    """What the API gateway does beyond routing each request once (``policies.gateway``)."""

    retry: Optional[GatewayRetry] = Field(None, description="Envoy route retry policy; null: no retry")
    outlier: Optional[OutlierConfig] = Field(
        None, description="Envoy outlier detection per entry service at the gateway; null: none"
    )


def envoy_backoff_s(n: int, base_s: float, cap_s: float, u: float) -> float:
    """The wait before the ``n``-th retry (n >= 1): Envoy's JitteredExponentialBackOffStrategy
    (source/common/common/backoff_strategy.cc): ``multiplier = 2^n - 1``, bound
    ``min(base * multiplier, max)``, the wait ``random() % bound`` (here ``u * bound``, ``u``
    uniform in [0, 1))."""
    if n < 1:
        raise ValueError("n counts retries from 1")
    return min(base_s * ((1 << n) - 1), cap_s) * u

"""Client and platform policies: every resilience mechanism a scenario can switch on.

``Policies`` holds the defaults for every internal call (timeout, discovery, balancing,
breaker, retries, bulkhead, deadlines), the platform-wide settings (health checks, service
tokens) and ``edges``: overrides for one caller, one callee or one caller -> callee edge,
applied in order, later entries winning. A field an edge leaves out is inherited.

A scenario may name a ``profile`` (``seed``: the spec's code as written; ``hardened``: what
we recommend). The profile's policies are the base; whatever the scenario's own ``policies``
set explicitly overrides them (see :func:`effective_policies`).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, model_validator

from hailan_sim.models import yaml12
from hailan_sim.models._base import Frozen
from hailan_sim.models.balancers import BalancerConfig, RandomConfig
from hailan_sim.models.breakers import OutlierConfig, SlidingWindowConfig, SpecBreakerConfig
from hailan_sim.models.gateway import GatewayPolicy
from hailan_sim.models.registry import DiscoveryConfig, HealthCheckConfig
from hailan_sim.models.retry import NoBudget, RetryBudgetConfig, RetryPolicy

__all__ = [
    "PROFILES",
    "EdgePolicy",
    "Policies",
    "TokenPolicy",
    "merge_policies",
    "profile_policies",
    "spells_out_defaults",
]

PROFILES = ("seed", "hardened")

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]

CallBreaker = Annotated[Union[SpecBreakerConfig, SlidingWindowConfig], Field(discriminator="kind")]


class TokenPolicy(Frozen):
    """Service-to-service JWTs as the spec's ServiceAuth issues and checks them (3.7.1)."""

    enabled: bool = Field(False, description="callers send a token and callees verify it")
    signing: Literal["local", "issuer"] = Field(
        "local",
        description=(
            "local: each caller signs its own token with the platform's private key, as the spec's "
            "ServiceAuth.generateToken does (3.7.1: jwt.sign(payload, this.privateKey)), and cannot fail "
            "on the network; issuer: callers fetch tokens from the `issuer` operation (3.1.2 lists "
            "auth-service as 'JWT generation')"
        ),
    )
    issuer: str = Field(
        "auth-service.issue_token",
        pattern=r"^[a-z][a-z0-9-]*\.[A-Za-z_][A-Za-z0-9_]*$",
        description="with signing: issuer, the operation a caller calls to get a token",
    )
    ttl_s: Annotated[int, Field(ge=1)] = Field(3600, description="expiresIn (spec: '1h')")
    first_token: Literal["fresh", "steady_state"] = Field(
        "fresh",
        description=(
            "the token each caller instance holds when the run starts. fresh: none, the first "
            "call obtains one (every token issued at t = 0, none expires within an hour); "
            "steady_state: a token issued before the run, its age uniform over the cache's "
            "refresh period (ttl_s, minus refresh_margin_s with refresh_ahead) from the caller's "
            "own random stream, as on a platform that has been running for a while, so "
            "expiries fall inside ordinary runs"
        ),
    )
    cache: Literal["spec", "refresh_ahead"] = Field(
        "spec", description="spec: reuse while exp*1000 > Date.now(); refresh_ahead: refresh margin_s early"
    )
    refresh_margin_s: NonNegativeFloat = Field(
        225.0, description="refresh this long before exp (google-auth: 3 min 45 s)"
    )
    single_flight: bool = True
    verifier: Literal["jsonwebtoken", "pyjwt"] = Field(
        "jsonwebtoken", description="whose boundary rules callees apply (the spec uses jsonwebtoken)"
    )
    leeway_s: NonNegativeFloat = Field(0.0, description="clock tolerance when verifying (spec: 0)")
    on_401: Literal["log", "refresh_retry"] = Field(
        "log",
        description="log: the call just fails (the spec only logs); refresh_retry: refresh the token and "
                    "re-send once, the re-send one of retry.max_attempts",
    )
    key_cache_ttl_s: PositiveFloat = Field(300.0, description="verifiers cache public keys (PyJWKClient: 300 s)")
    refetch_on_unknown_kid: bool = True
    key_rotations_s: list[NonNegativeFloat] = Field(
        default_factory=list, description="times at which the issuer starts signing with a new key"
    )
    key_publish_ahead_s: NonNegativeFloat = Field(
        0.0,
        description=(
            "how long before a rotation (key_rotations_s, key_rotation faults: the time the issuer "
            "starts signing with the new key) its public key is in the published key set (JWKS). "
            "0: published when first used, as in the spec, which has no key set at all; at least "
            "key_cache_ttl_s: every verifier's cached set holds the key before any token carries it "
            "(RFC 7517 4.5 key rollover; OpenID Connect Core 1.0 10.1.1; docs/mechanisms/tokens.md)"
        ),
    )


class GrpcKeepalive(Frozen):
    """HTTP/2 keepalive of the callers' gRPC channels (grpc/grpc doc/keepalive.md, proposal A8).

    A host that vanishes (its node or zone crashed) sends no RST/FIN, so a channel to it looks
    READY until a keepalive ping goes unanswered: pings go ``time_s`` after the last activity,
    and the transport is closed ``timeout_s`` after an unanswered one. Client defaults:
    GRPC_ARG_KEEPALIVE_TIME_MS INT_MAX (off), GRPC_ARG_KEEPALIVE_TIMEOUT_MS 20 s,
    GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS 0 (an idle channel is never pinged). A server
    answers pings more frequent than GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS
    (default 5 min) with GOAWAY ENHANCE_YOUR_CALM "too_many_pings", so it must allow the rate.
    """

    time_s: Annotated[float, Field(gt=0)] = Field(
        description="GRPC_ARG_KEEPALIVE_TIME_MS: a ping this long after the last activity"
    )
    timeout_s: Annotated[float, Field(gt=0)] = Field(
        20.0, description="GRPC_ARG_KEEPALIVE_TIMEOUT_MS: the transport closes this long after an unanswered ping"
    )
    permit_without_calls: bool = Field(
        False, description="GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS: ping idle channels too"
    )
    server_min_ping_interval_s: Annotated[float, Field(gt=0)] = Field(
        300.0,
        description=(
            "the servers' GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: pings more frequent "
            "than this get GOAWAY too_many_pings"
        ),
    )

    @model_validator(mode="after")
    def _servers_allow(self) -> "GrpcKeepalive":
        if self.time_s < self.server_min_ping_interval_s:
            raise ValueError(
                f"time_s {self.time_s:g} is below server_min_ping_interval_s "
                f"{self.server_min_ping_interval_s:g}: servers would answer GOAWAY too_many_pings "
                "(grpc doc/keepalive.md); raise time_s or lower server_min_ping_interval_s"
            )
        return self


class Policies(Frozen):
    """Defaults for every internal call, plus platform-wide settings.

    The mechanisms are documented with their sources in docs/mechanisms/.
    """

    timeout_s: Optional[PositiveFloat] = Field(
        5.0, description="per-call timeout (the spec's axios timeout: 5000 ms); null: wait forever"
    )
    discovery: DiscoveryConfig = Field(
        default_factory=DiscoveryConfig,
        description="how callers find instances; used when the scenario has a registry component",
    )
    balancer: BalancerConfig = Field(default_factory=lambda: RandomConfig(kind="random"))
    breaker: Optional[CallBreaker] = None
    breaker_scope: Literal["client", "service", "instance"] = Field(
        "client",
        description=(
            "client: one breaker per caller instance for every callee (the spec's HttpClient "
            "holds one); service: per caller instance and callee service; instance: per callee instance"
        ),
    )
    outlier: Optional[OutlierConfig] = Field(None, description="Envoy-style outlier ejection per caller instance")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    retry_budget: RetryBudgetConfig = Field(default_factory=NoBudget)
    bulkhead: Optional[Annotated[int, Field(ge=1)]] = Field(
        None, description="max concurrent calls from one caller instance to one callee service"
    )
    deadline_propagation: bool = Field(
        False, description="callees drop work whose caller's deadline has passed"
    )
    protocol: Literal["http", "grpc"] = "http"
    grpc_channel: Literal["sticky_forever", "per_call", "refresh_on_failure"] = Field(
        "sticky_forever",
        description="gRPC edges: the spec's GrpcClient caches one client per service for ever",
    )
    grpc_keepalive: Optional[GrpcKeepalive] = Field(
        None,
        description=(
            "gRPC edges with grpc_channel refresh_on_failure: HTTP/2 keepalive, which closes an idle "
            "channel to a vanished host (node or zone crash); null: none (gRPC clients' default)"
        ),
    )
    grpc_client: Literal["as_http", "spec"] = Field(
        "as_http",
        description=(
            "gRPC edges: as_http: the edge's timeout_s and breaker apply as on HTTP edges; spec: the "
            "spec's GrpcClient (3.3.2), which has no circuit breaker and sets no deadline (a call "
            "site's own timeout_s still applies)"
        ),
    )
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    tokens: TokenPolicy = Field(default_factory=TokenPolicy)
    gateway: Optional[GatewayPolicy] = Field(
        None,
        description=(
            "the API gateway's retries and outlier ejection towards entry instances (models/gateway.py); "
            "null: it routes each request once to an instance Consul's DNS returns, as the seed does"
        ),
    )
    min_instances: Optional[dict[Name, Annotated[int, Field(ge=1, le=10_000)]]] = Field(
        None,
        description=(
            "capacity: the named services run at least this many instances (a service's own "
            "`instances` is raised to it, placed like the others), so that losing one instance, "
            "node or zone leaves enough (N+1: AWS Builders' Library, 'Static stability using "
            "Availability Zones'; Google SRE book, 'Addressing Cascading Failures'); docs/profiles.md"
        ),
    )
    max_queue_wait_s: Optional[dict[Name, PositiveFloat]] = Field(
        None,
        description=(
            "load shedding by service: a call that waited longer than this for one of the named "
            "service's workers is rejected instead of served (a service's own max_queue_wait_s "
            "wins), so that a backlog built while the service was slow or short of capacity does "
            "not outlive the fault (Google SRE book, 'Handling Overload' and 'Addressing Cascading "
            "Failures': queue management, load shedding); docs/profiles.md"
        ),
    )
    edges: list[EdgePolicy] = Field(default_factory=list)


class EdgePolicy(Frozen):
    """Overrides for calls from ``caller`` to ``callee`` (either may be omitted: any)."""

    caller: Optional[Name] = None
    callee: Optional[Name] = None
    timeout_s: Optional[PositiveFloat] = None
    discovery: Optional[DiscoveryConfig] = None
    balancer: Optional[BalancerConfig] = None
    breaker: Optional[CallBreaker] = None
    breaker_scope: Optional[Literal["client", "service", "instance"]] = None
    outlier: Optional[OutlierConfig] = None
    retry: Optional[RetryPolicy] = None
    retry_budget: Optional[RetryBudgetConfig] = None
    bulkhead: Optional[Annotated[int, Field(ge=1)]] = None
    deadline_propagation: Optional[bool] = None
    protocol: Optional[Literal["http", "grpc"]] = None
    grpc_channel: Optional[Literal["sticky_forever", "per_call", "refresh_on_failure"]] = None
    grpc_client: Optional[Literal["as_http", "spec"]] = None

    def overrides(self) -> dict[str, Any]:
        """The fields this edge sets explicitly (an explicit null counts: e.g. no timeout)."""
        return {k: getattr(self, k) for k in self.model_fields_set if k not in ("caller", "callee")}


Policies.model_rebuild()

EDGE_FIELDS = tuple(k for k in EdgePolicy.model_fields if k not in ("caller", "callee"))


@lru_cache(maxsize=None)
def _profile_text(name: str) -> str:
    return (resources.files("hailan_sim.models") / "data" / "profiles" / f"{name}.yaml").read_text(encoding="utf-8")


def profile_policies(name: str) -> dict:
    """The ``policies`` mapping a shipped profile sets (a fresh copy)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; profiles are {', '.join(PROFILES)}")
    return yaml12.safe_load(_profile_text(name))["policies"]


def spells_out_defaults(own: Any) -> bool:
    """Whether a scenario's own ``policies`` mapping is a whole-model dump: every field
    whose default is not null written out, and the nested ``health_check`` and ``tokens``
    complete. Such a mapping (what ``model_dump()`` or ``exclude_none=True`` wrote before
    dumps kept to the fields a scenario set) overrides a profile in every field, so the
    profile would change nothing but add its edges; nobody writes that by hand."""
    if not isinstance(own, dict):
        return False
    written = [k for k, f in Policies.model_fields.items() if f.get_default(call_default_factory=True) is not None]
    if not all(k in own for k in written):
        return False
    return all(
        isinstance(own.get(k), dict) and set(own[k]) >= set(model.model_fields)
        for k, model in (("health_check", HealthCheckConfig), ("tokens", TokenPolicy))
    )


def merge_policies(base: Any, top: Any) -> Any:
    """Deep-merge policy mappings, ``top`` winning. A mapping with its own ``kind`` (a
    breaker, a balancer) replaces the base's wholesale unless the kinds agree; ``edges``
    append (the scenario's edges come after, and so win over, the profile's)."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for k, v in top.items():
            old = out.get(k)
            if k == "edges" and isinstance(old, list) and isinstance(v, list):
                out[k] = [*old, *v]
            elif isinstance(v, dict) and isinstance(old, dict) and v.get("kind", old.get("kind")) == old.get("kind"):
                out[k] = merge_policies(old, v)
            else:
                out[k] = v
        return out
    return top

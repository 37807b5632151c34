"""Retries: backoff, retry policy, and the budgets that cap retry amplification.

Pure functions and small state machines; ``now`` is simulated seconds and ``u()`` a
seeded uniform draw on [0, 1). Sources are cited where each rule is implemented;
docs/mechanisms/retries.md has the semantics and the deliberate differences.

The spec (074, 3.3.1) has no retries at all: ``callService`` makes one attempt and its
FAQ (3.9) only says to "use a retry mechanism". The default ``RetryPolicy`` therefore
makes one attempt (``max_attempts=1``).

Attempt numbering used throughout: attempt 1 is the original call; after attempt ``a``
fails, ``should_retry(a, ...)`` decides and the wait before attempt ``a + 1`` is
``delay(a, prev, u)``: ``delay``'s ``attempt`` is the retry number, 1 for the first retry.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Annotated, Callable, Literal, Union

from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from hailan_sim.models._base import Frozen

Uniform = Callable[[], float]

# Outcomes as the engine records them (sim/metrics.OUTCOMES), minus "ok".
RetryableOutcome = Literal["error", "timeout", "rejected"]


# --------------------------------------------------------------------------- backoff


def _expo(base: float, cap: float, n: int) -> float:
    """AWS ``Backoff.expo``: ``min(cap, pow(2, n) * base)`` (same float operations)."""
    if n >= 1024:  # 2**1024 overflows a float; the cap has long been reached
        return cap
    return min(cap, pow(2, n) * base)


class ConstantBackoff(Frozen):
    """The same wait before every retry (Polly's default: 2 s constant, reference 1)."""

    kind: Literal["constant"] = "constant"
    delay_s: NonNegativeFloat = 0.0

    def delay(self, attempt: int, prev: float, u: Uniform) -> float:
        return self.delay_s


class _Expo(Frozen):
    base_s: PositiveFloat = 0.1
    cap_s: PositiveFloat = 10.0

    @model_validator(mode="after")
    def _cap_at_least_base(self):
        if self.cap_s < self.base_s:
            raise ValueError(f"cap_s ({self.cap_s}) must be >= base_s ({self.base_s})")
        return self


class FullJitterBackoff(_Expo):
    """AWS "Full Jitter": ``U(0, min(cap, base * 2**n))`` with ``n = attempt``.

    n follows the AWS simulator (aws-samples/aws-arch-backoff-simulator,
    src/backoff_simulator.py): ``OccClient.write_rsp`` does ``self.attempt += 1`` and then
    calls ``backoff(self.attempt)``, so the first retry uses n = 1, i.e. U(0, 2*base).
    tenacity's ``wait_random_exponential`` and backoff's ``expo`` + ``full_jitter`` use
    n = attempt - 1 (first retry U(0, multiplier)): the same window one retry earlier.
    """

    kind: Literal["exponential_full_jitter"] = "exponential_full_jitter"

    def delay(self, attempt: int, prev: float, u: Uniform) -> float:
        v = _expo(self.base_s, self.cap_s, attempt)
        return 0 + (v - 0) * u()  # random.uniform(0, v) = a + (b - a) * random()


class EqualJitterBackoff(_Expo):
    """AWS "Equal Jitter": ``v/2 + U(0, v/2)``, ``v = min(cap, base * 2**attempt)``."""

    kind: Literal["equal_jitter"] = "equal_jitter"

    def delay(self, attempt: int, prev: float, u: Uniform) -> float:
        v = _expo(self.base_s, self.cap_s, attempt)
        return v / 2 + (0 + (v / 2 - 0) * u())


class DecorrelatedJitterBackoff(_Expo):
    """AWS "Decorrelated Jitter": ``sleep = min(cap, U(base, 3 * sleep))``.

    The simulator's ``ExpoBackoffDecorr`` keeps ``sleep`` per client, starting at base;
    here ``prev`` is the previous delay and is ignored for ``attempt == 1`` (sleep = base).
    Note that n plays no part, and ``3 * prev`` may exceed cap (then capped).
    """

    kind: Literal["decorrelated"] = "decorrelated"

    def delay(self, attempt: int, prev: float, u: Uniform) -> float:
        sleep = self.base_s if attempt <= 1 else prev
        return min(self.cap_s, self.base_s + (sleep * 3 - self.base_s) * u())


BackoffConfig = Annotated[
    Union[ConstantBackoff, FullJitterBackoff, EqualJitterBackoff, DecorrelatedJitterBackoff],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- policy


class RetryPolicy(Frozen):
    """When a failed attempt is retried, and after how long.

    ``max_attempts`` counts the original call (gRPC A6 ``maxAttempts`` semantics; 1 = the
    spec: no retries). Only outcomes in ``retry_on`` are retried, and with
    ``idempotent_only`` only idempotent operations (the spec's FAQ 3.9 pairs retries
    with idempotency).

    ``pushback``: do not retry a failure the callee answered after its own retries had
    failed, after its retry budget refused a retry, after its breaker refused the call (a
    short circuit), or after a pushback from further down. Retries at several layers multiply
    (3 attempts at each of 3 layers is 27 calls to the bottom one); the Google SRE book
    (ch. 22, "Handling Overload") has a backend whose own retries failed answer "overloaded;
    don't retry", so only one layer retries, as gRPC's retry pushback (gRFC A6,
    ``grpc-retry-pushback-ms``) lets a server tell a client. The engine marks such answers
    whatever the callee's policy; only callers with ``pushback`` honour the mark.
    """

    max_attempts: int = Field(1, ge=1, le=100)
    backoff: BackoffConfig = Field(default_factory=ConstantBackoff)
    retry_on: list[RetryableOutcome] = Field(default_factory=lambda: ["error", "timeout"])
    idempotent_only: bool = True
    pushback: bool = Field(
        False, description="do not retry an answer whose callee already retried and failed (SRE book ch. 22)"
    )

    def should_retry(self, attempt: int, outcome: str, idempotent: bool) -> bool:
        """After attempt number ``attempt`` (1 = the original) ended with ``outcome``."""
        return (
            outcome in self.retry_on
            and attempt < self.max_attempts
            and (idempotent or not self.idempotent_only)
        )

    def delay(self, attempt: int, prev: float, u: Uniform) -> float:
        """The wait before retry number ``attempt`` (1 = first retry)."""
        return self.backoff.delay(attempt, prev, u)


# --------------------------------------------------------------------------- Finagle budget


def _i32(x: int) -> int:
    """Scala ``Int`` arithmetic wraps at 32 bits."""
    return (x + 2**31) % 2**32 - 2**31


def _ms(now: float) -> int:
    """Finagle reads milliseconds as a Long (``WindowedAdder.systemMs``)."""
    return math.floor(now * 1000)


class _WindowedAdder:
    """twitter/util ``WindowedAdder`` (util-core/.../util/WindowedAdder.scala), exactly.

    ``range`` split into ``slices``; ``N = slices - 1`` past slices in ``buf`` plus the
    current ``writer``. A slice rolls over on the first add/sum at least ``window`` after
    ``old`` (the time of the previous roll, not a window boundary), skipping (zeroing)
    ``min((now - old) / window - 1, N)`` slices when time jumped.
    """

    def __init__(self, range_ms: int, slices: int, now_ms: int) -> None:
        if slices <= 1:
            raise ValueError("slices must be > 1")
        self.window = range_ms // slices
        self.N = slices - 1
        self.writer = 0
        self.buf = [0] * self.N
        self.i = 0
        self.old = now_ms

    def _expired(self, now_ms: int) -> None:
        self.buf[self.i] = self.writer  # writer.sumThenReset()
        self.writer = 0
        self.i = (self.i + 1) % self.N
        nskip = min((now_ms - self.old) // self.window - 1, self.N)
        if nskip > 0:
            r = min(nskip, self.N - self.i)
            self.buf[self.i : self.i + r] = [0] * r
            self.buf[0 : nskip - r] = [0] * (nskip - r)
            self.i = (self.i + nskip) % self.N
        self.old = now_ms

    def add(self, x: int, now_ms: int) -> None:
        if now_ms - self.old >= self.window:
            self._expired(now_ms)
        self.writer += x

    def sum(self, now_ms: int) -> int:
        if now_ms - self.old >= self.window:
            self._expired(now_ms)
        return self.writer + sum(self.buf)


class FinagleRetryBudget:
    """Finagle ``RetryBudget.apply(ttl, minRetriesPerSec, percentCanRetry)``.

    FIN finagle-core/.../service/RetryBudget.scala with twitter/util
    ``TokenBucket.newLeakyBucket`` and ``WindowedAdder``:

    - deposit = 1000 tokens per request (0 if percentCanRetry == 0);
    - withdrawal = ``(1000 / percentCanRetry).toInt`` per retry (1 if percentCanRetry == 0):
      5000 at 20 %;
    - reserve = ``minRetriesPerSec * ttl.inSeconds * withdrawal`` tokens, always counted
      (500 000 = 100 retries by default);
    - the bucket is a windowed sum over ``ttl`` in 10 slices; ``tryGet(n)``: ok iff
      ``sum + reserve >= n``, then ``add(-n)``. Withdrawals are negative entries in the
      same window, so they expire after ~ttl just like deposits: a burst of retries drawn
      on deposits that expire first leaves the sum negative and the balance below the
      reserve until the withdrawals expire too.

    ``start`` is when the budget was created (the adder's first ``old``).
    """

    SCALE = 1000.0

    def __init__(
        self,
        ttl_s: float = 10.0,
        min_retries_per_s: int = 10,
        percent_can_retry: float = 0.2,
        start: float = 0.0,
    ) -> None:
        ttl_ms = round(ttl_s * 1000)  # a Duration is whole nanoseconds; we keep whole ms
        ttl_in_seconds = ttl_ms // 1000  # Duration.inSeconds truncates
        if not 1 <= ttl_in_seconds <= 60:
            raise ValueError(f"ttl must be [1 second, 60 seconds]: {ttl_s}")
        if min_retries_per_s < 0:
            raise ValueError(f"minRetriesPerSec must be non-negative: {min_retries_per_s}")
        if not 0.0 <= percent_can_retry <= self.SCALE:
            raise ValueError(f"percentCanRetry must be in [0, 1000]: {percent_can_retry}")
        self.empty = min_retries_per_s == 0 and percent_can_retry == 0.0  # RetryBudget.Empty
        self.deposit_amount = 0 if percent_can_retry == 0.0 else int(self.SCALE)
        self.withdrawal_amount = 1 if percent_can_retry == 0.0 else int(self.SCALE / percent_can_retry)
        self.reserve = _i32(min_retries_per_s * ttl_in_seconds * self.withdrawal_amount)
        self._w = _WindowedAdder(ttl_ms, 10, _ms(start))

    def deposit(self, now: float) -> None:
        """One request was issued (Finagle's RetryFilter deposits on every request)."""
        if not self.empty:
            self._w.add(self.deposit_amount, _ms(now))

    def count(self, now: float) -> int:
        """Tokens in the bucket: windowed sum + reserve."""
        return self._w.sum(_ms(now)) + self.reserve

    def try_withdraw(self, now: float) -> bool:
        """May one retry go out now? If so its tokens are taken."""
        if self.empty:
            return False
        ok = self.count(now) >= self.withdrawal_amount
        if ok:
            self._w.add(-self.withdrawal_amount, _ms(now))
        return ok

    def balance(self, now: float) -> int:
        """Retries that could go out now (``count / withdrawal``, Long division)."""
        if self.empty:
            return 0
        c = self.count(now)
        q = abs(c) // self.withdrawal_amount
        return q if c >= 0 else -q  # JVM division truncates toward zero


# --------------------------------------------------------------------------- Envoy budget


class EnvoyRetryBudget:
    """Envoy ``retry_budget`` (ENV source/common/upstream/resource_manager_impl.h).

    ``RetryBudgetImpl::canCreate`` is ``count() < max()`` with
    ``max() = std::max<uint64_t>(budget_percent / 100.0 * (rq_active + rq_pending),
    min_retry_concurrency)``: the double is truncated to an integer. ``count()`` is the
    retries in flight. A concurrency limit, not a rate: nothing is remembered.
    """

    def __init__(self, budget_percent: float = 20.0, min_retry_concurrency: int = 3) -> None:
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency

    def max_retries(self, active_requests: int) -> int:
        return max(int(self.budget_percent / 100.0 * active_requests), self.min_retry_concurrency)

    def allow(self, active_requests: int, active_retries: int) -> bool:
        """``active_requests``: active + pending upstream requests (retries included)."""
        return active_retries < self.max_retries(active_requests)


# --------------------------------------------------------------------------- gRPC throttle


class GrpcThrottle:
    """gRPC retry throttling (grpc/proposal A6, "Throttling Retry Attempts and Hedged RPCs").

    Kept in integer milli-tokens as grpc-core does (src/core/client_channel/retry_throttle.cc):
    start at ``max_tokens``; a failure subtracts 1000 (clamped at 0), a success adds
    ``token_ratio * 1000`` (clamped at max); retries are allowed while
    ``milli_tokens > max_milli_tokens / 2`` (integer division). A6 limits max_tokens to
    (0, 1000] and token_ratio to three decimals (further digits are dropped).
    A6: failures are attempts ending with a retryable status (or a pushback saying not to
    retry); every other outcome counts as a success. grpc-core shares one throttle per
    server name across the process's channels.
    """

    def __init__(self, max_tokens: int, token_ratio: float) -> None:
        if not 0 < max_tokens <= 1000:
            raise ValueError(f"max_tokens must be in (0, 1000]: {max_tokens}")
        milli_ratio = int(Decimal(repr(token_ratio)) * 1000)  # truncate to 3 decimals
        if milli_ratio <= 0:
            raise ValueError(f"token_ratio must be > 0 (at 3 decimals): {token_ratio}")
        self.max_milli = int(max_tokens) * 1000
        self.milli_ratio = milli_ratio
        self.milli_tokens = self.max_milli

    @property
    def tokens(self) -> float:
        return self.milli_tokens / 1000

    def on_failure(self) -> bool:
        """Record a failed attempt; returns whether retries are still allowed (RecordFailure)."""
        self.milli_tokens = max(0, self.milli_tokens - 1000)
        return self.retries_allowed()

    def on_success(self) -> None:
        self.milli_tokens = min(self.max_milli, self.milli_tokens + self.milli_ratio)

    def retries_allowed(self) -> bool:
        return self.milli_tokens > self.max_milli // 2


# --------------------------------------------------------------------------- budget configs


class NoBudget(Frozen):
    """No budget: every retry the policy allows goes out (the spec: no retries at all)."""

    kind: Literal["none"] = "none"


class FinagleBudgetConfig(Frozen):
    kind: Literal["finagle"] = "finagle"
    ttl_s: float = Field(10.0, ge=1.0, lt=61.0)
    min_retries_per_s: int = Field(10, ge=0)
    percent_can_retry: float = Field(0.2, ge=0.0, le=1000.0)

    def build(self, start: float = 0.0) -> FinagleRetryBudget:
        return FinagleRetryBudget(self.ttl_s, self.min_retries_per_s, self.percent_can_retry, start)


class EnvoyBudgetConfig(Frozen):
    kind: Literal["envoy"] = "envoy"
    budget_percent: float = Field(20.0, ge=0.0, le=100.0)
    min_retry_concurrency: int = Field(3, ge=0)

    def build(self, start: float = 0.0) -> EnvoyRetryBudget:
        return EnvoyRetryBudget(self.budget_percent, self.min_retry_concurrency)


class GrpcThrottleConfig(Frozen):
    kind: Literal["grpc_throttle"] = "grpc_throttle"
    max_tokens: int = Field(10, gt=0, le=1000)
    token_ratio: PositiveFloat = 0.1

    def build(self, start: float = 0.0) -> GrpcThrottle:
        return GrpcThrottle(self.max_tokens, self.token_ratio)


RetryBudgetConfig = Annotated[
    Union[NoBudget, FinagleBudgetConfig, EnvoyBudgetConfig, GrpcThrottleConfig],
    Field(discriminator="kind"),
]

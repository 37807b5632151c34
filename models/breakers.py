"""Circuit breakers and outlier detection as pure, deterministic state machines.

Three behaviours, each configured by a frozen pydantic model discriminated on ``kind``:

``spec``            :class:`SpecBreaker`, the spec's TypeScript ``CircuitBreaker``
                    (074-microservice-internal-calls.md section 3.5.1) line for line, quirks
                    included.
``sliding_window``  :class:`SlidingWindowBreaker`, resilience4j's ``CircuitBreakerStateMachine``
                    (count- or time-based sliding window, failure and slow-call rates).
``outlier``         :class:`OutlierDetector`, Envoy outlier detection (per-host ejection from
                    the load-balancing set, not a call gate).

The engine drives them with simulated time: every method takes ``now`` (float seconds). Nothing
here reads a clock, imports SimPy, or draws from a global random source; the only randomness
(Envoy's enforcement percentages and ejection jitter) comes from an RNG callable handed in.

Breaker interface (what the engine calls)::

    allow(now) -> bool                  ask before a call; False = rejected, the call is not made
    on_result(now, outcome, duration)   after an admitted call finishes
                                        (outcome in "ok", "error", "timeout", "rejected")
    state                               "closed" | "open" | "half_open"
    transitions                         [(now, from_state, to_state), ...] in order
    next_timer(now) -> float | None     when the engine should call tick() (None: no timer)
    tick(now)                           fire the timers due at or before now

A call the breaker itself refused (``allow`` returned False) is never reported to
``on_result``; ``"rejected"`` there means the *callee* refused an admitted call (overload,
bulkhead, connection refused).

Timers are also fired lazily: every method first fires the timers due at or before ``now``, each
at its own due time, so the result does not depend on whether the engine called ``tick`` on time
(it only changes when ``state`` is observed to change). When a timer and a call fall on the same
instant the timer fires first.

Sources cited in comments: **SPEC** = /work/shared/spec/074-microservice-internal-calls.md
(line numbers of that file), **R4J** = resilience4j (``CircuitBreakerStateMachine.java``,
``CircuitBreakerMetrics.java``, ``FixedSizeSlidingWindowMetrics.java``,
``SlidingTimeWindowMetrics.java``, ``SnapshotImpl.java``), **ENV** = Envoy
(``source/common/upstream/outlier_detection_impl.cc``/``.h``,
``docs/root/intro/arch_overview/upstream/outlier.rst``, ``load_balancing/panic_threshold.rst``),
**PB** = pybreaker 1.4.1. See docs/mechanisms/breakers.md for the full account.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated, Any, Callable, Literal, Optional, Protocol, Sequence, Union

import numpy as np
from pydantic import Field, TypeAdapter, field_validator, model_validator

from hailan_sim.models._base import Frozen

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "OUTCOMES",
    "Breaker",
    "BreakerConfig",
    "OutlierConfig",
    "OutlierDetector",
    "SlidingWindowBreaker",
    "SlidingWindowConfig",
    "SpecBreaker",
    "SpecBreakerConfig",
    "make_breaker",
]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

OUTCOMES = ("ok", "error", "timeout", "rejected")
FailureOutcome = Literal["error", "timeout", "rejected"]
ALL_FAILURES: tuple[FailureOutcome, ...] = ("error", "timeout", "rejected")

Rng = Callable[[], float]
"""A callable returning a uniform float in [0, 1) (for example ``np.random.Generator.random``)."""

_Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_Percent = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
_IntPercent = Annotated[int, Field(ge=0, le=100)]


def _unique(values: tuple[str, ...], field: str) -> tuple[str, ...]:
    if len(set(values)) != len(values):
        raise ValueError(f"{field} lists an outcome twice: {list(values)}")
    return values


_OUTCOME_SET = frozenset(OUTCOMES)


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {list(OUTCOMES)}")


class Breaker(Protocol):
    """What the engine relies on (SpecBreaker and SlidingWindowBreaker implement it)."""

    state: str
    transitions: list[tuple[float, str, str]]

    def allow(self, now: float) -> bool: ...

    def on_result(self, now: float, outcome: str, duration: float) -> None: ...

    def next_timer(self, now: float) -> Optional[float]: ...

    def tick(self, now: float) -> None: ...


class _StateMachine:
    """``state`` and the ``transitions`` log shared by the breakers."""

    def __init__(self) -> None:
        self.state: str = CLOSED
        self.transitions: list[tuple[float, str, str]] = []

    def _transition(self, now: float, to: str) -> None:
        self.transitions.append((now, self.state, to))
        self.state = to


# =========================================================================== spec breaker


class SpecBreakerConfig(Frozen):
    """The spec's ``CircuitBreakerConfig`` (SPEC 627-632), with ``timeout`` in seconds.

    The spec gives no values, so the counts and the timeout are required.
    """

    kind: Literal["spec"] = "spec"
    failure_threshold: int = Field(ge=1, description="failureThreshold: consecutive failures that open")
    success_threshold: int = Field(ge=1, description="successThreshold: half-open successes that close")
    timeout_s: _Seconds = Field(
        description="timeout (the spec's is in ms): time after the LAST failure before a half-open try"
    )
    half_open_max_calls: int = Field(
        ge=1, description="halfOpenMaxCalls: declared by the spec but never read (see enforce_half_open_limit)"
    )
    enforce_half_open_limit: bool = Field(
        False,
        description="false: the spec as written (no limit). true: admit at most half_open_max_calls "
        "calls per HALF_OPEN episode, counted at admission",
    )
    failure_on: tuple[FailureOutcome, ...] = Field(
        ALL_FAILURES,
        description="outcomes that are failures; any other outcome counts as a success. The spec "
        "catches every thrown error (SPEC 667), so its profile is all three",
    )

    @field_validator("failure_on")
    @classmethod
    def _unique_failure_on(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(v, "failure_on")


class SpecBreaker(_StateMachine):
    """The spec's TypeScript ``CircuitBreaker`` (SPEC 620-749), every quirk kept.

    ``execute(serviceName, fn)`` is split in two: :meth:`allow` is the part before
    ``await fn()`` (SPEC 655-661) and :meth:`on_result` is ``onSuccess``/``onFailure`` after it
    (SPEC 663-670). Field names follow the spec (``failure_count`` is ``failureCount`` and so
    on).

    Quirks, each of them in the TypeScript as written:

    1. **Consecutive count, reset by any success in any state** (SPEC 677
       ``this.failureCount = 0;`` runs before the HALF_OPEN check). A late success arriving while
       OPEN also zeroes the count.
    2. **Every failure stamps ``lastFailureTime``** (SPEC 694 ``this.lastFailureTime = new
       Date();``), late failures of calls admitted before the breaker opened included, and the
       OPEN timeout is measured from it (SPEC 739), so late failures **extend the open
       period**. If the count is still at the threshold the late failure also calls
       ``transitionToOpen()`` again (SPEC 696-697); that OPEN->OPEN re-entry is logged by the
       spec and recorded here as ``(now, "open", "open")``.
    3. **OPEN->HALF_OPEN only inside execute()** (SPEC 655-657): nothing happens when the timeout
       passes; the first :meth:`allow` at ``now >= lastFailureTime + timeout`` (SPEC 740 uses
       ``>=``) moves to HALF_OPEN and admits that call. There is no timer (``next_timer`` is
       always None).
    4. **transitionToHalfOpen does not reset failureCount** (SPEC 726-731 resets only
       ``successCount`` and ``halfOpenCallCount``); neither does any other transition.
    5. **Any failure in HALF_OPEN re-opens**, by one of two branches: the count is usually still
       ``>= failureThreshold`` (SPEC 696), or, after a half-open success zeroed it, the explicit
       ``else if (this.state === CircuitState.HALF_OPEN)`` (SPEC 698-699).
    6. **successCount and halfOpenCallCount only count successes in HALF_OPEN** (SPEC 679-681);
       the close decision is ``successCount >= successThreshold`` (SPEC 683). Late successes of
       calls admitted while CLOSED count too, so they can close a half-open breaker.
    7. **halfOpenMaxCalls is declared (SPEC 631) but never read**: in HALF_OPEN every call is
       admitted. With ``enforce_half_open_limit`` at most ``half_open_max_calls`` calls are
       admitted per HALF_OPEN episode, counted at admission (``half_open_admitted``); if that is
       below ``success_threshold`` the breaker can never close (HALF_OPEN has no exit but a
       result).
    8. **Every thrown error is a failure** (SPEC 667 ``catch (error)``); an outcome not in
       ``failure_on`` is handled as a success, which is the only way to exclude one.
    9. **One breaker for every downstream service**: ``HttpClient`` holds a single
       ``CircuitBreaker`` (SPEC 339) and passes ``serviceName`` only for the error message
       (SPEC 659). This class has no notion of service; the engine decides what shares one.

    Not modelled: ``Date.now()`` millisecond truncation and wall-clock jumps (time here is the
    simulator's float seconds; the boundary is evaluated as ``now >= last_failure_time +
    timeout_s``, the same form pybreaker and resilience4j use).
    """

    def __init__(self, config: SpecBreakerConfig) -> None:
        super().__init__()
        self.config = config
        self.failure_count = 0  # SPEC 642
        self.success_count = 0  # SPEC 643
        self.last_failure_time: Optional[float] = None  # SPEC 644
        self.half_open_call_count = 0  # SPEC 645 (counted on success only, never read)
        self.half_open_admitted = 0  # ours: admissions this HALF_OPEN episode (enforce_half_open_limit)

    @property
    def retry_at(self) -> Optional[float]:
        """While OPEN, the first time :meth:`allow` admits a call (SPEC 739-740); else None."""
        if self.state != OPEN or self.last_failure_time is None:
            return None
        return self.last_failure_time + self.config.timeout_s

    def allow(self, now: float) -> bool:
        if self.state == OPEN:  # SPEC 655
            if self._should_attempt_reset(now):  # SPEC 656
                self._to_half_open(now)  # SPEC 657
            else:
                return False  # SPEC 659: throw new Error(`Circuit breaker is OPEN ...`)
        if self.config.enforce_half_open_limit and self.state == HALF_OPEN:
            # Not in the spec (halfOpenMaxCalls is never read): the limit it presumably meant.
            if self.half_open_admitted >= self.config.half_open_max_calls:
                return False
            self.half_open_admitted += 1
        return True

    def on_result(self, now: float, outcome: str, duration: float) -> None:
        _check_outcome(outcome)
        # SPEC 664-669: `await fn()` resolved -> onSuccess(); threw -> onFailure(). The duration
        # plays no part in the spec.
        if outcome in self.config.failure_on:
            self._on_failure(now)
        else:
            self._on_success(now)

    def next_timer(self, now: float) -> Optional[float]:
        return None  # SPEC 655-657: OPEN->HALF_OPEN happens only inside execute()

    def tick(self, now: float) -> None:
        return None

    # ----------------------------------------------------------------- the spec's methods

    def _on_success(self, now: float) -> None:
        self.failure_count = 0  # SPEC 677, in every state
        if self.state == HALF_OPEN:  # SPEC 679
            self.success_count += 1  # SPEC 680
            self.half_open_call_count += 1  # SPEC 681
            if self.success_count >= self.config.success_threshold:  # SPEC 683
                self._to_closed(now)  # SPEC 684

    def _on_failure(self, now: float) -> None:
        self.failure_count += 1  # SPEC 693
        self.last_failure_time = now  # SPEC 694, for late failures too
        if self.failure_count >= self.config.failure_threshold:  # SPEC 696
            self._to_open(now)  # SPEC 697, also from OPEN (re-entry)
        elif self.state == HALF_OPEN:  # SPEC 698
            self._to_open(now)  # SPEC 699

    def _to_closed(self, now: float) -> None:  # SPEC 706-711
        self._transition(now, CLOSED)
        self.success_count = 0
        self.half_open_call_count = 0
        self.half_open_admitted = 0

    def _to_open(self, now: float) -> None:  # SPEC 716-721
        self._transition(now, OPEN)
        self.success_count = 0
        self.half_open_call_count = 0
        self.half_open_admitted = 0

    def _to_half_open(self, now: float) -> None:  # SPEC 726-731: failureCount NOT reset
        self._transition(now, HALF_OPEN)
        self.success_count = 0
        self.half_open_call_count = 0
        self.half_open_admitted = 0

    def _should_attempt_reset(self, now: float) -> bool:  # SPEC 736-741
        if self.last_failure_time is None:  # SPEC 737
            return False
        # SPEC 739-740: elapsed >= timeout, written as an addition so the boundary is exactly
        # retry_at (PB and R4J compare against opened_at + timeout in the same way).
        return now >= self.last_failure_time + self.config.timeout_s


# =========================================================================== resilience4j


class SlidingWindowConfig(Frozen):
    """resilience4j ``CircuitBreakerConfig``; every default is R4J's (``CircuitBreakerConfig.java``).

    ``wait_in_open_s`` is a constant (R4J's default ``IntervalFunction``); R4J's
    ``ignoreExceptions`` is ``ignore_on`` and ``recordExceptions`` is ``failure_on``.
    """

    kind: Literal["sliding_window"] = "sliding_window"
    window_type: Literal["count_based", "time_based"] = "count_based"
    window_size: int = Field(100, ge=1, description="calls (count_based) or seconds (time_based)")
    minimum_calls: int = Field(100, ge=1, description="minimumNumberOfCalls")
    failure_rate_threshold: _Percent = 50.0
    slow_call_rate_threshold: _Percent = 100.0
    slow_call_duration_s: _PositiveSeconds = 60.0
    permitted_calls_in_half_open: int = Field(10, ge=1)
    wait_in_open_s: _PositiveSeconds = 60.0
    automatic_transition: bool = Field(
        False,
        description="false: OPEN->HALF_OPEN on the first allow() after the wait; true: at the "
        "wait's end, via next_timer()/tick()",
    )
    max_wait_in_half_open_s: _Seconds = Field(
        0.0, description="0: stay HALF_OPEN until decided; > 0: back to OPEN after this long"
    )
    failure_on: tuple[FailureOutcome, ...] = Field(
        ALL_FAILURES, description="recorded as failures (R4J records every exception by default)"
    )
    ignore_on: tuple[FailureOutcome, ...] = Field(
        (),
        description="neither success nor failure: not recorded, half-open permit released. "
        "Wins over failure_on (R4J tests the ignore predicate first)",
    )

    @field_validator("failure_on", "ignore_on")
    @classmethod
    def _unique_outcomes(cls, v: tuple[str, ...], info: Any) -> tuple[str, ...]:
        return _unique(v, info.field_name)


# CircuitBreakerMetrics.Result
_BELOW_MINIMUM = "below_minimum_calls"
_BELOW = "below_thresholds"
_ABOVE = "above_thresholds"


_RATES: dict = {}  # (count, total, threshold) -> verdict; see _rate_at_least
_RATES_MAX = 65536


def _rate_at_least(count: int, total: int, threshold: float) -> bool:
    """R4J CircuitBreakerMetrics.checkIfThresholdsExceeded: ``count * 100.0f / total >=
    threshold``, computed in float32 as R4J's SnapshotImpl does (getFailureRate:
    ``numberOfFailedCalls * 100.0f / totalNumberOfCalls``).

    NOTE: for speed; a breaker asks this at every completed call, and numpy's float32
    scalar arithmetic costs a few microseconds. The verdict depends on the three numbers
    only, which repeat, so it is memoised (the same float32 arithmetic computes each one;
    the table is emptied when it grows large, which changes no verdict).
    """
    key = (count, total, threshold)
    v = _RATES.get(key)
    if v is None:
        if len(_RATES) >= _RATES_MAX:
            _RATES.clear()
        v = _RATES[key] = bool(np.float32(count) * np.float32(100.0) / np.float32(total) >= np.float32(threshold))
    return v


class _CountWindow:
    """R4J FixedSizeSlidingWindowMetrics: the last ``size`` calls (subtract on evict)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._calls: deque[tuple[bool, bool]] = deque()
        self.calls = self.failed = self.slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        self._calls.append((failed, slow))
        self.calls += 1
        self.failed += failed
        self.slow += slow
        if len(self._calls) > self.size:
            old_failed, old_slow = self._calls.popleft()
            self.calls -= 1
            self.failed -= old_failed
            self.slow -= old_slow


class _TimeWindow:
    """R4J SlidingTimeWindowMetrics: one bucket per epoch second, the last ``size`` seconds.

    Simulated time 0 is taken to be an epoch-second boundary, so the bucket of a call is
    ``floor(now)``. As in R4J the window only moves when a call is recorded (or the snapshot
    read), so nothing decays between calls.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._buckets: dict[int, list[int]] = {}  # epoch second -> [calls, failed, slow], ascending
        self.calls = self.failed = self.slow = 0
        # NOTE: for speed: the epoch second the window was last moved to. Moving again within
        # that second drops nothing (every bucket kept then, and every bucket added since, is
        # at least that second's oldest kept), so it is skipped.
        self._moved: Optional[int] = None

    def move(self, now: float) -> None:
        # SlidingTimeWindowMetrics.moveWindowToCurrentEpochSecond: keep (current - size, current].
        current = math.floor(now)
        if current == self._moved:
            return
        self._moved = current
        oldest_kept = current - self.size + 1
        buckets = self._buckets
        while buckets:
            second = next(iter(buckets))  # dict keys in insertion (= ascending) order
            if second >= oldest_kept:
                break
            calls, failed, slow = buckets.pop(second)
            self.calls -= calls
            self.failed -= failed
            self.slow -= slow

    def record(self, now: float, failed: bool, slow: bool) -> None:
        second = math.floor(now)
        if second != self._moved:
            self.move(now)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = [0, 0, 0]
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.calls += 1
        self.failed += failed
        self.slow += slow


class SlidingWindowBreaker(_StateMachine):
    """resilience4j's ``CircuitBreakerStateMachine`` (CLOSED, OPEN, HALF_OPEN; no DISABLED,
    FORCED_OPEN or METRICS_ONLY).

    * Decides only when a call completes (R4J ClosedState/HalfOpenState.onError/onSuccess ->
      checkIfThresholdsExceeded); :meth:`allow` never trips the breaker.
    * CLOSED: COUNT_BASED window of ``window_size`` calls with ``min(minimum_calls,
      window_size)`` as the minimum; TIME_BASED window of ``window_size`` epoch-second buckets
      with ``minimum_calls`` uncapped (CircuitBreakerMetrics constructor). Trips when
      ``buffered >= minimum`` and failure rate or slow-call rate ``>=`` its threshold; a call
      is slow when ``duration > slow_call_duration_s`` (strict). Rates are computed in float32
      as R4J does (SnapshotImpl.getFailureRate: ``failed * 100.0f / total``).
    * OPEN: ``retry_at = now + wait_in_open_s``. Lazy transition: the first :meth:`allow` with
      ``now > retry_at`` (``clock.instant().isAfter(retryAfterWaitDuration)``, strict) moves to
      HALF_OPEN and asks for a permit. With ``automatic_transition`` the move happens at
      ``retry_at`` itself (R4J schedules it with the wait as delay); :meth:`next_timer` tells
      the engine when.
    * HALF_OPEN: a fresh COUNT_BASED window of ``permitted_calls_in_half_open`` calls and as
      many permits, taken at :meth:`allow` (HalfOpenState.tryAcquirePermission) and not given
      back when calls finish. Decides once ``min(minimum_calls, permitted)`` results are in:
      above a threshold -> OPEN, below -> CLOSED (fresh window). With
      ``max_wait_in_half_open_s > 0`` an undecided HALF_OPEN goes back to OPEN after that long.
    * Late results. R4J hands a result to the state current when it *finishes*
      (``stateReference.get().onError(...)``); it does not know which state admitted the call.
      In OPEN the result is recorded in the window the OPEN state inherited and causes no
      transition (OpenState.onError/onSuccess: "the onError event should still be recorded,
      even if it happened after the state transition") -- this is the reference's "calls that
      finish after the trip are recorded but cause no transition". In HALF_OPEN and CLOSED a
      late result is indistinguishable from the state's own calls, so R4J counts it in that
      state's window and it can decide (a call admitted while CLOSED that fails during
      HALF_OPEN can re-open it). We follow R4J's code here; see docs/mechanisms/breakers.md.
    * ``ignore_on`` outcomes are not recorded and give the half-open permit back
      (CircuitBreakerStateMachine.handleThrowable -> releasePermission).
    """

    def __init__(self, config: SlidingWindowConfig) -> None:
        super().__init__()
        self.config = config
        self.window: Union[_CountWindow, _TimeWindow] = self._closed_window()
        self.min_calls = self._closed_min_calls()
        self.retry_at: Optional[float] = None  # OPEN: retryAfterWaitDuration
        self.permits = 0  # HALF_OPEN: permittedNumberOfCalls left
        self.half_open_deadline: Optional[float] = None  # HALF_OPEN with max wait

    # ----------------------------------------------------------------- interface

    def allow(self, now: float) -> bool:
        if self.state == CLOSED:
            return True  # ClosedState.tryAcquirePermission (CLOSED has no timer to fire)
        self._fire_timers(now)  # timers only move OPEN <-> HALF_OPEN
        if self.state == OPEN:
            assert self.retry_at is not None
            if now > self.retry_at:  # R4J OpenState: clock.instant().isAfter(retryAfterWaitDuration)
                self._to_half_open(now)
            else:
                return False
        # HalfOpenState.tryAcquirePermission: getAndUpdate(current == 0 ? 0 : current - 1) > 0
        if self.permits > 0:
            self.permits -= 1
            return True
        return False

    def on_result(self, now: float, outcome: str, duration: float) -> None:
        if outcome not in _OUTCOME_SET:  # NOTE: for speed, no call for a known outcome
            _check_outcome(outcome)
        if self.state != CLOSED:  # CLOSED has no timer to fire
            self._fire_timers(now)
        if outcome in self.config.ignore_on:
            # R4J handleThrowable: the ignore predicate is tested first; an ignored exception
            # -> releasePermission(), nothing recorded.
            if self.state == HALF_OPEN:
                self.permits += 1  # HalfOpenState.releasePermission: incrementAndGet, uncapped
            return
        failed = outcome in self.config.failure_on
        slow = duration > self.config.slow_call_duration_s  # R4J CircuitBreakerMetrics: toNanos(d) > threshold
        self.window.record(now, failed, slow)
        if self.state == OPEN:
            return  # R4J OpenState.onError/onSuccess: recorded, no transition
        result = self._check(self.window, self.min_calls)
        if self.state == CLOSED:
            if result == _ABOVE:  # ClosedState.checkIfThresholdsExceeded
                self._to_open(now)
        elif result == _ABOVE:  # HalfOpenState.checkIfThresholdsExceeded
            self._to_open(now)
        elif result == _BELOW:
            self._to_closed(now)

    def next_timer(self, now: float) -> Optional[float]:
        """The next scheduled transition (may be <= now if overdue), or None."""
        if self.state == OPEN and self.config.automatic_transition:
            return self.retry_at
        if self.state == HALF_OPEN:
            return self.half_open_deadline
        return None

    def tick(self, now: float) -> None:
        self._fire_timers(now)

    def snapshot(self) -> dict[str, int]:
        """Calls, failures and slow calls in the current state's window (R4J getMetrics()),
        as of the last recorded call (reading does not move a time window)."""
        return {"calls": self.window.calls, "failed": self.window.failed, "slow": self.window.slow}

    # ----------------------------------------------------------------- internals

    def _closed_window(self) -> Union[_CountWindow, _TimeWindow]:
        if self.config.window_type == "count_based":
            return _CountWindow(self.config.window_size)
        return _TimeWindow(self.config.window_size)

    def _closed_min_calls(self) -> int:
        # R4J CircuitBreakerMetrics: COUNT_BASED -> min(minimumNumberOfCalls, slidingWindowSize);
        # TIME_BASED -> minimumNumberOfCalls, not capped.
        if self.config.window_type == "count_based":
            return min(self.config.minimum_calls, self.config.window_size)
        return self.config.minimum_calls

    def _check(self, window: Union[_CountWindow, _TimeWindow], min_calls: int) -> str:
        # R4J CircuitBreakerMetrics.checkIfThresholdsExceeded
        total = window.calls
        if total == 0 or total < min_calls:
            return _BELOW_MINIMUM
        if _rate_at_least(window.failed, total, self.config.failure_rate_threshold):
            return _ABOVE
        if _rate_at_least(window.slow, total, self.config.slow_call_rate_threshold):
            return _ABOVE
        return _BELOW

    def _fire_timers(self, now: float) -> None:
        """Fire every scheduled transition due at or before ``now``, each at its due time."""
        while True:
            if self.state == OPEN and self.config.automatic_transition:
                assert self.retry_at is not None
                if self.retry_at > now:
                    return
                # R4J OpenState: schedule(this::toHalfOpenState, waitDurationInMillis)
                self._to_half_open(self.retry_at)
            elif self.state == HALF_OPEN and self.half_open_deadline is not None:
                if self.half_open_deadline > now:
                    return
                # R4J HalfOpenState: schedule(this::toOpenState, maxWaitDurationInHalfOpenState)
                self._to_open(self.half_open_deadline)
            else:
                return

    def _to_open(self, now: float) -> None:
        # R4J transitionToOpenState: new OpenState(attempts + 1, currentState.getMetrics()) --
        # the OPEN state keeps recording into the window of the state that tripped.
        self._transition(now, OPEN)
        self.retry_at = now + self.config.wait_in_open_s
        self.permits = 0
        self.half_open_deadline = None

    def _to_half_open(self, now: float) -> None:
        # R4J HalfOpenState(): CircuitBreakerMetrics.forHalfOpen(permitted) is COUNT_BASED with
        # minimumNumberOfCalls capped at permitted.
        self._transition(now, HALF_OPEN)
        permitted = self.config.permitted_calls_in_half_open
        self.window = _CountWindow(permitted)
        self.min_calls = min(self.config.minimum_calls, permitted)
        self.permits = permitted
        self.retry_at = None
        wait = self.config.max_wait_in_half_open_s
        self.half_open_deadline = now + wait if wait > 0 else None  # R4J: only if >= 1 ms

    def _to_closed(self, now: float) -> None:
        self._transition(now, CLOSED)  # R4J transitionToClosedState: new ClosedState() (fresh metrics)
        self.window = self._closed_window()
        self.min_calls = self._closed_min_calls()
        self.permits = 0
        self.half_open_deadline = None


# =========================================================================== Envoy outlier


class OutlierConfig(Frozen):
    """Envoy ``OutlierDetection`` (outlier_detection.proto); defaults are Envoy's
    (DetectorConfig DEFAULT_* in outlier_detection_impl.h) except ``always_eject_one_host``.

    Percentages are integers as in Envoy. ``consecutive_5xx = 0`` never fires (Envoy compares
    ``++count == threshold``). Envoy's default ``max_ejection_time`` is ``max(300 s,
    base_ejection_time)``; here it is 300 s and must not be below ``base_ejection_s`` (Envoy
    rejects that too), so set it when the base exceeds 300 s.
    """

    kind: Literal["outlier"] = "outlier"
    consecutive_5xx: int = Field(5, ge=0)
    enforcing_consecutive_5xx: _IntPercent = 100
    interval_s: _PositiveSeconds = 10.0
    base_ejection_s: _PositiveSeconds = 30.0
    max_ejection_s: _PositiveSeconds = 300.0
    max_ejection_jitter_s: _Seconds = Field(0.0, description="uniform jitter added to each ejection")
    max_ejection_percent: _IntPercent = 10
    always_eject_one_host: bool = Field(
        True,
        description="eject one host even when that exceeds max_ejection_percent. Envoy >= 1.31 "
        "defaults to false (fewer than 10 hosts at 10 %: nothing is ever ejected); true keeps "
        "the reference's 'one host is always ejectable'",
    )
    success_rate_minimum_hosts: int = Field(5, ge=0)
    success_rate_request_volume: int = Field(100, ge=1)
    success_rate_stdev_factor: float = Field(1.9, ge=0, allow_inf_nan=False)
    enforcing_success_rate: _IntPercent = 100
    failure_percentage_threshold: _IntPercent = 85
    failure_percentage_minimum_hosts: int = Field(5, ge=0)
    failure_percentage_request_volume: int = Field(50, ge=1)
    enforcing_failure_percentage: _IntPercent = 0
    panic_threshold_percent: float = Field(
        50.0, ge=0, le=100, allow_inf_nan=False, description="healthy_panic_threshold; 0 disables panic"
    )
    failure_on: tuple[FailureOutcome, ...] = Field(
        ALL_FAILURES,
        description="outcomes counted as 5xx: error=500, timeout=504 and rejected=503 (local "
        "timeouts and resets count as 5xx when errors are not split)",
    )

    @field_validator("failure_on")
    @classmethod
    def _unique_failure_on(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(v, "failure_on")

    @model_validator(mode="after")
    def _max_not_below_base(self) -> OutlierConfig:
        # ENV DetectorImpl::create: "max_ejection_time cannot be smaller than base_ejection_time"
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError(
                f"max_ejection_s ({self.max_ejection_s}) cannot be smaller than "
                f"base_ejection_s ({self.base_ejection_s})"
            )
        return self


class _HostMonitor:
    """ENV DetectorHostMonitorImpl (the parts that decide ejection)."""

    __slots__ = (
        "consecutive_5xx",
        "ejected",
        "last_ejection",
        "last_unejection",
        "num_ejections",
        "backoff",
        "jitter",
        "current",
        "backup",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.ejected = False
        self.last_ejection: Optional[float] = None
        self.last_unejection: Optional[float] = None
        self.num_ejections = 0
        self.backoff = 0  # eject_time_backoff_{} starts at 0
        self.jitter = 0.0
        self.current = [0, 0]  # success-rate bucket being written: [successes, total]
        self.backup = [0, 0]  # the last complete interval's bucket


class OutlierDetector:
    """Envoy outlier detection for one cluster (ENV outlier_detection_impl.cc).

    * **Consecutive 5xx, inline**: each result in ``failure_on`` increments the host's count
      and any other outcome zeroes it; the ejection is attempted when the count *equals*
      ``consecutive_5xx`` (``++consecutive_5xx_ == threshold``). Envoy posts it to the main
      thread; here it happens at once. If the host is already ejected nothing happens and the
      count is kept (it will not fire again until a success or the un-ejection resets it);
      otherwise the count is reset after the attempt, ejected or not
      (onConsecutiveErrorWorker).
    * **Cap**: a host is ejected only if ``100 * (ejected + 1) / hosts <= max_ejection_percent``,
      or if none is ejected and ``always_eject_one_host`` (DetectorImpl::ejectHost); then only
      with probability ``enforcing_*`` percent.
    * **Ejection time** ``min(base * backoff, max) + jitter``, where ``backoff`` is incremented
      at each ejection while ``backoff * base < max + base`` (so it stops at ``max/base + 1``).
      The host is un-ejected at the first interval sweep at which that much time has passed
      (checkHostForUneject, ``<=``), not at the exact expiry.
    * **Interval sweep** every ``interval_s`` from ``start`` (onIntervalTimer), in this order:
      un-eject due hosts and rotate their success-rate buckets; success-rate ejection (hosts
      with ``>= success_rate_request_volume`` requests in the last interval, at least
      ``success_rate_minimum_hosts`` of them; eject below ``mean - stdev_factor * stdev``,
      population stdev); failure-percentage ejection (``100 - success_rate >=
      failure_percentage_threshold``; not enforced by default); then decrement ``backoff`` of
      every non-ejected host whose last un-ejection is at least one interval old.
    * **Panic** (load_balancing/panic_threshold.rst): :meth:`eligible` returns every host when
      the healthy percentage is below ``panic_threshold_percent`` (strict), ejected ones
      included.

    Envoy iterates hosts in hash-map order; we use sorted host names, which matters only when
    the cap stops some of several hosts ejected in the same sweep. Not modelled: consecutive
    gateway failure (enforcing 0 by default, so it never ejects), split local-origin errors,
    active health checks, per-priority host sets.

    Hosts are the cluster's members: pass them at construction or with :meth:`set_hosts`; a
    host first seen in :meth:`on_result` is added. ``events`` logs ``(now, "eject"|"uneject",
    host)``.
    """

    def __init__(
        self,
        config: OutlierConfig,
        hosts: Sequence[str] = (),
        *,
        start: float = 0.0,
        rng: Optional[Rng] = None,
    ) -> None:
        needs_rng = any(
            0 < pct < 100
            for pct in (
                config.enforcing_consecutive_5xx,
                config.enforcing_success_rate,
                config.enforcing_failure_percentage,
            )
        ) or config.max_ejection_jitter_s > 0
        if needs_rng and rng is None:
            raise ValueError("an enforcing percentage strictly between 0 and 100, or jitter, needs rng")
        self.config = config
        self.rng = rng
        self.start = start
        self._sweeps = 0  # sweeps done; the next is at start + (sweeps + 1) * interval
        # NOTE: for speed (every result and every pick asks): that next sweep's time, computed
        # by the same expression whenever _sweeps changes, and how many hosts are ejected.
        self._due = start + config.interval_s
        self._n_ejected = 0
        self._hosts: dict[str, _HostMonitor] = {}
        self.events: list[tuple[float, str, str]] = []
        self.overflows = 0  # ENV stats ejections_overflow
        for host in hosts:
            self._hosts.setdefault(host, _HostMonitor())

    # ----------------------------------------------------------------- interface

    def set_hosts(self, now: float, hosts: Sequence[str]) -> None:
        """Replace the cluster's members (ENV addMemberUpdateCb): new hosts get a fresh monitor,
        removed hosts are forgotten (and stop counting as ejected)."""
        self._fire_timers(now)
        wanted = dict.fromkeys(hosts)
        for host in list(self._hosts):
            if host not in wanted:
                if self._hosts.pop(host).ejected:
                    self._n_ejected -= 1
        for host in wanted:
            self._hosts.setdefault(host, _HostMonitor())

    def on_result(self, now: float, host: str, outcome: str) -> None:
        if outcome not in _OUTCOME_SET:  # NOTE: for speed, no call for a known outcome
            _check_outcome(outcome)
        if now >= self._due:
            self._fire_timers(now)
        monitor = self._hosts.get(host)
        if monitor is None:
            monitor = self._hosts[host] = _HostMonitor()
        monitor.current[1] += 1  # incTotalReqCounter
        if outcome in self.config.failure_on:  # ENV putHttpResponseCode: is5xx
            monitor.consecutive_5xx += 1
            if monitor.consecutive_5xx == self.config.consecutive_5xx:
                self._on_consecutive_5xx(now, host, monitor)
        else:
            monitor.current[0] += 1  # incSuccessReqCounter
            monitor.consecutive_5xx = 0

    def ejected(self, now: float) -> list[str]:
        """The hosts ejected at ``now``, sorted."""
        self._fire_timers(now)
        return sorted(h for h, m in self._hosts.items() if m.ejected)

    def is_ejected(self, now: float, host: str) -> bool:
        self._fire_timers(now)
        monitor = self._hosts.get(host)
        return monitor is not None and monitor.ejected

    def eligible(self, now: float, hosts: Sequence[str]) -> list[str]:
        """The hosts a load balancer may pick from, in the order given: the non-ejected ones,
        or all of them when fewer than ``panic_threshold_percent`` are healthy (panic)."""
        if now >= self._due:
            self._fire_timers(now)
        hosts = list(hosts)
        if not self._n_ejected:
            # Nothing ejected: every host is healthy (100% when there are any, so no panic;
            # none: 0% healthy, and the empty list either way).
            return hosts
        healthy = [h for h in hosts if not (h in self._hosts and self._hosts[h].ejected)]
        # ENV LoadBalancerBase::isHostSetInPanic: healthy_percent < panic threshold (strict);
        # no hosts counts as 0 % healthy.
        healthy_percent = 100.0 * len(healthy) / len(hosts) if hosts else 0.0
        if healthy_percent < self.config.panic_threshold_percent:
            return hosts
        return healthy

    def any_ejected(self, now: float) -> bool:
        """Whether some host is ejected at ``now`` (when not, :meth:`eligible` returns every
        host given, in the order given)."""
        if now >= self._due:
            self._fire_timers(now)
        return self._n_ejected > 0

    def next_timer(self, now: float) -> float:
        """Time of the next interval sweep (may be <= now if overdue)."""
        return self._due

    def tick(self, now: float) -> None:
        self._fire_timers(now)

    def backoff(self, host: str) -> int:
        """The host's ejection-time multiplier (ENV ejectTimeBackoff)."""
        return self._hosts[host].backoff

    def num_ejections(self, host: str) -> int:
        return self._hosts[host].num_ejections

    def ejection_s(self, host: str) -> float:
        """How long the host's current (or last) ejection lasts at least: ``min(base *
        backoff, max) + jitter`` (it ends at the first sweep after that, checkHostForUneject)."""
        m = self._hosts[host]
        return min(self.config.base_ejection_s * m.backoff, self.config.max_ejection_s) + m.jitter

    def consecutive_5xx(self, host: str) -> int:
        """The host's current run of 5xx results."""
        return self._hosts[host].consecutive_5xx

    # ----------------------------------------------------------------- internals

    def _fire_timers(self, now: float) -> None:
        while True:
            due = self._due
            if due > now:
                return
            self._sweeps += 1
            self._due = self.start + (self._sweeps + 1) * self.config.interval_s
            self._sweep(due)

    def _enforced(self, percent: int) -> bool:
        # ENV runtime featureEnabled(key, percent): draws only when the outcome is uncertain.
        if percent >= 100:
            return True
        if percent <= 0:
            return False
        assert self.rng is not None
        return self.rng() * 100.0 < percent

    def _on_consecutive_5xx(self, now: float, host: str, monitor: _HostMonitor) -> None:
        # ENV onConsecutiveErrorWorker
        if monitor.ejected:
            return  # already ejected: no reset of the count
        self._eject(now, host, monitor, self.config.enforcing_consecutive_5xx)
        monitor.consecutive_5xx = 0  # resetConsecutive5xx, ejected or not

    def _eject(self, now: float, host: str, monitor: _HostMonitor, enforcing: int) -> None:
        # ENV DetectorImpl::ejectHost
        active = sum(1 for m in self._hosts.values() if m.ejected)
        should_eject = 100.0 * (active + 1) / len(self._hosts) <= self.config.max_ejection_percent
        if self.config.always_eject_one_host:
            should_eject = active == 0 or should_eject
        if not should_eject:
            self.overflows += 1
            return
        if not self._enforced(enforcing):
            return
        monitor.ejected = True  # DetectorHostMonitorImpl::eject
        self._n_ejected += 1
        monitor.num_ejections += 1
        monitor.last_ejection = now
        if self.config.max_ejection_jitter_s > 0:
            assert self.rng is not None
            monitor.jitter = self.rng() * self.config.max_ejection_jitter_s
        else:
            monitor.jitter = 0.0
        base, cap = self.config.base_ejection_s, self.config.max_ejection_s
        if monitor.backoff * base < cap + base:
            monitor.backoff += 1
        self.events.append((now, "eject", host))

    def _uneject(self, now: float, host: str, monitor: _HostMonitor) -> None:
        # ENV DetectorImpl::unejectHost: counters reset, last_unejection_time = now
        monitor.ejected = False
        self._n_ejected -= 1
        monitor.consecutive_5xx = 0
        monitor.last_unejection = now
        self.events.append((now, "uneject", host))

    def _sweep(self, now: float) -> None:
        # ENV DetectorImpl::onIntervalTimer
        cfg = self.config
        order = sorted(self._hosts)
        for host in order:
            m = self._hosts[host]
            if m.ejected:  # checkHostForUneject
                assert m.last_ejection is not None
                duration = min(cfg.base_ejection_s * m.backoff, cfg.max_ejection_s) + m.jitter
                if duration <= now - m.last_ejection:
                    self._uneject(now, host, m)
            # updateCurrentSuccessRateBucket: the finished interval becomes the backup bucket
            m.backup = m.current
            m.current = [0, 0]
        self._success_rate_ejections(now, order)
        for host in order:  # decrement the backoff of hosts healthy for an interval
            m = self._hosts[host]
            if (
                not m.ejected
                and m.last_unejection is not None
                and now - m.last_unejection >= cfg.interval_s
                and m.backoff != 0
            ):
                m.backoff -= 1

    def _success_rate_ejections(self, now: float, order: list[str]) -> None:
        # ENV DetectorImpl::processSuccessRateEjections (external origin; errors not split)
        cfg = self.config
        n = len(self._hosts)
        if n < cfg.success_rate_minimum_hosts and n < cfg.failure_percentage_minimum_hosts:
            return
        valid_sr: list[tuple[str, float]] = []
        valid_fp: list[tuple[str, float]] = []
        for host in order:
            m = self._hosts[host]
            if m.ejected or m.backup[1] == 0:
                continue
            rate = m.backup[0] * 100.0 / m.backup[1]
            if m.backup[1] >= cfg.success_rate_request_volume:
                valid_sr.append((host, rate))
            if m.backup[1] >= cfg.failure_percentage_request_volume:
                valid_fp.append((host, rate))
        if valid_sr and len(valid_sr) >= cfg.success_rate_minimum_hosts:
            mean = sum(r for _, r in valid_sr) / len(valid_sr)
            variance = sum((r - mean) ** 2 for _, r in valid_sr) / len(valid_sr)
            threshold = mean - cfg.success_rate_stdev_factor * math.sqrt(variance)
            for host, rate in valid_sr:
                if rate < threshold and not self._hosts[host].ejected:
                    self._eject(now, host, self._hosts[host], cfg.enforcing_success_rate)
        if valid_fp and len(valid_fp) >= cfg.failure_percentage_minimum_hosts:
            for host, rate in valid_fp:
                # Envoy would assert on ejecting a host the success-rate pass just ejected
                if 100.0 - rate >= cfg.failure_percentage_threshold and not self._hosts[host].ejected:
                    self._eject(now, host, self._hosts[host], cfg.enforcing_failure_percentage)


# =========================================================================== factory

BreakerConfig = Annotated[
    Union[SpecBreakerConfig, SlidingWindowConfig, OutlierConfig], Field(discriminator="kind")
]
_BREAKER_CONFIG: TypeAdapter[Any] = TypeAdapter(BreakerConfig)


def make_breaker(
    config: Union[SpecBreakerConfig, SlidingWindowConfig, OutlierConfig, dict],
    *,
    rng: Optional[Rng] = None,
) -> Union[SpecBreaker, SlidingWindowBreaker, OutlierDetector]:
    """Build the behaviour a config describes (a dict is validated as :data:`BreakerConfig`).

    ``spec`` and ``sliding_window`` give a :class:`Breaker`; ``outlier`` gives an
    :class:`OutlierDetector` for one cluster (hosts join through ``set_hosts``/``on_result``),
    whose interface is per host.
    """
    if isinstance(config, dict):
        config = _BREAKER_CONFIG.validate_python(config)
    if isinstance(config, SpecBreakerConfig):
        return SpecBreaker(config)
    if isinstance(config, SlidingWindowConfig):
        return SlidingWindowBreaker(config)
    if isinstance(config, OutlierConfig):
        return OutlierDetector(config, rng=rng)
    raise TypeError(f"not a breaker config: {type(config).__name__}")

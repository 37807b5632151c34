"""Golden traces for models.breakers, and SpecBreaker replayed against pybreaker 1.4.1.

Each golden test cites the rule it pins: SPEC <line> is a line of
/work/shared/spec/074-microservice-internal-calls.md, R4J/ENV/PB name the resilience4j, Envoy
and pybreaker sources listed in /work/shared/reference/resilience-semantics.md section 1.
Times are multiples of 1/4 s wherever a boundary is compared, so float sums are exact.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pybreaker
import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hailan_sim.models.breakers import (
    ALL_FAILURES,
    CLOSED,
    HALF_OPEN,
    OPEN,
    OutlierConfig,
    OutlierDetector,
    SlidingWindowBreaker,
    SlidingWindowConfig,
    SpecBreaker,
    SpecBreakerConfig,
    make_breaker,
)

# =========================================================================== helpers


def spec(**kw) -> SpecBreaker:
    base = dict(failure_threshold=3, success_threshold=1, timeout_s=10.0, half_open_max_calls=1)
    base.update(kw)
    return SpecBreaker(SpecBreakerConfig(**base))


def r4j(**kw) -> SlidingWindowBreaker:
    return SlidingWindowBreaker(SlidingWindowConfig(**kw))


def call(b, start: float, outcome: str, end: float | None = None) -> bool:
    """allow() at start and, if admitted, on_result() at end (default: start)."""
    end = start if end is None else end
    if not b.allow(start):
        return False
    b.on_result(end, outcome, end - start)
    return True


def trip_spec(b: SpecBreaker, at: float) -> None:
    for _ in range(b.config.failure_threshold):
        assert call(b, at, "error")
    assert b.state == OPEN


HOSTS10 = tuple(f"h{i}" for i in range(10))


def fail(d: OutlierDetector, now: float, host: str, n: int, outcome: str = "error") -> None:
    for _ in range(n):
        d.on_result(now, host, outcome)


# =========================================================================== configs


def test_configs_are_frozen_and_reject_unknown_fields():
    """models._base.Frozen: immutable, and a typo is an error rather than silently ignored."""
    cfg = SpecBreakerConfig(failure_threshold=1, success_threshold=1, timeout_s=1, half_open_max_calls=1)
    with pytest.raises(ValidationError):
        cfg.failure_threshold = 2
    with pytest.raises(ValidationError, match="extra"):
        SpecBreakerConfig(
            failure_threshold=1, success_threshold=1, timeout_s=1, half_open_max_calls=1, timeout_ms=5
        )
    with pytest.raises(ValidationError, match="twice"):
        SlidingWindowConfig(failure_on=["error", "error"])
    with pytest.raises(ValidationError, match="greater than 0"):
        SlidingWindowConfig(failure_rate_threshold=0)
    # ENV DetectorImpl::create: max_ejection_time cannot be smaller than base_ejection_time
    with pytest.raises(ValidationError, match="cannot be smaller"):
        OutlierConfig(base_ejection_s=400)


def test_make_breaker_dispatches_on_kind():
    """make_breaker validates a dict as the discriminated union and builds the matching model."""
    b = make_breaker(
        {"kind": "spec", "failure_threshold": 2, "success_threshold": 1, "timeout_s": 5, "half_open_max_calls": 3}
    )
    assert isinstance(b, SpecBreaker) and b.config.timeout_s == 5.0
    assert isinstance(make_breaker({"kind": "sliding_window", "window_size": 7}), SlidingWindowBreaker)
    assert isinstance(make_breaker(OutlierConfig()), OutlierDetector)
    with pytest.raises(ValidationError):
        make_breaker({"kind": "hystrix"})
    with pytest.raises(ValidationError):
        make_breaker({"kind": "spec", "failure_threshold": 2})  # the spec gives no defaults


# =========================================================================== spec breaker


def test_spec_failure_count_is_consecutive():
    """SPEC 677 `this.failureCount = 0` on every success; SPEC 693/696 open at >= threshold."""
    b = spec(failure_threshold=3)
    for t, outcome in [(1, "error"), (2, "error"), (3, "ok"), (4, "error"), (5, "error")]:
        call(b, t, outcome)
    assert (b.state, b.failure_count) == (CLOSED, 2)
    call(b, 6, "timeout")
    assert b.state == OPEN and b.failure_count == 3
    assert b.transitions == [(6, CLOSED, OPEN)]


def test_spec_profile_counts_every_thrown_error():
    """SPEC 667 `catch (error)`: timeouts and callee rejections are failures like errors."""
    b = spec(failure_threshold=2)
    call(b, 0, "timeout")
    call(b, 1, "rejected")
    assert b.state == OPEN


def test_spec_outcome_outside_failure_on_counts_as_success():
    """SPEC 664-666: whatever does not throw runs onSuccess(); failure_on=("error",) makes a
    timeout a success: it resets the count (SPEC 677) and closes a half-open breaker (SPEC 683)."""
    b = spec(failure_threshold=2, failure_on=["error"])
    call(b, 0, "error")
    call(b, 1, "timeout")
    assert b.failure_count == 0
    call(b, 2, "error")
    call(b, 3, "error")
    assert b.state == OPEN
    assert call(b, 13, "rejected")
    assert b.state == CLOSED


def test_spec_late_success_while_open_resets_count_but_not_state():
    """SPEC 677 runs in every state: a late success zeroes failureCount while OPEN; SPEC 679
    keeps successCount at 0 because the state is not HALF_OPEN."""
    b = spec(failure_threshold=3)
    trip_spec(b, 0)
    b.on_result(1, "ok", 1)
    assert (b.state, b.failure_count, b.success_count) == (OPEN, 0, 0)


def test_spec_late_failure_extends_the_open_period():
    """SPEC 694 stamps lastFailureTime on every failure and SPEC 739 measures OPEN from it, so
    a call admitted before the trip that fails later pushes the half-open try back. With the
    count still >= threshold SPEC 696-697 calls transitionToOpen() again (OPEN -> OPEN)."""
    b = spec(failure_threshold=2, timeout_s=10)
    assert b.allow(0) and b.allow(0) and b.allow(0)  # three calls in flight
    b.on_result(1, "error", 1)
    b.on_result(2, "error", 2)
    assert b.state == OPEN and b.retry_at == 12
    b.on_result(8, "error", 8)  # the third call, admitted while CLOSED, fails late
    assert b.last_failure_time == 8 and b.retry_at == 18
    assert b.transitions == [(2, CLOSED, OPEN), (8, OPEN, OPEN)]
    assert not b.allow(12)  # pybreaker (opened_at + reset) would admit here
    assert not b.allow(17.75)
    assert b.allow(18) and b.state == HALF_OPEN


def test_spec_late_failure_below_threshold_still_extends_open():
    """SPEC 694 runs before the SPEC 696 check: after a late success zeroed the count, a late
    failure (count 1 < threshold, state OPEN, so neither branch) still moves lastFailureTime."""
    b = spec(failure_threshold=3, timeout_s=10)
    trip_spec(b, 0)
    b.on_result(1, "ok", 1)
    b.on_result(5, "error", 5)
    assert (b.state, b.failure_count, b.retry_at) == (OPEN, 1, 15)
    assert b.transitions == [(0, CLOSED, OPEN)]


def test_spec_half_open_only_on_execute():
    """SPEC 655-657: OPEN -> HALF_OPEN happens inside execute() only; no timer, results do not
    trigger it, and the transition is stamped with the time of the admitting call."""
    b = spec(failure_threshold=1, timeout_s=5)
    call(b, 0, "error")
    assert b.next_timer(0) is None
    b.tick(100)
    assert b.state == OPEN
    b.on_result(100, "ok", 100)  # a late success does not move it either
    assert b.state == OPEN
    assert b.allow(100) and b.state == HALF_OPEN
    assert b.transitions[-1] == (100, OPEN, HALF_OPEN)


def test_spec_reset_boundary_is_inclusive():
    """SPEC 740 `elapsed >= this.config.timeout`: admitted at exactly lastFailureTime + timeout."""
    b = spec(failure_threshold=1, timeout_s=2.5)
    call(b, 1.0, "error")
    assert not b.allow(math.nextafter(3.5, 0))
    assert b.state == OPEN
    assert b.allow(3.5) and b.state == HALF_OPEN


def test_spec_half_open_keeps_failure_count_and_reopens_on_failure():
    """SPEC 726-731 transitionToHalfOpen resets successCount/halfOpenCallCount but not
    failureCount, so the first half-open failure re-opens through SPEC 696 (count >= threshold)."""
    b = spec(failure_threshold=2, timeout_s=10)
    trip_spec(b, 0)
    assert b.allow(10) and b.failure_count == 2
    b.on_result(11, "error", 1)
    assert (b.state, b.failure_count, b.last_failure_time) == (OPEN, 3, 11)
    assert b.transitions == [(0, CLOSED, OPEN), (10, OPEN, HALF_OPEN), (11, HALF_OPEN, OPEN)]


def test_spec_half_open_failure_after_success_reopens_by_explicit_branch():
    """After a half-open success zeroed failureCount (SPEC 677), a failure leaves it at 1 <
    threshold and SPEC 698-699 `else if (state === HALF_OPEN) transitionToOpen()` re-opens."""
    b = spec(failure_threshold=2, success_threshold=3, timeout_s=10)
    trip_spec(b, 0)
    assert call(b, 10, "ok")
    assert (b.state, b.failure_count, b.success_count) == (HALF_OPEN, 0, 1)
    assert call(b, 11, "error")
    assert (b.state, b.failure_count, b.success_count) == (OPEN, 1, 0)
    assert b.retry_at == 21


def test_spec_success_count_only_in_half_open():
    """SPEC 679-681: successCount and halfOpenCallCount grow only on HALF_OPEN successes;
    SPEC 683-684 closes at successThreshold and SPEC 708-709 zeroes both."""
    b = spec(failure_threshold=1, success_threshold=2, timeout_s=1)
    for t in range(3):
        call(b, t, "ok")
    assert (b.success_count, b.half_open_call_count) == (0, 0)
    call(b, 3, "error")
    call(b, 4, "ok")
    assert (b.state, b.success_count, b.half_open_call_count) == (HALF_OPEN, 1, 1)
    call(b, 5, "ok")
    assert (b.state, b.success_count, b.half_open_call_count) == (CLOSED, 0, 0)


def test_spec_half_open_max_calls_is_never_enforced():
    """SPEC 631 declares halfOpenMaxCalls and nothing reads it: HALF_OPEN admits every call."""
    b = spec(failure_threshold=1, success_threshold=5, timeout_s=1, half_open_max_calls=1)
    call(b, 0, "error")
    assert all(b.allow(1) for _ in range(20))
    assert b.state == HALF_OPEN


def test_spec_enforced_half_open_limit_counts_admissions():
    """enforce_half_open_limit: at most half_open_max_calls admitted per HALF_OPEN episode,
    counted at allow() (before any result), and reset by every transition."""
    b = spec(failure_threshold=1, success_threshold=2, timeout_s=1, half_open_max_calls=2,
             enforce_half_open_limit=True)
    call(b, 0, "error")
    assert [b.allow(1), b.allow(1), b.allow(1)] == [True, True, False]
    b.on_result(2, "ok", 1)
    b.on_result(2, "ok", 1)
    assert b.state == CLOSED
    call(b, 3, "error")
    assert [b.allow(4), b.allow(4), b.allow(4)] == [True, True, False]


def test_spec_enforced_limit_below_success_threshold_never_closes():
    """With the limit enforced and half_open_max_calls < success_threshold, SPEC 683 can never
    be met and HALF_OPEN has no other exit (SPEC 655 only tests OPEN): stuck rejecting."""
    b = spec(failure_threshold=1, success_threshold=2, timeout_s=1, half_open_max_calls=1,
             enforce_half_open_limit=True)
    call(b, 0, "error")
    assert call(b, 1, "ok")
    assert b.state == HALF_OPEN
    assert not b.allow(1_000_000)
    assert b.state == HALF_OPEN


def test_spec_late_success_closes_half_open():
    """SPEC 679-684 count any success arriving in HALF_OPEN, including a call admitted while
    CLOSED, so a slow pre-trip success can close the breaker without a half-open trial."""
    b = spec(failure_threshold=1, timeout_s=5)
    assert b.allow(0) and b.allow(0)
    b.on_result(1, "error", 1)
    assert b.allow(6)  # the half-open trial, still in flight
    b.on_result(7, "ok", 7)  # the second pre-trip call finishes
    assert b.state == CLOSED
    assert b.transitions == [(1, CLOSED, OPEN), (6, OPEN, HALF_OPEN), (7, HALF_OPEN, CLOSED)]


def test_spec_rejects_unknown_outcome():
    """The engine's vocabulary is ok/error/timeout/rejected; anything else is a bug."""
    with pytest.raises(ValueError, match="unknown outcome"):
        spec().on_result(0, "failure", 0)


# =========================================================================== spec vs pybreaker


def test_spec_and_pybreaker_both_admit_at_exactly_reset_time():
    """PB CircuitOpenState.before_call rejects while `now < opened_at + reset_timeout`; SPEC 740
    admits when `elapsed >= timeout`: at exactly the boundary both run the call half-open
    (reference: 'at exactly +60.000 s the call runs half-open'). R4J differs: see
    test_r4j_open_to_half_open_is_lazy_and_strictly_after_retry_at."""
    b = spec(failure_threshold=1, timeout_s=60)
    call(b, 0, "error")
    with freeze_time("2024-01-01 00:00:00") as clock:
        pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60)
        with pytest.raises(pybreaker.CircuitBreakerError):
            pb.call(_raise, _Failure)
        clock.tick(timedelta(seconds=59.75))
        with pytest.raises(pybreaker.CircuitBreakerError):
            pb.call(lambda: None)
        clock.tick(timedelta(seconds=0.25))
        pb.call(lambda: None)
        assert pb.current_state == "closed"
    assert not b.allow(59.75)
    assert call(b, 60, "ok") and b.state == CLOSED


def test_excluded_outcome_counts_differ_between_spec_profile_and_pybreaker_exclude():
    """PB _handle_error: an excluded exception runs _handle_success (resets the count) yet is
    re-raised. The spec has no exclusion (SPEC 667 catches everything), so with the spec
    profile the same outcome is a failure; only failure_on=("error", "timeout") matches PB."""
    with freeze_time("2024-01-01"):
        pb = pybreaker.CircuitBreaker(fail_max=2, exclude=[_Rejected])
        with pytest.raises(_Failure):
            pb.call(_raise, _Failure)
        with pytest.raises(_Rejected):  # re-raised to the caller ...
            pb.call(_raise, _Rejected)
        assert pb.fail_counter == 0  # ... but counted as a success
    profile = spec(failure_threshold=2)
    call(profile, 0, "error")
    call(profile, 0, "rejected")
    assert profile.state == OPEN
    matching = spec(failure_threshold=2, failure_on=["error", "timeout"])
    call(matching, 0, "error")
    call(matching, 0, "rejected")
    assert (matching.state, matching.failure_count) == (CLOSED, 0)


class _Failure(Exception):
    pass


class _Rejected(Exception):
    pass


def _raise(exc: type[Exception]) -> None:
    raise exc()


_PB_STATE = {"closed": CLOSED, "open": OPEN, "half-open": HALF_OPEN}


@settings(max_examples=150, deadline=None)
@given(
    fail_max=st.integers(1, 4),
    reset_quarters=st.integers(1, 8),
    success_threshold=st.integers(1, 3),
    exclude_rejected=st.booleans(),
    throw_new_error_on_trip=st.booleans(),
    steps=st.lists(
        st.tuples(
            st.integers(0, 12),  # time advance before the call, in 1/4 s
            st.sampled_from(["ok", "error", "timeout", "rejected"]),
            st.integers(0, 3),  # call duration, in 1/4 s
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_spec_breaker_matches_pybreaker(
    fail_max, reset_quarters, success_threshold, exclude_rejected, throw_new_error_on_trip, steps
):
    """Single-threaded replay through PB 1.4.1 (under freezegun) and SpecBreaker, one call at a
    time, each finishing before the next: the same admission decision, state, failure counter
    and half-open success counter after every call. Where they differ the difference is
    asserted: PB raises CircuitBreakerError from the call that trips (or fails the half-open
    trial) when throw_new_error_on_trip, the spec rethrows the call's own error; an excluded
    outcome is re-raised by PB though counted as a success (failure_on without it, here)."""
    reset_s = reset_quarters / 4
    failure_on = ("error", "timeout") if exclude_rejected else ALL_FAILURES
    sb = spec(failure_threshold=fail_max, success_threshold=success_threshold, timeout_s=reset_s,
              half_open_max_calls=1, failure_on=failure_on)
    raises = {"ok": None, "error": _Failure, "timeout": _Failure, "rejected": _Rejected}
    quarters = 0
    with freeze_time("2024-01-01 00:00:00") as clock:
        pb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_s,
            success_threshold=success_threshold,
            exclude=[_Rejected] if exclude_rejected else None,
            throw_new_error_on_trip=throw_new_error_on_trip,
        )
        for advance, outcome, duration in steps:
            clock.tick(timedelta(seconds=advance / 4))
            quarters += advance
            ran = []

            def fn(outcome=outcome, duration=duration, ran=ran):
                ran.append(True)
                clock.tick(timedelta(seconds=duration / 4))
                if raises[outcome] is not None:
                    raise raises[outcome]()

            try:
                pb.call(fn)
                raised = None
            except pybreaker.CircuitBreakerError:
                raised = pybreaker.CircuitBreakerError
            except (_Failure, _Rejected) as exc:
                raised = type(exc)

            start = quarters / 4
            n_transitions = len(sb.transitions)
            admitted = sb.allow(start)
            if admitted:
                quarters += duration
                sb.on_result(quarters / 4, outcome, duration / 4)

            assert admitted == bool(ran)
            assert sb.state == _PB_STATE[pb.current_state]
            assert sb.failure_count == pb.fail_counter
            assert sb.success_count == pb.success_counter
            tripped = any(to == OPEN for _, _, to in sb.transitions[n_transitions:])
            if not admitted:
                assert raised is pybreaker.CircuitBreakerError  # both reject without calling
            elif tripped and throw_new_error_on_trip:
                assert raised is pybreaker.CircuitBreakerError  # spec rethrows raises[outcome]
            else:
                assert raised is raises[outcome]


# =========================================================================== resilience4j


def test_r4j_defaults():
    """R4J CircuitBreakerConfig defaults (reference section 1)."""
    c = SlidingWindowConfig()
    assert (c.failure_rate_threshold, c.slow_call_rate_threshold, c.slow_call_duration_s) == (50, 100, 60)
    assert (c.window_type, c.window_size, c.minimum_calls) == ("count_based", 100, 100)
    assert (c.permitted_calls_in_half_open, c.wait_in_open_s) == (10, 60)
    assert (c.automatic_transition, c.max_wait_in_half_open_s) == (False, 0)
    assert c.failure_on == ALL_FAILURES and c.ignore_on == ()


def test_r4j_defaults_need_100_calls():
    """R4J pitfall: with the defaults fewer than 100 calls never trip the breaker."""
    b = r4j()
    for i in range(99):
        call(b, i, "error")
    assert b.state == CLOSED
    call(b, 99, "error")
    assert b.transitions == [(99, CLOSED, OPEN)]


def test_r4j_count_based_caps_minimum_calls_at_window_size():
    """R4J CircuitBreakerMetrics: COUNT_BASED minimumNumberOfCalls = min(minCalls, windowSize)."""
    b = r4j(window_size=4, minimum_calls=10)
    for t in range(3):
        call(b, t, "error")
    assert b.state == CLOSED
    call(b, 3, "ok")  # 4 buffered >= min(10, 4); 3/4 failed
    assert b.transitions == [(3, CLOSED, OPEN)]


def test_r4j_time_based_does_not_cap_minimum_calls():
    """R4J CircuitBreakerMetrics: TIME_BASED keeps minimumNumberOfCalls as configured."""
    b = r4j(window_type="time_based", window_size=2, minimum_calls=5)
    for i in range(4):
        call(b, 0.25 * i, "error")
    assert b.state == CLOSED
    call(b, 1.0, "error")
    assert b.transitions == [(1.0, CLOSED, OPEN)]


def test_r4j_time_window_has_one_bucket_per_epoch_second():
    """R4J SlidingTimeWindowMetrics: bucket = epoch second; a window of N seconds keeps the
    current second and the N-1 before it, so at t=2.0 the second-0 bucket is gone."""
    kept, evicted = (r4j(window_type="time_based", window_size=2, minimum_calls=3) for _ in range(2))
    for b in (kept, evicted):
        call(b, 0.25, "error")
        call(b, 0.75, "error")
    call(kept, 1.75, "ok")  # seconds {0, 1}: 3 calls, 2 failed
    call(evicted, 2.0, "ok")  # seconds {1, 2}: 1 call
    assert kept.state == OPEN
    assert evicted.state == CLOSED and evicted.snapshot() == {"calls": 1, "failed": 0, "slow": 0}


def test_r4j_trips_at_rate_equal_to_threshold():
    """R4J checkIfThresholdsExceeded: failureRate >= threshold (50 % of 4 is enough)."""
    b = r4j(window_size=4, minimum_calls=4)
    for t, outcome in enumerate(["error", "ok", "error"]):
        call(b, t, outcome)
    assert b.state == CLOSED
    call(b, 3, "ok")
    assert b.state == OPEN
    below = r4j(window_size=4, minimum_calls=4)
    for t, outcome in enumerate(["error", "ok", "ok", "ok"]):
        call(below, t, outcome)
    assert below.state == CLOSED


def test_r4j_rates_are_float32():
    """R4J SnapshotImpl.getFailureRate: `failed * 100.0f / total` in float: 1 of 3 is
    33.333332f, which reaches a 33.3333334 threshold that exact arithmetic would not."""
    assert 100 / 3 < 33.3333334
    b = r4j(window_size=3, minimum_calls=3, failure_rate_threshold=33.3333334)
    for t, outcome in enumerate(["error", "ok", "ok"]):
        call(b, t, outcome)
    assert b.state == OPEN


def test_r4j_decides_only_when_a_call_completes():
    """R4J: thresholds are checked in onError/onSuccess only; allow() never trips, and the trip
    is stamped with the completion time."""
    b = r4j(window_size=2, minimum_calls=2)
    assert b.allow(0) and b.allow(0)
    b.on_result(1, "error", 1)
    assert b.allow(2) and b.state == CLOSED
    b.on_result(3, "error", 3)
    assert b.transitions == [(3, CLOSED, OPEN)]


def test_r4j_slow_call_is_strictly_longer_than_threshold():
    """R4J CircuitBreakerMetrics: slow when duration > slowCallDurationThreshold."""
    b = r4j(window_size=2, minimum_calls=2, slow_call_duration_s=2.0, slow_call_rate_threshold=50)
    call(b, 0, "ok", 2.0)
    call(b, 0, "ok", 2.0)
    assert b.state == CLOSED and b.snapshot()["slow"] == 0
    call(b, 10, "ok", 12.25)
    assert b.state == OPEN


def test_r4j_default_slow_rate_needs_every_call_slow():
    """R4J default slowCallRateThreshold 100 %: one fast call in the window keeps it closed."""
    mixed = r4j(window_size=4, minimum_calls=4, slow_call_duration_s=1)
    allslow = r4j(window_size=4, minimum_calls=4, slow_call_duration_s=1)
    for i, d in enumerate([2, 2, 2, 0.5]):
        call(mixed, i, "ok", i + d)
        call(allslow, i, "ok", i + 2)
    assert mixed.state == CLOSED and allslow.state == OPEN


def test_r4j_open_to_half_open_is_lazy_and_strictly_after_retry_at():
    """R4J OpenState.tryAcquirePermission: `clock.instant().isAfter(retryAfterWaitDuration)`,
    strict, checked on acquire only (no timer when automatic transition is off)."""
    b = r4j(window_size=1, minimum_calls=1)
    call(b, 10, "error")
    assert b.retry_at == 70 and b.next_timer(10) is None
    b.tick(1000)
    assert b.state == OPEN
    b2 = r4j(window_size=1, minimum_calls=1)
    call(b2, 10, "error")
    assert not b2.allow(70)  # spec and pybreaker admit at exactly the boundary
    assert b2.allow(math.nextafter(70, 100))
    assert b2.transitions[-1] == (math.nextafter(70, 100), OPEN, HALF_OPEN)


def test_r4j_automatic_transition_fires_at_retry_at():
    """R4J OpenState: with automaticTransitionFromOpenToHalfOpenEnabled a scheduler moves to
    HALF_OPEN after the wait; next_timer tells the engine when, tick() fires it."""
    b = r4j(window_size=1, minimum_calls=1, automatic_transition=True)
    call(b, 10, "error")
    assert b.next_timer(10) == 70
    b.tick(69.75)
    assert b.state == OPEN
    b.tick(70)
    assert b.state == HALF_OPEN and b.transitions[-1] == (70, OPEN, HALF_OPEN)


def test_r4j_overdue_timer_fires_at_its_due_time():
    """A timer the engine did not tick fires lazily on the next call, stamped with its due time
    (as R4J's scheduler would have), before that call asks for a permit."""
    b = r4j(window_size=1, minimum_calls=1, automatic_transition=True, max_wait_in_half_open_s=5)
    call(b, 10, "error")
    assert b.allow(72)  # OPEN -> HALF_OPEN at 70, deadline 75 not yet due
    assert b.transitions[-1] == (70, OPEN, HALF_OPEN)
    b2 = r4j(window_size=1, minimum_calls=1, automatic_transition=True, max_wait_in_half_open_s=5)
    call(b2, 10, "error")
    assert not b2.allow(76)  # HALF_OPEN at 70, back to OPEN at 75 (retry at 135)
    assert b2.transitions == [(10, CLOSED, OPEN), (70, OPEN, HALF_OPEN), (75, HALF_OPEN, OPEN)]
    assert b2.next_timer(76) == 135


def test_r4j_half_open_permits_are_taken_at_allow():
    """R4J HalfOpenState.tryAcquirePermission counts permits down at acquire; finishing a call
    does not give its permit back."""
    b = r4j(window_size=1, minimum_calls=1, permitted_calls_in_half_open=3, wait_in_open_s=1)
    call(b, 0, "error")
    assert [b.allow(2) for _ in range(4)] == [True, True, True, False]
    b2 = r4j(window_size=1, minimum_calls=5, permitted_calls_in_half_open=3, wait_in_open_s=1)
    call(b2, 0, "error")
    assert b2.allow(2)
    b2.on_result(3, "ok", 1)
    assert b2.allow(3) and b2.allow(3) and not b2.allow(3)


def test_r4j_half_open_decides_at_min_of_minimum_calls_and_permitted():
    """R4J CircuitBreakerMetrics.forHalfOpen: COUNT_BASED window of `permitted` calls with
    minimum min(minCalls, permitted): above thresholds -> OPEN, below -> CLOSED."""
    def opened(minimum_calls):
        b = r4j(window_size=1, minimum_calls=minimum_calls, permitted_calls_in_half_open=4, wait_in_open_s=1)
        b.allow(0)
        b.on_result(0, "error", 0)
        for _ in range(4):
            assert b.allow(2)
        return b

    b = opened(2)
    b.on_result(3, "error", 1)
    assert b.state == HALF_OPEN
    b.on_result(3, "ok", 1)  # 1 of 2 = 50 %
    assert b.state == OPEN and b.transitions[-1] == (3, HALF_OPEN, OPEN)

    b = opened(2)
    b.on_result(3, "ok", 1)
    b.on_result(3, "ok", 1)
    assert b.state == CLOSED

    b = opened(100)  # minimum 100 capped at 4 permitted
    for outcome in ["ok", "ok", "ok"]:
        b.on_result(3, outcome, 1)
    assert b.state == HALF_OPEN
    b.on_result(3, "error", 1)  # 1 of 4 = 25 %
    assert b.state == CLOSED


def test_r4j_each_state_starts_a_fresh_window():
    """R4J: HalfOpenState builds new metrics; transitionToClosedState builds `new ClosedState()`
    with fresh metrics, so failures before the trip do not count after closing."""
    b = r4j(window_size=4, minimum_calls=4, permitted_calls_in_half_open=1, wait_in_open_s=1)
    for t, outcome in enumerate(["error", "error", "ok", "ok"]):
        call(b, t, outcome)
    assert b.state == OPEN
    assert b.allow(5) and b.snapshot()["calls"] == 0
    b.on_result(5, "ok", 0)
    assert b.state == CLOSED and b.snapshot()["calls"] == 0
    for t, outcome in enumerate(["error", "ok", "ok"], start=6):
        call(b, t, outcome)
    assert b.state == CLOSED  # 1 of 3 buffered: below the minimum of 4


def test_r4j_max_wait_in_half_open():
    """R4J HalfOpenState: maxWaitDurationInHalfOpenState > 0 schedules toOpenState; 0 (the
    default) waits for ever (the stuck-HALF_OPEN pitfall, issues #935/#903)."""
    stuck = r4j(window_size=1, minimum_calls=1, wait_in_open_s=1, permitted_calls_in_half_open=1)
    call(stuck, 0, "error")
    assert stuck.allow(2) and stuck.next_timer(2) is None
    stuck.tick(10_000)
    assert stuck.state == HALF_OPEN and not stuck.allow(10_000)

    b = r4j(window_size=1, minimum_calls=1, wait_in_open_s=1, max_wait_in_half_open_s=5)
    call(b, 0, "error")
    assert b.allow(2) and b.next_timer(2) == 7
    b.tick(7)
    assert b.state == OPEN and b.retry_at == 8
    assert b.transitions[-1] == (7, HALF_OPEN, OPEN)


def test_r4j_late_results_while_open_are_recorded_without_transition():
    """R4J OpenState.onError/onSuccess record into the inherited metrics and do nothing else
    (reference: 'calls that finish after the trip are recorded but cause no transition')."""
    b = r4j(window_size=4, minimum_calls=2)
    for _ in range(4):
        assert b.allow(0)
    b.on_result(1, "error", 1)
    b.on_result(2, "error", 2)
    assert b.state == OPEN
    b.on_result(3, "ok", 3)
    b.on_result(4, "error", 4)
    assert b.state == OPEN and b.transitions == [(2, CLOSED, OPEN)]
    assert b.snapshot() == {"calls": 4, "failed": 3, "slow": 0}


def test_r4j_late_result_counts_in_the_state_where_it_finishes():
    """R4J CircuitBreakerStateMachine.onError -> stateReference.get().onError(): a result goes
    to the state current when it finishes. A call admitted while CLOSED that fails during
    HALF_OPEN is counted in the half-open window and can decide it (our documented reading)."""
    b = r4j(window_size=2, minimum_calls=2, permitted_calls_in_half_open=1, wait_in_open_s=10)
    for _ in range(3):
        assert b.allow(0)
    b.on_result(1, "error", 1)
    b.on_result(2, "error", 2)
    assert b.allow(13)  # HALF_OPEN, the only permit taken by the trial
    b.on_result(14, "error", 14)  # the third pre-trip call: decides the half-open window alone
    assert b.transitions[-1] == (14, HALF_OPEN, OPEN)
    b.on_result(15, "ok", 2)  # the trial's own result now lands in OPEN: no transition
    assert b.state == OPEN and b.transitions[-1] == (14, HALF_OPEN, OPEN)


def test_r4j_ignored_outcome_releases_the_half_open_permit():
    """R4J handleThrowable: the ignore predicate is tested first (here "rejected" is also in the
    default failure_on); an ignored exception calls releasePermission() and is not recorded."""
    b = r4j(window_size=1, minimum_calls=1, permitted_calls_in_half_open=1, wait_in_open_s=1,
            ignore_on=["rejected"])
    call(b, 0, "error")
    assert b.allow(2) and not b.allow(2)
    b.on_result(3, "rejected", 1)
    assert b.state == HALF_OPEN and b.snapshot()["calls"] == 0
    assert b.allow(3)


def test_r4j_outcome_outside_failure_on_is_a_success():
    """R4J handleThrowable: an exception not matched by recordExceptions is recorded as success."""
    b = r4j(window_size=2, minimum_calls=2, failure_on=["error"])
    call(b, 0, "timeout")
    call(b, 1, "rejected")
    assert b.state == CLOSED and b.snapshot()["failed"] == 0


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 40), st.sampled_from(["allow", "ok", "error"])), min_size=1, max_size=60
    )
)
def test_r4j_ticking_on_time_and_lazy_firing_agree(events):
    """Timers fire at their due time whether the engine ticks at next_timer() or not: a breaker
    ticked on time and one never ticked log the same transitions and answer the same."""
    cfg = SlidingWindowConfig(window_size=3, minimum_calls=2, permitted_calls_in_half_open=2,
                              wait_in_open_s=5, automatic_transition=True, max_wait_in_half_open_s=3)
    ticked, lazy = SlidingWindowBreaker(cfg), SlidingWindowBreaker(cfg)
    now = 0.0
    for advance, what in events:
        target = now + advance / 4
        while (due := ticked.next_timer(now)) is not None and due <= target:
            ticked.tick(due)
            now = due
        now = target
        if what == "allow":
            assert ticked.allow(now) == lazy.allow(now)
        else:
            ticked.on_result(now, what, 0.0)
            lazy.on_result(now, what, 0.0)
    lazy.tick(now)
    assert ticked.transitions == lazy.transitions


# =========================================================================== Envoy outlier


def test_outlier_defaults():
    """ENV DetectorConfig DEFAULT_*: 5 consecutive 5xx, 10 s interval, 30 s base, 300 s max,
    10 % max ejected, success rate 100 requests / 5 hosts / 1.9 stdev, failure percentage 85
    not enforced; panic threshold 50 %."""
    c = OutlierConfig()
    assert (c.consecutive_5xx, c.enforcing_consecutive_5xx, c.interval_s) == (5, 100, 10)
    assert (c.base_ejection_s, c.max_ejection_s, c.max_ejection_percent) == (30, 300, 10)
    assert (c.success_rate_request_volume, c.success_rate_minimum_hosts, c.success_rate_stdev_factor) == (100, 5, 1.9)
    assert (c.failure_percentage_threshold, c.enforcing_failure_percentage) == (85, 0)
    assert c.panic_threshold_percent == 50 and c.failure_on == ALL_FAILURES


def test_outlier_consecutive_5xx_ejects_inline():
    """ENV putHttpResponseCode: a non-5xx zeroes the run; the 5th consecutive 5xx ejects at
    once (timeouts and rejections count as 5xx)."""
    d = OutlierDetector(OutlierConfig(), HOSTS10)
    fail(d, 1, "h0", 4)
    d.on_result(1, "h0", "ok")
    fail(d, 2, "h0", 2, "timeout")
    fail(d, 2, "h0", 2, "rejected")
    assert d.ejected(2) == []
    d.on_result(3.5, "h0", "error")
    assert d.ejected(3.5) == ["h0"] and d.events == [(3.5, "eject", "h0")]


def test_outlier_any_ejected_follows_ejections_and_set_hosts():
    """any_ejected (the gateway's shortcut past eligible) is true exactly while a host is
    ejected: after the 5th 5xx, until the sweep that un-ejects it, and not after the ejected
    host has left the cluster."""
    d = OutlierDetector(OutlierConfig(), HOSTS10)
    assert not d.any_ejected(0.5) and d.eligible(0.5, HOSTS10) == list(HOSTS10)
    fail(d, 1, "h0", 5)
    assert d.any_ejected(1) and "h0" not in d.eligible(1, HOSTS10)
    assert d.any_ejected(39.75)
    assert not d.any_ejected(40)  # the sweep at 40 un-ejects it (fired by the question)
    fail(d, 41, "h1", 5)
    assert d.any_ejected(41)
    d.set_hosts(42, [h for h in HOSTS10 if h != "h1"])
    assert not d.any_ejected(42) and d.ejected(42) == []


def test_outlier_unejects_at_first_sweep_after_ejection_time():
    """ENV checkHostForUneject runs in onIntervalTimer: ejected at 1 for 30 s, the sweep at 30
    sees 29 s and keeps it, the sweep at 40 un-ejects it."""
    d = OutlierDetector(OutlierConfig(), HOSTS10)
    fail(d, 1, "h0", 5)
    assert d.ejected(39.75) == ["h0"]
    assert d.next_timer(39.75) == 40
    d.tick(40)
    assert d.ejected(40) == []
    assert d.events == [(1, "eject", "h0"), (40, "uneject", "h0")]


def test_outlier_ejection_time_grows_with_backoff_and_caps():
    """ENV ejectHost: backoff++ while `backoff * base < max + base`; the ejection lasts
    min(base * backoff, max): 30, 60, ... 300 s, then stays 300 with backoff stuck at 11."""
    d = OutlierDetector(OutlierConfig(), HOSTS10)
    now = 0.0
    durations, backoffs = [], []
    for _ in range(13):
        fail(d, now, "h0", 5)  # re-eject right after each un-ejection
        backoffs.append(d.backoff("h0"))
        ejected_at = now
        while d.is_ejected(now, "h0"):
            now = d.next_timer(now)
        durations.append(now - ejected_at)
    assert backoffs == list(range(1, 12)) + [11, 11]
    assert durations == [30.0 * k for k in range(1, 11)] + [300.0] * 3


def test_outlier_backoff_decrements_each_healthy_interval():
    """ENV onIntervalTimer: a non-ejected host whose last un-ejection is >= one interval old
    has its backoff decremented, so the next ejection is short again."""
    healed = OutlierDetector(OutlierConfig(), HOSTS10)
    fail(healed, 0.5, "h0", 5)  # un-ejected at 40
    healed.tick(50)  # 50 - 40 >= 10: backoff 1 -> 0
    assert healed.backoff("h0") == 0
    fail(healed, 55, "h0", 5)
    assert healed.backoff("h0") == 1

    relapsed = OutlierDetector(OutlierConfig(), HOSTS10)
    fail(relapsed, 0.5, "h0", 5)
    fail(relapsed, 45, "h0", 5)  # before the decrementing sweep at 50
    assert relapsed.backoff("h0") == 2
    relapsed.tick(100)
    assert relapsed.is_ejected(100, "h0")  # 60 s from 45
    relapsed.tick(110)
    assert not relapsed.is_ejected(110, "h0")


def test_outlier_max_ejection_percent():
    """ENV ejectHost: eject only if 100 * (ejected + 1) / hosts <= max_ejection_percent; an
    overflow is counted and the run is reset (onConsecutiveErrorWorker), so another 5 are needed."""
    hosts = tuple(f"h{i:02d}" for i in range(20))
    d = OutlierDetector(OutlierConfig(), hosts)
    fail(d, 1, "h00", 5)
    fail(d, 1, "h01", 5)  # 2 of 20 = 10 %
    fail(d, 1, "h02", 5)  # 3 of 20 = 15 %
    assert d.ejected(1) == ["h00", "h01"] and d.overflows == 1
    assert d.consecutive_5xx("h02") == 0
    fail(d, 2, "h02", 4)
    assert d.overflows == 1
    fail(d, 2, "h02", 1)
    assert d.overflows == 2


def test_outlier_one_host_always_ejectable():
    """Reference: 'max_ejection_percent 10 %, but one host is always ejectable'; ENV
    always_eject_one_host (default true here). Envoy >= 1.31's default false ejects nothing
    from fewer than 10 hosts."""
    hosts = ("a", "b", "c")
    d = OutlierDetector(OutlierConfig(), hosts)
    fail(d, 1, "a", 5)
    fail(d, 1, "b", 5)
    assert d.ejected(1) == ["a"] and d.overflows == 1
    strict = OutlierDetector(OutlierConfig(always_eject_one_host=False), hosts)
    fail(strict, 1, "a", 5)
    assert strict.ejected(1) == []


def test_outlier_run_keeps_counting_while_ejected():
    """ENV: the ejection fires on `++count == threshold` and onConsecutiveErrorWorker returns
    early for an ejected host without resetting, so the run goes on (6, 7) and cannot fire
    again; unejectHost resets it."""
    d = OutlierDetector(OutlierConfig(), HOSTS10)
    fail(d, 1, "h0", 5)
    fail(d, 2, "h0", 7)  # traffic in panic mode
    assert d.consecutive_5xx("h0") == 7 and d.num_ejections("h0") == 1
    d.tick(40)
    assert d.consecutive_5xx("h0") == 0
    fail(d, 41, "h0", 4)
    assert not d.is_ejected(41, "h0")


def test_outlier_panic_threshold():
    """Envoy panic_threshold.rst / LoadBalancerBase::isHostSetInPanic: below 50 % healthy
    (strict) balance over all hosts, ejected ones included; 0 disables panic."""
    hosts = ["d", "c", "b", "a"]
    d = OutlierDetector(OutlierConfig(max_ejection_percent=75), hosts)
    assert d.eligible(0, hosts) == hosts
    fail(d, 1, "a", 5)
    fail(d, 1, "b", 5)
    assert d.eligible(1, hosts) == ["d", "c"]  # 50 % healthy: not panic
    fail(d, 1, "c", 5)
    assert d.ejected(1) == ["a", "b", "c"]
    assert d.eligible(1, hosts) == hosts  # 25 % healthy: panic, caller's order kept
    nopanic = OutlierDetector(OutlierConfig(max_ejection_percent=100, panic_threshold_percent=0), ["a"])
    fail(nopanic, 1, "a", 5)
    assert nopanic.eligible(1, ["a"]) == []


def _interval_of_traffic(d: OutlierDetector, rates: dict[str, int], t0: float = 0.0) -> None:
    """100 requests per host in [t0, t0 + 5); `rates[host]` of them succeed, failures
    alternate with successes so no consecutive run reaches 5."""
    for host, ok in rates.items():
        for i in range(100):
            outcome = "ok" if (i % 2 == 0 or i // 2 >= 100 - ok) else "error"
            d.on_result(t0 + i * 0.05, host, outcome)


def test_outlier_success_rate_ejection_at_the_sweep():
    """ENV processSuccessRateEjections (the source's own example): rates {50, 100 x 4} give
    mean 90, stdev 20, threshold 90 - 1.9 * 20 = 52; the 50 % host is ejected at the sweep,
    not inline, and only thanks to always_eject_one_host (1 of 5 hosts is 20 % > 10 %)."""
    rates = {"h0": 100, "h1": 100, "h2": 100, "h3": 100, "h4": 50}
    d = OutlierDetector(OutlierConfig(), list(rates))
    _interval_of_traffic(d, rates)
    assert d.ejected(9.75) == []
    assert d.ejected(10) == ["h4"] and d.events == [(10, "eject", "h4")]
    strict = OutlierDetector(OutlierConfig(always_eject_one_host=False), list(rates))
    _interval_of_traffic(strict, rates)
    assert strict.ejected(10) == [] and strict.overflows == 1


def test_outlier_success_rate_needs_volume_and_hosts():
    """ENV: hosts below success_rate_request_volume are not evaluated, and fewer than
    success_rate_minimum_hosts evaluated hosts means no success-rate ejection."""
    rates = {"h0": 100, "h1": 100, "h2": 100, "h3": 100, "h4": 50}
    d = OutlierDetector(OutlierConfig(success_rate_request_volume=101), list(rates))
    _interval_of_traffic(d, rates)
    assert d.ejected(10) == []
    four = {h: r for h, r in rates.items() if h != "h0"}
    d4 = OutlierDetector(OutlierConfig(), list(four))
    _interval_of_traffic(d4, four)
    assert d4.ejected(10) == []


def test_outlier_failure_percentage_not_enforced_by_default():
    """ENV DEFAULT_ENFORCING_FAILURE_PERCENTAGE = 0: detected, never ejected, unless enforced."""
    def run(**kw):
        rates = {"h0": 100, "h1": 100, "h2": 100, "h3": 100, "h4": 0}
        d = OutlierDetector(OutlierConfig(consecutive_5xx=0, success_rate_request_volume=1000, **kw), list(rates))
        for host, ok in rates.items():
            for i in range(50):
                d.on_result(i * 0.1, host, "ok" if ok else "error")
        return d.ejected(10)

    assert run() == []
    assert run(enforcing_failure_percentage=100) == ["h4"]


def test_outlier_enforcement_and_jitter_draw_from_the_rng():
    """ENV enforceEjection: runtime featureEnabled(enforcing %) is a random draw; the ejection
    time gets a random jitter up to max_ejection_time_jitter. Without an RNG it is an error."""
    with pytest.raises(ValueError, match="needs rng"):
        OutlierDetector(OutlierConfig(enforcing_consecutive_5xx=50), HOSTS10)
    draws = iter([0.6, 0.4])
    d = OutlierDetector(OutlierConfig(enforcing_consecutive_5xx=50), HOSTS10, rng=lambda: next(draws))
    fail(d, 1, "h0", 5)  # 60 >= 50: not enforced, run reset
    assert d.ejected(1) == [] and d.consecutive_5xx("h0") == 0
    fail(d, 2, "h0", 5)  # 40 < 50: ejected
    assert d.ejected(2) == ["h0"]

    j = OutlierDetector(OutlierConfig(max_ejection_jitter_s=15), HOSTS10, rng=lambda: 0.5)
    fail(j, 0, "h0", 5)  # 30 + 7.5 s
    assert j.ejected(30) == ["h0"] and j.ejected(40) == []


def test_outlier_membership():
    """ENV addMemberUpdateCb: removed hosts stop counting (the cap's denominator and ejected
    count change); a host first seen in a result is added."""
    d = OutlierDetector(OutlierConfig(), ["a", "b"])
    d.on_result(0, "z", "ok")
    fail(d, 1, "a", 5)
    assert d.ejected(1) == ["a"]
    d.set_hosts(2, ["b", "c"])
    assert d.ejected(2) == []
    fail(d, 3, "b", 5)
    assert d.ejected(3) == ["b"]


@settings(max_examples=40, deadline=None)
@given(
    results=st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["a", "b", "c"]), st.sampled_from(["ok", "error"])),
        max_size=120,
    )
)
def test_outlier_ticking_on_time_and_lazy_sweeps_agree(results):
    """Sweeps fire at start + k * interval whether the engine ticks them or not."""
    cfg = OutlierConfig(consecutive_5xx=2, interval_s=5, base_ejection_s=5, max_ejection_s=20,
                        max_ejection_percent=100)
    ticked, lazy = OutlierDetector(cfg, ["a", "b", "c"]), OutlierDetector(cfg, ["a", "b", "c"])
    now = 0.0
    for advance, host, outcome in results:
        target = now + advance / 4
        while ticked.next_timer(now) <= target:
            now = ticked.next_timer(now)
            ticked.tick(now)
        now = target
        ticked.on_result(now, host, outcome)
        lazy.on_result(now, host, outcome)
    assert lazy.ejected(now + 100) == ticked.ejected(now + 100)
    assert lazy.events == ticked.events


def test_r4j_memoised_rate_verdicts_are_float32_arithmetic(monkeypatch):
    """_rate_at_least memoises R4J's float32 verdict (count * 100.0f / total >= threshold):
    each verdict is the float32 arithmetic's, including those exact arithmetic gets wrong,
    whether it comes from the table or is computed, and the table stays bounded."""
    import numpy as np

    from hailan_sim.models import breakers

    def f32(count, total, threshold):
        return bool(np.float32(count) * np.float32(100.0) / np.float32(total) >= np.float32(threshold))

    monkeypatch.setattr(breakers, "_RATES", {})
    monkeypatch.setattr(breakers, "_RATES_MAX", 500)
    thresholds = (33.3333334, 50.0, 66.66667, 80.0, 100.0, 1e-9)
    cases = [(c, t, th) for t in range(1, 40) for c in range(t + 1) for th in thresholds]
    assert any(f32(*k) != (k[0] * 100 / k[1] >= k[2]) for k in cases)  # float32 matters here
    for _ in range(2):  # computed, then (in part) from the table
        assert all(breakers._rate_at_least(*k) == f32(*k) for k in cases)
        assert len(breakers._RATES) <= 500

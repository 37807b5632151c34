"""Backoff against tenacity 9.1.4 and backoff 2.2.1; budgets by golden traces of their sources.

Distribution checks: two-sample Kolmogorov-Smirnov (scipy.stats.ks_2samp) at level
ALPHA = 1e-3 with 4000 draws a side, seeded, so deterministic. At that size the test
would reject an off-by-one in the exponent (U(0, v) vs U(0, 2v): D = 0.5) with p < 1e-100,
which the negative controls check.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from types import SimpleNamespace

import backoff as backoff_lib
import numpy as np
import pytest
import tenacity
from pydantic import TypeAdapter, ValidationError
from scipy import stats

from hailan_sim.models.distributions import UniformSampler
from hailan_sim.models.retry import (
    BackoffConfig,
    ConstantBackoff,
    DecorrelatedJitterBackoff,
    EnvoyRetryBudget,
    EqualJitterBackoff,
    FinagleBudgetConfig,
    FinagleRetryBudget,
    FullJitterBackoff,
    GrpcThrottle,
    RetryBudgetConfig,
    RetryPolicy,
)

ALPHA = 1e-3
N = 4000
BASE, CAP = 0.1, 5.0  # 2**6 * 0.1 = 6.4 > 5: attempt 6 is capped


def stream(seed: int) -> UniformSampler:
    return UniformSampler(np.random.default_rng(seed))


@contextmanager
def global_random(seed: int):
    """tenacity and backoff draw from the global `random`; seed it, then restore it."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def tenacity_wait(attempt_number: int, n: int, seed: int) -> np.ndarray:
    w = tenacity.wait_random_exponential(multiplier=BASE, max=CAP)
    state = SimpleNamespace(attempt_number=attempt_number)
    with global_random(seed):
        return np.array([w(state) for _ in range(n)])


def backoff_wait(k: int, n: int, seed: int) -> np.ndarray:
    """The k-th wait of backoff.on_exception(backoff.expo, factor=BASE, max_value=CAP)."""
    out = []
    with global_random(seed):
        for _ in range(n):
            gen = backoff_lib.expo(factor=BASE, max_value=CAP)
            gen.send(None)  # backoff._common._init_wait_gen
            for _ in range(k - 1):
                next(gen)
            out.append(backoff_lib.full_jitter(next(gen)))
    return np.array(out)


def ours(b, attempt: int, n: int, seed: int) -> np.ndarray:
    u = stream(seed)
    return np.array([b.delay(attempt, 0.0, u) for _ in range(n)])


# ------------------------------------------------------------------ full jitter vs libraries


@pytest.mark.parametrize("attempt", [1, 3, 6])
def test_full_jitter_matches_tenacity_and_backoff_in_distribution(attempt):
    b = FullJitterBackoff(base_s=BASE, cap_s=CAP)
    mine = ours(b, attempt, N, seed=10 + attempt)
    # AWS n = attempt; tenacity's exponent is attempt_number - 1 and backoff's expo
    # yields factor * 2**n for n = 0, 1, ...: our retry k is their attempt k + 1.
    ten = tenacity_wait(attempt + 1, N, seed=20 + attempt)
    bo = backoff_wait(attempt + 1, N, seed=30 + attempt)
    assert stats.ks_2samp(mine, ten).pvalue > ALPHA
    assert stats.ks_2samp(mine, bo).pvalue > ALPHA
    # negative control: their attempt k (half our window) is rejected
    assert stats.ks_2samp(mine, tenacity_wait(attempt, N, seed=40)).pvalue < ALPHA
    v = min(CAP, 2**attempt * BASE)
    for sample in (mine, ten, bo):
        assert sample.min() >= 0.0 and sample.max() < v


def test_full_jitter_equals_tenacity_and_backoff_draw_for_draw():
    # random.uniform(a, b) is a + (b - a) * random(): with the same random() our delay is
    # the same float, which pins the exponent exactly (not just in distribution).
    b = FullJitterBackoff(base_s=BASE, cap_s=CAP)
    for k in range(1, 10):
        with global_random(k):
            mine = b.delay(k, 0.0, random.random)
        assert mine == tenacity_wait(k + 1, 1, seed=k)[0]
        assert mine == backoff_wait(k + 1, 1, seed=k)[0]


def test_negative_control_off_by_one_is_detected():
    b = FullJitterBackoff(base_s=BASE, cap_s=CAP)
    mine = ours(b, 2, N, seed=1)
    assert stats.ks_2samp(mine, tenacity_wait(2, N, seed=2)).pvalue < 1e-100


def test_exponential_windows_and_cap_exactly():
    b = FullJitterBackoff(base_s=BASE, cap_s=CAP)
    top = 1.0 - 2.0**-53  # the largest u() can return
    for k, v in [(1, 0.2), (2, 0.4), (3, 0.8), (5, 3.2), (6, 5.0), (60, 5.0), (5000, 5.0)]:
        assert b.delay(k, 0.0, lambda: 0.0) == 0.0
        assert b.delay(k, 0.0, lambda: top) < v
        assert b.delay(k, 0.0, lambda: 0.5) == v / 2


def test_equal_jitter_is_uniform_on_upper_half():
    b = EqualJitterBackoff(base_s=BASE, cap_s=CAP)
    for k in (1, 4, 7):
        v = min(CAP, 2**k * BASE)
        draws = ours(b, k, N, seed=50 + k)
        assert draws.min() >= v / 2 and draws.max() < v
        assert stats.kstest(draws, stats.uniform(loc=v / 2, scale=v / 2).cdf).pvalue > ALPHA
    assert b.delay(1, 0.0, lambda: 0.0) == 0.1  # v/2 with v = 2 * base


def test_decorrelated_follows_the_aws_recurrence():
    b = DecorrelatedJitterBackoff(base_s=BASE, cap_s=CAP)
    # ExpoBackoffDecorr: sleep = base; each retry sleep = min(cap, uniform(base, 3 * sleep))
    with global_random(7):
        sleep, expected = BASE, []
        for _ in range(30):
            sleep = min(CAP, random.uniform(BASE, sleep * 3))
            expected.append(sleep)
    with global_random(7):
        prev, got = 123.0, []  # prev is ignored on the first retry
        for k in range(1, 31):
            prev = b.delay(k, prev, random.random)
            got.append(prev)
    assert got == expected
    assert CAP in got  # it reaches the cap and can stay there
    # supports: [base, min(cap, 3 * prev)]
    u = stream(8)
    prev = BASE
    for k in range(1, 2000):
        d = b.delay(k, prev, u)
        assert BASE <= d <= min(CAP, 3 * prev if k > 1 else 3 * BASE)
        prev = d


def test_constant_and_config_parsing():
    ta = TypeAdapter(BackoffConfig)
    assert ta.validate_python({"kind": "constant", "delay_s": 2}).delay(5, 0.0, None) == 2.0
    assert isinstance(ta.validate_python({"kind": "decorrelated"}), DecorrelatedJitterBackoff)
    with pytest.raises(ValidationError):
        ta.validate_python({"kind": "exponential_full_jitter", "base_s": 2, "cap_s": 1})
    with pytest.raises(ValidationError):
        ta.validate_python({"kind": "exponential_full_jitter", "bsae_s": 2})
    with pytest.raises(ValidationError):
        ta.validate_python({"kind": "fibonacci"})


# ------------------------------------------------------------------ policy


def test_default_policy_is_the_spec_no_retries():
    p = RetryPolicy()
    assert not p.should_retry(1, "error", True)
    assert isinstance(p.backoff, ConstantBackoff)


def test_should_retry_matrix():
    p = RetryPolicy(max_attempts=3, retry_on=["timeout", "error"], idempotent_only=True)
    assert p.should_retry(1, "timeout", True)
    assert p.should_retry(2, "error", True)
    assert not p.should_retry(3, "error", True)  # 3 attempts made: done
    assert not p.should_retry(1, "rejected", True)  # not in retry_on
    assert not p.should_retry(1, "ok", True)
    assert not p.should_retry(1, "timeout", False)  # POST etc.
    q = p.model_copy(update={"idempotent_only": False})
    assert q.should_retry(1, "timeout", False)
    with pytest.raises(ValidationError):
        RetryPolicy(retry_on=["5xx"])
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)
    r = RetryPolicy.model_validate(
        {"max_attempts": 4, "backoff": {"kind": "exponential_full_jitter", "base_s": 0.05, "cap_s": 1}}
    )
    assert r.delay(2, 0.0, lambda: 0.5) == 0.1  # U(0, 0.2) at u = 0.5


# ------------------------------------------------------------------ Finagle RetryBudget


def test_finagle_defaults():
    b = FinagleRetryBudget()
    # RetryBudget.scala: deposit 1000, withdrawal (1000 / 0.2).toInt, reserve 10 * 10 * 5000
    assert (b.deposit_amount, b.withdrawal_amount, b.reserve) == (1000, 5000, 500_000)
    assert b.balance(0.0) == 100  # "the reserve is 100 retries"


def test_finagle_reserve_alone_then_20_percent_of_requests():
    b = FinagleRetryBudget()
    assert sum(b.try_withdraw(0.0) for _ in range(101)) == 100
    assert b.balance(0.0) == 0
    for _ in range(100):  # 100 requests deposit 100 000 = 20 retries
        b.deposit(0.5)
    assert sum(b.try_withdraw(0.5) for _ in range(21)) == 20
    assert not b.try_withdraw(0.9)


def test_finagle_withdrawals_expire_with_the_window_and_its_drift():
    # Withdrawals are negative entries in the same 10 s / 10 slice window.
    b = FinagleRetryBudget()
    assert sum(b.try_withdraw(0.0) for _ in range(100)) == 100
    for t in range(1, 10):  # touched every second: the t=0 slice is overwritten at 10.0
        assert not b.try_withdraw(float(t))
    assert b.count(9.999) == 0
    assert b.count(10.0) == 500_000

    # Touched sparsely, a slice outlives ttl: WindowedAdder rolls at the first touch at
    # least a window after the previous roll (`old = now()`), not on a fixed grid.
    b = FinagleRetryBudget()
    assert sum(b.try_withdraw(0.0) for _ in range(100)) == 100
    assert b.count(5.5) == 0  # roll at 5.5: slice -> buf[0], skip 4, old = 5.5
    assert b.count(9.9) == 0  # roll at 9.9: skip 3, i wraps to 0
    assert not b.try_withdraw(10.899)  # 10.899 - 9.9 < 1 s: no roll
    assert b.count(10.9) == 500_000  # roll overwrites buf[0]: 10.9 s after the retries


def test_finagle_budget_goes_below_the_reserve_when_deposits_expire_first():
    b = FinagleRetryBudget()
    for _ in range(1000):
        b.deposit(0.0)  # 1 000 000 tokens: 200 retries + 100 reserve
    assert sum(b.try_withdraw(5.0) for _ in range(400)) == 300
    for t in range(6, 10):
        b.count(float(t))
    assert b.count(9.999) == 0
    # the deposits (slice of t=0) expire at 10.0, the withdrawals (t=5) are still there
    assert b.count(10.0) == -1_000_000 and b.balance(10.0) == -200
    assert not b.try_withdraw(12.0)  # no retry at all, despite "minRetriesPerSec = 10"
    assert b.count(14.999) == -1_000_000
    assert b.count(15.0) == -1_000_000  # last roll at 14.999: no roll before 15.999
    assert b.count(16.0) == 500_000


def test_finagle_edge_parameters():
    assert not FinagleRetryBudget(min_retries_per_s=0, percent_can_retry=0.0).try_withdraw(0.0)  # Empty
    only_min = FinagleRetryBudget(min_retries_per_s=2, percent_can_retry=0.0)
    assert (only_min.deposit_amount, only_min.withdrawal_amount, only_min.reserve) == (0, 1, 20)
    only_min.deposit(0.0)  # requests earn nothing
    assert sum(only_min.try_withdraw(0.0) for _ in range(25)) == 20
    assert FinagleRetryBudget(percent_can_retry=0.3).withdrawal_amount == 3333  # .toInt
    # Scala Int arithmetic: minRetriesPerSec * ttl * withdrawal wraps at 2**31
    assert FinagleRetryBudget(ttl_s=60, min_retries_per_s=1000, percent_can_retry=0.01).reserve == 1_705_032_704
    with pytest.raises(ValueError):
        FinagleRetryBudget(ttl_s=0.5)
    with pytest.raises(ValueError):
        FinagleRetryBudget(ttl_s=61)
    ta = TypeAdapter(RetryBudgetConfig)
    cfg = ta.validate_python({"kind": "finagle"})
    assert isinstance(cfg, FinagleBudgetConfig) and cfg.build().balance(0.0) == 100
    with pytest.raises(ValidationError):
        ta.validate_python({"kind": "finagle", "ttl": 10})


def test_finagle_start_time_is_the_first_slice_origin():
    b = FinagleRetryBudget(start=100.0)
    assert sum(b.try_withdraw(100.2) for _ in range(100)) == 100
    for t in range(101, 110):
        b.count(float(t))
    assert b.count(109.999) == 0 and b.count(110.0) == 500_000


# ------------------------------------------------------------------ Envoy retry budget


@pytest.mark.parametrize(
    "active, max_retries",
    [(0, 3), (10, 3), (14, 3), (15, 3), (19, 3), (20, 4), (35, 7), (100, 20), (1001, 200)],
)
def test_envoy_budget_is_20_percent_of_active_with_a_floor_of_3(active, max_retries):
    b = EnvoyRetryBudget()
    assert b.max_retries(active) == max_retries
    assert b.allow(active, max_retries - 1)
    assert not b.allow(active, max_retries)


def test_envoy_budget_truncates_the_double():
    b = EnvoyRetryBudget(budget_percent=25.0, min_retry_concurrency=0)
    assert b.max_retries(7) == 1  # 1.75 -> 1
    assert not b.allow(3, 0)  # 0.75 -> 0: no retries at all
    ta = TypeAdapter(RetryBudgetConfig)
    assert ta.validate_python({"kind": "envoy"}).build().max_retries(50) == 10


# ------------------------------------------------------------------ gRPC throttling


def test_grpc_throttle_a6_golden():
    t = GrpcThrottle(max_tokens=10, token_ratio=0.1)
    assert t.retries_allowed() and t.tokens == 10
    assert [t.on_failure() for _ in range(5)] == [True, True, True, True, False]  # 9..5
    assert t.tokens == 5 and not t.retries_allowed()  # 5 > 10/2 is false
    t.on_success()
    assert t.tokens == 5.1 and t.retries_allowed()
    for _ in range(100):
        t.on_success()
    assert t.tokens == 10  # clamped at max
    for _ in range(20):
        t.on_failure()
    assert t.tokens == 0  # clamped at 0
    for _ in range(50):
        t.on_success()
    assert t.tokens == 5 and not t.retries_allowed()
    t.on_success()
    assert t.retries_allowed()


def test_grpc_throttle_integer_milli_tokens():
    t = GrpcThrottle(max_tokens=3, token_ratio=0.1239)  # 3 decimals: 123 milli-tokens
    assert t.milli_ratio == 123
    t.on_failure()
    t.on_failure()  # 1000 milli: 1000 > 1500 false
    assert not t.retries_allowed()
    for _ in range(5):
        t.on_success()  # 1615 > 1500
    assert t.milli_tokens == 1615 and t.retries_allowed()
    # 0.1 * 3 accumulated in floats would drift; milli-tokens do not
    u = GrpcThrottle(max_tokens=1, token_ratio=0.1)
    u.on_failure()
    for _ in range(5):
        u.on_success()
    assert u.milli_tokens == 500 and not u.retries_allowed()  # 500 > 500 is false
    u.on_success()
    assert u.retries_allowed()
    with pytest.raises(ValueError):
        GrpcThrottle(max_tokens=0, token_ratio=0.1)
    with pytest.raises(ValueError):
        GrpcThrottle(max_tokens=1001, token_ratio=0.1)
    with pytest.raises(ValueError):
        GrpcThrottle(max_tokens=10, token_ratio=0.0004)

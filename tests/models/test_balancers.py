"""Load balancers: golden traces of the spec's quirks, distributions, P2C, peak EWMA, ring hash.

Statistical checks use fixed seeds, so they are deterministic; their tolerances are the
bounds a correct implementation would violate with the stated small probability:
chi-square goodness of fit at p < 1e-4, or 4.4 sigma (two-sided ~1e-5) around a binomial
or Beta mean.
"""

from __future__ import annotations

import heapq
import math
from itertools import cycle

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from scipy import stats

from hailan_sim.models.balancers import (
    BalancerConfig,
    LeastConnectionsBalancer,
    P2CLeastRequestBalancer,
    PeakEwmaBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
    WeightedRandomBalancer,
    make_balancer,
)
from hailan_sim.models.distributions import UniformSampler

CHI2_ALPHA = 1e-4  # a correct balancer fails a chi-square check with this probability
Z = 4.4  # two-sided normal tail ~1.1e-5


def stream(seed: int) -> UniformSampler:
    return UniformSampler(np.random.default_rng(seed))


def fixed(*values: float):
    """A u() that returns the given draws in order (golden traces)."""
    it = iter(values)
    return lambda: next(it)


def counts(picks, names):
    return np.array([sum(1 for p in picks if p == n) for n in names])


def assert_chi2(observed, probs):
    probs = np.asarray(probs, dtype=float)
    expected = probs / probs.sum() * observed.sum()
    p = stats.chisquare(observed, expected).pvalue
    assert p > CHI2_ALPHA, (observed, expected, p)


def no_u():
    raise AssertionError("this balancer must not draw")


# ------------------------------------------------------------------ config and factory


def test_configs_parse_by_kind_and_build():
    ta = TypeAdapter(BalancerConfig)
    kinds = {
        "random": RandomBalancer,
        "round_robin": RoundRobinBalancer,
        "least_connections": LeastConnectionsBalancer,
        "weighted_random": WeightedRandomBalancer,
        "p2c_least_request": P2CLeastRequestBalancer,
        "peak_ewma": PeakEwmaBalancer,
        "ring_hash": RingHashBalancer,
    }
    for kind, cls in kinds.items():
        cfg = ta.validate_python({"kind": kind})
        assert isinstance(make_balancer(cfg), cls)
    with pytest.raises(ValidationError):
        ta.validate_python({"kind": "least_connections", "release_on_exit": True})  # typo
    with pytest.raises(ValidationError):
        ta.validate_python({"kind": "maglev"})
    cfg = ta.validate_python({"kind": "peak_ewma"})
    assert (cfg.default_rtt_s, cfg.decay_s) == (0.03, 10.0)
    with pytest.raises(ValidationError):
        cfg.decay_s = 1.0  # frozen


# ------------------------------------------------------------------ random


def test_random_is_floor_of_u_times_n():
    b = RandomBalancer()
    names = ["a", "b", "c", "d", "e"]
    picks = [b.choose(0.0, names, fixed(u)) for u in (0.0, 0.1999, 0.2, 0.5, 0.9999999)]
    assert picks == ["a", "a", "b", "c", "e"]
    assert b.choose(0.0, [], fixed(0.5)) is None  # instances[0] of [] is undefined


def test_random_is_uniform():
    b, u = RandomBalancer(), stream(1)
    names = [f"i{k}" for k in range(5)]
    picks = [b.choose(0.0, names, u) for _ in range(50_000)]
    assert_chi2(counts(picks, names), [1] * 5)


# ------------------------------------------------------------------ round robin


def test_round_robin_index_survives_a_shrink_and_returns_undefined():
    b = RoundRobinBalancer()
    abc, ab = ["a", "b", "c"], ["a", "b"]
    trace = [b.choose(0.0, abc, no_u) for _ in range(5)]  # a b c a b, index now 2
    assert trace == ["a", "b", "c", "a", "b"] and b.current_index == 2
    # c is deregistered: instances[2] is undefined -> the caller's instance.host throws
    assert b.choose(0.0, ab, no_u) is None
    assert b.current_index == 1  # (2 + 1) % 2
    assert [b.choose(0.0, ab, no_u) for _ in range(3)] == ["b", "a", "b"]
    # growing keeps the index too: no failure, but the order restarts mid-list
    assert [b.choose(0.0, abc, no_u) for _ in range(3)] == ["a", "b", "c"]


def test_round_robin_empty_list_poisons_the_index_with_nan():
    b = RoundRobinBalancer()
    assert b.choose(0.0, ["a"], no_u) == "a"
    assert b.choose(0.0, [], no_u) is None  # (0 + 1) % 0 -> NaN
    assert b.current_index is None
    assert [b.choose(0.0, ["a", "b"], no_u) for _ in range(4)] == [None] * 4


def test_round_robin_shrink_by_two_fails_once_per_lap():
    # 4 instances, index at 3, list shrinks to 2: instances[3] undefined, index (3+1)%2 = 0
    b = RoundRobinBalancer()
    four = ["a", "b", "c", "d"]
    assert [b.choose(0.0, four, no_u) for _ in range(3)] == ["a", "b", "c"]
    assert b.choose(0.0, ["a", "b"], no_u) is None
    assert [b.choose(0.0, ["a", "b"], no_u) for _ in range(2)] == ["a", "b"]


# ------------------------------------------------------------------ least connections


def test_least_connections_ties_go_to_the_first_and_counts_never_fall():
    b = LeastConnectionsBalancer()  # spec: HttpClient never calls releaseConnection
    abc = ["a", "b", "c"]
    picks = []
    for _ in range(6):
        inst = b.choose(0.0, abc, no_u)
        b.on_start(inst, 0.0)
        b.on_end(inst, 0.1, 0.1, True)  # finished, but never released
        picks.append(inst)
    assert picks == ["a", "b", "c", "a", "b", "c"]  # degenerates to round robin
    assert b.counts == {"a": 2, "b": 2, "c": 2}


def test_least_connections_herds_onto_a_new_instance():
    b = LeastConnectionsBalancer()
    abc = ["a", "b", "c"]
    for _ in range(300):
        b.choose(0.0, abc, no_u)
    assert b.counts == {"a": 100, "b": 100, "c": 100}
    # d registers: its count 0 < 100, so the next 100 calls all go to d, back to back
    abcd = abc + ["d"]
    assert [b.choose(0.0, abcd, no_u) for _ in range(100)] == ["d"] * 100
    assert b.choose(0.0, abcd, no_u) == "a"  # all at 100: ties to the first


def test_least_connections_keeps_counts_of_instances_that_left():
    b = LeastConnectionsBalancer()
    for _ in range(4):
        b.choose(0.0, ["a", "b"], no_u)  # a2 b2
    assert [b.choose(0.0, ["b"], no_u) for _ in range(3)] == ["b"] * 3  # a gone: b5
    # a comes back with its old count 2 and takes the next 3 calls
    # (3 to catch up with b's 5, then the tie goes to a, the first)
    assert [b.choose(0.0, ["a", "b"], no_u) for _ in range(4)] == ["a"] * 4
    assert b.counts == {"a": 6, "b": 5}
    assert b.choose(0.0, [], no_u) is None  # undefined.serviceId throws: nothing counted
    assert b.counts == {"a": 6, "b": 5}


def test_least_connections_with_release_sends_sequential_calls_to_the_first():
    # release_on_end: counts go back to 0 after each call; sequential calls always tie
    b = LeastConnectionsBalancer(release_on_end=True)
    abc = ["a", "b", "c"]
    for _ in range(5):
        inst = b.choose(0.0, abc, no_u)
        assert inst == "a"
        b.on_start(inst, 0.0)
        b.on_end(inst, 0.1, 0.1, True)
    assert b.counts["a"] == 0
    # overlapping calls spread: a and b in flight, the third goes to c
    assert [b.choose(0.0, abc, no_u) for _ in range(3)] == ["a", "b", "c"]
    b.release("x")  # Math.max(0, (undefined || 0) - 1)
    assert b.counts["x"] == 0


# ------------------------------------------------------------------ weighted random


def test_weighted_random_golden_boundaries():
    b = WeightedRandomBalancer({"a": 1, "b": 2, "c": 1})  # total 4
    names = ["a", "b", "c"]
    # random = u*4; a when random - 1 <= 0: u in [0, 0.25]; b when u in (0.25, 0.75]
    got = [b.choose(0.0, names, fixed(u)) for u in (0.0, 0.25, 0.2500001, 0.75, 0.7500001)]
    assert got == ["a", "a", "b", "b", "c"]
    assert b.choose(0.0, [], fixed(0.3)) is None


def test_weighted_random_weight_zero_counts_as_one():
    b = WeightedRandomBalancer({"a": 0, "b": 1, "c": float("nan")})  # `|| 1`: 0 and NaN -> 1
    names = ["a", "b", "c", "d"]  # d has no weight: undefined -> 1
    u = stream(2)
    n = 40_000
    picks = [b.choose(0.0, names, u) for _ in range(n)]
    obs = counts(picks, names)
    # each is Binomial(n, 1/4): a weight-0 instance that really weighed 0 would get none
    sd = math.sqrt(n * 0.25 * 0.75)
    assert all(abs(c - n / 4) <= Z * sd for c in obs), obs


def test_weighted_random_follows_weights():
    b = WeightedRandomBalancer({"a": 1, "b": 2, "c": 3, "d": 0})
    names = ["a", "b", "c", "d"]
    u = stream(3)
    picks = [b.choose(0.0, names, u) for _ in range(60_000)]
    assert_chi2(counts(picks, names), [1, 2, 3, 1])


# ------------------------------------------------------------------ P2C least request


def test_p2c_takes_the_less_loaded_of_the_two_picks():
    b = P2CLeastRequestBalancer()
    names = ["a", "b", "c"]
    for _ in range(3):
        b.on_start("a", 0.0)
    b.on_start("b", 0.0)
    # distinct picks: j=0 picks floor(u*3), j=1 picks from the remaining two
    assert b.choose(0.0, names, fixed(0.0, 0.0)) == "b"  # a(3) vs b(1)
    assert b.choose(0.0, names, fixed(0.5, 0.99)) == "c"  # b(1) vs c(0)
    b.on_start("c", 0.0)  # b 1, c 1: ties keep the first pick
    assert b.choose(0.0, names, fixed(0.5, 0.99)) == "b"
    assert b.choose(0.0, ["a"], no_u) == "a"
    assert b.choose(0.0, [], no_u) is None
    for _ in range(3):
        b.on_end("a", 1.0, 1.0, True)
    assert b.active["a"] == 0


@pytest.mark.parametrize(
    "with_replacement, probs",
    [
        # active a=2, b=1, c=0. Distinct pairs: c wins whenever drawn (4 of 6 ordered
        # pairs), b wins {a, b} (2 of 6), a never.
        (False, [0.0, 1 / 3, 2 / 3]),
        # Envoy draws with replacement: a only when drawn twice (1/9), b when both draws
        # are in {a, b} but not (a, a): 3/9, c otherwise: 5/9.
        (True, [1 / 9, 3 / 9, 5 / 9]),
    ],
)
def test_p2c_pick_distribution(with_replacement, probs):
    b = P2CLeastRequestBalancer(with_replacement=with_replacement)
    names = ["a", "b", "c"]
    b.on_start("a", 0.0)
    b.on_start("a", 0.0)
    b.on_start("b", 0.0)
    u = stream(4)
    picks = [b.choose(0.0, names, u) for _ in range(30_000)]
    obs = counts(picks, names)
    if probs[0] == 0.0:
        assert obs[0] == 0
        obs, probs = obs[1:], probs[1:]
    assert_chi2(obs, probs)


def _run_closed_loop(balancer, names, rtt_of, n_requests, gap, u):
    """Requests every `gap` seconds; each call lasts rtt_of[instance]. Returns the picks."""
    pending: list[tuple[float, int, str, float]] = []
    picks = []
    for k in range(n_requests):
        now = k * gap
        while pending and pending[0][0] <= now:
            end, _, inst, start = heapq.heappop(pending)
            balancer.on_end(inst, end, end - start, True)
        inst = balancer.choose(now, names, u)
        balancer.on_start(inst, now)
        heapq.heappush(pending, (now + rtt_of[inst], k, inst, now))
        picks.append(inst)
    return picks


def test_p2c_steers_away_from_a_host_holding_requests():
    # c is slow (1 s), a and b fast (10 ms); a request every 20 ms for 40 s. Random would
    # give c a third (667 of 2000).
    rtt = {"a": 0.01, "b": 0.01, "c": 1.0}
    picks = _run_closed_loop(P2CLeastRequestBalancer(), ["a", "b", "c"], rtt, 2000, 0.02, stream(5))
    # A fast host is always idle at a pick (its call ended 10 ms before), so c can only win
    # while it is idle too (a tie it wins as the first draw); each pick keeps it busy for
    # 1 s. Hence at most one pick of c per second of the 40 s run, plus one.
    assert picks.count("c") <= 41, picks.count("c")
    assert picks.count("c") > 0  # it is not starved either: it wins ties while idle


# ------------------------------------------------------------------ peak EWMA


def test_peak_ewma_tower_default_decay():
    # tower peak_ewma.rs `default_decay`: default 10 ms, decay 1 s, load decays with time
    b = PeakEwmaBalancer(default_rtt_s=0.010, decay_s=1.0)
    b._get("a", 0.0)
    assert b.load("a", 0.0) == 0.010
    assert 0.009 < b.load("a", 0.1) < 0.010
    assert 0.008 < b.load("a", 0.2) < 0.009
    assert b.load("a", 0.2) == pytest.approx(0.010 * math.exp(-0.2), rel=1e-12)


def test_peak_ewma_tower_compound_decay_golden():
    # tower peak_ewma.rs `compound_decay`, in seconds: default 20 ms, decay 1 s
    b = PeakEwmaBalancer(default_rtt_s=0.020, decay_s=1.0)
    b._get("s", 0.0)
    assert b.load("s", 0.0) == 0.020
    b.on_start("s", 0.1)  # rsp0
    assert b.load("s", 0.1) > 0.020
    b.on_start("s", 0.2)  # rsp1
    assert b.load("s", 0.2) > 0.040
    b.on_end("s", 0.3, 0.2, True)  # rsp0 done: 200 ms is a new peak; 1 pending
    assert b.load("s", 0.3) == pytest.approx(0.400, abs=1e-15)
    b.on_end("s", 0.4, 0.2, True)  # rsp1 done: 200 ms is not above the estimate
    assert b.load("s", 0.4) == pytest.approx(0.200, abs=1e-15)
    assert b.load("s", 1.4) < 0.100
    assert b.load("s", 11.4) < 0.0001


def test_peak_ewma_a_peak_resets_up_and_a_lower_rtt_pulls_down_by_elapsed_time():
    b = PeakEwmaBalancer(default_rtt_s=0.03, decay_s=10.0)
    b._get("a", 0.0)
    b.on_start("a", 0.0)
    b.on_end("a", 0.5, 0.5, False)  # failures are observed too
    assert b.state["a"].rtt == 0.5
    b.on_start("a", 0.5)
    b.on_end("a", 5.5, 0.1, True)  # 5 s since the last update: w = e^-0.5
    w = math.exp(-0.5)
    assert b.state["a"].rtt == pytest.approx(0.5 * w + 0.1 * (1 - w), rel=1e-15)


def test_peak_ewma_avoids_a_slow_host():
    rtt = {"a": 0.01, "b": 0.01, "c": 0.5}
    b = PeakEwmaBalancer(default_rtt_s=0.03, decay_s=10.0)
    picks = _run_closed_loop(b, ["a", "b", "c"], rtt, 1000, 0.02, stream(6))  # 20 s
    # fast hosts: estimate <= 30 ms (they never see an RTT above it) and no pending call at
    # a pick (gap 20 ms > 10 ms), so cost <= 0.03. c: once picked it has a pending call
    # (cost >= 2 * 0.03 * e^-0.05 > 0.03) until it answers at +0.5 s with a 0.5 s peak,
    # which decays to 0.5 * e^-2 = 0.068 > 0.03 at most in 20 s. So c is picked at most once.
    assert picks.count("c") <= 1


# ------------------------------------------------------------------ ring hash


def owners(b, names, keys):
    return [b.choose(0.0, names, no_u, key=k) for k in keys]


def test_ring_hash_same_key_same_host_whatever_the_list_order():
    names = [f"svc-{i}" for i in range(5)]
    b = RingHashBalancer(160)
    keys = range(2000)
    first = owners(b, names, keys)
    assert owners(b, names, keys) == first
    assert owners(RingHashBalancer(160), list(reversed(names)), keys) == first
    assert set(first) == set(names)
    assert b.choose(0.0, [], no_u, key=1) is None
    # without a key: a random point on the ring
    assert b.choose(0.0, names, fixed(0.0)) == b._owners[0]


def test_ring_hash_shares_are_balanced():
    n, V, K = 5, 160, 20_000
    names = [f"svc-{i}" for i in range(n)]
    got = owners(RingHashBalancer(V), names, range(K))
    # a host's ring share is Beta(V, (n-1)V) (N = nV uniform points), plus binomial key noise
    N = n * V
    var_share = (n - 1) / (n * n * (N + 1))
    sd = math.sqrt(var_share + (1 / n) * (1 - 1 / n) / K)
    for name in names:
        assert abs(got.count(name) / K - 1 / n) <= Z * sd, (name, got.count(name))


@pytest.mark.parametrize("n", [3, 4, 8])
def test_ring_hash_adding_a_host_moves_only_its_share(n):
    V, K = 160, 20_000
    names = [f"svc-{i}" for i in range(n)]
    b = RingHashBalancer(V)
    before = owners(b, names, range(K))
    after = owners(b, names + ["svc-new"], range(K))
    moved = [k for k in range(K) if before[k] != after[k]]
    # exact: every moved key moved to the new host, none between old hosts
    assert all(after[k] == "svc-new" for k in moved)
    assert after.count("svc-new") == len(moved)
    # its share S ~ Beta(V, nV): mean 1/(n+1), var n/((n+1)^2 (N+1)), N = (n+1)V; the
    # K keys add binomial noise p(1-p)/K
    p, N = 1 / (n + 1), (n + 1) * V
    sd = math.sqrt(n / ((n + 1) ** 2 * (N + 1)) + p * (1 - p) / K)
    assert abs(len(moved) / K - p) <= Z * sd, (len(moved) / K, p, sd)
    # and removing it again restores every key
    assert owners(b, names, range(K)) == before


def test_ring_hash_removing_a_host_moves_only_its_keys():
    names = [f"svc-{i}" for i in range(6)]
    b = RingHashBalancer(100)
    before = owners(b, names, range(5000))
    after = owners(b, names[:2] + names[3:], range(5000))
    for k, (x, y) in enumerate(zip(before, after)):
        assert x == y or x == "svc-2", k


def test_balancers_are_deterministic_under_the_same_stream():
    cfgs = TypeAdapter(BalancerConfig)
    names = ["a", "b", "c", "d"]
    for kind in ["random", "weighted_random", "p2c_least_request", "peak_ewma", "ring_hash"]:
        runs = []
        for _ in range(2):
            b = make_balancer(cfgs.validate_python({"kind": kind}), {"a": 2.0})
            u = stream(7)
            seq = []
            for k, n in zip(range(500), cycle([4, 3, 4])):
                inst = b.choose(k * 0.01, names[:n], u, key=k % 17)
                b.on_start(inst, k * 0.01)
                b.on_end(inst, k * 0.01 + 0.005, 0.005, True)
                seq.append(inst)
            runs.append(seq)
        assert runs[0] == runs[1], kind


def test_distinct_pair_is_the_partial_fisher_yates():
    """_distinct_picks unrolls the pair (k = 2, P2C's case): the same indices as the
    general partial Fisher-Yates loop from the same draws, for every n and many draws."""
    import math
    import random

    from hailan_sim.models.balancers import _distinct_picks

    def loop(n, k, u):
        k = min(k, n)
        pool = list(range(n))
        for j in range(k):
            r = j + math.floor(u() * (n - j))
            pool[j], pool[r] = pool[r], pool[j]
        return pool[:k]

    for n in range(1, 9):
        for seed in range(300):
            a, b = random.Random(seed).random, random.Random(seed).random
            assert _distinct_picks(n, 2, a) == loop(n, 2, b), (n, seed)
            assert _distinct_picks(n, 3, a) == loop(n, 3, b), (n, seed)

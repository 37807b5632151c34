"""Load balancers: which instance of a callee a caller picks.

Plain state machines. The engine calls ``choose`` before a call, ``on_start`` when the call
to the chosen instance starts and ``on_end`` when it finishes; ``now`` is simulated
seconds and ``u()`` a seeded uniform draw on [0, 1). Nothing here reads a clock, uses
``hash()`` or iterates a set.

Kinds (the ``kind`` of the config):

- ``random``, ``round_robin``, ``least_connections``, ``weighted_random``: the four classes
  of spec 074 section 3.4.1, quirks included (see each class).
- ``p2c_least_request``: Envoy ``least_request`` with equal weights (power of two choices on
  active requests counted by this balancer, i.e. per proxy).
- ``peak_ewma``: P2C over peak-EWMA cost as in linkerd2-proxy / tower and Finagle.
- ``ring_hash``: consistent hashing of the request key onto a ring of virtual nodes.

docs/mechanisms/balancers.md has the semantics, the sources and the deliberate differences.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import Annotated, Callable, Literal, Mapping, Optional, Protocol, Sequence, Union

from pydantic import Field, PositiveFloat

from hailan_sim.models._base import Frozen

Uniform = Callable[[], float]


class Balancer(Protocol):
    def choose(
        self, now: float, instances: Sequence[str], u: Uniform, key: int | None = None
    ) -> str | None: ...

    def on_start(self, instance: str, now: float) -> None: ...  # a call to instance started

    def on_end(self, instance: str, now: float, rtt: float, ok: bool) -> None: ...  # it finished


# --------------------------------------------------------------------------- configuration


class RandomConfig(Frozen):
    """Spec 3.4.1 RandomLoadBalancer (and HttpClient/GrpcClient.loadBalance in 3.3)."""

    kind: Literal["random"] = "random"


class RoundRobinConfig(Frozen):
    """Spec 3.4.1 RoundRobinLoadBalancer, index kept across list changes."""

    kind: Literal["round_robin"] = "round_robin"


class LeastConnectionsConfig(Frozen):
    """Spec 3.4.1 LeastConnectionsLoadBalancer."""

    kind: Literal["least_connections"] = "least_connections"
    release_on_end: bool = Field(
        False,
        description="call releaseConnection when a call ends; the spec's HttpClient never does (false)",
    )


class WeightedRandomConfig(Frozen):
    """Spec 3.4.1 WeightedRandomLoadBalancer (weights from instance metadata)."""

    kind: Literal["weighted_random"] = "weighted_random"


class P2CLeastRequestConfig(Frozen):
    """Envoy least_request with equal weights: best of ``choice_count`` random picks."""

    kind: Literal["p2c_least_request"] = "p2c_least_request"
    choice_count: int = Field(2, ge=2, le=100, description="Envoy default 2")
    with_replacement: bool = Field(
        False,
        description=(
            "false: distinct picks (as tower/linkerd and Finagle do); true: independent picks "
            "that may repeat, exactly as Envoy's unweightedHostPick"
        ),
    )


class PeakEwmaConfig(Frozen):
    """P2C over peak-EWMA cost (linkerd2-proxy / tower, Finagle p2cPeakEwma)."""

    kind: Literal["peak_ewma"] = "peak_ewma"
    default_rtt_s: PositiveFloat = Field(0.03, description="initial estimate: linkerd 30 ms, Envoy 10 ms")
    decay_s: PositiveFloat = Field(10.0, description="EWMA decay time (linkerd, Finagle, Envoy: 10 s)")


class RingHashConfig(Frozen):
    """Consistent hashing of the request key on a ring of virtual nodes."""

    kind: Literal["ring_hash"] = "ring_hash"
    vnodes_per_host: int = Field(160, ge=1, le=100_000, description="points on the ring per instance")


BalancerConfig = Annotated[
    Union[
        RandomConfig,
        RoundRobinConfig,
        LeastConnectionsConfig,
        WeightedRandomConfig,
        P2CLeastRequestConfig,
        PeakEwmaConfig,
        RingHashConfig,
    ],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- helpers


class _Passive:
    """No per-call bookkeeping."""

    def on_start(self, instance: str, now: float) -> None:
        pass

    def on_end(self, instance: str, now: float, rtt: float, ok: bool) -> None:
        pass


def _js_index(instances: Sequence[str], i: float) -> str | None:
    """``instances[i]`` in JavaScript: ``undefined`` (None) outside 0..n-1."""
    if 0 <= i < len(instances):
        return instances[int(i)]
    return None


def _distinct_picks(n: int, k: int, u: Uniform) -> list[int]:
    """k distinct indices, uniformly over ordered k-tuples (partial Fisher-Yates).

    For k = 2 the pair has the distribution of tower's/linkerd2-proxy's ``gen_pair``
    (a = U{0..n-1}, b = U{0..n-2}, b += 1 if b >= a).
    """
    if k == 2 and n >= 2:
        # NOTE: for speed, the loop below unrolled for the common pair (P2C): the same two
        # draws, the same arithmetic. After the first swap pool[0] = a and pool[a] = 0, so
        # the second pick, pool[r] for r >= 1, is 0 when r == a and r otherwise.
        a = math.floor(u() * n)
        r = 1 + math.floor(u() * (n - 1))
        return [a, 0 if r == a else r]
    k = min(k, n)
    pool = list(range(n))
    for j in range(k):
        r = j + math.floor(u() * (n - j))
        pool[j], pool[r] = pool[r], pool[j]
    return pool[:k]


# --------------------------------------------------------------------------- the spec's four


class RandomBalancer(_Passive):
    """spec 3.4.1 RandomLoadBalancer: ``instances[Math.floor(Math.random() * n)]``."""

    def choose(self, now, instances, u, key=None):
        # Same double arithmetic as JS; an empty list gives instances[0] === undefined.
        return _js_index(instances, math.floor(u() * len(instances)))


class RoundRobinBalancer(_Passive):
    """spec 3.4.1 RoundRobinLoadBalancer, exactly::

        const instance = instances[this.currentIndex];
        this.currentIndex = (this.currentIndex + 1) % instances.length;
        return instance;

    The index survives list changes. After the list shrinks below it, ``instances[i]`` is
    ``undefined`` (returned as None; the caller's ``instance.host`` then throws TypeError)
    for one call, after which the modulo brings it back in range. Called once with an
    empty list, ``(i + 1) % 0`` is NaN and every later ``instances[NaN]`` is undefined:
    the balancer is broken for good. (The spec's selectServiceInstance throws on an empty
    list before load balancing, so that path needs a caller that does not guard.)
    """

    def __init__(self) -> None:
        self.current_index: Optional[int] = 0  # None models NaN

    def choose(self, now, instances, u, key=None):
        i = self.current_index
        instance = None if i is None else _js_index(instances, i)
        n = len(instances)
        self.current_index = None if (i is None or n == 0) else (i + 1) % n
        return instance


class LeastConnectionsBalancer:
    """spec 3.4.1 LeastConnectionsLoadBalancer.

    Scans in list order with strict ``<`` (ties go to the earliest instance), increments
    the winner's count on select, and keeps counts keyed by instance id, also for
    instances that left. Counts fall only through ``releaseConnection``, which the spec's
    HttpClient never calls (``release_on_end=False``): counts then equal "picks so far",
    so a new instance (count 0) takes every call until it catches up (herding), and
    equal counts degenerate into round robin in list order. An empty list throws
    (``undefined.serviceId``): None, nothing counted.
    """

    def __init__(self, release_on_end: bool = False) -> None:
        self.release_on_end = release_on_end
        self.counts: dict[str, int] = {}

    def choose(self, now, instances, u, key=None):
        if not instances:
            return None
        selected = instances[0]
        min_connections = math.inf
        for inst in instances:
            c = self.counts.get(inst, 0)  # `|| 0`
            if c < min_connections:
                min_connections = c
                selected = inst
        self.counts[selected] = self.counts.get(selected, 0) + 1
        return selected

    def release(self, instance: str) -> None:
        """spec releaseConnection: ``Math.max(0, current - 1)``."""
        self.counts[instance] = max(0, self.counts.get(instance, 0) - 1)

    def on_start(self, instance, now):
        pass

    def on_end(self, instance, now, rtt, ok):
        if self.release_on_end:
            self.release(instance)


def js_weight(w: float | None) -> float:
    """``instance.metadata.weight || 1``: undefined, 0, -0 and NaN all count as 1."""
    if w is None or w == 0 or w != w:
        return 1
    return w


class WeightedRandomBalancer(_Passive):
    """spec 3.4.1 WeightedRandomLoadBalancer::

        totalWeight = sum of (weight || 1);  random = Math.random() * totalWeight
        for each instance: random -= (weight || 1); if (random <= 0) return instance
        return instances[instances.length - 1]

    Weight 0 counts as 1 (``0 || 1``), and so do NaN and a missing weight (undefined);
    negative weights are used as they are. ``<= 0`` means a draw landing exactly on a
    boundary goes to the earlier instance. The final fallback fires when rounding in the
    running subtraction leaves ``random`` a hair above 0, or when negative weights shrink
    the total.
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights or {})

    def choose(self, now, instances, u, key=None):
        ws = [js_weight(self.weights.get(inst)) for inst in instances]
        total = 0
        for w in ws:  # Array.reduce, left to right from 0: same float sums as JS
            total = total + w
        r = u() * total
        for inst, w in zip(instances, ws):
            r -= w
            if r <= 0:
                return inst
        return instances[-1] if instances else None  # instances[-1] of [] is undefined


# --------------------------------------------------------------------------- proxies


class P2CLeastRequestBalancer:
    """Envoy least_request, equal weights (ENV ``least_request_lb.cc`` unweightedHostPick).

    Draw ``choice_count`` candidates; a later candidate replaces the current one only with
    strictly fewer active requests (so ties keep the earlier draw, as Envoy's ``<`` and
    tower's ``aload <= bload``). Active requests are counted by this balancer from
    on_start/on_end: per proxy, not global (reference section 2). Envoy draws with
    replacement (``random() % size`` each time); ``with_replacement=False`` draws distinct
    instances as tower/linkerd2-proxy and Finagle do.
    """

    def __init__(self, choice_count: int = 2, with_replacement: bool = False) -> None:
        self.choice_count = choice_count
        self.with_replacement = with_replacement
        self.active: dict[str, int] = {}

    def choose(self, now, instances, u, key=None):
        n = len(instances)
        if n == 0:
            return None
        if n == 1:
            return instances[0]
        if self.with_replacement:
            picks = [math.floor(u() * n) for _ in range(self.choice_count)]
        else:
            picks = _distinct_picks(n, self.choice_count, u)
        best = instances[picks[0]]
        for i in picks[1:]:
            cand = instances[i]
            if self.active.get(cand, 0) < self.active.get(best, 0):
                best = cand
        return best

    def on_start(self, instance, now):
        self.active[instance] = self.active.get(instance, 0) + 1

    def on_end(self, instance, now, rtt, ok):
        self.active[instance] = max(0, self.active.get(instance, 0) - 1)


class _Ewma:
    __slots__ = ("rtt", "stamp", "pending")

    def __init__(self, rtt: float, stamp: float) -> None:
        self.rtt = rtt
        self.stamp = stamp
        self.pending = 0


class PeakEwmaBalancer:
    """P2C over peak-EWMA cost, as tower's ``PeakEwma`` (used by linkerd2-proxy).

    Per instance (tower ``load/peak_ewma.rs``, RttEstimate):

    - created at its first sighting with estimate ``default_rtt`` (linkerd 30 ms);
    - ``load`` first decays the estimate toward 0 (an update with RTT 0:
      ``est *= exp(-elapsed/decay)``, stamp = now), then cost = ``est * (pending + 1)``;
    - a finished call with RTT above the stored estimate sets it (the peak); otherwise
      ``est = est*w + rtt*(1-w)`` with ``w = exp(-elapsed/decay)``, elapsed since the last
      update (a load query counts as one), stamp = now. Failed calls are observed too.

    Choice (tower ``p2c`` / linkerd ``p2c_ready_index``): two distinct random instances,
    the first wins ties (``aload <= bload``); only these two are decayed.
    """

    def __init__(self, default_rtt_s: float = 0.03, decay_s: float = 10.0) -> None:
        self.default_rtt = default_rtt_s
        self.decay = decay_s
        self.state: dict[str, _Ewma] = {}

    def _get(self, instance: str, now: float) -> _Ewma:
        s = self.state.get(instance)
        if s is None:
            s = self.state[instance] = _Ewma(self.default_rtt, now)
        return s

    def _observe(self, s: _Ewma, now: float, rtt: float) -> None:
        if s.rtt < rtt:
            s.rtt = rtt  # peak: always take the worst case
        else:
            elapsed = max(0.0, now - s.stamp)
            w = math.exp(-elapsed / self.decay)
            s.rtt = s.rtt * w + rtt * (1.0 - w)
        s.stamp = now

    def load(self, instance: str, now: float) -> float:
        s = self._get(instance, now)
        self._observe(s, now, 0.0)
        return s.rtt * (s.pending + 1)

    def choose(self, now, instances, u, key=None):
        n = len(instances)
        if n == 0:
            return None
        for inst in instances:  # discovery: new instances start at default_rtt, now
            self._get(inst, now)
        if n == 1:
            return instances[0]
        a, b = _distinct_picks(n, 2, u)
        la = self.load(instances[a], now)
        lb = self.load(instances[b], now)
        return instances[a] if la <= lb else instances[b]

    def on_start(self, instance, now):
        self._get(instance, now).pending += 1

    def on_end(self, instance, now, rtt, ok):
        s = self._get(instance, now)
        self._observe(s, now, rtt)
        s.pending = max(0, s.pending - 1)


def _h64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8"), digest_size=8).digest(), "big")


class RingHashBalancer(_Passive):
    """Consistent hashing (ketama-style, as Envoy's ring_hash and its ketama port).

    Each instance owns ``vnodes_per_host`` points ``h64(f"{instance}_{i}")`` (Envoy's hash
    key is ``address + "_" + i``; we use BLAKE2b-64 where Envoy uses xxHash64). A request
    goes to the first point clockwise from ``h64(str(key))`` (the first point with hash
    >= the key's, wrapping to the lowest). A point depends only on its instance's name,
    so the ring does not depend on list order and adding an instance moves exactly the
    keys that now fall on its arcs, all of them to it. Without a key a random hash is
    drawn, as Envoy does when no hash policy yields one.
    """

    def __init__(self, vnodes_per_host: int = 160) -> None:
        self.vnodes = vnodes_per_host
        self._members: tuple[str, ...] | None = None
        self._hashes: list[int] = []
        self._owners: list[str] = []
        self._points: dict[str, list[int]] = {}  # per instance, computed once

    def _points_of(self, inst: str) -> list[int]:
        pts = self._points.get(inst)
        if pts is None:
            pts = self._points[inst] = [_h64(f"{inst}_{i}") for i in range(self.vnodes)]
        return pts

    def _ring(self, instances: Sequence[str]) -> None:
        members = tuple(instances)
        if members == self._members:
            return
        points = sorted((h, inst) for inst in dict.fromkeys(members) for h in self._points_of(inst))
        self._members = members
        self._hashes = [h for h, _ in points]
        self._owners = [o for _, o in points]

    def choose(self, now, instances, u, key=None):
        if not instances:
            return None
        self._ring(instances)
        h = _h64(str(key)) if key is not None else math.floor(u() * 2.0**64)
        i = bisect.bisect_left(self._hashes, h)
        return self._owners[i if i < len(self._hashes) else 0]


def make_balancer(config: BalancerConfig, weights: Mapping[str, float] | None = None) -> Balancer:
    """A fresh balancer (one per caller and callee, i.e. per proxy) for a config."""
    if isinstance(config, RandomConfig):
        return RandomBalancer()
    if isinstance(config, RoundRobinConfig):
        return RoundRobinBalancer()
    if isinstance(config, LeastConnectionsConfig):
        return LeastConnectionsBalancer(release_on_end=config.release_on_end)
    if isinstance(config, WeightedRandomConfig):
        return WeightedRandomBalancer(weights)
    if isinstance(config, P2CLeastRequestConfig):
        return P2CLeastRequestBalancer(config.choice_count, config.with_replacement)
    if isinstance(config, PeakEwmaConfig):
        return PeakEwmaBalancer(config.default_rtt_s, config.decay_s)
    if isinstance(config, RingHashConfig):
        return RingHashBalancer(config.vnodes_per_host)
    raise TypeError(f"unknown balancer config {config!r}")

"""The engine's runtime state: instances, services, operations, calls, routes, requests.

Plain ``__slots__`` records, shared by the engine (sim/engine.py) and the modules split out
of it (sim/client.py, sim/faults.py, sim/control.py, sim/messages.py). No behaviour here
beyond construction.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

from hailan_sim.models.distributions import Exponential

class _Instance:
    __slots__ = (
        "name", "svc", "index", "node", "zone", "workers", "free", "queue", "qlimit", "up",
        "last", "qarea", "barea", "qmax", "served", "rejected", "orphans", "orphan_s",
        "snap", "credit", "wait_sum", "wait_n", "skew", "check_gen", "keys", "draining",
        "calls", "hung", "slow", "fault_err", "deaths", "client",
    )

    def __init__(self, svc: "_Service", index: int, node: str, zone: str) -> None:
        self.name = f"{svc.name}-{index}"
        self.svc = svc
        self.index = index
        self.node = node
        self.zone = zone
        self.workers = svc.workers
        self.free = svc.workers
        self.queue: deque = deque()
        self.qlimit = svc.qlimit
        self.up = False
        self.deaths: list = []  # (time, vanished): when it died, and whether its host went with it
        self.last = 0.0
        self.qarea = 0.0  # integral of queue length over time
        self.barea = 0.0  # integral of busy workers over time
        self.qmax = 0
        self.served = 0
        self.rejected = 0
        self.orphans = 0
        self.orphan_s = 0.0
        self.snap = [0.0, 0.0, 0.0, 0.0]  # (qarea, barea) at warm-up, then at the end
        self.credit = 0  # unacknowledged deliveries this instance may still take
        self.wait_sum = 0.0  # time tracked calls spent queued here before a worker took them
        self.wait_n = 0
        self.skew = 0.0  # this host's clock minus true time
        self.check_gen = 0  # bumps on (re)registration so stale health-check timers are ignored
        self.keys = None  # the verifier's key cache (service tokens)
        self.draining = False  # scaled in: finishing its work, then it stops
        self.calls: dict = {}  # calls whose work is in progress here (lost if it crashes)
        self.hung = False  # accepts calls, never answers (fault)
        self.slow = 1.0  # service-time factor (fault)
        self.fault_err = 0.0  # extra chance a call fails (fault)
        self.client = None  # its callers' client state (sim/client.py _ClientState), once it calls


class _Op:
    __slots__ = ("name", "svc", "sample", "err_p", "err_u", "tree", "blocking", "key",
                 "idempotent", "max_wait")

    def __init__(self, svc, name, sample, err_p, err_u, tree, blocking, idempotent=False, max_wait=None):
        self.svc = svc
        self.name = name
        self.sample = sample
        self.err_p = err_p
        self.err_u = err_u
        self.tree = tree
        self.blocking = blocking
        self.key = f"{svc.name}.{name}" if name else svc.name
        self.idempotent = idempotent
        self.max_wait = max_wait  # load shedding: longest a call may wait for a worker


class _Service:
    """A service or an infrastructure component: a set of identical instances."""

    __slots__ = ("name", "infra", "workers", "qlimit", "instances", "up", "ops", "key",
                 "startup", "consumers", "placement", "scaler", "starting", "scale_areas", "routes",
                 "waits", "wait_hist")

    def __init__(self, name, infra, workers, qlimit, startup):
        self.name = name
        self.infra = infra
        self.workers = workers
        self.qlimit = qlimit
        self.startup = startup
        self.instances: list[_Instance] = []
        self.up: list[_Instance] = []
        self.ops: dict[Optional[str], _Op] = {}
        self.key = 0  # row of this service in the engine's call recorder
        self.consumers: list = []  # message queues this service consumes from
        self.placement: list = []  # (node, zone) for instance 0, 1, ... (cycled)
        self.scaler = None  # models.autoscaling.Autoscaler, if the service autoscales
        self.starting = 0  # instances added by autoscaling that are still starting up
        self.scale_areas = (0.0, 0.0)  # busy and queue integrals at the last evaluation
        self.routes: dict[str, _Route] = {}  # caller (service or client) name -> its route here
        # Positive waits for a worker (s) of tracked calls, buffered until the runner folds
        # them into wait_hist (sim.metrics.WaitHistogram): memory bounded, not per call.
        self.waits: list = []
        self.wait_hist = None


class _Call:
    __slots__ = ("id", "req", "source", "src_svc", "op", "inst", "t0", "k",
                 "finished", "t_abandon", "status", "track", "t_arrive", "deadline",
                 "token", "auth_failed", "lost", "expires", "route", "pushback", "refused",
                 "tkey")  # tkey: set only on a call armed as a lone timer (Engine._arm)

    def __init__(self, cid, req, source, src_svc, op, t0, k, track, route, token):
        self.id = cid
        self.req = req
        self.source = source
        self.src_svc = src_svc
        self.op = op
        self.inst = None
        self.t0 = t0
        self.k = k
        self.finished = False
        self.t_abandon = None
        self.status = None
        self.track = track  # 1.0: started after the warm-up, counts in the summaries
        self.deadline = None  # with deadline propagation: when the caller stops waiting
        self.token = token  # the service token the caller sent, if any
        self.auth_failed = False  # the callee answered 401
        self.lost = False  # the instance died or hung with this call: nothing more happens here
        self.route = route  # the network path between caller and callee (a _Route)
        self.pushback = False  # the callee's own retries failed: "don't retry" (RetryPolicy.pushback)
        self.refused = False  # the instance was down when the call reached it (connection refused)


_UNSET = object()  # a _Route's sampler not looked up yet


class _Route:
    """The path from one caller (a service, or an endpoint's client) to one callee service:
    its hop samplers each way and the caller's instance-pick stream.

    NOTE: for speed; these were two tuple-keyed dict look-ups (``Engine._link``,
    ``Engine._pick``) per call. Each is still looked up lazily, at its first use, so streams
    are handed out in the same order as before.
    """

    __slots__ = ("src", "dst", "there", "back", "pick")

    def __init__(self, src: str, dst: str) -> None:
        self.src = src
        self.dst = dst
        self.there = _UNSET  # latency sampler src -> dst, or None (always 0)
        self.back = _UNSET  # latency sampler dst -> src, or None
        self.pick = None  # uniform stream src uses to pick among dst's instances


class _TimerQueue:
    """Open calls with one timeout duration, in deadline order (see ``Engine._arm``)."""

    __slots__ = ("timeout", "calls", "armed", "parked")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.calls: deque = deque()
        self.armed = False
        self.parked = None  # its heap entry, taken off the heap while every call is finished


class _Request:
    __slots__ = ("id", "ep", "t0", "track")

    def __init__(self, rid, ep, t0, track):
        self.id = rid
        self.ep = ep
        self.t0 = t0
        self.track = track


class _Endpoint:
    # ``client`` is the source name of its requests' first call: each endpoint's users are
    # their own component, with their own network and instance-pick streams.
    __slots__ = ("name", "entry", "timeout", "schedule", "draw", "key", "client")




def _index(inst: _Instance) -> int:
    return inst.index


_UNIT_EXP = Exponential(dist="exponential", mean=1.0)

"""The client pipeline: one internal call as the caller's client code makes it.

``_Edge`` (the resolved policies of a caller -> callee edge), ``_ClientState`` (what one
caller instance's clients remember), ``_Logical`` (discovery, balancing, gRPC channel,
bulkhead, breaker, token, the attempt, retries, fallback) and the service tokens' issue and
verification. Split out of sim/engine.py: :class:`ClientMixin` is part of
:class:`~hailan_sim.sim.engine.Engine`.
"""

from __future__ import annotations

import bisect
from operator import itemgetter
from typing import Optional

from hailan_sim.models.balancers import make_balancer
from hailan_sim.models.breakers import CLOSED, OutlierDetector, make_breaker
from hailan_sim.models.policies import EDGE_FIELDS
from hailan_sim.models.registry import make_view
from hailan_sim.models.retry import NoBudget
from hailan_sim.models.tokens import KeySet, RefreshAheadCache, SpecTokenCache, held_token, issue, verify
from hailan_sim.sim.clock import at as _at
from hailan_sim.sim.clock import at_first as _at_first
from hailan_sim.sim.metrics import OUTCOME_INDEX
from hailan_sim.sim.state import _Call, _Instance, _Op

__all__ = ["ClientMixin", "held_tokens", "token_renewals_s"]


def _held(tp, u: float, signer_skew_s: float):
    """The token held at time 0 (tokens.first_token: steady_state), signed on the signer's
    configured clock (its node's ``clock_skew_s``) with the key in force before the run."""
    margin = tp.refresh_margin_s if tp.cache == "refresh_ahead" else 0.0
    return held_token(signer_skew_s, u, tp.ttl_s, margin, "k0")


def held_tokens(scenario, seed: Optional[int] = None) -> dict:
    """Per service instance running at time 0, the token it holds from before the run
    under ``tokens.first_token: steady_state`` (empty otherwise): exactly what the engine
    gives it (the same stream ``token-age/<instance>``, the same signer clock), computed
    without simulating. ``seed``: the run's (default ``scenario.run.seed``)."""
    from hailan_sim.sim.rng import Streams

    tp = scenario.effective_policies().tokens
    if not tp.enabled or tp.first_token != "steady_state":
        return {}
    streams = Streams(scenario.run.seed if seed is None else seed)
    skew = {n.name: n.clock_skew_s for n in scenario.nodes}
    node = {p.instance: p.node for p in scenario.placements()}
    issuer = tp.issuer.partition(".")[0] if tp.signing == "issuer" else None
    out = {}
    for inst, n in node.items():
        signer = n if issuer is None else node.get(f"{issuer}-0", n)
        out[inst] = _held(tp, streams.uniform(f"token-age/{inst}").next(), skew[signer])
    return out


def token_renewals_s(scenario, seed: Optional[int] = None) -> list[float]:
    """When (true time, sorted) each instance's held token falls due on its own clock
    (:func:`held_tokens`): at ``exp`` with the spec's cache, ``exp - refresh_margin_s``
    with refresh-ahead, less the caller node's configured skew. The first calls after
    these instants sign or fetch a new token: where clock skew, issuer outages and key
    rotations can hurt (properties.strategies places faults around them)."""
    tp = scenario.effective_policies().tokens
    margin = tp.refresh_margin_s if tp.cache == "refresh_ahead" else 0.0
    skew = {n.name: n.clock_skew_s for n in scenario.nodes}
    node = {p.instance: p.node for p in scenario.placements()}
    return sorted(float(t.exp) - margin - skew[node[i]] for i, t in held_tokens(scenario, seed).items())


class ClientMixin:
    """The engine's client-side and token methods (mixed into Engine)."""

    # ------------------------------------------------------------------ service tokens

    def _current_kid(self, now: float) -> str:
        """Tokens are signed with key k<n>, n = rotations that have happened by ``now`` (by
        every caller with signing: local, by the issuer with signing: issuer)."""
        return f"k{bisect.bisect_right(self._rotations, now)}"

    def _hold_token(self, cl, parent) -> None:
        """tokens.first_token: steady_state. The token ``cl``'s instance held before the run
        (models.tokens.held_token: its age uniform over the cache's refresh period, drawn
        from the instance's own stream ``token-age/<instance>``), signed at time 0 on the
        signer's configured clock (the caller's with signing: local, the issuer's first
        instance's with signing: issuer) with the key in force before the run (k0). Logged
        as ``token_held`` (operation = key id, outcome = exp; instance = the signer) so that
        checks of the log know what the caller's calls carry until it gets a new one."""
        tp = self.tokens
        inst = cl.inst
        signer = inst if self._issuer_op is None else self._issuer_op.svc.instances[0]
        token = _held(tp, self.streams.uniform(f"token-age/{inst.name}").next(), self._skew[signer.node])
        cl.token_cache.token = token
        self._rec((self.env.now, "token_held", parent.req.id, None, parent.id, inst.name,
                   inst.svc.name, signer.name, token.kid, str(token.exp)))

    def _published_kids(self, now: float) -> list[str]:
        """The issuer's key set (JWKS) at ``now``: every key it has signed with, and with
        ``tokens.key_publish_ahead_s`` > 0 the keys of the rotations due within that time
        (published ahead: RFC 7517 4.5, OpenID Connect Core 1.0 10.1.1). Rotations before
        the run began publish before time 0: a verifier's first fetch already holds them."""
        return [f"k{i}" for i in range(bisect.bisect_right(self._rotations, now + self._publish_ahead) + 1)]

    def _published_now(self) -> list[str]:
        """The key set at the current instant (what a verifier fetches when it must; one bound
        method instead of a closure made for every verification)."""
        return self._published_kids(self.env.now)

    def _verify(self, c: _Call, inst: _Instance) -> bool:
        """The callee checks the caller's token on its own clock; False: it answered 401."""
        tp = self.tokens
        now = self.env.now
        clock = now + inst.skew
        if inst.keys is None:
            inst.keys = KeySet(ttl_s=tp.key_cache_ttl_s, refetch_on_unknown_kid=tp.refetch_on_unknown_kid)
        token = c.token
        known = inst.keys.known(clock, token.kid, self._published_now)
        verdict = verify(token, clock, tp.leeway_s, (token.kid,) if known else (), tp.verifier)
        if verdict == "ok":
            return True
        self.counters["auth_401"] += 1
        c.auth_failed = True
        self._rec((now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                   c.op.name, "error"))
        self._rec((now, "auth_401", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                   c.op.name, verdict))
        self._answer(c, "error")
        return False

    # ------------------------------------------------------------------ client-side policies

    def _edge(self, caller: str, callee: str) -> "_Edge":
        """The policies for calls from ``caller`` to ``callee``: defaults, then matching edges."""
        key = (caller, callee)
        e = self._edges.get(key)
        if e is None:
            p = self.policies
            fields = {f: getattr(p, f) for f in EDGE_FIELDS}
            for ov in p.edges:
                if ov.caller in (None, caller) and ov.callee in (None, callee):
                    fields.update(ov.overrides())
            e = self._edges[key] = _Edge(fields, self.registry is not None, self.tokens is not None)
        return e

    def weights_of(self, service: str) -> Optional[dict]:
        """Instance name -> the metadata.weight it registered (None: no weights given)."""
        weights = self.scenario.service(service).weights
        if weights is None:
            return None
        return {i.name: weights[i.index % len(weights)] for i in self.services[service].instances}

    def _client(self, inst: _Instance) -> "_ClientState":
        cl = self._clients.get(inst.name)
        if cl is None:
            cl = self._clients[inst.name] = _ClientState(inst)
        inst.client = cl  # NOTE: for speed, every call of _Logical reads it there
        return cl

    def _refused(self, req, parent: _Call, op: _Op, event: str, outcome: str, instance=None) -> None:
        """A call the caller's own client refused before sending (no instance, breaker open,
        bulkhead full, discovery failed): logged, and counted against the callee."""
        now = self.env.now
        self._rec((now, event, req.id, None, parent.id, parent.inst.name, op.svc.name, instance, op.name, outcome))
        self._call_done((now, op.svc.key, OUTCOME_INDEX[outcome], 0.0, 1.0 if now >= self.warmup else 0.0))

    def _breaker_logged(self, br, before: int, source: str, scope: str) -> None:
        """Log the transitions ``br`` made since ``before`` and drive its next timer."""
        for t, a, b in br.transitions[before:]:
            self._rec((t, "breaker", None, None, None, source, scope, None, a, b))
            key = f"{a}->{b}"
            self.breaker_transitions[key] = self.breaker_transitions.get(key, 0) + 1
        due = br.next_timer(self.env.now)
        if due is not None:
            # A breaker's own timers (resilience4j's automatic OPEN -> HALF_OPEN, the
            # half-open max wait) fire at their due time, ahead of calls at that instant,
            # so each transition is logged when it happens and the log stays in time order.
            # One pending tick per breaker; a superseded one finds another due and returns.
            key = (source, scope)
            if self._breaker_due.get(key) != due:
                self._breaker_due[key] = due
                _at_first(self.env, max(due - self.env.now, 0.0), self._breaker_tick, (br, source, scope, due))

    def _breaker_tick(self, arg) -> None:
        br, source, scope, due = arg
        key = (source, scope)
        if self._breaker_due.get(key) != due:
            return
        del self._breaker_due[key]
        before = len(br.transitions)
        br.tick(self.env.now)
        self._breaker_logged(br, before, source, scope)


class _Edge:
    """Resolved policies of one caller -> callee edge (see ``Engine._edge``)."""

    __slots__ = ("timeout", "discovery", "balancer", "breaker", "scope", "outlier", "retry",
                 "budget", "bulkhead", "deadline", "protocol", "channel", "fast", "sticky", "refresh",
                 "finagle", "throttle")

    def __init__(self, f: dict, registry: bool, tokens: bool) -> None:
        self.timeout = f["timeout_s"]
        self.discovery = f["discovery"]
        self.balancer = f["balancer"]
        self.breaker = f["breaker"]
        self.scope = f["breaker_scope"]
        self.outlier = f["outlier"]
        self.retry = f["retry"]
        self.budget = None if isinstance(f["retry_budget"], NoBudget) else f["retry_budget"]
        self.bulkhead = f["bulkhead"]
        self.deadline = f["deadline_propagation"]
        self.protocol = f["protocol"]
        self.channel = f["grpc_channel"]
        if self.protocol == "grpc" and f["grpc_client"] == "spec":
            # The spec's GrpcClient (3.3.2) is not the HttpClient: no circuitBreaker.execute
            # around its calls and no axios timeout (gRPC sets no deadline unless the caller
            # passes one; grpc.io "Deadlines": "By default, gRPC does not set a deadline").
            self.timeout = None
            self.breaker = None
        # NOTE: for speed, what the client pipeline asks on every call, decided once per edge:
        # a cached gRPC channel, rebuilt on failure; the budget's kind.
        self.sticky = self.protocol == "grpc" and self.channel != "per_call"
        self.refresh = self.protocol == "grpc" and self.channel == "refresh_on_failure"
        self.finagle = self.budget is not None and self.budget.kind == "finagle"
        self.throttle = self.budget is not None and self.budget.kind == "grpc_throttle"
        # Nothing to do but pick a random up instance: the engine's fast path.
        self.fast = not (
            registry or tokens or self.breaker or self.outlier or self.bulkhead or self.deadline
            or self.budget or self.retry.max_attempts > 1 or self.protocol == "grpc"
            or self.balancer.kind != "random"
        )


class _ClientState:
    """What one caller instance's HTTP/gRPC clients remember (spec 3.3: one HttpClient, one
    GrpcClient and one ServiceAuth per process)."""

    __slots__ = ("inst", "views", "edge_views", "lanes", "breakers", "channels",
                 "channel_seen", "token_cache", "token_waiters", "active", "retrying")

    def __init__(self, inst: _Instance) -> None:
        self.inst = inst
        self.views: dict = {}  # discovery config -> view
        self.edge_views: dict = {}  # _Edge -> its view (a cache of the above)
        self.lanes: dict = {}  # callee -> _Lane
        self.breakers: dict = {}
        self.channels: dict = {}
        self.channel_seen: dict = {}  # callee -> deaths of its channel's instance before it opened
        self.token_cache = None
        self.token_waiters: list = []
        self.active = 0  # calls in flight from this client (Envoy's budget counts these)
        self.retrying = 0


class _Lane:
    """What one caller instance's client keeps per callee service: its balancer, outlier
    detector, retry budget (each made at first use), its instance-pick stream and the calls
    in flight (the bulkhead's count).

    NOTE: for speed: these were four dicts keyed by the callee, looked up several times per
    call; a call now looks its lane up once.
    """

    __slots__ = ("balancer", "outlier", "budget", "pick", "inflight")

    def __init__(self) -> None:
        self.balancer = None
        self.outlier = None
        self.budget = None
        self.pick = None
        self.inflight = 0


class _Logical:
    """One call as the caller's client code makes it: discovery, balancing, gRPC channel,
    breaker, bulkhead, token, the attempt itself, then retries with backoff and a fallback.

    The order follows the spec's HttpClient.callService (3.3.1): the instance is selected
    *before* ``circuitBreaker.execute``, so discovery failures never reach the breaker.
    """

    __slots__ = ("eng", "edge", "parent", "op", "timeout", "k", "fallback", "attempt_no",
                 "prev_delay", "client", "callee", "inst", "breaker", "br_key", "t_sent",
                 "auth_retried", "token", "with_token", "view", "pushed_back", "lane")

    def __init__(self, eng, edge, parent, op, timeout, k, fallback):
        self.eng = eng
        self.edge = edge
        self.parent = parent
        self.op = op
        self.timeout = timeout
        self.k = k
        self.fallback = fallback
        self.attempt_no = 0
        self.prev_delay = 0.0
        cl = parent.inst.client
        self.client = cl if cl is not None else eng._client(parent.inst)
        self.callee = op.svc.name
        lane = self.client.lanes.get(self.callee)
        if lane is None:
            lane = self.client.lanes[self.callee] = _Lane()
        self.lane = lane
        self.inst = None
        self.breaker = None
        self.br_key = None
        self.auth_retried = False
        self.pushed_back = False
        self.token = None
        self.with_token = eng.tokens is not None
        if edge.finagle:
            self._budget().deposit(eng.env.now)

    def _budget(self):
        b = self.lane.budget
        if b is None:
            b = self.lane.budget = self.edge.budget.build(self.eng.env.now)
        return b

    def attempt(self) -> None:
        self.attempt_no += 1
        eng = self.eng
        edge = self.edge
        if (edge.sticky and self.callee in self.client.channels
                and not (edge.refresh and self._channel_closed())):
            # GrpcClient.getClient (3.3.2): `if (this.clients.has(cacheKey)) return
            # this.clients.get(cacheKey)`: a cached client asks the registry nothing.
            self._choose(None)
            return
        if eng.registry is None:
            self._choose([i.name for i in self.op.svc.up])
            return
        # NOTE: looked up by the edge (one object per caller -> callee) first: keying by the
        # discovery config (equal configs share a view) hashes a pydantic model every time.
        cl = self.client
        view = cl.edge_views.get(self.edge)
        if view is None:
            view = cl.views.get(self.edge.discovery)
            if view is None:
                view = cl.views[self.edge.discovery] = make_view(self.edge.discovery)
            cl.edge_views[self.edge] = view
        self.view = view
        if _needs_query(view, eng.env.now, self.callee):
            # agent.service.list() is an HTTP call to the Consul agent: it costs a round trip.
            reg = eng.registry_svc
            timeout = reg.infra.timeout_s if reg.infra.timeout_s is not None else self.timeout
            eng._start_call(self.parent.req, self.parent, self.parent.inst.name, self.parent.op.svc,
                            reg.ops[None], timeout, self._discovered)
        else:
            self._discovered("ok")

    def _channel_closed(self) -> bool:
        """Whether the cached channel's connection has closed since it was opened
        (``refresh_on_failure`` only: seed's GrpcClient never looks). If so, drop it.

        gRPC doc/connectivity-semantics-and-api.md: a READY channel whose transport fails
        goes to TRANSIENT_FAILURE/IDLE and asks its resolver to re-resolve; a client that
        watches the state (grpc-js ``watchConnectivityState``) rebuilds it from discovery.
        When the process dies on a live host, the host's kernel closes its sockets (RST/FIN),
        so the client sees it at once. When the host vanishes (node/zone crash), nothing is
        sent: only an unanswered HTTP/2 keepalive ping closes the idle transport, at most
        ``time_s + timeout_s`` after the death (grpc doc/keepalive.md; a worst case: the ping
        goes ``time_s`` after the last activity), and only if idle channels are pinged
        (``permit_without_calls``). Otherwise the next call's failure does (``_ended``).
        """
        eng = self.eng
        cl = self.client
        name = cl.channels[self.callee]
        deaths = eng.instance_by_name[name].deaths
        seen = cl.channel_seen[self.callee]
        if len(deaths) == seen:
            return False  # no death since the channel was opened: O(1) on every cached call
        now = eng.env.now
        ka = eng.policies.grpc_keepalive
        # Only the deaths since the channel opened (``deaths`` is in time order).
        for t, vanished in reversed(deaths[seen:]):
            if not vanished:
                at, how = t, "reset"
            elif ka is not None and ka.permit_without_calls:
                at, how = t + ka.time_s + ka.timeout_s, "keepalive"
            else:
                continue
            if at <= now:
                del cl.channels[self.callee]
                eng._rec((now, "grpc_channel_closed", self.parent.req.id, None, self.parent.id,
                          cl.inst.name, self.callee, name, None, how))
                return True
        return False

    def _discovered(self, outcome: str) -> None:
        eng = self.eng
        view = self.view
        now = eng.env.now
        if outcome == "ok":
            names = view.instances(now, self.callee, eng.registry)
        else:  # the lookup itself failed (registry down or cut off): stale data, if any
            names = view.unreachable(now, self.callee)
        if names is None:
            eng.counters["discovery_errors"] += 1
            eng._refused(self.parent.req, self.parent, self.op, "discovery_error", "error")
            self._failed("error", retryable=True)
            return
        self._choose(names)

    def _choose(self, names: Optional[list]) -> None:
        eng = self.eng
        edge = self.edge
        cl = self.client
        now = eng.env.now
        outlier = None
        if edge.outlier is not None and names is not None:  # None: a cached gRPC channel
            outlier = self.lane.outlier
            if outlier is None:
                outlier = self.lane.outlier = OutlierDetector(edge.outlier, names, start=now)
            names = outlier.eligible(now, names)
        name = None
        sticky = edge.sticky
        if sticky and names is None:
            # A cached channel (attempt() skipped discovery for it). A call that found no
            # channel and looked the service up picks its own instance and replaces any
            # channel another call cached meanwhile: getClient checks `clients.has` before
            # its `await selectServiceInstance`, and `clients.set` overwrites (3.3.2).
            name = cl.channels.get(self.callee)
        if name is None:
            if not names:
                # The spec: throw new Error(`No available instances for service: ...`)
                eng._refused(self.parent.req, self.parent, self.op, "no_instance", "error")
                self._failed("error", retryable=True)
                return
            lane = self.lane
            bal = lane.balancer
            if bal is None:
                bal = lane.balancer = make_balancer(edge.balancer, eng.weights_of(self.callee))
            pick = lane.pick
            if pick is None:
                pick = lane.pick = eng._pick(self.parent.op.svc.name, self.callee)
            name = bal.choose(now, names, pick, self.parent.req.id)
            if name is None:
                # instances[currentIndex] is undefined: `instance.host` throws a TypeError.
                eng._refused(self.parent.req, self.parent, self.op, "no_instance", "error")
                self._failed("error", retryable=True)
                return
            if sticky:
                cl.channels[self.callee] = name  # GrpcClient caches the client for ever
                # The deaths it has already seen: those before now (one at this very instant
                # may still close it, as when the channel kept its opening time and the scan
                # took every death at or after it).
                cl.channel_seen[self.callee] = _deaths_before(eng.instance_by_name[name].deaths, now)
        self.inst = eng.instance_by_name[name]
        if edge.bulkhead is not None and self.lane.inflight >= edge.bulkhead:
            eng.counters["bulkhead_rejections"] += 1
            eng._refused(self.parent.req, self.parent, self.op, "bulkhead_full", "rejected", name)
            self._failed("rejected", retryable=False)
            return
        if edge.breaker is not None:
            key = ("*" if edge.scope == "client" else self.callee if edge.scope == "service" else name)
            br = cl.breakers.get(key)
            if br is None:
                br = cl.breakers[key] = make_breaker(edge.breaker)
            self.breaker, self.br_key = br, key
            before = len(br.transitions)
            allowed = br.allow(now)
            if len(br.transitions) != before or br.state != CLOSED:
                # NOTE: for speed: with no transition a CLOSED breaker has nothing to log and
                # no timer to drive (next_timer is None for every breaker kind when CLOSED).
                eng._breaker_logged(br, before, cl.inst.name, key)
            if not allowed:
                eng.counters["short_circuits"] += 1
                eng._refused(self.parent.req, self.parent, self.op, "short_circuit", "error", name)
                # This layer decided not to call a dependency it knows is failing: its answer
                # says "don't retry" too, so the layer above does not retry it (retries at one
                # layer only, SRE book ch. 21-22). Without it `check --profile hardened` found
                # every caller of user-service retrying the short circuits of its breakers to a
                # partitioned auth-service (ai-service's retries +10.2% of its calls).
                self.pushed_back = True
                self._failed("error", retryable=False)
                return
        if self.with_token:
            self._with_token()
        else:
            self._send()

    # -------------------------------------------------------------- tokens

    def _with_token(self) -> None:
        eng = self.eng
        tp = eng.tokens
        cl = self.client
        if cl.token_cache is None:
            cl.token_cache = (RefreshAheadCache(tp.refresh_margin_s, tp.single_flight)
                              if tp.cache == "refresh_ahead" else SpecTokenCache())
            if tp.first_token == "steady_state" and cl.inst.name in eng._held_at_start:
                eng._hold_token(cl, self.parent)
        cache = cl.token_cache
        clock = eng.env.now + cl.inst.skew
        token = cache.get(clock)
        if eng._issuer_op is None:
            # signing: local. The spec's ServiceAuth.generateToken (3.7.1): reuse the cached
            # token while decoded.exp * 1000 > Date.now(), else jwt.sign(payload,
            # this.privateKey, {expiresIn: '1h'}) on this host's clock, at once: nothing on
            # the network, so it cannot fail.
            if token is None or cache.needs_fetch(clock):
                now = eng.env.now
                cache.fetch_started(now)
                eng.counters["token_fetches"] += 1  # new tokens, however obtained
                token = issue(clock, tp.ttl_s, eng._current_kid(now))
                cache.fetch_done(now, token)
                # Logged (key id, exp) so that checks of the log can tell which token each
                # call carried, as they can from the issuer's calls with signing: issuer.
                parent = self.parent
                eng._rec((now, "token_signed", parent.req.id, None, parent.id, cl.inst.name,
                          cl.inst.svc.name, cl.inst.name, token.kid, str(token.exp)))
            self.token = token
            self._send()
            return
        single = tp.cache == "refresh_ahead" and tp.single_flight
        if cache.needs_fetch(clock) and not (single and cache.in_flight):
            self._fetch_token(cache, wait=token is None)
            if token is None:
                return
        if token is None:
            cl.token_waiters.append(self)  # a single-flight refresh is under way
            return
        self.token = token
        self._send()

    def _fetch_token(self, cache, wait: bool) -> None:
        """signing: issuer. Ask the issuer (auth-service.issue_token by default) for a token
        over the network, through the caller's client like any call; the reply is signed on
        the issuer's clock."""
        eng = self.eng
        cl = self.client
        cache.fetch_started(eng.env.now)
        eng.counters["token_fetches"] += 1
        waiter = self if wait else None
        issuer = eng._issuer_op

        def done(outcome: str, fetch: "_Logical") -> None:
            now = eng.env.now
            token = None
            if outcome == "ok":
                src = fetch.inst
                token = issue(now + src.skew, eng.tokens.ttl_s, eng._current_kid(now))
            cache.fetch_done(now, token)
            waiters, cl.token_waiters = cl.token_waiters, []
            if waiter is not None:
                waiters.insert(0, waiter)
            for w in waiters:
                if token is None:
                    eng._refused(w.parent.req, w.parent, w.op, "token_error", "error")
                    w._failed("error", retryable=True)
                else:
                    w.token = token
                    w._send()

        edge = eng._edge(self.parent.op.svc.name, issuer.svc.name)
        fetch = _Logical(eng, edge, self.parent, issuer, edge.timeout, None, False)
        fetch.k = lambda outcome: done(outcome, fetch)
        fetch.with_token = False  # the token request itself carries no token
        fetch.attempt()

    # -------------------------------------------------------------- the attempt

    def _send(self) -> None:
        eng = self.eng
        cl = self.client
        now = eng.env.now
        lane = self.lane
        lane.inflight += 1
        cl.active += 1
        bal = lane.balancer
        if bal is not None:
            bal.on_start(self.inst.name, now)
        self.t_sent = now
        deadline = self.parent.deadline
        if self.edge.deadline and self.timeout is not None:
            mine = now + self.timeout
            deadline = mine if deadline is None else min(deadline, mine)
        eng._start_call(self.parent.req, self.parent, self.parent.inst.name, self.parent.op.svc,
                        self.op, self.timeout, self._done, self.inst, deadline, self.token)

    def _done(self, outcome: str) -> None:
        eng = self.eng  # eng.last_call is the attempt's call (set just before this runs)
        cl = self.client
        now = eng.env.now
        name = self.inst.name
        lane = self.lane
        lane.inflight -= 1
        cl.active -= 1
        rtt = now - self.t_sent
        bal = lane.balancer
        if bal is not None:
            bal.on_end(name, now, rtt, outcome == "ok")
        if self.breaker is not None:
            br = self.breaker
            before = len(br.transitions)
            br.on_result(now, outcome, rtt)
            if len(br.transitions) != before or br.state != CLOSED:  # see _choose
                eng._breaker_logged(br, before, cl.inst.name, self.br_key)
        outlier = lane.outlier
        if outlier is not None:
            outlier.on_result(now, name, outcome)
        if self.edge.throttle:
            b = self._budget()
            b.on_success() if outcome == "ok" else b.on_failure()
        if outcome != "ok" and self.edge.refresh:
            cl.channels.pop(self.callee, None)
        if outcome == "ok":
            self._finish("ok")
            return
        if eng.last_call.auth_failed and eng.tokens.on_401 == "refresh_retry":
            cl.token_cache.token = None  # the next call (or this one's resend) fetches a new one
            if not self.auth_retried and self.attempt_no < max(self.edge.retry.max_attempts, 2):
                # One refresh-and-resend on a 401, at once (the token failed, not the server).
                # The resend is another request to the service, so it is one of the call's
                # attempts (SRE book, "Handling Overload": every attempt of a request counts
                # against the 3-attempt limit): it takes one of retry.max_attempts, and an edge
                # without retries still gets its one resend. With the attempts used up this
                # call fails.
                self.auth_retried = True
                eng.counters["auth_refresh_retries"] += 1
                self.attempt()
                return
        if eng.last_call.pushback and self.edge.retry.pushback:
            self.pushed_back = True
            self._failed(outcome, retryable=False)
            return
        self._failed(outcome, retryable=True)

    def _failed(self, outcome: str, retryable: bool) -> None:
        eng = self.eng
        edge = self.edge
        retry = edge.retry
        if retryable and edge.deadline and self.parent.deadline is not None \
                and eng.env.now >= self.parent.deadline:
            # With deadline propagation no retry starts after the caller's own deadline:
            # nobody waits for its answer (gRFC A6: the original RPC and all its retries
            # are bound by the deadline).
            retryable = False
        if retryable and retry.should_retry(self.attempt_no, outcome, self.op.idempotent):
            if self._budget_allows():
                delay = retry.delay(self.attempt_no, self.prev_delay,
                                    eng._retry_u(self.parent.op.svc.name, self.callee))
                self.prev_delay = delay
                eng.counters["retries"] += 1
                now = eng.env.now
                eng._rec((now, "retry", self.parent.req.id, None, self.parent.id, self.parent.inst.name,
                          self.callee, None, self.op.name, outcome))
                self.client.retrying += 1
                _at(eng.env, delay, self._retry, None)
                return
            # The retry budget refused a retry the policy allows: this layer has decided the
            # call should not be retried, so its answer says so too ("overloaded; don't retry",
            # Google SRE book ch. 21, "Deciding to Retry": retries only at the layer above the
            # failure, never a combinatorial explosion). Without it the caller, seeing a
            # first-attempt failure, retried the layer whose budget was empty: 4 calls to
            # auth-service.verify_token for one request (hardened, error_rate on auth-service;
            # found by `check --profile hardened`).
            self.pushed_back = True
        self._finish(outcome)

    def _retry(self, _arg) -> None:
        self.client.retrying -= 1
        self.attempt()

    def _budget_allows(self) -> bool:
        budget = self.edge.budget
        if budget is None:
            return True
        b = self._budget()
        now = self.eng.env.now
        if budget.kind == "finagle":
            return b.try_withdraw(now)
        if budget.kind == "envoy":
            return b.allow(self.client.active, self.client.retrying)
        return b.retries_allowed()

    def _finish(self, outcome: str) -> None:
        if outcome != "ok" and (self.attempt_no > 1 or self.pushed_back):
            # This call failed after retries (or was pushed back): if the work it serves
            # fails, its answer tells the caller not to retry (RetryPolicy.pushback).
            self.parent.pushback = True
        if outcome != "ok" and self.fallback:
            self.eng.counters["fallbacks"] += 1
            outcome = "ok"
        self.k(outcome)


def _deaths_before(deaths: list, now: float) -> int:
    """How many of an instance's ``deaths`` (in time order) happened before ``now``: what a
    channel opened now has already seen. A death at ``now`` itself is not seen (the check
    used to scan every death at or after the channel's opening time, and still counts it)."""
    return bisect.bisect_left(deaths, now, key=itemgetter(0))


def _needs_query(view, now: float, service: str) -> bool:
    """Whether ``view.instances`` will ask the registry now (and so costs a round trip)."""
    timing = view.config.timing
    if timing == "per_call":
        return True
    if timing == "cached":
        at = view.fetched_at(service)
        return at is None or now >= at + view.config.ttl_s
    return service not in view._delivered  # watch: only the first lookup queries directly

"""The API gateway's routing to entry instances under ``policies.gateway`` (models/gateway.py).

Without a gateway policy the engine routes each request once (``Engine._through_gateway``:
one call to an instance Consul's DNS interface returns) and nothing here runs, so the
``seed`` profile's runs are what they were. With one, :class:`GatewayRouter` makes that
call and, as Envoy's router does at an edge:

* picks among the DNS list less the hosts its outlier detector has ejected (one
  :class:`~hailan_sim.models.breakers.OutlierDetector` per entry service, fed every
  attempt's result; a connect failure or reset is a local-origin failure, fed as 503:
  ``rejected``);
* retries a connect failure or a reset (``retry_on``) up to ``num_retries`` times after
  Envoy's jittered backoff, on another host than those tried (``previous_hosts``), within
  what is left of the endpoint's timeout (the route timeout includes the retries; no retry
  once it has passed), at most ``max_retries`` retries in backoff per entry service.

What it does is logged: ``gateway_retry`` (request, the failed attempt's call, the gateway,
the entry service, the instance that failed, the operation, why: ``connect-failure`` or
``reset``), ``gateway_retry_overflow`` (a retry ``max_retries`` refused, same fields),
``gateway_eject`` / ``gateway_uneject`` (the gateway, the entry service, the host; for an
ejection the outcome is the ejection's length in seconds). docs/events.md.
"""

from __future__ import annotations

from hailan_sim.models.breakers import OutlierDetector
from hailan_sim.models.gateway import envoy_backoff_s
from hailan_sim.sim.clock import at as _at
from hailan_sim.sim.clock import at_first as _at_first

__all__ = ["GatewayRouter"]


class GatewayRouter:
    """The gateway's side of every request's entry call (one per engine)."""

    def __init__(self, eng, policy) -> None:
        self.eng = eng
        self.gw = eng.gateway
        self.retry = policy.retry
        self.outlier = policy.outlier
        self.detectors: dict = {}  # entry service -> OutlierDetector
        self.waiting: dict = {}  # entry service -> retries in backoff (Envoy's max_retries gauge)
        self._u: dict = {}  # entry service -> its backoff jitter stream

    def route(self, req) -> None:
        e = req.ep
        now = self.eng.env.now
        _Attempts(self, req, e.entry, None if e.timeout is None else now + e.timeout).attempt()

    # ------------------------------------------------------------------ outlier detection

    def detector(self, service: str, hosts: list, now: float) -> OutlierDetector:
        det = self.detectors.get(service)
        if det is None:
            det = self.detectors[service] = OutlierDetector(self.outlier, [i.name for i in hosts], start=now)
            self._arm(service, det)
        return det

    def _arm(self, service: str, det: OutlierDetector) -> None:
        # The detector's interval sweep (un-ejections) runs at its own time, ahead of calls
        # at that instant, so that an un-ejection is logged when it happens.
        now = self.eng.env.now
        due = det.next_timer(now)
        _at_first(self.eng.env, max(due - now, 0.0), self._sweep, (service, det, due))

    def _sweep(self, arg) -> None:
        service, det, due = arg
        eng = self.eng
        now = eng.env.now
        before = len(det.events)
        det.tick(max(now, due))  # due may exceed now by a rounding of the delay
        self.logged(det, before, service)
        # Sweeps go on while requests arrive, and after that while a host is still ejected.
        if now < eng.duration or det.ejected(max(now, due)):
            self._arm(service, det)

    def logged(self, det: OutlierDetector, before: int, service: str) -> None:
        eng = self.eng
        now = eng.env.now
        for _t, kind, host in det.events[before:]:
            if kind == "eject":
                eng.counters["gateway_ejections"] += 1
                eng._rec((now, "gateway_eject", None, None, None, self.gw.name, service, host, None,
                          str(det.ejection_s(host))))
            else:
                eng._rec((now, "gateway_uneject", None, None, None, self.gw.name, service, host, None, None))

    def jitter(self, service: str):
        u = self._u.get(service)
        if u is None:
            u = self._u[service] = self.eng.streams.uniform(f"gateway-retry/{service}").next
        return u


class _Attempts:
    """One request's entry call at the gateway: its attempts, until one is not retried."""

    __slots__ = ("router", "req", "op", "t_end", "tried")

    def __init__(self, router: GatewayRouter, req, op, t_end) -> None:
        self.router = router
        self.req = req
        self.op = op
        self.t_end = t_end  # the route timeout: the endpoint's timeout_s from the first attempt
        self.tried: list = []  # hosts of the failed attempts (previous_hosts)

    def attempt(self, _arg=None) -> None:
        r = self.router
        eng = r.eng
        now = eng.env.now
        svc = self.op.svc
        timeout = None if self.t_end is None else self.t_end - now
        up = eng._gateway_targets(svc) if eng.registry is not None else svc.up
        if r.outlier is not None and up:
            det = r.detector(svc.name, up, now)
            if det.any_ejected(now):  # NOTE: for speed; with none ejected every host is eligible
                up = [eng.instance_by_name[n] for n in det.eligible(now, [i.name for i in up])]
        inst = self._pick(up) if up else None  # none: the engine's "No available instances"
        eng._start_call(self.req, None, r.gw.name, r.gw, self.op, timeout, self._done, inst)

    def _pick(self, up: list):
        n = len(up)
        if n == 1:
            return up[0]
        r = self.router
        pick = r.eng._pick(r.gw.name, self.op.svc.name)  # the stream the gateway always picks with
        inst = up[int(pick() * n)]
        retry = r.retry
        if self.tried and retry is not None and retry.retry_host_predicate == "previous_hosts":
            # Envoy LoadBalancerBase::chooseHost: up to hostSelectionRetryCount() + 1 picks,
            # the last one kept even if the predicate rejects it.
            for _ in range(retry.host_selection_retry_max_attempts):
                if inst.name not in self.tried:
                    break
                inst = up[int(pick() * n)]
        return inst

    def _done(self, outcome: str) -> None:
        r = self.router
        eng = r.eng
        c = eng.last_call  # this attempt's call (set just before its continuation runs)
        now = eng.env.now
        inst = c.inst
        service = self.op.svc.name
        why = None
        if outcome == "error" and inst is not None:
            if c.refused:
                why = "connect-failure"
            elif c.lost:
                why = "reset"  # the instance crashed while serving it (sim/faults.py _crash)
        det = r.detectors.get(service)
        if det is not None and inst is not None:
            before = len(det.events)
            # Envoy (split_external_local_origin_errors false) counts a local-origin connect
            # failure as 503 (resultToHttpCode: LocalOriginConnectFailed -> ServiceUnavailable).
            det.on_result(now, inst.name, "rejected" if why is not None else outcome)
            if len(det.events) != before:
                r.logged(det, before, service)
        retry = r.retry
        if (why is not None and retry is not None and why in retry.retry_on
                and len(self.tried) < retry.num_retries
                and (self.t_end is None or now < self.t_end)):
            if r.waiting.get(service, 0) >= retry.max_retries:
                eng.counters["gateway_retry_overflows"] += 1
                eng._rec((now, "gateway_retry_overflow", self.req.id, c.id, None, r.gw.name, service,
                          inst.name, self.op.name, why))
            else:
                self.tried.append(inst.name)
                eng.counters["gateway_retries"] += 1
                eng._rec((now, "gateway_retry", self.req.id, c.id, None, r.gw.name, service, inst.name,
                          self.op.name, why))
                r.waiting[service] = r.waiting.get(service, 0) + 1
                delay = envoy_backoff_s(len(self.tried), retry.base_interval_s, retry.cap_s(), r.jitter(service)())
                _at(eng.env, delay, self._retry, None)
                return
        eng._request_done(self.req, outcome)

    def _retry(self, _arg) -> None:
        r = self.router
        service = self.op.svc.name
        r.waiting[service] -= 1
        if self.t_end is not None and r.eng.env.now >= self.t_end:
            # The backoff ran past the route timeout: Envoy answers 504 then.
            r.eng._request_done(self.req, "timeout")
            return
        self.attempt()

"""Service registry (a Consul agent) and caller-side discovery, as timer-driven state machines.

The platform (spec 074, 3.2) registers every instance with Consul at start-up with an HTTP
check (``interval 10s, timeout 5s, deregistercriticalserviceafter 30s``) and discovers
instances with ``consul.agent.service.list()``, which ignores health. This module models
exactly that, with Consul's own semantics (``/work/shared/reference/resilience-semantics.md``
section 4, "ref 4" below; Consul source paths are given where a rule comes from them).

Two parts, both plain state machines driven by simulated time ``now`` (float seconds):

* :class:`Registry`: registrations, one health check per instance (first run after a random
  stagger, StatusHandler thresholds, ``critical_since`` = Consul's ``CriticalTime``), the
  critical-service reaper, and the query paths (:meth:`Registry.agent_list`,
  :meth:`Registry.health_passing`).
* :class:`DiscoveryView` (``per_call`` / ``cached`` / ``watch``): what one caller sees at
  ``now``, built on those query paths.

How the engine drives it (timer-driven, no polling):

1. When an instance finishes start-up: ``events = reg.register(now, inst, svc, meta)`` then
   ``t = reg.schedule_first_check(now, inst, u)``; schedule a check start at ``t``.
2. At a check start: ``deadline = reg.start_check(now, inst)`` (optional bookkeeping), run the
   HTTP check against the instance, and at its end (answer, or ``deadline`` without an
   answer) call ``reg.record_check(end, inst, passing)``; then schedule the next start at
   ``reg.next_check(inst)`` (= end + interval, as Consul's check loop).
3. After every call, re-ask ``reg.next_timer(now)`` and call ``reg.tick(t)`` at that time.
4. On graceful stop: ``reg.deregister(now, inst)``.
5. A caller resolves a service with ``view.instances(now, svc, reg)``; a ``watch`` view also
   has ``next_timer``/``tick`` for its pending deliveries.

Every mutating call returns the ordered list of events it caused, ``(instance, (kind,
detail))``; the same events with their times accumulate in :attr:`Registry.log`. Registry-wide
events use ``instance=None``. Event kinds: ``registered``, ``reregistered``, ``warn``,
``register_failed``, ``status``, ``critical_since``, ``below_threshold``, ``deregistered``,
``deregister_failed``, ``check_ignored``, ``registry``.

No SimPy, no wall clock, no sets: every iteration is over dicts (registration order) or lists.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Optional, Sequence, Union

from pydantic import Field

from hailan_sim.models._base import Frozen

__all__ = [
    "CHECK_DEREGISTER_INTERVAL_MIN_S",
    "CHECK_REAP_INTERVAL_S",
    "DEEP_CHECK_SERVICES",
    "CachedView",
    "DiscoveryConfig",
    "DiscoveryView",
    "Event",
    "HealthCheckConfig",
    "PerCallView",
    "Registry",
    "WatchView",
    "deep_check_passes",
    "make_view",
]

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]

# ref 4 "Deregistration": agent/config/default.go NonUserSource sets
# check_reap_interval = "30s" and check_deregister_interval_min = "1m"; neither can be
# configured by a user, so they are constants here, not config fields.
CHECK_REAP_INTERVAL_S = 30.0
CHECK_DEREGISTER_INTERVAL_MIN_S = 60.0

# spec 074 3.2.2 HealthCheckService.checkExternalServices: const services = ['auth-service',
# 'payment-service'].
DEEP_CHECK_SERVICES: tuple[str, ...] = ("auth-service", "payment-service")

# (instance or None for registry-wide, (kind, detail))
Event = tuple[Optional[str], tuple[str, object]]

_EPS = 1e-9  # tolerance for "a result may not arrive after the check's deadline"


class HealthCheckConfig(Frozen):
    """One instance's HTTP health check as registered (spec 074 3.2.1 + Consul defaults).

    ``interval_s``, ``timeout_s`` and ``deregister_critical_after_s`` are the spec's values
    (``interval: '10s', timeout: '5s', deregistercriticalserviceafter: '30s'``); the rest are
    Consul's defaults (ref 4): thresholds 0, a new check starts ``critical``.
    ``deregister_critical_after_s=None`` means "never reap" (Consul: the field unset / 0).

    ``content`` says what the instance's check endpoint does, for the engine: ``"deep"`` is the
    spec's HealthCheckService.checkHealth (database + redis + discovery of auth-service and
    payment-service, see :func:`deep_check_passes`); ``"shallow"`` answers whenever the
    instance is up. ``deregister_timing``: ``"consul"`` clamps the timeout to 60 s and removes
    on the 30 s reaper's passes, as Consul does; ``"exact"`` removes at exactly
    ``critical_since + deregister_critical_after_s`` (what the spec's author presumably meant).
    """

    interval_s: PositiveFloat = 10.0
    timeout_s: PositiveFloat = 5.0
    # ref 4 "Consul checks" (agent/checks/check.go StatusHandler): both default to 0.
    success_before_passing: Annotated[int, Field(ge=0)] = 0
    failures_before_critical: Annotated[int, Field(ge=0)] = 0
    # ref 4: "A new check is critical until its first pass unless status is set".
    initial_status: Literal["critical", "passing"] = "critical"
    content: Literal["shallow", "deep"] = "deep"
    deregister_critical_after_s: Optional[PositiveFloat] = 30.0
    deregister_timing: Literal["consul", "exact"] = "consul"

    def effective_deregister_after_s(self) -> Optional[float]:
        """The timeout the reaper really uses (None: never reaped).

        With Consul timing, ``max(configured, 60 s)``: agent.go addCheck clamps
        ``DeregisterCriticalServiceAfter`` below ``CheckDeregisterIntervalMin`` up to it and
        logs a WARN (ref 4, "Your 30 s is clamped to 60 s").
        """
        conf = self.deregister_critical_after_s
        if conf is None:
            return None
        if self.deregister_timing == "consul":
            return max(conf, CHECK_DEREGISTER_INTERVAL_MIN_S)
        return conf


@dataclass
class _Entry:
    """One registered instance and its (single) check's state."""

    service: str
    meta: dict
    check: HealthCheckConfig
    reap_after: Optional[float]  # effective timeout, None = never reaped
    status: str
    success_counter: int
    failures_counter: int
    seq: int  # first-registration sequence number: the registration order
    critical_since: Optional[float] = None  # Consul CheckState.CriticalTime (None = zero)
    next_check: Optional[float] = None
    in_flight_since: Optional[float] = None
    token: int = 0  # identifies this entry's current removal-heap item


class Registry:
    """A Consul agent holding every instance's registration and check (see the module doc).

    ``check`` is the default :class:`HealthCheckConfig` for registrations (the spec uses one
    for every service); ``register(..., check=...)`` may override it per instance.
    ``agent_start_s`` anchors the reaper: Consul's reapServices loop is
    ``for { <-time.After(CheckReapInterval); reapServicesInternal() }``, so its passes run at
    ``agent_start_s + k * 30 s`` for k >= 1 (the pass itself taking no simulated time). We
    start the agent at t=0 with the simulation; the reference gives no phase.
    """

    def __init__(
        self, check: Optional[HealthCheckConfig] = None, *, agent_start_s: float = 0.0
    ) -> None:
        self.check = check if check is not None else HealthCheckConfig()
        self.agent_start_s = float(agent_start_s)
        self._entries: dict[str, _Entry] = {}
        # Per service, its instances in registration order (dict used as an ordered set).
        self._members: dict[str, dict[str, None]] = {}
        # Removal dues as a lazy heap of (due, seq, token, instance); an item is stale when
        # the instance is gone or its entry's token moved on.
        self._dues: list[tuple[float, int, int, str]] = []
        self._tokens = 0
        self._seqs = 0
        self._up = True
        self._now = -math.inf
        self.log: list[tuple[float, Optional[str], tuple[str, object]]] = []
        self._subscribers: list[DiscoveryView] = []
        # Last lists published to watchers, per service then path (dict: first-seen order).
        self._published: dict[str, dict[str, tuple[str, ...]]] = {}

    # ------------------------------------------------------------------ bookkeeping

    def _emit(
        self, t: float, instance: Optional[str], kind: str, detail: object, out: list[Event]
    ) -> None:
        ev = (kind, detail)
        self.log.append((t, instance, ev))
        out.append((instance, ev))

    def _advance(self, now: float) -> list[Event]:
        """Run every removal due at or before ``now`` (at its own due time), then move to now.

        Every mutating call starts here, so timers due at the same instant as a call are
        applied before it (the engine should tick at timer times anyway; this keeps the state
        right if it is late).
        """
        if now < self._now:
            raise ValueError(f"time went backwards: {now} < {self._now}")
        out: list[Event] = []
        # Heap order (due, seq): by time, then registration order at the same instant.
        while (top := self._peek_due()) is not None and top[0] <= now:
            due, _, _, inst = heapq.heappop(self._dues)
            # ref 4: the reaper removes the service when CriticalFor() > timeout
            # (agent.go reapServicesInternal -> RemoveService).
            service = self._remove(inst)
            self._emit(due, inst, "deregistered", "critical_timeout", out)
            self._publish(due, service)
        self._now = now
        return out

    def _peek_due(self) -> Optional[tuple[float, int, int, str]]:
        while self._dues:
            top = self._dues[0]
            e = self._entries.get(top[3])
            if e is not None and e.token == top[2]:
                return top
            heapq.heappop(self._dues)  # stale
        return None

    def _reschedule(self, instance: str, e: _Entry) -> None:
        """Re-file the entry's removal due after its critical clock changed."""
        self._tokens += 1
        e.token = self._tokens
        due = self._removal_due(e)
        if due is not None:
            heapq.heappush(self._dues, (due, e.seq, e.token, instance))

    def _remove(self, instance: str) -> str:
        e = self._entries.pop(instance)
        del self._members[e.service][instance]
        return e.service

    def _removal_due(self, e: _Entry) -> Optional[float]:
        if e.critical_since is None or e.reap_after is None:
            return None
        if e.check.deregister_timing == "exact":
            return e.critical_since + e.reap_after
        return self._first_reap_pass_after(e.critical_since, e.reap_after)

    def _first_reap_pass_after(self, critical_since: float, timeout: float) -> float:
        """The first reaper pass at which ``CriticalFor() > timeout`` holds.

        agent.go reapServicesInternal iterates CriticalCheckStates (CriticalTime set) and
        removes when ``timeout > 0 && cs.CriticalFor() > timeout`` -- strictly greater, so a
        pass exactly ``timeout`` after ``critical_since`` does not reap (ref 4).
        """
        r, a = CHECK_REAP_INTERVAL_S, self.agent_start_s
        k = max(1, math.floor((critical_since + timeout - a) / r) + 1)
        while a + k * r - critical_since <= timeout:  # guard float rounding, both ways
            k += 1
        while k > 1 and a + (k - 1) * r - critical_since > timeout:
            k -= 1
        return a + k * r

    def _publish(self, now: float, service: str) -> None:
        """Tell watchers about a service's list when it changed for their path."""
        if not self._up or not self._subscribers:
            # Nothing reaches a caller while the registry is unreachable. Without any
            # subscriber there is nobody to tell (a later one bootstraps with a query).
            return
        cur = {
            "agent_list": tuple(self._list(service, passing_only=False)),
            "health_passing": tuple(self._list(service, passing_only=True)),
        }
        prev = self._published.get(service)
        self._published[service] = cur
        for view in self._subscribers:
            path = view.config.path
            if prev is None or prev[path] != cur[path]:
                view.registry_changed(now, service, list(cur[path]))

    def _list(self, service: str, *, passing_only: bool) -> list[str]:
        members = self._members.get(service, {})
        if not passing_only:
            # /v1/agent/services answers a JSON object keyed by service ID, written by Go's
            # encoding/json, which sorts map keys ("The map keys are sorted", json.Marshal);
            # the spec iterates it with Object.entries, which keeps that order for keys that
            # are not array indices (ECMAScript OrdinaryOwnPropertyKeys). So x-0, x-1, x-10,
            # x-2: byte order of the ID (the spec's `${serviceName}-${serviceId}`), which for
            # these ASCII names is Python's string order.
            return sorted(members)
        return [inst for inst in members if self._entries[inst].status == "passing"]

    def _entry(self, instance: str) -> _Entry:
        try:
            return self._entries[instance]
        except KeyError:
            raise KeyError(f"instance {instance!r} is not registered") from None

    # ------------------------------------------------------------------ registration

    @property
    def registry_up(self) -> bool:
        """False while callers cannot reach the registry's API (see :meth:`set_registry_up`)."""
        return self._up

    def set_registry_up(self, now: float, up: bool) -> list[Event]:
        """Start or end a registry outage.

        Our model of an outage: the instances cannot reach the registry's HTTP API, so every
        query returns ``None`` (the spec's ``await consul.agent.service.list()`` throws) and
        register/deregister fail. The agent itself keeps running its checks and its reaper
        (as a Consul agent does when it loses its servers, or when the apps are partitioned
        from it). Watchers get nothing during the outage and the current lists on recovery.
        """
        out = self._advance(now)
        if bool(up) == self._up:
            return out
        self._up = bool(up)
        self._emit(now, None, "registry", "up" if up else "down", out)
        if self._up:
            # Services already published, then newly seen ones, each once (dict order).
            for service in dict.fromkeys([*self._published, *self._members]):
                self._publish(now, service)
        return out

    def register(
        self,
        now: float,
        instance: str,
        service: str,
        meta: Optional[dict] = None,
        *,
        check: Optional[HealthCheckConfig] = None,
    ) -> list[Event]:
        """Register ``instance`` of ``service`` with a fresh check (spec 3.2.1 registerService).

        The check starts in ``initial_status`` with its StatusHandler counters at their
        thresholds and no ``critical_since``; call :meth:`schedule_first_check` next.
        Re-registering a registered instance (a restart before it was reaped) replaces its
        service, meta and check -- a fresh check as above -- and keeps its place in the order
        (our choice; the reference is silent). During an outage the call fails: a
        ``register_failed`` event and nothing registered (the spec never retries, so such an
        instance stays invisible for its lifetime).
        """
        out = self._advance(now)
        if not self._up:
            self._emit(now, instance, "register_failed", "registry unreachable", out)
            return out
        cfg = check if check is not None else self.check
        conf = cfg.deregister_critical_after_s
        reap_after = cfg.effective_deregister_after_s()
        old = self._entries.get(instance)
        again = old is not None
        if old is None:
            self._seqs += 1
            seq = self._seqs
        else:
            seq = old.seq
            if old.service != service:
                del self._members[old.service][instance]
        self._entries[instance] = e = _Entry(
            service=service,
            meta=dict(meta or {}),
            check=cfg,
            reap_after=reap_after,
            status=cfg.initial_status,
            # check.go NewStatusHandler: "set counters values to threshold in order to
            # immediately update status after first check" (ref 4).
            success_counter=cfg.success_before_passing,
            failures_counter=cfg.failures_before_critical,
            seq=seq,
        )
        members = self._members.setdefault(service, {})
        if instance not in members:
            members[instance] = None
            if again:  # moved to another service: keep the global registration order
                ordered = sorted(members, key=lambda i: self._entries[i].seq)
                self._members[service] = dict.fromkeys(ordered)
        self._reschedule(instance, e)  # a fresh check: no critical clock, no due
        self._emit(now, instance, "reregistered" if again else "registered", service, out)
        if conf is not None and reap_after is not None and reap_after > conf:
            # agent.go addCheck: WARN "check has deregister interval below minimum" (ref 4).
            self._emit(
                now,
                instance,
                "warn",
                "check has deregister interval below minimum: "
                f"configured={conf:g}s minimum_interval={CHECK_DEREGISTER_INTERVAL_MIN_S:g}s",
                out,
            )
        self._publish(now, service)
        return out

    def deregister(self, now: float, instance: str) -> list[Event]:
        """Graceful deregistration (spec 3.2.1 deregisterService).

        Fails (a ``deregister_failed`` event, nothing changes) during an outage -- the
        instance then stays registered until its check goes critical and it is reaped -- and
        for an instance that is not registered (Consul: "Unknown service ID"), e.g. one the
        reaper already removed.
        """
        out = self._advance(now)
        if not self._up:
            self._emit(now, instance, "deregister_failed", "registry unreachable", out)
            return out
        if instance not in self._entries:
            self._emit(now, instance, "deregister_failed", "unknown service", out)
            return out
        service = self._remove(instance)
        self._emit(now, instance, "deregistered", "graceful", out)
        self._publish(now, service)
        return out

    # ------------------------------------------------------------------ checks

    def schedule_first_check(self, now: float, instance: str, u: Callable[[], float]) -> float:
        """Schedule the check's first run and return its time.

        agent/checks/check.go CheckHTTP.run: ``initialPauseTime :=
        lib.RandomStagger(c.Interval)``, uniform in ``[0, interval)`` (ref 4).
        """
        self._advance(now)
        e = self._entry(instance)
        if e.next_check is not None or e.in_flight_since is not None:
            raise ValueError(f"{instance!r}: its check is already scheduled")
        x = u()
        if not 0.0 <= x < 1.0:
            raise ValueError(f"u() must be in [0, 1), got {x}")
        e.next_check = now + x * e.check.interval_s
        return e.next_check

    def next_check(self, instance: str) -> Optional[float]:
        """When ``instance``'s next check starts (None: in flight, unscheduled or unknown)."""
        e = self._entries.get(instance)
        return None if e is None else e.next_check

    def start_check(self, now: float, instance: str) -> float:
        """Mark the due check as running; return its deadline ``now + timeout_s``.

        Consul's HTTP client has ``Timeout = c.Timeout``, so a result (or the failure of an
        instance that never answers) is known by then. Optional: :meth:`record_check` also
        accepts a result for a due check that was never started (an instantaneous check).
        """
        self._advance(now)
        e = self._entry(instance)
        if e.next_check is None or now < e.next_check:
            raise ValueError(f"{instance!r}: no check due at {now}")
        e.next_check = None
        e.in_flight_since = now
        return now + e.check.timeout_s

    def record_check(self, now: float, instance: str, passing: bool) -> list[Event]:
        """Apply one check result at ``now`` (the check's end) and schedule the next run.

        StatusHandler.updateCheck (agent/checks/check.go, ref 4): a pass increments the
        success counter and zeroes the failure counter, and updates the status only once the
        counter reaches ``success_before_passing``; a failure symmetrically with
        ``failures_before_critical``. A status update is local State.UpdateCheck
        (agent/local/state.go): critical sets ``CriticalTime`` only if it is not already set;
        any other status clears it. The next run is ``interval`` after this one ends
        (CheckHTTP.run: ``c.check(); next = time.After(c.Interval)``).

        Results for an instance that is no longer registered are ignored (Consul stops the
        check with the service): a ``check_ignored`` event.
        """
        out = self._advance(now)
        e = self._entries.get(instance)
        if e is None:
            self._emit(now, instance, "check_ignored", "not registered", out)
            return out
        if e.in_flight_since is not None:
            if now > e.in_flight_since + e.check.timeout_s + _EPS:
                raise ValueError(
                    f"{instance!r}: result at {now} after the check's deadline "
                    f"{e.in_flight_since + e.check.timeout_s}"
                )
        elif e.next_check is None or now < e.next_check:
            raise ValueError(f"{instance!r}: no check was due or running at {now}")
        e.in_flight_since = None
        cfg = e.check
        if passing:
            e.success_counter += 1
            e.failures_counter = 0
            if e.success_counter >= cfg.success_before_passing:
                self._update_check(now, instance, e, "passing", out)
            else:
                self._emit(
                    now,
                    instance,
                    "below_threshold",
                    f"passing {e.success_counter}/{cfg.success_before_passing}",
                    out,
                )
        else:
            e.failures_counter += 1
            e.success_counter = 0
            if e.failures_counter >= cfg.failures_before_critical:
                self._update_check(now, instance, e, "critical", out)
            else:
                self._emit(
                    now,
                    instance,
                    "below_threshold",
                    f"critical {e.failures_counter}/{cfg.failures_before_critical}",
                    out,
                )
        e.next_check = now + cfg.interval_s
        self._publish(now, e.service)
        return out

    def _update_check(
        self, now: float, instance: str, e: _Entry, status: str, out: list[Event]
    ) -> None:
        # agent/local/state.go State.UpdateCheck: "if status == critical { if !c.Critical()
        # { c.CriticalTime = time.Now() } } else { c.CriticalTime = time.Time{} }".
        if e.status != status:
            e.status = status
            self._emit(now, instance, "status", status, out)
        if status == "critical":
            if e.critical_since is None:
                e.critical_since = now
                self._emit(now, instance, "critical_since", now, out)
                self._reschedule(instance, e)
        elif e.critical_since is not None:
            e.critical_since = None
            self._reschedule(instance, e)

    # ------------------------------------------------------------------ timers

    def next_timer(self, now: float) -> Optional[float]:
        """When the registry next needs :meth:`tick` (None: nothing pending).

        That is the next reaper pass that will remove someone (Consul timing; passes that
        would remove nobody change nothing and are not surfaced) or the next exact removal.
        Never earlier than ``now``. Re-ask after every call: a check result can create or
        cancel a removal.
        """
        top = self._peek_due()
        return None if top is None else max(top[0], now)

    def tick(self, now: float) -> list[Event]:
        """Run the removals due at or before ``now``: ``("deregistered", "critical_timeout")``."""
        return self._advance(now)

    # ------------------------------------------------------------------ queries

    def agent_list(self, service: str) -> Optional[list[str]]:
        """Every registered instance of ``service``, health ignored; None during an outage.

        ``/v1/agent/services`` (the spec's ``consul.agent.service.list()``) and
        ``/v1/catalog/service`` ignore health (ref 4 "Query paths"). Sorted by service ID
        as a string (``x-0, x-1, x-10, x-2``), the order of the agent's JSON object.
        """
        return self._list(service, passing_only=False) if self._up else None

    def health_passing(self, service: str) -> Optional[list[str]]:
        """Instances whose check passes; None during an outage.

        ``/v1/health/service/:name?passing`` requires every check to pass (ref 4). Each
        instance has one check here; node-level serfHealth is not modelled.
        """
        return self._list(service, passing_only=True) if self._up else None

    def query(self, path: str, service: str) -> Optional[list[str]]:
        """:meth:`agent_list` or :meth:`health_passing` by name (a DiscoveryConfig.path)."""
        if path == "agent_list":
            return self.agent_list(service)
        if path == "health_passing":
            return self.health_passing(service)
        raise ValueError(f"unknown query path {path!r}")

    def subscribe(self, view: "DiscoveryView") -> None:
        """Push every later change of a service's list (for ``view.config.path``) to ``view``."""
        if not any(v is view for v in self._subscribers):
            self._subscribers.append(view)

    # ------------------------------------------------------------------ inspection

    def instances(self) -> list[str]:
        """Every registered instance, in registration order."""
        return list(self._entries)

    def is_registered(self, instance: str) -> bool:
        return instance in self._entries

    def service_of(self, instance: str) -> str:
        return self._entry(instance).service

    def meta(self, instance: str) -> dict:
        return dict(self._entry(instance).meta)

    def check_config(self, instance: str) -> HealthCheckConfig:
        return self._entry(instance).check

    def status(self, instance: str) -> str:
        """``"passing"`` or ``"critical"``."""
        return self._entry(instance).status

    def critical_since(self, instance: str) -> Optional[float]:
        """Consul's CriticalTime: when the check last went critical (None if not critical).

        Set by the first *applied* critical result only: a check that starts critical
        (``initial_status``) has none until a check fails, so it is never reaped before that.
        """
        return self._entry(instance).critical_since

    def deregister_after_s(self, instance: str) -> Optional[float]:
        """The effective reap timeout of the instance's check (clamped with Consul timing)."""
        return self._entry(instance).reap_after

    def removal_due(self, instance: str) -> Optional[float]:
        """When the instance will be reaped if nothing changes (None: not scheduled)."""
        return self._removal_due(self._entry(instance))


# ---------------------------------------------------------------------- discovery views


class DiscoveryConfig(Frozen):
    """How a caller resolves a service name to instances.

    ``path``: which query (``agent_list`` is the spec's agent.service.list(), health
    ignored; ``health_passing`` is /v1/health/service?passing). ``timing``: ``per_call``
    queries on every call (spec 3.3.1 HttpClient.selectServiceInstance); ``cached`` keeps the
    last successful list for ``ttl_s``; ``watch`` is a blocking-query watch that sees every
    change ``watch_delay_s`` later. ``ttl_s`` and ``watch_delay_s`` are our defaults (the spec
    and the reference give none) and are ignored by the timings that do not use them.
    """

    path: Literal["agent_list", "health_passing"] = "agent_list"
    timing: Literal["per_call", "cached", "watch"] = "per_call"
    ttl_s: PositiveFloat = 30.0
    watch_delay_s: NonNegativeFloat = 0.1


class DiscoveryView:
    """What one caller sees of the registry. Subclasses implement :meth:`instances`.

    ``instances(now, service, registry)`` returns the instance list, possibly empty, or
    ``None`` when discovery failed (the spec's ``discoverService`` throws). Counters:
    ``queries`` (registry queries made), ``failures`` (of those, failed), ``stale_served``
    (lists served from a cache after a failed refresh).
    """

    def __init__(self, config: DiscoveryConfig) -> None:
        self.config = config
        self.queries = 0
        self.failures = 0
        self.stale_served = 0
        self.log: list[tuple[float, Optional[str], tuple[str, object]]] = []

    def instances(self, now: float, service: str, registry: Registry) -> Optional[list[str]]:
        raise NotImplementedError

    def registry_changed(self, now: float, service: str, new_list: Sequence[str]) -> None:
        """A subscribed registry's list for ``service`` changed at ``now`` (watch only)."""

    def next_timer(self, now: float) -> Optional[float]:
        return None

    def tick(self, now: float) -> list[Event]:
        return []

    def unreachable(self, now: float, service: str) -> Optional[list[str]]:
        """The registry could not be reached from this caller (a partition, the request
        timed out): what this view serves instead. Per call: nothing (``None``)."""
        self.queries += 1
        self.failures += 1
        return None

    def _query(self, registry: Registry, service: str) -> Optional[list[str]]:
        self.queries += 1
        result = registry.query(self.config.path, service)
        if result is None:
            self.failures += 1
        return result


class PerCallView(DiscoveryView):
    """Query on every call (spec 3.3.1: ``await this.serviceRegistry.discoverService``).

    During an outage every call fails (``None``): the spec's callService throws.
    """

    def instances(self, now: float, service: str, registry: Registry) -> Optional[list[str]]:
        return self._query(registry, service)


class CachedView(DiscoveryView):
    """Keep the last successful list for ``ttl_s``; refresh on the first call after that.

    A list fetched at ``t`` is served for calls with ``now < t + ttl_s``; the first call at
    or after ``t + ttl_s`` queries the registry and gets the fresh list. If that query fails
    (outage), the stale list is served (stale-if-error, for as long as the outage lasts,
    like Consul's own ``max_stale`` 87600 h DNS default in spirit) and the TTL is *not*
    extended: the next call retries the registry. With nothing cached, a failure is ``None``.
    """

    def __init__(self, config: DiscoveryConfig) -> None:
        super().__init__(config)
        self._cache: dict[str, tuple[list[str], float]] = {}

    def instances(self, now: float, service: str, registry: Registry) -> Optional[list[str]]:
        entry = self._cache.get(service)
        if entry is not None and now < entry[1] + self.config.ttl_s:
            return list(entry[0])
        result = self._query(registry, service)
        if result is not None:
            self._cache[service] = (list(result), now)
            return list(result)
        if entry is not None:
            self.stale_served += 1
            return list(entry[0])
        return None

    def unreachable(self, now: float, service: str) -> Optional[list[str]]:
        """As for a failed refresh: the stale list if there is one (TTL not extended)."""
        self.queries += 1
        self.failures += 1
        entry = self._cache.get(service)
        if entry is None:
            return None
        self.stale_served += 1
        return list(entry[0])

    def fetched_at(self, service: str) -> Optional[float]:
        """When the cached list for ``service`` was fetched (None: nothing cached)."""
        entry = self._cache.get(service)
        return None if entry is None else entry[1]


class WatchView(DiscoveryView):
    """A Consul watch / blocking-query loop: every change is seen ``watch_delay_s`` later.

    Model (ref 4 "Blocking queries"; the reference gives no latency, the delay is ours): the
    registry pushes each change of a service's list for this view's path
    (:meth:`registry_changed`, wired by :meth:`Registry.subscribe`), and the view adopts it
    at ``change time + watch_delay_s``. With a constant delay the view at ``t`` shows the
    registry's list at ``t - watch_delay_s``; a real client coalesces changes that land
    within one round trip, so it may skip short-lived intermediate lists that this model
    shows. The 5-10 min wait and wait/16 jitter only bound how long an *unchanged* query
    is held, so they do not delay changes and are not modelled.

    The first call for a service with nothing delivered yet makes a direct query (a blocking
    query with index 0 returns at once); ``None`` if that fails. During an outage the view
    keeps serving its last list (the watch's handler is not called on errors); the registry
    pushes the current lists on recovery, delivered ``watch_delay_s`` later.
    """

    def __init__(self, config: DiscoveryConfig) -> None:
        super().__init__(config)
        self._delivered: dict[str, list[str]] = {}
        self._pending: list[tuple[float, int, str, tuple[str, ...]]] = []  # heap
        self._seq = 0
        self._registry: Optional[Registry] = None

    def attach(self, registry: Registry) -> None:
        """Subscribe to ``registry`` (done automatically by the first :meth:`instances`)."""
        if self._registry is None:
            self._registry = registry
            registry.subscribe(self)
        elif self._registry is not registry:
            raise ValueError("a WatchView follows exactly one registry")

    def registry_changed(self, now: float, service: str, new_list: Sequence[str]) -> None:
        heapq.heappush(
            self._pending, (now + self.config.watch_delay_s, self._seq, service, tuple(new_list))
        )
        self._seq += 1

    def next_timer(self, now: float) -> Optional[float]:
        return max(self._pending[0][0], now) if self._pending else None

    def tick(self, now: float) -> list[Event]:
        out: list[Event] = []
        while self._pending and self._pending[0][0] <= now:
            due, _, service, lst = heapq.heappop(self._pending)
            self._delivered[service] = list(lst)
            ev = ("view_updated", lst)
            self.log.append((due, service, ev))
            out.append((service, ev))
        return out

    def unreachable(self, now: float, service: str) -> Optional[list[str]]:
        """Only the first lookup queries directly; later ones use what was delivered."""
        self.tick(now)
        if service in self._delivered:
            return list(self._delivered[service])
        self.queries += 1
        self.failures += 1
        return None

    def instances(self, now: float, service: str, registry: Registry) -> Optional[list[str]]:
        self.attach(registry)
        self.tick(now)
        if service in self._delivered:
            return list(self._delivered[service])
        result = self._query(registry, service)
        if result is None:
            return None
        self._delivered[service] = list(result)
        return list(result)


def make_view(config: DiscoveryConfig) -> DiscoveryView:
    """The :class:`DiscoveryView` for ``config.timing``."""
    cls: type[DiscoveryView] = {
        "per_call": PerCallView,
        "cached": CachedView,
        "watch": WatchView,
    }[config.timing]
    return cls(config)


# ---------------------------------------------------------------------- deep check


def deep_check_passes(
    db_up: bool,
    redis_up: bool,
    discover: Callable[[str], Union[Sequence[str], None]],
) -> bool:
    """The spec's HealthCheckService.checkHealth (074 3.2.2): is the status ``'UP'``?

    ``database`` and ``redis`` must be up, and ``discoverService(s)`` must return at least
    one instance for each of auth-service and payment-service; a discovery that throws
    (``discover`` returns None or raises) counts as false, as the spec's try/catch does.
    All parts are evaluated, as the spec awaits each before combining them.

    Spec quirk: ``discoverService`` is ``consul.agent.service.list()``, which ignores health,
    so a dead-but-still-registered auth-service counts as available (until the reaper
    removes it, 60-105 s after it died with Consul timing); and once either dependency has
    no registered instance, or discovery fails (registry outage), *every* service whose
    check is this deep check fails its health check at once.
    """
    external = []
    for service in DEEP_CHECK_SERVICES:
        try:
            found = discover(service)
        except Exception:  # the spec: catch (error) { results[service] = false; }
            found = None
        external.append(found is not None and len(found) > 0)
    return bool(db_up) and bool(redis_up) and all(external)

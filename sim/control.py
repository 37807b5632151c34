"""The control plane: the registry (Consul) and its health checks and reaper, the gateway's
DNS view of it, and autoscaling with graceful drains.

Split out of sim/engine.py unchanged: :class:`ControlPlaneMixin` is part of
:class:`~hailan_sim.sim.engine.Engine` and works on its state.
"""

from __future__ import annotations

from hailan_sim.models.registry import deep_check_passes
from hailan_sim.sim.clock import at as _at
from hailan_sim.sim.state import _Instance, _Service, _index

__all__ = ["ControlPlaneMixin"]


class ControlPlaneMixin:
    """The engine's control-plane methods (mixed into Engine)."""

    def _gateway_targets(self, svc: _Service) -> list:
        """The instances the gateway routes to: those Consul's DNS interface would return
        (critical ones excluded; ref 4 "DNS"), or the last such list while the registry is
        unreachable (allow_stale)."""
        names = self.registry.health_passing(svc.name)
        if names is None:
            return self._gateway_last.get(svc.name, svc.up)
        targets = [self.instance_by_name[n] for n in names]
        self._gateway_last[svc.name] = targets
        return targets
    # ------------------------------------------------------------------ autoscaling

    def _autoscale(self, svc: _Service) -> None:
        """Measure the last interval, ask the service's autoscaler, add or drain instances."""
        env = self.env
        now = env.now
        policy = svc.scaler.policy
        if now < self.duration:
            _at(env, policy.interval_s, self._autoscale, svc)
        serving = [i for i in svc.up if not i.draining]
        busy = queue = 0.0
        for inst in svc.instances:
            self._touch(inst)
            busy += inst.barea
            queue += inst.qarea
        d_busy, d_queue = busy - svc.scale_areas[0], queue - svc.scale_areas[1]
        svc.scale_areas = (busy, queue)
        if not serving:
            metric = float("inf")
        elif policy.metric == "utilisation":
            metric = d_busy / (svc.workers * len(serving) * policy.interval_s)
        else:
            metric = d_queue / (len(serving) * policy.interval_s)
        delta = svc.scaler.decide(now, metric, len(serving) + svc.starting)
        if delta:
            self.counters["scale_out" if delta > 0 else "scale_in"] += abs(delta)
            self._rec((now, "autoscale", None, None, None, None, svc.name, None, policy.metric, str(delta)))
        for _ in range(delta):
            inst = _Instance(svc, len(svc.instances), *svc.placement[len(svc.instances) % len(svc.placement)])
            inst.skew = self._skew[inst.node]
            inst.last = now
            svc.instances.append(inst)
            self.instance_by_name[inst.name] = inst
            svc.starting += 1
            _at(env, svc.startup, self._scaled_up, inst)
        for _ in range(-delta):
            inst = max((i for i in svc.up if not i.draining), key=_index)
            self._drain(inst)

    def _scaled_up(self, inst: _Instance) -> None:
        inst.svc.starting -= 1
        self._instance_up(inst)

    def _drain(self, inst: _Instance) -> None:
        """Graceful stop: deregister (spec 3.2.1 deregisterService), take no new work from
        the balancer's fast path, finish what it has, then stop."""
        inst.draining = True
        inst.svc.up.remove(inst)
        self._rec((self.env.now, "instance_drain", None, None, None, None, inst.svc.name, inst.name, None, None))
        if self.registry is not None and self.registry.is_registered(inst.name):
            self._registry_events(self.registry.deregister(self.env.now, inst.name))
        if inst.free == inst.workers and not inst.queue:
            self._stop(inst)

    def _stop(self, inst: _Instance) -> None:
        self._touch(inst)
        inst.up = False
        inst.draining = False
        self._rec((self.env.now, "instance_stop", None, None, None, None, inst.svc.name, inst.name, None, None))

    # ------------------------------------------------------------------ registry and health checks

    def _registry_events(self, events) -> None:
        """Log what the registry model did; events carry their own (due) times."""
        now = self.env.now
        for instance, (kind, detail) in events:
            self._rec((now, "registry", None, None, None, None,
                       self.registry.service_of(instance) if instance and self.registry.is_registered(instance) else None,
                       instance, kind, None if detail is None else str(detail)))
            if kind == "deregistered":
                self.counters["deregistrations"] += 1
        nxt = self.registry.next_timer(now)
        if nxt is not None and (self._registry_timer is None or nxt < self._registry_timer):
            self._registry_timer = nxt
            _at(self.env, max(nxt - now, 0.0), self._registry_tick, nxt)

    def _registry_tick(self, due: float) -> None:
        if self._registry_timer != due:
            return  # superseded by an earlier timer
        self._registry_timer = None
        self._registry_events(self.registry.tick(self.env.now))

    def _register(self, inst: _Instance, warm: bool) -> None:
        """Register with the registry (spec 3.2.1) and start the instance's health check."""
        if self.registry is None:
            return
        now = self.env.now
        check = self.policies.health_check
        if warm:
            check = check.model_copy(update={"initial_status": "passing"})
        self._registry_events(self.registry.register(now, inst.name, inst.svc.name, check=check))
        # A registration during a registry outage fails (register_failed). An instance that
        # restarted before it was reaped is still registered then: its old entry, with the
        # check Consul's agent kept running, stays as it was (found by the hardened property:
        # crash_instance(user-service-0, restart) with its restart inside a registry outage
        # scheduled a second first check and raised).
        if self.registry.registry_up and self.registry.is_registered(inst.name):
            inst.check_gen += 1
            t = self.registry.schedule_first_check(now, inst.name, self._check_u[inst.svc.name])
            _at(self.env, t - now, self._check, (inst, inst.check_gen))

    def _check(self, arg) -> None:
        """Consul runs the instance's HTTP check; the instance answers per its check content."""
        inst, gen = arg
        reg = self.registry
        if gen != inst.check_gen or not reg.is_registered(inst.name):
            return
        cut = self._blocked and self._net_fault(self.registry_svc.name, self.registry_svc, inst) is None
        if inst.up and (inst.hung or cut):
            # No answer: the check fails when its timeout runs out.
            _at(self.env, self.policies.health_check.timeout_s, self._check_failed, (inst, gen))
            return
        passing = inst.up and (
            self.policies.health_check.content == "shallow" or self._deep_check()
        )
        self._check_result(inst, gen, passing)

    def _check_failed(self, arg) -> None:
        inst, gen = arg
        if gen == inst.check_gen and self.registry.is_registered(inst.name):
            self._check_result(inst, gen, False)

    def _check_result(self, inst: _Instance, gen: int, passing: bool) -> None:
        now = self.env.now
        reg = self.registry
        self._registry_events(reg.record_check(now, inst.name, passing))
        nxt = reg.next_check(inst.name)
        if nxt is not None:
            _at(self.env, nxt - now, self._check, (inst, gen))

    def _deep_check(self) -> bool:
        """The spec's HealthCheckService.checkHealth (3.2.2) run inside an instance."""
        def up(kind: str) -> bool:
            return all(i.up for svc in self.services.values() if svc.infra is not None
                       and svc.infra.kind == kind for i in svc.instances)

        def discover(service: str):
            # A scenario without the spec's auth-/payment-service has nothing to look up.
            return self.registry.agent_list(service) if service in self.services else ["-"]

        return deep_check_passes(up("database"), up("cache"), discover)
"""Faults: apply and undo each scheduled fault (crash and restart, drain, hang, slowness,
error rates, partitions and link faults on every hop, outages, clock skew, load spikes).

Split out of sim/engine.py unchanged: :class:`FaultsMixin` is part of
:class:`~hailan_sim.sim.engine.Engine` and works on its state.
"""

from __future__ import annotations

from typing import Callable, Optional

from hailan_sim.models.arrivals import schedule_for
from hailan_sim.sim.clock import at as _at
from hailan_sim.sim.state import _UNIT_EXP, _Instance

__all__ = ["FaultsMixin"]


class FaultsMixin:
    """The engine's fault methods (mixed into Engine)."""

    def _fault_u(self, key) -> "Callable[[], float]":
        """A uniform stream for fault draws about ``key`` (an instance, a link, a spike)."""
        name = key.name if isinstance(key, _Instance) else str(key)
        u = self._fault_us.get(name)
        if u is None:
            u = self._fault_us[name] = self.streams.uniform(f"fault/{name}").next
        return u

    def _fault_instances(self, f) -> list:
        """The instances (of services and infrastructure) a fault's target covers."""
        kind = f.kind
        every = [i for svc in self.services.values() for i in svc.instances]
        if kind in ("crash_instance", "drain_instance", "hang"):
            return [self.instance_by_name[f.instance]]
        if kind == "crash_service":
            return list(self.services[f.service].instances)
        if kind == "crash_node":
            return [i for i in every if i.node == f.node]
        if kind == "crash_zone":
            return [i for i in every if i.zone == f.zone]
        if kind in ("slow", "error_rate"):
            if f.target in self.services:
                return list(self.services[f.target].instances)
            return [self.instance_by_name[f.target]]
        if kind == "infra_outage":
            return list(self.services[f.component].instances)
        if kind == "registry_outage":
            return list(self.registry_svc.instances)
        if kind == "clock_skew":
            return [i for i in every if i.node == f.node]
        return []

    def _fault_log(self, event: str, i: int, f) -> None:
        target = next((getattr(f, k) for k in ("instance", "service", "node", "zone", "target",
                                                "component", "endpoint") if hasattr(f, k)), None)
        if f.kind in ("partition", "link_latency"):
            target = f"{f.a}|{f.b}"
        self._rec((self.env.now, event, None, None, None, None, target, None, f.kind, str(i)))

    def _fault_start(self, arg) -> None:
        i, f = arg
        self._fault_log("fault_start", i, f)
        kind = f.kind
        now = self.env.now
        if kind in ("crash_instance", "crash_service", "crash_node", "crash_zone", "infra_outage"):
            # A node or zone crash takes the hosts with it: nothing answers for them, so no
            # RST/FIN reaches their peers (what a cached gRPC channel sees; sim/client.py).
            vanished = kind in ("crash_node", "crash_zone")
            for inst in self._fault_instances(f):
                self._crash(inst, vanished)
        elif kind == "drain_instance":
            inst = self.instance_by_name[f.instance]
            if inst.up and not inst.draining:
                self._drain(inst)
        elif kind == "hang":
            self.instance_by_name[f.instance].hung = True
        elif kind == "slow":
            for inst in self._fault_instances(f):
                inst.slow *= f.factor
        elif kind == "error_rate":
            for inst in self._fault_instances(f):
                inst.fault_err = 1 - (1 - inst.fault_err) * (1 - f.fraction)
        elif kind == "partition":
            for key in ((f.a, f.b), (f.b, f.a)):
                self._blocked[key] = self._blocked.get(key, 0) + 1
        elif kind == "link_latency":
            for key in ((f.a, f.b), (f.b, f.a)):
                self._slow_links.setdefault(key, []).append((f.added_ms / 1000, f.loss, i))
        elif kind == "registry_outage":
            for inst in self._fault_instances(f):
                self._crash(inst)
            self._registry_events(self.registry.set_registry_up(now, False))
        elif kind == "clock_skew":
            for inst in self._fault_instances(f):
                inst.skew += f.skew_s
        elif kind == "load_spike":
            self._spike(i, f)
        # key_rotation: the issuer's key schedule already includes it (see _build)

    def _fault_end(self, arg) -> None:
        i, f = arg
        self._fault_log("fault_end", i, f)
        kind = f.kind
        now = self.env.now
        if kind in ("crash_instance", "crash_service", "crash_node", "crash_zone"):
            if f.restart:
                for inst in self._fault_instances(f):
                    self._restart(inst)
        elif kind == "infra_outage":
            for inst in self._fault_instances(f):
                self._restart(inst)
        elif kind == "drain_instance":
            self._restart(self.instance_by_name[f.instance])
        elif kind == "hang":
            inst = self.instance_by_name[f.instance]
            inst.hung = False
            # It comes back by restarting (a watchdog kill): what it held is lost.
            self._crash(inst)
            self._restart(inst)
        elif kind == "slow":
            for inst in self._fault_instances(f):
                inst.slow /= f.factor
        elif kind == "error_rate":
            for inst in self._fault_instances(f):
                inst.fault_err = 0.0 if f.fraction == 1 else 1 - (1 - inst.fault_err) / (1 - f.fraction)
        elif kind == "partition":
            for key in ((f.a, f.b), (f.b, f.a)):
                self._blocked[key] -= 1
                if not self._blocked[key]:
                    del self._blocked[key]
        elif kind == "link_latency":
            for key in ((f.a, f.b), (f.b, f.a)):
                self._slow_links[key] = [x for x in self._slow_links[key] if x[2] != i]
                if not self._slow_links[key]:
                    del self._slow_links[key]
        elif kind == "registry_outage":
            for inst in self._fault_instances(f):
                self._restart(inst)
            self._registry_events(self.registry.set_registry_up(now, True))
        elif kind == "clock_skew":
            for inst in self._fault_instances(f):
                inst.skew -= f.skew_s

    def _crash(self, inst: _Instance, vanished: bool = False) -> None:
        """The process dies: every call it holds is reset (its caller gets an error), it
        stays registered (nobody deregisters a dead process), checks start failing.
        ``vanished``: its host died too (node/zone crash), so idle connections to it are
        not closed by its kernel."""
        if not inst.up:
            return
        self._touch(inst)
        inst.deaths.append((self.env.now, vanished))
        inst.up = False
        inst.hung = False
        inst.draining = False
        if inst in inst.svc.up:
            inst.svc.up.remove(inst)
        now = self.env.now
        self._rec((now, "instance_down", None, None, None, None, inst.svc.name, inst.name, None, None))
        lost = list(inst.calls.values())
        inst.calls.clear()
        inst.queue.clear()
        inst.free = inst.workers
        for c in lost:
            c.lost = True
            self._rec((now, "work_end", c.req.id, c.id, None, c.source, inst.svc.name, inst.name,
                       c.op.name, "error"))
            self._answer(c, "error")  # connection reset

    def _restart(self, inst: _Instance) -> None:
        """Start the instance again: it pays its start-up, then comes up and registers."""
        if inst.up:
            return
        if inst.svc.infra is not None:
            self._set_up(inst)
            self._rec((self.env.now, "instance_up", None, None, None, None, inst.svc.name, inst.name, None, None))
            return
        _at(self.env, inst.svc.startup, self._instance_up, inst)

    def _net_fault(self, source: str, src_svc, inst: _Instance) -> Optional[float]:
        """Extra delay on a hop between a caller and ``inst`` under network faults, or None
        when the packet is dropped (a partition, or loss)."""
        # A gateway's or a broker's calls carry its component name as both the sender and
        # the sender's service: look each link up once.
        ends_a = (source, src_svc.name) if src_svc is not None and src_svc.name != source else (source,)
        ends_b = (inst.name, inst.svc.name)
        extra = 0.0
        for a in ends_a:
            for b in ends_b:
                if (a, b) in self._blocked:
                    return None
                for added, loss, i in self._slow_links.get((a, b), ()):
                    if loss and self._fault_u(f"link{i}")() < loss:
                        return None
                    extra += added
        return extra

    def _spike(self, i: int, f) -> None:
        """Extra arrivals for the endpoint during the spike, on their own stream, so the
        baseline's arrivals are untouched (common random numbers)."""
        e = next(e for e in self.endpoints if e.name == f.endpoint)
        ep = next(x for x in self.scenario.workload.endpoints if x.name == f.endpoint)
        factor = f.factor - 1.0
        if ep.arrival is not None:
            schedule = schedule_for(ep.arrival, factor)
        else:
            schedule = schedule_for(self.scenario.workload.arrival, self.scenario.workload.shares()[ep.name] * factor)
        draw = self.streams.sampler(f"fault/{i}/arrive", _UNIT_EXP).next
        end = min(f.end_s() or self.duration, self.duration)
        state = (e, schedule, draw, end)
        t = schedule.next_arrival(self.env.now, draw())
        if t < end:
            _at(self.env, t - self.env.now, self._spike_arrival, state)

    def _spike_arrival(self, state) -> None:
        e, schedule, draw, end = state
        now = self.env.now
        t = schedule.next_arrival(now, draw())
        if t < end:
            _at(self.env, t - now, self._spike_arrival, state)
        self._request(e, now)
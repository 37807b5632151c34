"""Differential test: the spec's client code (074) and the engine's `seed` client, call by call.

``SpecProcess`` below is a transcription of the client side of one service process in the
spec: ``ServiceRegistryClient.discoverService`` (3.2.1), ``HttpClient.callService`` /
``selectServiceInstance`` / ``loadBalance`` (3.3.1), ``GrpcClient.getClient`` (3.3.2),
``CircuitBreaker`` (3.5.1) and ``ServiceAuth.generateToken`` (3.7.1). It is written from the
spec's TypeScript, not from models/ or sim/, and shares nothing with them.

The engine runs a small scenario under the ``seed`` profile with faults. Hooks on its client
pipeline (``sim/client.py``) record, for every internal call, what the engine decided and
what the environment supplied: the instances registered with the registry at the lookup,
whether the lookup answered, the uniform draw ``Math.random()`` returned, each call's outcome
and the time. The transcription is then driven with the same environment, in the same
order, and must take the same decision for every call:

- whether it asks the registry (``discoverService``) or not (a cached gRPC client),
- the instance picked (or "No available instances" / a failed lookup),
- whether the breaker admits the call (HTTP only: the GrpcClient has none),
- the timeout (axios's 5000 ms on HTTP, none on gRPC),
- the token attached (reused from the cache, or newly signed, and its ``exp``).
"""

from __future__ import annotations

import math
from typing import Optional

import pytest

from hailan_sim.sim import simulate
from hailan_sim.sim import client as client_mod
from hailan_sim.sim.client import held_tokens
from hailan_sim.models import balancers as balancers_mod
from tests._build import build, const, endpoint, op, svc, trace

REGISTRY = {"name": "consul", "kind": "registry", "port": 8500, "capacity": 16, "latency_ms": const(0.5)}


# --------------------------------------------------------------------------- the spec, transcribed


class SpecCircuitBreaker:
    """3.5.1 ``CircuitBreaker``; times are ``Date`` values in milliseconds."""

    def __init__(self, failure_threshold: int, success_threshold: int, timeout_ms: float) -> None:
        self.config = {"failureThreshold": failure_threshold, "successThreshold": success_threshold,
                       "timeout": timeout_ms}
        self.state = "CLOSED"
        self.failureCount = 0
        self.successCount = 0
        self.lastFailureTime = None
        self.halfOpenCallCount = 0

    def admit(self, now_ms: float) -> bool:
        """The part of ``execute`` before ``await fn()``: True when ``fn`` is called."""
        if self.state == "OPEN":
            if self.shouldAttemptReset(now_ms):
                self.transitionToHalfOpen()
            else:
                return False  # throw new Error(`Circuit breaker is OPEN for service: ...`)
        return True

    def settle(self, now_ms: float, ok: bool) -> None:
        """The rest of ``execute``: ``onSuccess()`` if ``fn`` resolved, else ``onFailure()``."""
        self.onSuccess() if ok else self.onFailure(now_ms)

    def onSuccess(self) -> None:
        self.failureCount = 0
        if self.state == "HALF_OPEN":
            self.successCount += 1
            self.halfOpenCallCount += 1
            if self.successCount >= self.config["successThreshold"]:
                self.transitionToClosed()

    def onFailure(self, now_ms: float) -> None:
        self.failureCount += 1
        self.lastFailureTime = now_ms
        if self.failureCount >= self.config["failureThreshold"]:
            self.transitionToOpen()
        elif self.state == "HALF_OPEN":
            self.transitionToOpen()

    def transitionToClosed(self) -> None:
        self.state = "CLOSED"
        self.successCount = 0
        self.halfOpenCallCount = 0

    def transitionToOpen(self) -> None:
        self.state = "OPEN"
        self.successCount = 0
        self.halfOpenCallCount = 0

    def transitionToHalfOpen(self) -> None:
        self.state = "HALF_OPEN"
        self.successCount = 0
        self.halfOpenCallCount = 0

    def shouldAttemptReset(self, now_ms: float) -> bool:
        if not self.lastFailureTime:
            return False
        return now_ms - self.lastFailureTime >= self.config["timeout"]


def agent_service_list(registered: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``Object.entries(await consul.agent.service.list())``: the agent answers a JSON object
    keyed by service ID; Go's encoding/json writes map keys sorted, and Object.entries keeps
    the text's order for keys that are not array indices."""
    as_json = {sid: name for sid, name in registered}
    return [(sid, as_json[sid]) for sid in sorted(as_json, key=lambda k: k.encode())]


class SpecProcess:
    """One service process: its HttpClient (with its one CircuitBreaker), GrpcClient and
    ServiceAuth, as the spec's code builds them."""

    def __init__(self, breaker_cfg, ttl_s: int) -> None:
        self.circuitBreaker = SpecCircuitBreaker(*breaker_cfg)
        self.clients: dict[str, str] = {}  # GrpcClient.clients: cacheKey -> the client's address
        self.tokenCache: dict[str, dict] = {}  # ServiceAuth.tokenCache
        self.ttl_s = ttl_s

    def discoverService(self, serviceName: str, registered) -> list[str]:
        return [sid for sid, service in agent_service_list(registered) if service == serviceName]

    @staticmethod
    def loadBalance(instances: list[str], math_random: float) -> str:
        return instances[math.floor(math_random * len(instances))]

    def generateToken(self, serviceName: str, serviceId: str, now_ms: int) -> tuple[dict, bool]:
        """(the token, whether it was newly signed)."""
        cacheKey = f"{serviceName}-{serviceId}"
        if cacheKey in self.tokenCache:
            decoded = self.tokenCache[cacheKey]
            if decoded["exp"] * 1000 > now_ms:
                return decoded, False
        iat = math.floor(now_ms / 1000)  # jsonwebtoken: Math.floor(Date.now() / 1000)
        token = {"iat": iat, "exp": iat + self.ttl_s}  # expiresIn: '1h'
        self.tokenCache[cacheKey] = token
        return token, True


# --------------------------------------------------------------------------- the engine, observed


class Observer:
    """Hooks on sim/client.py's _Logical that record the engine's decisions and the inputs
    the environment gave it, in the order the engine made them."""

    def __init__(self, monkeypatch) -> None:
        self.stream: list[tuple] = []
        self.open: dict[int, dict] = {}
        self.draw: list = []
        L = client_mod._Logical
        orig_attempt, orig_discovered, orig_choose = L.attempt, L._discovered, L._choose
        orig_send, orig_done, orig_failed = L._send, L._done, L._failed
        orig_random = balancers_mod.RandomBalancer.choose
        obs = self

        def attempt(self):
            obs.open[id(self)] = {"t": self.eng.env.now, "caller": self.parent.inst.name,
                                  "caller_svc": self.parent.op.svc.name, "callee": self.callee,
                                  "protocol": self.edge.protocol, "discovered": False}
            obs.stream.append(("attempt", obs.open[id(self)]))
            orig_attempt(self)

        def discovered(self, outcome):
            rec = obs.open[id(self)]
            reg = self.eng.registry
            rec["discovered"] = True
            rec["lookup_ok"] = outcome == "ok" and reg.registry_up
            rec["registered"] = [(i, reg.service_of(i)) for i in reg.instances()]
            orig_discovered(self, outcome)

        def choose(self, names):
            obs.draw = []
            orig_choose(self, names)

        def random_choose(self, now, instances, u, key=None):
            def spy():
                x = u()
                obs.draw.append(x)
                return x
            return orig_random(self, now, instances, spy, key)

        def send(self):
            rec = obs.open[id(self)]
            token = self.token
            rec.update(t_send=self.eng.env.now, picked=self.inst.name, admitted=True, timeout=self.timeout,
                       token_exp=None if token is None else token.exp, draw=list(obs.draw))
            obs.stream.append(("call", rec))
            orig_send(self)

        def failed(self, outcome, retryable):
            rec = obs.open.get(id(self))
            if rec is not None and "picked" not in rec:  # refused before sending
                rec.update(t_send=self.eng.env.now, picked=self.inst.name if self.inst else None,
                           admitted=False if self.inst is not None else None, draw=list(obs.draw))
                obs.stream.append(("call", rec))
            obs.open.pop(id(self), None)
            orig_failed(self, outcome, retryable)

        def done(self, outcome):
            rec = obs.open.pop(id(self))
            obs.stream.append(("result", rec, self.eng.env.now, outcome))
            orig_done(self, outcome)

        for name, fn in (("attempt", attempt), ("_discovered", discovered), ("_choose", choose),
                         ("_send", send), ("_done", done), ("_failed", failed)):
            monkeypatch.setattr(L, name, fn)
        monkeypatch.setattr(balancers_mod.RandomBalancer, "choose", random_choose)


# --------------------------------------------------------------------------- side by side


def replay(stream, breaker_cfg, ttl_s: int, held: Optional[dict] = None) -> int:
    """Drive the transcription with the engine's environment; assert every decision agrees.
    Returns the number of calls compared. ``held``: instance -> the token its ServiceAuth
    cache holds when the run starts (``tokens.first_token: steady_state``: the process has
    been running; ``sim.client.held_tokens``), empty for a process that starts with the run."""
    held = held or {}
    procs: dict[str, SpecProcess] = {}
    sent_tokens: dict[str, int] = {}  # caller -> exp of the token the engine last sent
    n = 0
    for item in stream:
        rec = item[1]
        p = procs.get(rec["caller"])
        if p is None:
            p = procs[rec["caller"]] = SpecProcess(breaker_cfg, ttl_s)
            tok = held.get(rec["caller"])
            if tok is not None:  # ServiceAuth.tokenCache: `${serviceName}-${serviceId}`
                p.tokenCache[f"{rec['caller_svc']}-{rec['caller']}"] = {"iat": tok.iat, "exp": tok.exp}
        grpc = rec["protocol"] == "grpc"
        where = f"call {n} at {rec['t']:.6f}s {rec['caller']} -> {rec['callee']} ({rec['protocol']})"
        cache_key = f"{rec['callee']}-svc"  # getClient's `${serviceName}-${serviceNameInProto}`
        if item[0] == "attempt":
            # 1. discovery or not, decided when the call starts: `if (this.clients.has(cacheKey))`
            rec["spec_lookup"] = not (grpc and cache_key in p.clients)
            continue
        if item[0] == "result":
            _, rec, t, outcome = item
            if not grpc:  # GrpcClient calls never pass through circuitBreaker.execute
                p.circuitBreaker.settle(t * 1000, outcome == "ok")
            continue
        n += 1
        expect_lookup = rec["spec_lookup"]
        assert rec["discovered"] == expect_lookup, where
        if expect_lookup:
            if not rec["lookup_ok"]:  # agent.service.list() rejected: callService throws
                assert rec["picked"] is None and rec["admitted"] is None, where
                continue
            instances = p.discoverService(rec["callee"], rec["registered"])
            if not instances:  # throw new Error(`No available instances for service: ...`)
                assert rec["picked"] is None and rec["admitted"] is None, where
                continue
            # 2. the instance: Math.floor(Math.random() * instances.length)
            assert len(rec["draw"]) == 1, where
            picked = p.loadBalance(instances, rec["draw"][0])
            if grpc:
                p.clients[cache_key] = picked  # this.clients.set(cacheKey, client)
        else:
            picked = p.clients[cache_key]  # return this.clients.get(cacheKey)
            assert rec["draw"] == [], where  # no Math.random() for a cached client
        assert rec["picked"] == picked, where
        # 3. the breaker (HTTP only)
        admitted = True if grpc else p.circuitBreaker.admit(rec["t_send"] * 1000)
        assert rec["admitted"] == admitted, where
        if not admitted:
            continue
        # 4. the timeout: axios.create({timeout: 5000}); gRPC: no deadline
        assert rec["timeout"] == (None if grpc else 5.0), where
        # 5. the token: ServiceAuth.generateToken on the caller's clock
        token, _new = p.generateToken(rec["caller_svc"], rec["caller"], math.floor(rec["t_send"] * 1000))
        assert rec["token_exp"] == token["exp"], where
        sent_tokens[rec["caller"]] = token["exp"]
    return n


def _scenario(faults: list, ttl_s: int = 3600, breaker_timeout_s: float = 60):
    """a (2 instances) calls b over HTTP (12 instances: IDs b-10, b-11 sort before b-2) and c
    over gRPC (3 instances), under `seed`, with a Consul registry."""
    # a burst first: several calls from one instance look c up before any has cached its client
    arrivals = [0.4 + i * 0.0001 for i in range(6)] + [0.5 + i * 0.02 for i in range(1500)]
    return build(
        [
            svc("a", 3001, {"op": op(1, {"seq": [{"call": "b.op"}, {"call": "c.op"}]})},
                depends_on=["b", "c"], instances=2, workers=64),
            svc("b", 3002, {"op": op(2)}, instances=12, workers=8),
            svc("c", 3003, {"op": op(1)}, instances=3, workers=16),
        ],
        [endpoint("a.op", trace(*arrivals), timeout_s=60)],
        infrastructure=[REGISTRY],
        profile="seed",
        policies={"tokens": {"ttl_s": ttl_s}, "breaker": {"timeout_s": breaker_timeout_s},
                  "edges": [{"caller": "a", "callee": "c", "protocol": "grpc"}]},
        faults=faults,
        duration_s=32,
    )


SEED_BREAKER = (5, 2, 60_000)  # seed.yaml: failure_threshold 5, success_threshold 2, timeout 60 s

CASES = {
    "fault_free": [],
    "errors_open_the_breaker": [
        {"kind": "error_rate", "target": "b", "fraction": 0.6, "start_s": 5, "duration_s": 3},
        {"kind": "error_rate", "target": "c", "fraction": 1.0, "start_s": 10, "duration_s": 5},
    ],
    "crashes_and_registry_outage": [
        {"kind": "crash_instance", "instance": "b-10", "start_s": 2, "duration_s": 6},
        {"kind": "crash_instance", "instance": "c-0", "start_s": 4, "duration_s": 20},
        {"kind": "registry_outage", "start_s": 12, "duration_s": 4},
        {"kind": "crash_service", "service": "b", "start_s": 20, "duration_s": 5},
    ],
}


# case -> (token ttl_s, the breaker's timeout_s): short ones so that tokens are re-signed and
# the breaker goes half-open and closes again within the run
KNOBS = {"fault_free": (7, 60), "errors_open_the_breaker": (3600, 1.5), "crashes_and_registry_outage": (3600, 4)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_seed_client_takes_the_spec_clients_decision_on_every_call(case, monkeypatch):
    obs = Observer(monkeypatch)
    ttl_s, breaker_timeout_s = KNOBS[case]
    sc = _scenario(CASES[case], ttl_s, breaker_timeout_s)
    assert sc.effective_policies().tokens.first_token == "steady_state"  # seed's: a running platform
    simulate(sc, progress=False)
    n = replay(obs.stream, (*SEED_BREAKER[:2], breaker_timeout_s * 1000), ttl_s, held_tokens(sc))
    assert n >= 1500  # every request's first call at least (a failed b.op stops the seq)


def test_the_differential_replay_catches_a_client_that_differs_from_the_spec(monkeypatch):
    """The comparison can fail: a planted difference (gRPC calls through the HTTP breaker,
    the engine before issue 9) is caught."""
    obs = Observer(monkeypatch)
    sc = _scenario(CASES["errors_open_the_breaker"])
    data = sc.model_dump(mode="python", exclude_unset=True)
    data["policies"]["grpc_client"] = "as_http"
    simulate(type(sc).model_validate(data), progress=False)
    with pytest.raises(AssertionError):
        replay(obs.stream, SEED_BREAKER, 3600)

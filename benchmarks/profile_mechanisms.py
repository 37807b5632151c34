#!/usr/bin/env python3
"""``hardened``'s cost over no policies, by mechanism (issue 12 item 5, h12h).

Two modes.

**Attribution** (the default): the default scenario (warm-up 0, the given seed and length)
is simulated with no profile and with ``hardened``, each under a tracer that counts, per
source line, the bytecodes the interpreter executes (``sys.settrace`` with
``f_trace_opcodes``), the C functions called from it (``sys.setprofile``'s ``c_call``:
``heappush``, ``dict.get``, ``math.floor``...) and the Python functions entered. Counts are
deterministic (same scenario and seed, same counts in any process). Each line goes to one
mechanism (``mechanism()`` below: by file and function, and inside the client pipeline's
shared steps by what the line touches); the table gives each mechanism's counts per 1,000
requests for both runs, the difference and its share of the whole difference. Both runs
serve the same requests (same arrivals), so "per 1,000 requests" compares the same work.
Bytecodes are a proxy for the interpreter's work, not its time (a C call or a frame costs
more than a bytecode): read them with the callgrind instruction counts of
benchmarks/README.md, "Issue 12, hardened's cost over no policies (h12h)".

**One run for callgrind** (``--run-only``): builds the scenario (``none``, ``hardened``, or
``hardened`` with policy overrides as JSON, e.g. ``'{"breaker": null}'``), runs a 0.5 s
warm-up, then the measured ``simulate`` inside ``functools.reduce``, so that
``valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce``
counts the run's instructions only (imports and building excluded)::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONHASHSEED=0 setarch $(uname -m) -R \\
      valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
      python benchmarks/profile_mechanisms.py --run-only hardened 10 '{"breaker": null}'

Usage: python benchmarks/profile_mechanisms.py [--duration S] [--seed N] [--json FILE]
       python benchmarks/profile_mechanisms.py --run-only NAME DURATION [OVERRIDES_JSON]
Not a test; tests/test_benchmark_smoke.py runs it for a short run.
"""

from __future__ import annotations

import argparse
import functools
import json
import linecache
import re
import sys
from collections import Counter

MECHANISMS = (
    "engine: per-call steps",
    "engine: deadline checks",
    "timers: arm, fire, compact",
    "event log + recorders",
    "client pipeline frame",
    "discovery (cache, registry)",
    "balancer (P2C)",
    "breakers",
    "outlier detection",
    "retries + budget",
    "tokens (cache, sign, verify)",
    "bulkhead + in-flight counts",
    "gRPC channel",
    "gateway policies",
    "load shedding",
    "control plane",
    "messaging",
    "numpy, pandas, other",
)

# Lines of the client pipeline's shared steps, by what they touch (first match wins).
_CHOOSE = [(r"outlier", "outlier detection"), (r"sticky|channel", "gRPC channel"),
           (r"bulkhead|inflight", "bulkhead + in-flight counts"),
           (r"\bbr\b|breaker|allowed|short_circuit|key = |pushed_back|CLOSED|br_key", "breakers"),
           (r"\bbal\b|pick|balancer|choose", "balancer (P2C)"),
           (r"with_token", "tokens (cache, sign, verify)")]
_DONE = [(r"inflight|\.active", "bulkhead + in-flight counts"), (r"\bbal\b|balancer", "balancer (P2C)"),
         (r"\bbr\b|breaker|br_key|CLOSED", "breakers"), (r"outlier", "outlier detection"),
         (r"throttle|_budget|on_success|on_failure", "retries + budget"),
         (r"refresh|channels", "gRPC channel"), (r"auth|token", "tokens (cache, sign, verify)"),
         (r"pushback|pushed_back|_failed|retry", "retries + budget")]
_SEND = [(r"inflight|\.active", "bulkhead + in-flight counts"), (r"\bbal\b|on_start", "balancer (P2C)"),
         (r"deadline|mine", "engine: deadline checks")]
_ATTEMPT = [(r"sticky|channel", "gRPC channel"),
            (r"registry|view|_needs_query|_discovered|\breg\b|infra", "discovery (cache, registry)")]
_INIT = [(r"finagle|_budget|deposit", "retries + budget"), (r"with_token", "tokens (cache, sign, verify)")]
_START = [(r"deadline|left", "engine: deadline checks"), (r"_arm", "timers: arm, fire, compact")]
_SERVE = [(r"deadline|max_wait|_shed", "engine: deadline checks")]
_TIMERS = ("_arm", "_arm_head", "_timers_due", "_compact", "_unpark")
_TOKENS = ("_verify", "_published_now", "_published_kids", "_current_kid", "_hold_token",
           "_with_token", "_fetch_token", "done", "<lambda>")
_BY_FILE = {
    "sim/metrics.py": "event log + recorders", "sim/eventlog.py": "event log + recorders",
    "sim/runner.py": "event log + recorders", "sim/result.py": "event log + recorders",
    "sim/gateway.py": "gateway policies", "models/gateway.py": "gateway policies",
    "sim/control.py": "control plane", "sim/messages.py": "messaging",
    "models/balancers.py": "balancer (P2C)", "models/retry.py": "retries + budget",
    "models/tokens.py": "tokens (cache, sign, verify)", "models/registry.py": "discovery (cache, registry)",
}


def _by_text(text: str, table, default: str) -> str:
    for pattern, mech in table:
        if re.search(pattern, text):
            return mech
    return default


def _package_files() -> dict:
    """File -> its path inside the package (``sim/engine.py``), for every module of hailan_sim
    imported (an editable install's files are not under a ``hailan_sim/`` folder)."""
    out = {}
    for mod_name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if mod_name.startswith("hailan_sim.") and path:
            out[path] = "/".join(mod_name.split(".")[1:]) + ".py"
    return out


def mechanism(f: str | None, qualname: str, text: str) -> str:
    """The mechanism a line belongs to: ``f`` its file's path inside the package
    (``sim/engine.py``; None: not hailan_sim's), ``qualname`` its function, ``text`` the
    line itself (for the client pipeline's shared steps)."""
    if f is None:
        return "numpy, pandas, other"
    name = qualname.rsplit(".", 1)[-1]
    if f == "sim/engine.py":
        if name in _TIMERS or qualname.startswith(tuple(f"Engine.{t}." for t in _TIMERS)):
            return "timers: arm, fire, compact"
        if name in ("_breaker_logged", "_breaker_tick"):
            return "breakers"
        if name == "_shed":
            return "load shedding"
        if qualname == "Engine._start_call":
            return _by_text(text, _START, "engine: per-call steps")
        if qualname == "Engine._serve":
            return _by_text(text, _SERVE, "engine: per-call steps")
        return "engine: per-call steps"
    if f == "sim/state.py":
        return "timers: arm, fire, compact" if qualname.startswith("_TimerQueue") else "engine: per-call steps"
    if f in _BY_FILE:
        return _BY_FILE[f]
    if f == "models/breakers.py":
        return "outlier detection" if ("Outlier" in qualname or "_HostMonitor" in qualname) else "breakers"
    if f == "sim/client.py":
        if name in _TOKENS:
            return "tokens (cache, sign, verify)"
        if name in ("_budget", "_budget_allows", "_failed", "_retry"):
            return "retries + budget"
        if name in ("_channel_closed", "_deaths_before"):
            return "gRPC channel"
        if name in ("_needs_query", "_discovered"):
            return "discovery (cache, registry)"
        table = {"_Logical.__init__": _INIT, "_Logical.attempt": _ATTEMPT, "_Logical._choose": _CHOOSE,
                 "_Logical._send": _SEND, "_Logical._done": _DONE}.get(qualname)
        return _by_text(text, table, "client pipeline frame") if table else "client pipeline frame"
    return "engine: per-call steps" if f.startswith("sim/") else "numpy, pandas, other"


def scenario(name: str, duration: float, seed: int = 1, overrides: dict | None = None):
    """The default scenario, warm-up 0: ``none`` (no profile) or ``hardened`` with
    ``overrides`` (policies that win over the profile's)."""
    from hailan_sim import default_scenario
    from hailan_sim.models.scenario import Scenario

    base = default_scenario().with_run(duration_s=duration, warmup_s=0, seed=seed)
    if name == "none":
        if overrides:
            raise ValueError("overrides apply to hardened only")
        return base
    if name != "hardened":
        raise ValueError(f"unknown case {name!r}: none or hardened")
    data = base.model_dump(mode="python", exclude_unset=True)
    data["profile"] = "hardened"
    data["policies"] = {**data.get("policies", {}), **(overrides or {})}
    return Scenario.model_validate(data)


def traced(name: str, duration: float, seed: int) -> dict:
    """Counts by mechanism of one traced run, per 1,000 requests."""
    from hailan_sim import simulate
    from hailan_sim.sim import engine as engine_mod

    ops: Counter = Counter()
    ccalls: Counter = Counter()
    pycalls: Counter = Counter()

    def trace(frame, event, arg):
        if event == "opcode":
            ops[(frame.f_code, frame.f_lineno)] += 1
        elif event == "call":
            frame.f_trace_opcodes = True
            pycalls[(frame.f_code, frame.f_code.co_firstlineno)] += 1
        return trace

    def profile(frame, event, arg):
        if event == "c_call":
            ccalls[(frame.f_code, frame.f_lineno)] += 1

    engines = []
    start = engine_mod.Engine.start

    def remember(self):
        engines.append(self)
        return start(self)

    sc = scenario(name, duration, seed)
    engine_mod.Engine.start = remember
    sys.settrace(trace)
    sys.setprofile(profile)
    try:
        result = simulate(sc, progress=False)
    finally:
        sys.settrace(None)
        sys.setprofile(None)
        engine_mod.Engine.start = start
    eng = engines[-1]
    per = 1000.0 / eng.n_requests
    files = _package_files()
    out = {m: {"bytecodes": 0.0, "c_calls": 0.0, "py_calls": 0.0} for m in MECHANISMS}
    for what, counter in (("bytecodes", ops), ("c_calls", ccalls), ("py_calls", pycalls)):
        for (code, line), n in counter.items():
            text = linecache.getline(code.co_filename, line or 0)
            out[mechanism(files.get(code.co_filename), code.co_qualname, text)][what] += n * per
    return {"requests": eng.n_requests, "calls": eng.n_calls, "sim_events": result.sim_events,
            "event_log_sha256": result.event_log_sha256, "per_1000_requests": out}


def run_only(name: str, duration: float, overrides: dict) -> None:
    from hailan_sim import simulate

    sc = scenario(name, duration, 1, overrides)
    simulate(scenario(name, 0.5, 1, overrides), progress=False)
    # Only this call is counted under --toggle-collect=functools_reduce.
    r = functools.reduce(lambda _a, _b: simulate(sc, progress=False), [0, 1])
    print(r.event_log_sha256, r.sim_events, int(r.services["total"].sum()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20.0, help="simulated seconds (default 20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--run-only", nargs="+", metavar="ARG",
                    help="NAME DURATION [OVERRIDES_JSON]: one run, for callgrind (see above)")
    a = ap.parse_args(argv)
    if a.run_only:
        if len(a.run_only) not in (2, 3):
            ap.error("--run-only takes NAME DURATION [OVERRIDES_JSON]")
        run_only(a.run_only[0], float(a.run_only[1]), json.loads(a.run_only[2]) if len(a.run_only) == 3 else {})
        return 0
    from hailan_sim import simulate

    for name in ("none", "hardened"):  # untraced, so that neither traced run pays lazy imports
        simulate(scenario(name, 0.5, a.seed), progress=False)
    runs = {name: traced(name, a.duration, a.seed) for name in ("none", "hardened")}
    h, n = runs["hardened"]["per_1000_requests"], runs["none"]["per_1000_requests"]
    totals = {name: {w: sum(v[w] for v in runs[name]["per_1000_requests"].values())
                     for w in ("bytecodes", "c_calls", "py_calls")} for name in runs}
    diff = totals["hardened"]["bytecodes"] - totals["none"]["bytecodes"]
    print(f"default scenario, {a.duration:g} simulated s, seed {a.seed}: "
          f"{runs['none']['requests']} requests; calls {runs['none']['calls']} (none), "
          f"{runs['hardened']['calls']} (hardened); sim_events {runs['none']['sim_events']}, "
          f"{runs['hardened']['sim_events']}")
    print("per 1,000 requests, thousands: bytecodes hardened / none / difference / share of the "
          "difference | C calls hardened / none | Python calls hardened / none")
    for m in MECHANISMS:
        x, y = h[m]["bytecodes"] / 1e3, n[m]["bytecodes"] / 1e3
        share = (x - y) * 1e3 / diff if diff else 0.0
        print(f"{m:32s} {x:8.1f} {y:8.1f} {x - y:+8.1f} {share:7.1%} | {h[m]['c_calls'] / 1e3:6.1f} "
              f"{n[m]['c_calls'] / 1e3:6.1f} | {h[m]['py_calls'] / 1e3:6.1f} {n[m]['py_calls'] / 1e3:6.1f}")
    th, tn = totals["hardened"], totals["none"]
    print(f"{'total':32s} {th['bytecodes'] / 1e3:8.1f} {tn['bytecodes'] / 1e3:8.1f} {diff / 1e3:+8.1f} "
          f"{'100.0%':>7s} | {th['c_calls'] / 1e3:6.1f} {tn['c_calls'] / 1e3:6.1f} | "
          f"{th['py_calls'] / 1e3:6.1f} {tn['py_calls'] / 1e3:6.1f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"duration_s": a.duration, "seed": a.seed, "runs": runs, "totals": totals}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Engine throughput and memory benchmark (not a test: nothing here is asserted in CI).

Runs four cases in the same process, interleaved, and reports the median of each:

  simpy_mm1     a minimal idiomatic SimPy M/M/1: a source process, one process per
                customer, one ``simpy.Resource(capacity=1)``; the yardstick.
  heapq_mm1     a hand-written event loop on ``heapq`` (reference: the interpreter's floor).
  hailan_mm1    hailan-sim's ``simulate()`` on the same M/M/1 (same lambda and mean service).
  hailan_default  hailan-sim's ``simulate()`` on the built-in default scenario, warm-up 0.

Rates:
  * M/M/1 cases: customers (requests) completed per wall-clock second.
  * default scenario: simulated calls per wall-clock second, where a call is every row
    counted in ``Result.services['total']`` summed over all rows, services *and*
    infrastructure: client -> gateway, gateway -> entry service, every service-to-service
    call, every call to consul/redis/mysql, every publish to the broker and every delivery
    from the broker to a consumer (each attempt of a retried call, and calls the caller's
    client refused before sending, count too). With ``warmup_s=0`` every call that got an
    outcome by the end of the run (including its drain) is counted.
  Each rate is also given per CPU second of this process (steadier on a shared machine).

The targets are ratios of figures measured in the same run (this machine's absolute speed
drifts by 50%): hailan_mm1 / simpy_mm1 >= 0.8, hailan_default (calls/s) / simpy_mm1
(customers/s) >= 0.7 and hailan_hardened (calls/s, the default scenario with the
``hardened`` profile: every mechanism on) / simpy_mm1 >= 0.9. Per request served (the same
arrivals in every hailan case), hailan_hardened / hailan_default >= 0.8 (issue 12 item 5:
every mechanism on at no more than 20% below no policies at all); and, with no target, the
ceiling of the 0.9 one: hardened's calls per request at no profile's requests/s, the most
any hardened would score if its mechanisms cost nothing (hailan_hardened_free_calls).

Memory: the peak RSS (VmHWM, see ``_peak_rss``) of a fresh child process that runs a
1,000,000-request M/M/1 (lambda 100/s for 10,000 simulated seconds; with --big-memory also
2,000,000 requests at 1 s and at 2 s windows), next to the peak RSS of a child that only
imports the package, so the growth is visible.

Usage: python benchmarks/bench_engine.py [--quick] [--json FILE] [--rounds N] [--big-memory]
       [--no-memory] [--label TEXT] [--strict]    (see benchmarks/README.md)
       python benchmarks/bench_engine.py --run-only CASE SECONDS [--keep-events]    (one case, for callgrind)
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LAMBDA = 100.0  # arrivals per second
MEAN_S = 0.008  # mean service time, seconds (rho = 0.8)
SEED = 1

TARGET_MM1 = 0.8  # hailan_mm1 / simpy_mm1
TARGET_DEFAULT = 0.7  # hailan_default calls/s / simpy_mm1 customers/s

CASES = ("simpy_mm1", "heapq_mm1", "hailan_mm1", "hailan_default", "hailan_seed", "hailan_hardened")
# With every mechanism on (a profile), the default scenario stays within 2x of the
# engine-only figure: profile calls/s / hailan_default calls/s >= 0.5.
TARGET_PROFILE = 0.5
# And with every mechanism on (hardened), a call costs at most 1/0.9 of a textbook SimPy
# customer: hailan_hardened calls/s / simpy_mm1 customers/s >= 0.9 (issue 12 item 5).
TARGET_HARDENED = 0.9
# Issue 12 item 5's own words: every mechanism on at no more than 20% below no policies at
# all, per request served (hailan_hardened requests/s / hailan_default requests/s >= 0.8).
TARGET_HARDENED_REQUESTS = 0.8


# --------------------------------------------------------------------------- the M/M/1 scenario


def mm1_scenario(duration_s: float, seed: int = SEED):
    """hailan-sim's M/M/1: one server, one worker, Poisson arrivals, exponential service,
    no network latency, no timeouts, no queue limit (the same as /tmp/mm1.yaml)."""
    from hailan_sim.models.scenario import Scenario

    return Scenario.model_validate({
        "name": "mm1",
        "run": {"duration_s": duration_s, "warmup_s": 0, "seed": seed},
        "services": [{
            "name": "server", "port": 8000, "instances": 1, "workers": 1,
            "operations": {"serve": {"service_time_ms": {"dist": "exponential", "mean": MEAN_S * 1000}}},
        }],
        "workload": {"endpoints": [{
            "name": "req", "entry": "server.serve",
            "arrival": {"kind": "poisson", "rate": LAMBDA}, "timeout_s": None,
        }]},
        "policies": {"timeout_s": None},
    })


# --------------------------------------------------------------------------- the cases
# Each returns (count, wall seconds, CPU seconds of this process, kernel events). Only the run is timed, not
# the imports; for hailan-sim the whole of simulate() is timed (engine build, run, drain and
# the pandas Result), as a user would see it.


def run_simpy_mm1(horizon_s: float, seed: int = SEED):
    """The textbook SimPy M/M/1 (process per customer, a Resource for the server)."""
    import simpy

    rng = random.Random(seed)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    done = 0

    def customer(env, server):
        nonlocal done
        with server.request() as req:
            yield req
            yield env.timeout(rng.expovariate(1.0 / MEAN_S))
        done += 1

    def source(env, server):
        while True:
            yield env.timeout(rng.expovariate(LAMBDA))
            env.process(customer(env, server))

    c0, t0 = time.process_time(), time.perf_counter()
    env.process(source(env, server))
    env.run(until=horizon_s)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    events = next(env._eid) - len(env._queue)  # SimPy's event-id counter less what is pending
    return done, wall, cpu, events


def run_heapq_mm1(horizon_s: float, seed: int = SEED):
    """A hand-written M/M/1 event loop: a heap of (time, seq, kind), a FIFO count."""
    rng = random.Random(seed)
    expo = rng.expovariate
    push, pop = heapq.heappush, heapq.heappop
    ARRIVE, DEPART = 0, 1
    heap = [(expo(LAMBDA), 0, ARRIVE)]
    seq = 1
    in_system = 0
    done = 0
    events = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while heap:
        t, _, kind = heap[0]
        if t >= horizon_s:
            break
        pop(heap)
        events += 1
        if kind == ARRIVE:
            push(heap, (t + expo(LAMBDA), seq, ARRIVE))
            seq += 1
            in_system += 1
            if in_system == 1:
                push(heap, (t + expo(1.0 / MEAN_S), seq, DEPART))
                seq += 1
        else:
            in_system -= 1
            done += 1
            if in_system:
                push(heap, (t + expo(1.0 / MEAN_S), seq, DEPART))
                seq += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return done, wall, cpu, events


def run_hailan_mm1(horizon_s: float, seed: int = SEED):
    from hailan_sim.sim import simulate

    sc = mm1_scenario(horizon_s, seed)
    c0, t0 = time.process_time(), time.perf_counter()
    r = simulate(sc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return sum(r.requests.values()), wall, cpu, r.sim_events


def default_for_bench(duration_s: float | None, seed: int = SEED, profile: str | None = None):
    from hailan_sim.models import default_scenario

    sc = default_scenario()
    if profile is not None:
        sc = sc.with_profile(profile)
    changes = {"warmup_s": 0, "seed": seed}
    if duration_s is not None:
        changes["duration_s"] = duration_s
    return sc.with_run(**changes)


def calls_of(r) -> int:
    """The calls a hailan run counts: sum of services['total'] over every row (warm-up 0)."""
    return int(r.services["total"].sum())


def run_hailan_default(sc):
    """Calls per wall second (:func:`calls_of`); and the requests those calls served (sum of
    endpoints['total']), for the per-request ratios."""
    from hailan_sim.sim import simulate

    c0, t0 = time.process_time(), time.perf_counter()
    r = simulate(sc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return calls_of(r), wall, cpu, r.sim_events, int(r.endpoints["total"].sum())


# --------------------------------------------------------------------------- memory (child)


def _proc_status() -> dict:
    """VmHWM (peak RSS) and VmRSS of this process in bytes, from /proc (Linux), else {}."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, val = line.split(":")
                    out[key] = int(val.split()[0]) * 1024  # kB
    except OSError:
        pass
    return out


def _peak_rss() -> tuple[int, str]:
    """This process's peak RSS in bytes, and how it was read.

    NOTE: VmHWM, not ru_maxrss. On Linux a child's ru_maxrss (its own RUSAGE_SELF, or its
    parent's RUSAGE_CHILDREN) starts from the RSS its *parent* had when it forked: a child
    of this 180 MB benchmark reports >= 180 MB even if it never uses that much. VmHWM is
    the high-water mark of the child's own address space since its exec.
    """
    st = _proc_status()
    if "VmHWM" in st:
        return st["VmHWM"], "VmHWM"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "ru_maxrss"


def _child_main(mode: str, requests: int, window_s: float = 1.0) -> None:
    """Runs in a fresh interpreter; prints one JSON line with its own peak RSS."""
    t0 = time.perf_counter()
    import hailan_sim.models  # noqa: F401
    import hailan_sim.sim  # noqa: F401

    out = {"mode": mode, "peak_after_import_bytes": _peak_rss()[0]}
    if mode == "mem":
        from hailan_sim.sim import simulate

        duration = requests / LAMBDA
        sc = mm1_scenario(duration).with_run(window_s=window_s)
        t1 = time.perf_counter()
        r = simulate(sc)
        out.update(
            target_requests=requests, duration_s=duration, window_s=window_s,
            windows=int(len(r.windows)),
            requests=sum(r.requests.values()), sim_events=r.sim_events,
            run_wall_s=time.perf_counter() - t1,
            has_events=r.has_events,
        )
    out["wall_s"] = time.perf_counter() - t0
    out["maxrss_bytes"], out["maxrss_source"] = _peak_rss()
    out["rss_end_bytes"] = _proc_status().get("VmRSS")
    print("CHILD " + json.dumps(out), flush=True)


def _gnu_time() -> str | None:
    """/usr/bin/time if it is GNU time (has -v), else None."""
    path = "/usr/bin/time"
    if not os.path.exists(path):
        return None
    try:
        p = subprocess.run([path, "-v", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "Maximum resident set size" in p.stderr else None


def measure_child(mode: str, requests: int = 0, window_s: float = 1.0) -> dict:
    """Peak RSS of a fresh child process: its own VmHWM, and, when GNU time is there, the
    "Maximum resident set size" of ``/usr/bin/time -v`` as a cross-check (time's own child
    is forked from the small time process, so its figure is not inflated as ru_maxrss is)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--requests", str(requests),
           "--window", repr(window_s)]
    gtime = _gnu_time()
    if gtime:
        cmd = [gtime, "-v", *cmd]
    # The child imports the installed package (pip install -e . for the working tree).
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {mode} failed ({proc.returncode}):\n{proc.stderr}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("CHILD "))
    out = json.loads(line[len("CHILD "):])
    out["time_v_maxrss_bytes"] = None
    for l in proc.stderr.splitlines():
        if "Maximum resident set size (kbytes):" in l:
            out["time_v_maxrss_bytes"] = int(l.rsplit(":", 1)[1]) * 1024
    return out


# --------------------------------------------------------------------------- driver


def emit(table: str, res: dict, json_path: str | None) -> None:
    """A benchmark's last step: its table on stdout and, with ``--json FILE``, every figure in
    FILE (bench_checker.py and prefix_share.py end the same way)."""
    print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2) + "\n")


def code_info(folders: tuple[str, ...] = ("sim", "models"), module: str = "hailan_sim.sim") -> dict:
    """The commit benchmarked, which of ``folders`` differ from it, and where ``module`` was
    imported from (``<last part of module>_imported_from``). bench_checker.py calls it too."""
    def git(*a):
        try:
            p = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", *folders) if commit else None
    mod = sys.modules.get(module)
    return {"root": str(ROOT), f"{module.rsplit('.', 1)[-1]}_imported_from": getattr(mod, "__file__", None),
            "commit": commit, "dirty_files": dirty.splitlines() if dirty else ([] if commit else None)}


def machine_info() -> dict:
    info = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "blas_threads_env": {k: os.environ.get(k) for k in
                             ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "note": "OPENBLAS/OMP thread settings left as they are (unset = library default)",
    }
    try:
        import numpy, pandas, simpy

        info["versions"] = {"simpy": simpy.__version__, "numpy": numpy.__version__,
                            "pandas": pandas.__version__}
    except Exception:  # pragma: no cover
        pass
    return info


def run_benchmark(quick: bool, rounds: int | None, memory: bool, big_memory: bool) -> dict:
    machine = machine_info()  # before the runs: it holds the load average at the start
    if quick:
        mm1_horizon, default_duration, rounds = 20.0, 5.0, rounds or 1
        mem_sizes = [(20_000, 1.0)]
    else:
        mm1_horizon, default_duration, rounds = 1000.0, None, rounds or 5
        # (requests, window_s). The per-window series keep one row per window and key, so
        # they grow with simulated time / window_s; the last run has twice the requests of
        # the first over the same number of windows, to separate the two.
        mem_sizes = [(1_000_000, 1.0)] + ([(2_000_000, 1.0), (2_000_000, 2.0)] if big_memory else [])

    # The default scenario is read once, so every round runs the same one even if the
    # file changes on disk during the benchmark.
    default_sc = default_for_bench(default_duration)
    seed_sc = default_for_bench(default_duration, profile="seed")
    hardened_sc = default_for_bench(default_duration, profile="hardened")
    runners = {
        "simpy_mm1": lambda: run_simpy_mm1(mm1_horizon),
        "heapq_mm1": lambda: run_heapq_mm1(mm1_horizon),
        "hailan_mm1": lambda: run_hailan_mm1(mm1_horizon),
        "hailan_default": lambda: run_hailan_default(default_sc),
        "hailan_seed": lambda: run_hailan_default(seed_sc),
        "hailan_hardened": lambda: run_hailan_default(hardened_sc),
    }
    units = {"simpy_mm1": "customers", "heapq_mm1": "customers",
             "hailan_mm1": "customers", "hailan_default": "calls",
             "hailan_seed": "calls", "hailan_hardened": "calls"}

    # Untimed warm-up of every case (imports, first-use caches, pydantic, numpy).
    run_simpy_mm1(2.0)
    run_heapq_mm1(2.0)
    run_hailan_mm1(2.0)
    run_hailan_default(default_for_bench(2.0))
    run_hailan_default(default_for_bench(2.0, profile="seed"))

    samples: dict[str, list[dict]] = {c: [] for c in CASES}
    order_log = []
    for r in range(rounds):
        # Rotate the order each round so no case always runs first (or after the same one).
        order = CASES[r % len(CASES):] + CASES[: r % len(CASES)]
        order_log.append(list(order))
        for case in order:
            gc.collect()
            n, wall, cpu, events, *requests = runners[case]()
            samples[case].append({"count": n, "wall_s": wall, "rate": n / wall, "cpu_s": cpu,
                                  "cpu_rate": n / cpu if cpu > 0 else None,
                                  "kernel_events": events,
                                  "requests": requests[0] if requests else None})
            print(f"  round {r + 1}/{rounds} {case:<15} {n:>9} {units[case]:<9} "
                  f"{wall:7.3f} s wall {cpu:7.3f} s cpu  {n / wall:>10,.0f}/s", file=sys.stderr, flush=True)

    cases = {}
    for case in CASES:
        counts = {s["count"] for s in samples[case]}
        if len(counts) != 1:  # every case is seeded: each round must do the same work
            raise RuntimeError(f"{case}: rounds did different amounts of work {sorted(counts)}")
        rates = [s["rate"] for s in samples[case]]
        med = statistics.median(rates)
        cpu_rates = [s["cpu_rate"] for s in samples[case] if s["cpu_rate"]]
        cases[case] = {
            "unit": f"{units[case]} per wall second",
            "median_rate": med,
            "rates": rates,
            "spread_pct": (max(rates) - min(rates)) / med * 100,
            "median_cpu_rate": statistics.median(cpu_rates) if cpu_rates else None,
            "cpu_rates": cpu_rates,
            "median_cpu_share": statistics.median(s["cpu_s"] / s["wall_s"] for s in samples[case]),
            "count": samples[case][0]["count"],
            "median_wall_s": statistics.median(s["wall_s"] for s in samples[case]),
            "kernel_events": samples[case][0]["kernel_events"],
            "kernel_events_per_unit": (samples[case][0]["kernel_events"] / samples[case][0]["count"]
                                       if samples[case][0]["kernel_events"] else None),
        }
        if samples[case][0]["requests"] is not None:
            req = samples[case][0]["requests"]
            cases[case]["requests"] = req
            cases[case]["median_request_rate"] = statistics.median(req / s["wall_s"] for s in samples[case])
            cases[case]["median_cpu_request_rate"] = statistics.median(req / s["cpu_s"] for s in samples[case])

    base = cases["simpy_mm1"]["median_rate"]
    # Per-round ratios pair measurements taken seconds apart, so they show how much of
    # the spread is the machine (which moves every case) rather than the engine.
    per_round = lambda c: [s["rate"] / b["rate"] for s, b in zip(samples[c], samples["simpy_mm1"])]  # noqa: E731
    ratios = {
        "hailan_mm1/simpy_mm1": {
            "value": cases["hailan_mm1"]["median_rate"] / base, "target": TARGET_MM1,
            "per_round": per_round("hailan_mm1"),
        },
        "hailan_default_calls/simpy_mm1": {
            "value": cases["hailan_default"]["median_rate"] / base, "target": TARGET_DEFAULT,
            "per_round": per_round("hailan_default"),
        },
        "heapq_mm1/simpy_mm1": {
            "value": cases["heapq_mm1"]["median_rate"] / base, "target": None,
            "per_round": per_round("heapq_mm1"),
        },
    }
    default_base = cases["hailan_default"]["median_rate"]
    for profile in ("seed", "hardened"):
        case = f"hailan_{profile}"
        ratios[f"{case}_calls/hailan_default_calls"] = {
            "value": cases[case]["median_rate"] / default_base, "target": TARGET_PROFILE,
            "per_round": [s["rate"] / b["rate"] for s, b in zip(samples[case], samples["hailan_default"])],
            "denominator": "hailan_default",
        }
    # Issue 12 item 5: every mechanism on costs at most a little over the yardstick.
    ratios["hailan_hardened_calls/simpy_mm1"] = {
        "value": cases["hailan_hardened"]["median_rate"] / base, "target": TARGET_HARDENED,
        "per_round": per_round("hailan_hardened"),
    }
    # Issue 12 item 5 in its own terms: every mechanism on at no more than 20% below no
    # policies at all, for the same work. The work is the requests (the same arrivals, seed
    # and duration in both cases), not the calls: hardened's cached discovery makes fewer
    # registry calls for the same requests, so its calls/s understates it.
    hd, df = cases["hailan_hardened"], cases["hailan_default"]
    ratios["hailan_hardened_requests/hailan_default_requests"] = {
        "value": hd["median_request_rate"] / df["median_request_rate"], "target": TARGET_HARDENED_REQUESTS,
        "per_round": [s["requests"] * b["wall_s"] / (s["wall_s"] * b["requests"])
                      for s, b in zip(samples["hailan_hardened"], samples["hailan_default"])],
        "cpu_value": hd["median_cpu_request_rate"] / df["median_cpu_request_rate"],
    }
    # The ceiling of the 0.9x target on this engine: hardened's calls per request served at
    # no profile's requests/s, i.e. with every mechanism free. No hardened, however cheap its
    # mechanisms, scores above it without the engine itself (every profile) getting faster.
    per_request = hd["count"] / hd["requests"]
    ratios["hailan_hardened_free_calls/simpy_mm1"] = {
        "value": df["median_request_rate"] * per_request / base, "target": None,
        "per_round": [b["requests"] / b["wall_s"] * per_request / m["rate"]
                      for b, m in zip(samples["hailan_default"], samples["simpy_mm1"])],
        "cpu_value": df["median_cpu_request_rate"] * per_request / cases["simpy_mm1"]["median_cpu_rate"],
        "calls_per_request": per_request,
    }
    cpu_base = cases["simpy_mm1"]["median_cpu_rate"]
    for name, r in ratios.items():
        r["pass"] = None if r["target"] is None else bool(r["value"] >= r["target"])
        if "cpu_value" in r:
            continue
        # The same ratio on CPU time of this process: blind to time spent descheduled while
        # other processes ran, so steadier on a shared machine (a cross-check; the targets
        # are judged on wall time, as the issue states them).
        num = cases[name.split("/")[0].replace("_calls", "")]["median_cpu_rate"]
        den = cases[r["denominator"]]["median_cpu_rate"] if "denominator" in r else cpu_base
        r["cpu_value"] = num / den if num and den else None

    mem = None
    if memory:
        baseline = measure_child("import")
        runs = [measure_child("mem", n, w) for n, w in mem_sizes]
        mem = {
            "method": "peak RSS of a fresh child process: its VmHWM at its end (Linux; "
                      "ru_maxrss elsewhere), cross-checked with /usr/bin/time -v when present",
            "import_baseline_bytes": baseline["maxrss_bytes"],
            "import": baseline,
            "runs": [{**m, "growth_bytes": m["maxrss_bytes"] - baseline["maxrss_bytes"]} for m in runs],
        }

    return {
        "benchmark": "hailan-sim engine throughput",
        "quick": quick,
        "settings": {
            "lambda_per_s": LAMBDA, "mean_service_s": MEAN_S, "rho": LAMBDA * MEAN_S,
            "mm1_horizon_s": mm1_horizon,
            "default_duration_s": default_sc.run.duration_s,
            "default_scenario": default_sc.name,
            "default_warmup_s": 0, "seed": SEED, "rounds": rounds, "order": order_log,
            "calls_counted": "sum of Result.services['total'] over all rows (services and "
                             "infrastructure), warmup_s=0",
        },
        "machine": machine,
        "code": code_info(),
        "cases": cases,
        "ratios": ratios,
        "memory": mem,
        "load_avg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def format_report(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]
    lines = [
        f"hailan-sim engine benchmark{' (--quick: smoke sizes, figures not meaningful)' if res['quick'] else ''}",
        f"python {m['python']} ({m['implementation']}), {m['cpu_count']} CPUs, {m['platform']}",
        f"code: {res['code']['root']} at {res['code']['commit'] or 'unknown commit (not a git checkout)'}"
        + (f" with uncommitted changes in {len(res['code']['dirty_files'])} sim/models file(s)"
           if res["code"]["dirty_files"] else "")
        + (f"; label: {res['label']}" if res.get("label") else ""),
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'] or [])}; "
        f"at end {', '.join(f'{x:.2f}' for x in res['load_avg_at_end'] or [])}; BLAS thread settings left as is",
        f"M/M/1: lambda {s['lambda_per_s']:g}/s, mean service {s['mean_service_s'] * 1000:g} ms "
        f"(rho {s['rho']:g}), {s['mm1_horizon_s']:g} s simulated; default scenario: "
        f"{s['default_duration_s']:g} s simulated, warm-up 0; {s['rounds']} interleaved round(s), medians",
        "",
        f"{'case':<16}{'median rate':>12}  {'unit':<13}{'per round':<44}{'spread':>8}{'cpu rate':>10}{'cpu/wall':>9}{'ev/unit':>8}",
    ]
    for case, c in res["cases"].items():
        unit = c["unit"].split()[0] + "/s"
        rounds = ", ".join(f"{x:,.0f}" for x in c["rates"])
        epu = f"{c['kernel_events_per_unit']:.2f}" if c["kernel_events_per_unit"] else "-"
        cpu = f"{c['median_cpu_rate']:,.0f}" if c["median_cpu_rate"] else "-"
        lines.append(f"{case:<16}{c['median_rate']:>12,.0f}  {unit:<13}{rounds:<44}"
                     f"{c['spread_pct']:>7.1f}%{cpu:>10}{c['median_cpu_share']:>9.2f}{epu:>8}")
    lines.append("")
    w = max(34, *(len(name) + 1 for name in res["ratios"]))
    lines.append(f"{'ratio (of medians, wall)':<{w}}{'value':>7}{'target':>9}  {'result':<7}"
                 f"{'per round':<34}{'on cpu':>7}")
    for name, r in res["ratios"].items():
        tgt = f">= {r['target']:g}" if r["target"] is not None else "-"
        verdict = "-" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        pr = ", ".join(f"{x:.2f}" for x in r["per_round"])
        cv = f"{r['cpu_value']:.2f}" if r.get("cpu_value") else "-"
        lines.append(f"{name:<{w}}{r['value']:>7.2f}{tgt:>9}  {verdict:<7}{pr:<34}{cv:>7}")
    free = res["ratios"].get("hailan_hardened_free_calls/simpy_mm1")
    if free is not None:
        hd = res["cases"]["hailan_hardened"]
        df = res["cases"]["hailan_default"]
        same = " (the same arrivals)" if df["requests"] == hd["requests"] else ""
        lines.append(f"  requests served: {df['requests']:,} with no profile, {hd['requests']:,} with hardened{same}.")
        lines.append(f"  hailan_hardened_free_calls: hardened's {free['calls_per_request']:.2f} calls a "
                     "request at no profile's requests/s, as if every mechanism cost nothing:")
        lines.append("  the most any hardened scores on this engine in this run, "
                     f"{'above' if free['value'] >= TARGET_HARDENED else 'below'} the {TARGET_HARDENED:g} target.")
    mem = res["memory"]
    if mem:
        lines.append("")
        lines.append(f"peak memory ({mem['method']})")
        tv = lambda m: _mib(m["time_v_maxrss_bytes"]) if m.get("time_v_maxrss_bytes") else "-"  # noqa: E731
        lines.append(f"  {'':<36}{'peak RSS':>12}{'time -v':>13}{'growth':>13}")
        lines.append(f"  {'import sim + models only':<36}{_mib(mem['import_baseline_bytes']):>12}"
                     f"{tv(mem['import']):>13}{'-':>13}")
        for r in mem["runs"]:
            label = "M/M/1, {:,} req, {:,} windows".format(r["requests"], r["windows"])
            lines.append(f"  {label:<36}{_mib(r['maxrss_bytes']):>12}"
                         f"{tv(r):>13}{'+' + _mib(r['growth_bytes']):>13}"
                         f"   ({r['duration_s']:g} s simulated, {r['run_wall_s']:.1f} s wall)")
    return "\n".join(lines)


_RUN_ONLY = {"simpy_mm1": None, "hailan_default": None, "hailan_seed": "seed", "hailan_hardened": "hardened"}


def run_only(case: str, seconds: float, keep_events: bool = False) -> int:
    """One case, warmed up, then measured inside ``functools.reduce`` for callgrind:

        OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONHASHSEED=0 setarch $(uname -m) -R \\
          valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
          python benchmarks/bench_engine.py --run-only hailan_hardened 10

    Instructions per unit are deterministic where this machine's CPU ratios are not
    (benchmarks/README.md, "The 0.9x target in instructions"). With ``keep_events`` the run
    keeps its event log as the checker's do: the two counts give the log's cost (issue 12
    item 4)."""
    import functools

    if case not in _RUN_ONLY:
        print(f"--run-only: unknown case {case!r}; one of {', '.join(_RUN_ONLY)}", file=sys.stderr)
        return 2
    if case == "simpy_mm1":
        if keep_events:
            print("--keep-events: simpy_mm1 has no event log; give a hailan case", file=sys.stderr)
            return 2
        run_simpy_mm1(2.0)
        out = functools.reduce(lambda _a, _b: run_simpy_mm1(seconds), [0, 1])
        print(f"{case} units {out[0]} events {out[3]}")
        return 0
    from hailan_sim.sim import simulate

    profile = _RUN_ONLY[case]
    sc = default_for_bench(seconds, profile=profile)
    simulate(default_for_bench(0.5, profile=profile), keep_events=keep_events)
    r = functools.reduce(lambda _a, _b: simulate(sc, keep_events=keep_events), [0, 1])
    kept = f" log kept {r.event_count} events {r.event_log_sha256[:12]}" if r.has_events else ""
    print(f"{case} units {calls_of(r)} events {r.sim_events}{kept}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one round (seconds)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 1 with --quick)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child runs")
    ap.add_argument("--big-memory", action="store_true",
                    help="also measure 2,000,000-request runs at 1 s and 2 s windows (memory vs "
                         "requests vs windows)")
    ap.add_argument("--label", help="free text kept with the figures (e.g. the commit of an exported tree)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target ratio is missed")
    ap.add_argument("--run-only", nargs=2, metavar=("CASE", "SECONDS"),
                    help="one case (simpy_mm1, hailan_default, hailan_seed, hailan_hardened) for "
                         "SECONDS simulated, inside functools.reduce so that callgrind's "
                         "--toggle-collect=functools_reduce counts that run alone; prints its units "
                         "(customers or calls) and kernel events")
    ap.add_argument("--keep-events", action="store_true",
                    help="with --run-only and a hailan case: keep the event log, as the checker's runs do")
    ap.add_argument("--child", choices=("import", "mem"), help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--window", type=float, default=1.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        _child_main(args.child, args.requests, args.window)
        return 0
    if args.run_only:
        case, seconds = args.run_only
        try:
            length = float(seconds)
        except ValueError:
            ap.error(f"--run-only: SECONDS must be a number of simulated seconds, not {seconds!r}")
        return run_only(case, length, args.keep_events)
    if args.keep_events:
        ap.error("--keep-events goes with --run-only (the benchmark's own cases run without the log)")

    res = run_benchmark(args.quick, args.rounds, not args.no_memory, args.big_memory)
    res["command"] = shlex.join([Path(sys.executable).name, *sys.argv])
    res["label"] = args.label
    emit(format_report(res), res, args.json)
    if args.strict and any(r["pass"] is False for r in res["ratios"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loader timings and peak memory (issue 8): YAML parse with libyaml vs pure Python, a
trace of a million times from CSV and from Parquet, and the refused 1M-time inline trace.

    python benchmarks/bench_loader.py

Each case runs in a fresh child process; peak memory is the child's VmHWM (ru_maxrss
would include the parent's, which survives exec). On a shared machine compare cpu_s:
wall_s grows with the other processes' load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
case, folder = sys.argv[1], Path(sys.argv[2])
from hailan_sim.models import loader, yaml12
import hailan_sim.models.scenario  # imports first, so they are not timed
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
base = hwm()
t, c = time.perf_counter(), time.process_time()
if case in ("default-libyaml", "default-pure", "steps-libyaml", "steps-pure"):
    name = "default.yaml" if case.startswith("default") else "steps.yaml"
    if case.endswith("pure"):
        yaml12.FastLoader = yaml12.PureLoader
    for _ in range(5 if case.startswith("default") else 1):
        loader.load_scenario(folder / name)
    n = 5 if case.startswith("default") else 1
elif case in ("trace-csv", "trace-parquet"):
    s = loader.load_scenario(folder / f"{case}.yaml")
    assert len(s.workload.endpoints[0].arrival.times_s) == 1_000_000
    n = 1
else:  # inline-1m: refused before parsing
    try:
        loader.load_scenario(folder / "inline.yaml")
    except loader.ScenarioError as exc:
        msg = str(exc)
    n = 1
wall = (time.perf_counter() - t) / n
cpu = (time.process_time() - c) / n
peak = hwm()
print(json.dumps({"case": case, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "peak_rss_mib": round(peak / 1024, 1),
                  "rss_growth_mib": round((peak - base) / 1024, 1)}))
"""

SERVICE = ("services:\n  - {name: s, port: 80, instances: 1, workers: 1, operations: "
           "{op: {service_time_ms: {dist: constant, value: 1}}}}\n")


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hailan_sim.models.loader import default_scenario

    folder = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    (folder / "default.yaml").write_text(default_scenario().to_yaml())
    # A scenario just under the 1 MiB limit: a piecewise table of 40,000 steps inline.
    steps = ", ".join(f"[{i}, {1 + i % 7}]" for i in range(40_000))
    text = f"name: steps\n{SERVICE}workload:\n  endpoints:\n    - {{name: e, entry: s.op, arrival: {{kind: piecewise, steps: [{steps}]}}}}\n"
    (folder / "steps.yaml").write_text(text)
    times = [i * 0.001 for i in range(1_000_000)]
    (folder / "t.csv").write_text("t_s\n" + "\n".join(map(repr, times)) + "\n")
    pq.write_table(pa.table({"t_s": times}), folder / "t.parquet")
    for kind, file in (("csv", "t.csv"), ("parquet", "t.parquet")):
        (folder / f"trace-{kind}.yaml").write_text(
            f"name: t\n{SERVICE}workload:\n  endpoints:\n    - {{name: e, entry: s.op, arrival: {{kind: trace, file: {file}}}}}\n")
    inline = ", ".join(map(repr, times))
    (folder / "inline.yaml").write_text(
        f"name: t\n{SERVICE}workload:\n  endpoints:\n    - {{name: e, entry: s.op, arrival: {{kind: trace, times_s: [{inline}]}}}}\n")
    print(f"steps.yaml: {(folder / 'steps.yaml').stat().st_size} bytes; t.csv {(folder / 't.csv').stat().st_size}; "
          f"t.parquet {(folder / 't.parquet').stat().st_size}; inline.yaml {(folder / 'inline.yaml').stat().st_size}")
    for case in ("default-libyaml", "default-pure", "steps-libyaml", "steps-pure", "trace-csv", "trace-parquet",
                 "inline-1m"):
        out = subprocess.run([sys.executable, "-c", CHILD, case, str(folder)], capture_output=True, text=True, check=True)
        print(json.loads(out.stdout))


if __name__ == "__main__":
    main()

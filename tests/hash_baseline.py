"""Event-log hashes of the scenarios a refactoring of the engine must not change.

A pure move (splitting sim/engine.py into modules, replacing SimPy's clock with our own)
must leave every run byte-identical. This tool records the SHA-256 of each run's event log
before the change and compares after it:

    python tests/hash_baseline.py record /tmp/before.json
    ... change the engine ...
    python tests/hash_baseline.py compare /tmp/before.json     # exit 1 on any difference

The runs: every scenario in tests/scenarios/, the built-in default scenario with no profile,
with ``seed`` and with ``hardened`` (60 s each, so a comparison takes about a minute), and
every committed counterexample in findings/counterexamples/ as committed (it names its own
profile and faults), and ``hardened`` under four faults that take its client pipeline down
the paths a fault-free run never takes (``HARDENED_FAULTS``: 401s and their resend,
retries its budget refuses, short circuits pushed back, a restart re-registering).
``sim_events`` (the kernel's event count) is compared as well.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hailan_sim import default_scenario, load_scenario, simulate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DURATION_S = 60.0


#: Faults at 15 s for the ``hardened`` runs, each for a path of the client pipeline.
HARDENED_FAULTS = {
    # verifiers on node-a1 see tokens as expired: auth_401, then on_401 refresh_retry
    "clock_skew": {"kind": "clock_skew", "node": "node-a1", "start_s": 15, "duration_s": 30,
                   "skew_s": 3554},
    # half of auth-service's answers fail: retries, budget refusals, breakers opening
    "auth_errors": {"kind": "error_rate", "target": "auth-service", "start_s": 15,
                    "duration_s": 30, "fraction": 0.5},
    # timeouts and short circuits, pushed back to the callers
    "partition": {"kind": "partition", "a": "user-service", "b": "auth-service", "start_s": 15,
                  "duration_s": 30},
    # every instance down and back: re-registration, no_instance, the gateway's ejections
    "restart": {"kind": "crash_service", "service": "user-service", "start_s": 15,
                "duration_s": 3, "restart": True},
}


def scenarios():
    """(name, scenario) for every run the baseline covers, in a fixed order."""
    for p in sorted((ROOT / "tests" / "scenarios").glob("*.yaml")):
        yield f"tests/scenarios/{p.name}", load_scenario(p)
    base = default_scenario().with_run(duration_s=DEFAULT_DURATION_S)
    yield "default", base
    yield "default+seed", base.with_profile("seed")
    yield "default+hardened", base.with_profile("hardened")
    hardened = base.with_profile("hardened").model_dump()
    for name, fault in HARDENED_FAULTS.items():
        yield f"default+hardened+{name}", type(base).model_validate({**hardened, "faults": [fault]})
    for p in sorted((ROOT / "findings" / "counterexamples").glob("*.yaml")):
        yield f"findings/counterexamples/{p.name}", load_scenario(p)


def measure() -> dict:
    out = {}
    for name, sc in scenarios():
        r = simulate(sc, progress=False)
        out[name] = {"sha256": r.event_log_sha256, "sim_events": r.sim_events, "events": r.event_count}
        print(f"{name:55s} {r.event_log_sha256[:16]} {r.sim_events}", file=sys.stderr)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "compare"):
        print("usage: python tests/hash_baseline.py record|compare FILE", file=sys.stderr)
        return 2
    mode, path = argv
    now = measure()
    if mode == "record":
        Path(path).write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        return 0
    before = json.loads(Path(path).read_text())
    diff = [n for n in sorted(set(before) | set(now)) if before.get(n) != now.get(n)]
    for n in diff:
        print(f"CHANGED {n}: {before.get(n)} -> {now.get(n)}")
    print(f"{len(now) - len(diff)}/{len(now)} unchanged")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

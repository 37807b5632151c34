#!/usr/bin/env python3
"""Planted-mutant testing: does the test suite notice when a mechanism breaks?

Each mutant in a catalogue (tools/mutants.yaml by default) is one plausible bug: a snippet of
a source file and what to replace it with. For each mutant, one at a time, the tool edits the
file in place, runs the tests in a fresh pytest process, and restores the file (always, also
on Ctrl-C or SIGTERM, which stop that mutant's tests too). A mutant is *killed* when a test
fails (or the run exceeds ``--timeout``: a hang is caught by CI's timeout too), *survived*
when every test passes. docs/mutation.md explains why a catalogue instead of a generated
mutant set, and how to add mutants.

    python tools/mutate.py                         # every mutant of the catalogue
    python tools/mutate.py sim/client.py           # only mutants in these files / folders
    python tools/mutate.py properties/invariants.py --catalogue my.yaml --tests tests/properties
    python tools/mutate.py --list                  # the mutants, without running anything

Exit status: 0 when the kill rate reaches ``--target`` (default 0.9), 1 otherwise, 2 on a
bad catalogue (a snippet that is missing or not unique: the code moved on; fix the entry).
Run it in the background on a shared machine: a full run takes minutes of CPU per mutant
that survives.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# The engine's fast mechanism tests: each mutant runs these (first failure stops the run).
# The determinism and long statistical tests are left out: they take most of the time and
# are about other things than one mechanism's behaviour.
DEFAULT_TESTS = [
    "tests/test_engine.py",
    "tests/test_faults.py",
    "tests/test_mechanisms.py",
    "tests/test_seed_fidelity.py",
    "tests/test_spec_client_differential.py",
    "tests/test_mutants_killed.py",
    "tests/test_gateway.py",
    "tests/test_grpc_channel.py",
    "tests/test_min_instances.py",
]
DEFAULT_DESELECT = "not keep_runs_deterministic and not run_the_default_deterministically and not every_run_logs"


class CatalogueError(Exception):
    pass


def load_catalogue(path: Path, only: list[str]) -> list[dict]:
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except OSError as e:
        raise CatalogueError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise CatalogueError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(entries, list):
        raise CatalogueError(f"{path}: must be a list of mutants, got {type(entries).__name__}")
    out, seen = [], set()
    for i, m in enumerate(entries):
        if not isinstance(m, dict):
            raise CatalogueError(f"{path}: entry {i}: must be a mapping with id, file, find, replace, why")
        bad = [k for k in ("id", "file", "find", "replace", "why") if k in m and not isinstance(m[k], str)]
        if bad:
            raise CatalogueError(f"{path}: entry {i}: {', '.join(bad)} must be text")
        missing = [k for k in ("id", "file", "find", "replace", "why") if k not in m]
        if missing:
            raise CatalogueError(f"{path}: entry {i}: missing {', '.join(missing)}")
        if m["id"] in seen:
            raise CatalogueError(f"{path}: entry {i}: duplicate id {m['id']!r}")
        seen.add(m["id"])
        if only and not any(m["file"] == p or m["file"].startswith(p.rstrip("/") + "/") for p in only):
            continue
        src = ROOT / m["file"]
        if not src.is_file():
            raise CatalogueError(f"{path}: {m['id']}: no file {m['file']}")
        n = src.read_text(encoding="utf-8").count(m["find"])
        if n != 1:
            raise CatalogueError(f"{path}: {m['id']}: `find` occurs {n} times in {m['file']} (must be once)")
        out.append(m)
    return out


def run_tests(tests: list[str], deselect: str, timeout: float) -> tuple[str, float, str]:
    """('killed' | 'survived' | 'timeout', seconds, the failing test or '')."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--no-header", "-m", "not slow", *tests]
    if deselect:
        cmd += ["-k", deselect]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the pytest process we started, and its children
        proc.communicate()
        return "timeout", time.monotonic() - t0, ""
    except BaseException:  # stopped (Ctrl-C, SIGTERM): the tests of a mutant go with it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # they had just finished
            pass
        proc.communicate()
        raise
    dt = time.monotonic() - t0
    failed = next((line.split(" ", 1)[1].split(" - ")[0] for line in out.splitlines()
                   if line.startswith(("FAILED ", "ERROR "))), "")
    if proc.returncode == 0:
        return "survived", dt, ""
    if proc.returncode in (1, 2) and failed:
        return "killed", dt, failed
    raise RuntimeError(f"pytest exited {proc.returncode} without a failing test:\n{out[-2000:]}")


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, pkill, a CI timeout) as Ctrl-C: the mutated file is put back


def main(argv: list[str]) -> int:
    # Without this, SIGTERM ends the process at once and the mutant stays in the source file.
    signal.signal(signal.SIGTERM, _stop)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="only mutants in these files or folders (default: all)")
    ap.add_argument("--catalogue", type=Path, default=ROOT / "tools" / "mutants.yaml")
    ap.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help="test files run for each mutant")
    ap.add_argument("-k", dest="deselect", default=DEFAULT_DESELECT, help="pytest -k expression")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant before it counts as killed")
    ap.add_argument("--target", type=float, default=0.9, help="kill rate the run must reach")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    try:
        mutants = load_catalogue(args.catalogue, args.paths)
    except CatalogueError as e:
        print(f"mutate: error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m['id']:42s} {m['file']:22s} {m['why']}")
        return 0
    if not mutants:
        print("mutate: no mutant in those paths", file=sys.stderr)
        return 2
    status, dt, failed = run_tests(args.tests, args.deselect, args.timeout)
    if status != "survived":
        print(f"mutate: error: the tests fail without any mutant ({failed or status}); fix them first",
              file=sys.stderr)
        return 2
    print(f"baseline: tests pass in {dt:.0f} s; {len(mutants)} mutant(s)", flush=True)
    results = []
    for m in mutants:
        src = ROOT / m["file"]
        original = src.read_text(encoding="utf-8")
        try:
            src.write_text(original.replace(m["find"], m["replace"], 1), encoding="utf-8")
            status, dt, failed = run_tests(args.tests, args.deselect, args.timeout)
        finally:
            src.write_text(original, encoding="utf-8")
        results.append({"id": m["id"], "file": m["file"], "status": status, "seconds": round(dt, 1),
                        "killed_by": failed, "why": m["why"]})
        print(f"{status:8s} {dt:6.0f} s  {m['id']:42s} {failed}", flush=True)
    killed = sum(r["status"] != "survived" for r in results)
    rate = killed / len(results)
    print(f"\nkilled {killed}/{len(results)} = {rate:.0%} (target {args.target:.0%})")
    for r in results:
        if r["status"] == "survived":
            print(f"  survived: {r['id']} ({r['file']}): {r['why']}")
    if args.json:
        args.json.write_text(json.dumps({"kill_rate": rate, "killed": killed, "mutants": results}, indent=1) + "\n")
    return 0 if rate >= args.target else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

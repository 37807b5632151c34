#!/usr/bin/env python3
"""What compiling the engine as it is would buy: two Cython builds of an installed tree.

Issue 12 left "a compiled kernel" as one way to the checker's throughput targets. This
builds it two ways, each from an installed tree, so that ``cpu_interleaved.py`` and
callgrind can measure both beside the tree they came from (nothing here is shipped, and the
package does not depend on Cython):

``untyped``  every module of the engine that Cython compiles unchanged (sim/: engine,
             client, clock, state, eventlog, faults, control, gateway, messages, tracing,
             rng), with type annotations ignored (``annotation_typing=False``), so the
             compiled code is Python's semantics, object for object.
``records``  the kernel only (sim/engine.py, sim/state.py, sim/clock.py), with the runtime
             records of sim/state.py and the clock as extension types: each ``__slots__``
             class becomes a ``cdef class`` declared in a generated ``.pxd`` (every slot an
             ``object``, so no value changes type, except the record-to-record links, which
             are typed: a call's ``inst``, ``op``, ``route`` and ``req``, an instance's and
             an operation's ``svc``), and the engine's annotations (``c: _Call``) type its
             arguments, so ``c.inst.svc`` is a struct read instead of a look-up.

Both builds must give the event-log hash and ``sim_events`` of the tree they come from
(``cpu_interleaved.py`` prints the hash of every run). Needs Cython (``pip install
Cython==3.3.2``) and a C compiler::

    python benchmarks/compiled_kernel.py --tree /tmp/c/inst --out /tmp/c/compiled
    python benchmarks/cpu_interleaved.py --tree base=/tmp/c/inst \\
        --tree untyped=/tmp/c/compiled/untyped --tree records=/tmp/c/compiled/records \\
        --profiles none hardened --duration 60 --rounds 5 --keep-events

Figures and the callgrind recipe: benchmarks/README.md, "Issue 12: a compiled kernel,
measured". Not a test; tests/test_benchmark_smoke.py checks the generated declarations.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

# sim/ modules Cython compiles unchanged. Left out: metrics.py (Cython 3.3.2 rejects a
# conditional expression between tuples of different lengths there) and the modules that
# run once per run, not per call (runner, result, export, stats, sweep).
UNTYPED = ("engine", "client", "clock", "state", "eventlog", "faults", "control", "gateway",
           "messages", "tracing", "rng")
RECORDS = ("engine", "state", "clock")

# The links between records that are typed in the ``records`` build (every other slot stays
# an ``object``: typing a number as a C double would turn the clock's integer 0 into 0.0,
# which the event log writes differently).
LINKS = {
    "_Call": {"req": "_Request", "op": "_Op", "inst": "_Instance", "route": "_Route"},
    "_Instance": {"svc": "_Service"},
    "_Op": {"svc": "_Service"},
}


def slotted_classes(source: str) -> dict[str, tuple[str, ...]]:
    """Every top-level class of ``source`` with a literal ``__slots__``, in source order."""
    out: dict[str, tuple[str, ...]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for st in node.body:
            if (isinstance(st, ast.Assign) and len(st.targets) == 1
                    and isinstance(st.targets[0], ast.Name) and st.targets[0].id == "__slots__"):
                out[node.name] = tuple(ast.literal_eval(st.value))
    return out


def declarations(classes: dict[str, tuple[str, ...]], links: dict[str, dict[str, str]]) -> str:
    """The ``.pxd`` that makes each class an extension type with its slots as attributes."""
    lines = [f"cdef class {name}" for name in classes]  # forward declarations, for the links
    for name, slots in classes.items():
        typed = links.get(name, {})
        lines += ["", f"cdef class {name}:"]
        lines += [f"    cdef public {typed[s]} {s}" for s in slots if s in typed]
        rest = [s for s in slots if s not in typed]
        if rest:
            lines.append("    cdef public object " + ", ".join(rest))
    return "\n".join(lines) + "\n"


def without_slots(source: str) -> str:
    """``source`` with each ``__slots__`` statement replaced by ``pass`` (an extension type
    declares its attributes in the ``.pxd``; the class body may be left with nothing else)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    spans = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__slots__"):
            spans.append((node.lineno, node.end_lineno, node.col_offset))
    for first, last, col in sorted(spans, reverse=True):
        lines[first - 1:last] = [" " * col + "pass\n"]
    return "".join(lines)


def _build(tree: Path, dest: Path, modules: tuple[str, ...], typed: bool) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(tree, dest)
    sim = dest / "hailan_sim" / "sim"
    if typed:
        state = (sim / "state.py").read_text()
        (sim / "state.pxd").write_text(declarations(slotted_classes(state), LINKS))
        (sim / "state.py").write_text(without_slots(state))
        clock = (sim / "clock.py").read_text()
        (sim / "clock.pxd").write_text(declarations(slotted_classes(clock), {}))
        (sim / "clock.py").write_text(without_slots(clock))
        names = ", ".join(n for n in slotted_classes(state))
        (sim / "engine.pxd").write_text(f"from hailan_sim.sim.state cimport {names}\n")
    files = [f"hailan_sim/sim/{m}.py" for m in modules]
    setup = textwrap.dedent(f"""
        from setuptools import setup
        from Cython.Build import cythonize
        setup(ext_modules=cythonize({files!r}, language_level=3, quiet=True,
                                    compiler_directives={{"binding": True,
                                                          "annotation_typing": {typed!r}}}),
              script_args=["build_ext", "--inplace", "-j", "2"])
    """)
    # -ffp-contract=off: no fused multiply-add, so floats round as CPython's do on any CPU.
    env = dict(os.environ, CFLAGS=os.environ.get("CFLAGS", "") + " -ffp-contract=off")
    subprocess.run([sys.executable, "-c", setup], cwd=dest, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    built = sorted(p.name for p in sim.glob("*.so"))
    print(f"{dest}: {len(built)} compiled modules", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", required=True, type=Path,
                    help="an installed tree (pip install --no-deps --target DIR .)")
    ap.add_argument("--out", required=True, type=Path, help="where the two builds go")
    a = ap.parse_args(argv)
    _build(a.tree, a.out / "untyped", UNTYPED, typed=False)
    _build(a.tree, a.out / "records", RECORDS, typed=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

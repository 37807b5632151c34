#!/usr/bin/env python3
"""What compiling the engine as it is would buy: two Cython builds and a mypyc build.

Issue 12 left "a compiled kernel" as one way to the checker's throughput targets. This
builds it three ways, each from an installed tree, so that ``cpu_interleaved.py``,
``bench_engine.py`` and callgrind can measure each beside the tree it came from (nothing
here is shipped, and the package depends on neither Cython nor mypy):

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
``mypyc``    the same sources compiled by mypyc (the engine, sim/'s other per-call modules
             and models/tokens.py), declared for it at build time, no line of behaviour
             rewritten: the engine's four mixins become traits of one native class (each
             declares the attributes it uses, stubs the methods of the others it calls,
             and ``Engine`` forwards the stubbed ones), every class declares its attributes
             as ``Any`` (mypyc's classes have no ``__dict__``), the record links typed as in
             ``records``, and no annotation says ``float`` or ``int`` (mypyc would keep a
             float as a C double, turning the clock's integer 0 into 0.0, and refuse the
             float claims a token may carry). What the sources would need to compile as
             they are, written out.

Every build must give the event-log hash and ``sim_events`` of the tree it comes from
(``cpu_interleaved.py`` prints the hash of every run; ``tests/hash_baseline.py compare``
checks 18 runs). Needs Cython (``pip install Cython==3.3.2``) for the first two, mypy
(``pip install mypy==2.4.1``) for the third, and a C compiler::

    python benchmarks/compiled_kernel.py --tree /tmp/c/inst --out /tmp/c/compiled
    python benchmarks/compiled_kernel.py --tree /tmp/c/inst --out /tmp/c/compiled --builds mypyc
    python benchmarks/cpu_interleaved.py --tree base=/tmp/c/inst \\
        --tree untyped=/tmp/c/compiled/untyped --tree records=/tmp/c/compiled/records \\
        --profiles none hardened --duration 60 --rounds 5 --keep-events

Figures and the callgrind recipe: benchmarks/README.md, "Issue 12: a compiled kernel,
measured" and "Issue 12: the engine compiled by mypyc". Not a test;
tests/test_benchmark_smoke.py checks the generated declarations and sources.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
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


def _slots(cls: ast.ClassDef) -> tuple[str, ...] | None:
    """The class's literal ``__slots__``, or None if its body sets none."""
    for st in cls.body:
        if (isinstance(st, ast.Assign) and len(st.targets) == 1
                and isinstance(st.targets[0], ast.Name) and st.targets[0].id == "__slots__"):
            return tuple(ast.literal_eval(st.value))
    return None


def slotted_classes(source: str) -> dict[str, tuple[str, ...]]:
    """Every top-level class of ``source`` with a literal ``__slots__``, in source order."""
    out: dict[str, tuple[str, ...]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and (slots := _slots(node)) is not None:
            out[node.name] = slots
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


# --- the ``mypyc`` build: the same sources compiled by mypyc, declared, not rewritten ------

# What mypyc compiles: the kernel, the other per-call modules of sim/ and the one model of a
# mechanism with no pydantic class in its module. mypyc checks a class attribute's value
# against its annotation when the class is made, even in a class it leaves to Python, so a
# pydantic field (``x: bool = Field(...)``) stops the import: the models of breakers,
# balancers, registry and retries stay Python.
MYPYC = tuple(f"sim/{m}" for m in UNTYPED) + ("models/tokens",)
# The record links typed as in ``records`` (a call has no instance, or no route, until it
# is placed: mypyc checks a declared type on every write, so those two admit None).
MYPYC_LINKS = {
    "_Call": {"req": "_Request", "op": "_Op", "inst": "Optional[_Instance]", "route": "Optional[_Route]"},
    "_Instance": {"svc": "_Service"},
    "_Op": {"svc": "_Service"},
}
# The error codes mypy raises on these sources and mypyc can compile past (reads of an
# Optional without a check, arguments of a looser type, overrides with other signatures):
# where a type matters the compiled code checks it when the run reaches it, and
# tests/hash_baseline.py compares the runs.
MYPY_INI = """[mypy]
follow_imports = silent
ignore_missing_imports = True
disable_error_code = attr-defined, assignment, union-attr, has-type, index, arg-type, annotation-unchecked, override, misc
"""


def _offset(lines_at: list[int], line: int, col: int) -> int:
    return lines_at[line - 1] + col


def _line_starts(source: str) -> list[int]:
    at = [0]
    for line in source.splitlines(keepends=True):
        at.append(at[-1] + len(line))
    return at


def _self_attr(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _assigned(cls: ast.ClassDef) -> list[str]:
    """Every ``self.X`` the class's methods assign, in first-assignment order."""
    out: dict[str, None] = {}
    for node in ast.walk(cls):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for t in targets:
            for sub in ast.walk(t):
                name = _self_attr(sub)
                if name is not None:
                    out.setdefault(name, None)
    return list(out)


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}


def _body_start(cls: ast.ClassDef, at: list[int]) -> tuple[int, str]:
    """Where declarations go in a class: the offset of its first statement after the
    docstring (before that statement's decorators), and that statement's indent."""
    first = cls.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(cls.body) > 1:
        first = cls.body[1]
    line = min([first.lineno, *[d.lineno for d in getattr(first, "decorator_list", [])]])
    return _offset(at, line, 0), " " * first.col_offset


def _class_level(cls: ast.ClassDef) -> set[str]:
    """Names the class body binds itself (constants, annotations, ``__slots__``)."""
    out = set()
    for st in cls.body:
        if isinstance(st, ast.Assign):
            out |= {t.id for t in st.targets if isinstance(t, ast.Name)}
        elif isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
            out.add(st.target.id)
    return out


def without_number_annotations(source: str) -> str:
    """Every annotation that names ``float`` or ``int`` becomes ``Any``.

    mypyc keeps a ``float`` as a C double and converts an ``int`` passed for one: the
    clock's integer 0 would become 0.0, which the event log writes differently. It checks
    an ``int`` on every write, where the code (a token's claims, PyJWT-style) lets a float
    through.
    """
    tree = ast.parse(source)
    at = _line_starts(source)
    spans = []
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            anns.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            anns.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for a in anns:
            if any(isinstance(n, ast.Name) and n.id in ("float", "int") for n in ast.walk(a)):
                spans.append((_offset(at, a.lineno, a.col_offset), _offset(at, a.end_lineno, a.end_col_offset)))
    for start, end in sorted(spans, reverse=True):
        source = source[:start] + "Any" + source[end:]
    return source


def declared_attributes(source: str, links: dict[str, dict[str, str]], extra: dict[str, list[str]] | None = None,
                        skip: tuple[str, ...] = ()) -> str:
    """Each class not in ``skip`` declares, in its body, its slots and every attribute its
    methods assign (mypyc's native classes have no ``__dict__``: an attribute must be
    declared to exist), as ``Any`` except the typed ``links``; annotations on those
    assignments are dropped (one declaration each). ``extra`` adds names per class (the
    attributes that the engine's traits declare)."""
    tree = ast.parse(source)
    at = _line_starts(source)
    edits: list[tuple[int, int, str]] = []
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        if cls.name in skip:
            continue
        bound = _class_level(cls) | set(_methods(cls))
        names = list(dict.fromkeys([*(_slots(cls) or ()), *_assigned(cls), *(extra or {}).get(cls.name, [])]))
        names = [n for n in names if n not in bound]
        for st in ast.walk(cls):
            if (isinstance(st, ast.AnnAssign) and _self_attr(st.target) in names and st.value is not None):
                edits.append((_offset(at, st.target.end_lineno, st.target.end_col_offset),
                              _offset(at, st.value.lineno, st.value.col_offset), " = "))
        if not names:
            continue
        pos, indent = _body_start(cls, at)
        typed = links.get(cls.name, {})
        edits.append((pos, pos, "".join(f"{indent}{n}: {typed.get(n, 'Any')}\n" for n in names)))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def _with_import(source: str, line: str) -> str:
    return source.replace("from __future__ import annotations\n",
                          f"from __future__ import annotations\n{line}\n", 1)


def mypyc_kernel(sources: dict[str, str]) -> dict[str, str]:
    """The engine and its mixins (``sources``: module name -> source of sim/engine.py and of
    each module that defines one of ``Engine``'s bases), made into one native class: each
    mixin a mypyc ``@trait`` that declares what it uses of the others (attributes as ``Any``,
    methods as stubs), and ``Engine`` forwarding each method a stub would shadow in its MRO.
    """
    trees = {m: ast.parse(s) for m, s in sources.items()}
    classes = {c.name: (m, c) for m, t in trees.items() for c in t.body if isinstance(c, ast.ClassDef)}
    engine = classes["Engine"][1]
    bases = [b.id for b in engine.bases]
    mro = ["Engine", *bases]
    owner: dict[str, str] = {}  # method -> the class whose definition the MRO finds
    for name in mro:
        for meth in _methods(classes[name][1]):
            owner.setdefault(meth, name)
    out = dict(sources)
    engine_extra: list[str] = []
    forward: dict[str, str] = {}
    for mixin in bases:
        mod, cls = classes[mixin]
        used = sorted({a.attr for a in ast.walk(cls) if _self_attr(a) is not None})
        mine = _methods(cls)
        declared = [u for u in used if u not in mine and u not in owner]
        stubs = [u for u in used if u not in mine and u in owner]
        for u in stubs:
            # A stub shadows a later trait's method in Engine's MRO, and mypyc cannot build
            # the vtable of a trait whose stub an earlier trait implements: Engine forwards
            # each such method to the trait that defines it.
            if owner[u] != "Engine":
                forward[u] = owner[u]
        engine_extra += declared
        # its own assignments are declared by declared_attributes below
        text = "".join(f"    {d}: Any\n" for d in declared if d not in _assigned(cls))
        for u in stubs:
            f = _methods(classes[owner[u]][1])[u]
            args = ast.arguments(posonlyargs=[], args=[ast.arg(a.arg) for a in f.args.args],
                                 vararg=ast.arg(f.args.vararg.arg) if f.args.vararg else None,
                                 kwonlyargs=[ast.arg(a.arg) for a in f.args.kwonlyargs],
                                 kw_defaults=f.args.kw_defaults,
                                 kwarg=ast.arg(f.args.kwarg.arg) if f.args.kwarg else None,
                                 defaults=f.args.defaults)
            stub = ast.FunctionDef(name=u, args=args, body=[ast.Raise(exc=ast.Name("NotImplementedError"))],
                                   decorator_list=[], returns=None, type_params=[])
            text += "    " + ast.unparse(ast.fix_missing_locations(stub)).replace("\n", "\n    ") + "\n"
        src = declared_attributes(out[mod], {}, skip=tuple(c for c in classes if c != mixin))
        src = src.replace(f"class {mixin}", f"@trait\nclass {mixin}", 1)
        cls2 = next(c for c in ast.parse(src).body if isinstance(c, ast.ClassDef) and c.name == mixin)
        pos, _ = _body_start(cls2, _line_starts(src))
        src = src[:pos] + text + src[pos:]
        out[mod] = _with_import(_with_import(src, "from mypy_extensions import trait"), "from typing import Any")
    engine_mod = classes["Engine"][0]
    src = declared_attributes(out[engine_mod], {}, {"Engine": sorted(set(engine_extra))},
                              skip=tuple(c for c in classes if c != "Engine"))
    if forward:
        tree = ast.parse(src)
        eng = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "Engine")
        lines = src.splitlines(keepends=True)
        text = "".join(f"    def {m}(self, *args, **kwargs):\n        return {o}.{m}(self, *args, **kwargs)\n\n"
                       for m, o in sorted(forward.items()))
        first_def = next(st for st in eng.body if isinstance(st, ast.FunctionDef))
        lines.insert(first_def.lineno - 1, text)
        src = "".join(lines)
    out[engine_mod] = _with_import(src, "from typing import Any")
    return out


def mypyc_sources(sources: dict[str, str]) -> dict[str, str]:
    """The modules of ``MYPYC`` (``sources``: path under hailan_sim/ -> source), ready for
    mypyc: the kernel made one native class (:func:`mypyc_kernel`), every class's
    attributes declared, the record links typed, no ``float`` or ``int`` annotation left."""
    sources = dict(sources)
    engine = ast.parse(sources["sim/engine"])
    eng = next(c for c in engine.body if isinstance(c, ast.ClassDef) and c.name == "Engine")
    bases = {b.id for b in eng.bases}
    kernel = ["sim/engine"] + [m for m in MYPYC if any(
        isinstance(c, ast.ClassDef) and c.name in bases for c in ast.parse(sources[m]).body)]
    sources.update(mypyc_kernel({m: sources[m] for m in kernel}))
    out = {}
    for m, src in sources.items():
        # the kernel's own classes were declared by mypyc_kernel
        src = declared_attributes(src, MYPYC_LINKS, skip=("Engine", *bases))
        src = without_number_annotations(src)
        if "from typing import Any\n" not in src:
            src = _with_import(src, "from typing import Any")
        out[m] = src
    return out


def _build_mypyc(tree: Path, dest: Path) -> None:
    _fresh_copy(tree, dest)
    read = {m: (tree / "hailan_sim" / f"{m}.py").read_text() for m in MYPYC}
    for m, src in mypyc_sources(read).items():
        (dest / "hailan_sim" / f"{m}.py").write_text(src)
    (dest / "mypy.ini").write_text(MYPY_INI)
    _compile([sys.executable, "-m", "mypyc", "--config-file", "mypy.ini",
              *[f"hailan_sim/{m}.py" for m in MYPYC]], dest)


def _fresh_copy(tree: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(tree, dest)


def _compile(cmd: list[str], dest: Path) -> None:
    """Run a compiler's build in ``dest`` and say how many extension modules it made."""
    # -ffp-contract=off: no fused multiply-add, so floats round as CPython's do on any CPU.
    env = dict(os.environ, CFLAGS=os.environ.get("CFLAGS", "") + " -ffp-contract=off")
    subprocess.run(cmd, cwd=dest, env=env, check=True, stdout=subprocess.DEVNULL)
    built = sorted(p.name for p in (dest / "hailan_sim").rglob("*.so"))
    print(f"{dest}: {len(built)} compiled modules", file=sys.stderr)


def _build(tree: Path, dest: Path, modules: tuple[str, ...], typed: bool) -> None:
    _fresh_copy(tree, dest)
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
    _compile([sys.executable, "-c", setup], dest)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", required=True, type=Path,
                    help="an installed tree (pip install --no-deps --target DIR .)")
    ap.add_argument("--out", required=True, type=Path, help="where the builds go (one folder each)")
    ap.add_argument("--builds", nargs="+", choices=("untyped", "records", "mypyc"),
                    default=["untyped", "records", "mypyc"],
                    help="which builds (untyped and records need Cython, mypyc needs mypy)")
    a = ap.parse_args(argv)
    for build, module, pin in (("untyped", "Cython", "Cython==3.3.2"), ("records", "Cython", "Cython==3.3.2"),
                               ("mypyc", "mypyc", "mypy==2.4.1")):
        if build in a.builds and importlib.util.find_spec(module) is None:
            print(f"compiled_kernel.py: the {build} build needs {module}: pip install {pin} "
                  f"(or --builds without {build})", file=sys.stderr)
            return 2
    if "untyped" in a.builds:
        _build(a.tree, a.out / "untyped", UNTYPED, typed=False)
    if "records" in a.builds:
        _build(a.tree, a.out / "records", RECORDS, typed=True)
    if "mypyc" in a.builds:
        _build_mypyc(a.tree, a.out / "mypyc")
    return 0


if __name__ == "__main__":
    sys.exit(main())

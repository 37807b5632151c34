"""The ``hailan-sim`` command line.

Exit codes: 0 success, 1 an invariant was violated (``check``, ``replay``), 2 bad input
(the message names the file, the field and what is allowed; never a traceback), 130
interrupted (Ctrl-C: one line; ``check`` first prints what it had checked). Machine-readable
output with ``--json`` goes to stdout, with the version and the settings; the progress bar
goes to stderr, and only when stderr is a terminal. Output files are checked before a run
and written under a temporary name, renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from hailan_sim._version import __version__
from hailan_sim.models import ScenarioError, analyse, load_scenario
from hailan_sim.models.policies import PROFILES
from hailan_sim.models.scenario import Scenario

__all__ = ["main"]

EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C stopped


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors also exit 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"hailan-sim: error: {message}\n")


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _objective(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. rto_s=60), got {text!r}")
    return key.strip(), value.strip()


def _with_objectives(scenario: Scenario, pairs) -> Scenario:
    """``scenario`` judged by its objectives with the command line's overrides."""
    if not pairs:
        return scenario
    from hailan_sim.models.objectives import override_objectives

    try:
        objectives = override_objectives(scenario.objectives, list(pairs))
    except ValueError as exc:
        raise ScenarioError("command line", str(exc)) from None
    data = scenario.model_dump(mode="python", exclude_unset=True)
    data["objectives"] = objectives.model_dump(mode="python", exclude_unset=True)
    return Scenario.model_validate(data)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hailan-sim",
        description="Deterministic discrete-event simulator of the HaiLan Pro microservices.",
        epilog="Without SCENARIO, commands use the built-in default scenario (the spec's twelve services).",
    )
    _version_option(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="simulate a scenario and summarise the run",
                         description="Simulate a scenario and print per-endpoint and per-service results.")
    run.add_argument("scenario", nargs="?", metavar="SCENARIO", help="scenario YAML file (default: built-in)")
    run.add_argument("--profile", choices=PROFILES,
                     help="start from a shipped policy profile (seed: the spec as written; hardened: recommended)")
    run.add_argument("--seed", type=_seed, help="override run.seed")
    run.add_argument("--duration", type=_positive(float), metavar="S", help="override run.duration_s (seconds)")
    run.add_argument("--warmup", type=float, metavar="S", help="override run.warmup_s (seconds)")
    run.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    run.add_argument("--events", metavar="FILE",
                     help="stream the event log to FILE: .parquet or .csv (any case; see docs/events.md)")
    run.add_argument("--spans", metavar="FILE",
                     help="stream every request's span tree to FILE.json (OTLP/JSON, OpenTelemetry)")
    run.add_argument("--no-progress", action="store_true",
                     help="never show the progress bar (it only shows on a terminal anyway)")
    _data_root(run)
    _capacity_flag(run)

    topo = sub.add_parser("topology", help="services, dependencies, cycles and blast radius",
                          description="Print services, ports, dependencies, dependency cycles and "
                                      "each component's transitive dependents.")
    topo.add_argument("scenario", nargs="?", metavar="SCENARIO", help="scenario YAML file (default: built-in)")
    topo.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    _data_root(topo)

    schema = sub.add_parser("schema", help="print the JSON Schema of a scenario file",
                            description="Print the JSON Schema every scenario file must satisfy.")
    schema.add_argument("--sweep", action="store_true", help="the JSON Schema of a sweep file instead")

    chk = sub.add_parser(
        "check", help="search fault schedules for invariant violations",
        description="Run Hypothesis over fault schedules built from the scenario's topology; for each "
                    "violated invariant, shrink to a minimal schedule and save it as a replayable "
                    "scenario. Exit 0: every invariant held; 1: one was violated; 2: bad input.")
    chk.add_argument("scenario", nargs="?", metavar="SCENARIO", help="scenario YAML file (default: built-in)")
    chk.add_argument("--profile", choices=PROFILES, help="start from a shipped policy profile")
    chk.add_argument("--invariant", action="append", metavar="NAME",
                     help="check only this invariant (repeatable; default: all but determinism)")
    chk.add_argument("--max-examples", type=_positive(int), default=12, metavar="N",
                     help="fault schedules generated per invariant (default 12; all invariants "
                          "see the same ones, so this is also about the number of simulations)")
    chk.add_argument("--max-faults", type=_positive(int), default=2, metavar="N",
                     help="faults per schedule at most (default 2)")
    chk.add_argument("--kinds", nargs="+", metavar="KIND", help="only these fault kinds")
    chk.add_argument("--seed", type=_seed, default=0, help="seed of the search (default 0)")
    chk.add_argument("--duration", type=_positive(float), metavar="S",
                     help="simulated seconds per example (default: 10 s warm-up + 40 s of faults + "
                          "the recovery time the policies need)")
    chk.add_argument("--jobs", type=_positive(int), default=_default_jobs(), metavar="N",
                     help="simulations run at once, in forked worker processes (default: the "
                          f"number of CPUs, here {_default_jobs()}); results do not depend on it")
    chk.add_argument("--no-cover", dest="cover", action="store_false",
                     help="skip the first phase (one fault of every kind, where it hurts most) "
                          "and only search with Hypothesis")
    chk.add_argument("--rerun-every", type=_non_negative_int, default=10, metavar="K",
                     help="determinism: re-run about one example in K (a fixed sample, by the hash of "
                          "the schedule and seed; 0: none) besides every baseline and every "
                          "counterexample, which are always re-run (default 10)")
    chk.add_argument("--exhaustive", action="store_true",
                     help="instead of searching, run every single fault of the alphabet and tabulate")
    chk.add_argument("--out", metavar="DIR", default="counterexamples",
                     help="a fresh folder for this run's counterexamples and report.json (default "
                          "counterexamples); a folder that already holds files is refused")
    chk.add_argument("--overwrite", action="store_true",
                     help="reuse a --out folder an earlier check wrote: its counterexamples and "
                          "report are deleted first")
    chk.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    _data_root(chk)
    _capacity_flag(chk)
    chk.add_argument("--objective", action="append", metavar="KEY=VALUE", type=_objective,
                     help="override an objective (repeatable), e.g. rto_s=60 (docs/invariants.md)")

    rep = sub.add_parser(
        "replay", help="re-run a counterexample and re-evaluate the invariants",
        description="Re-run a counterexample file, print its timeline and invariant verdicts. "
                    "Exit 1 while an invariant is still violated, 0 when all hold, 2 on bad input.")
    rep.add_argument("file", metavar="FILE", nargs="?",
                     help="a counterexample (any scenario file), or the name of one shipped with "
                          "hailan-sim (see --list)")
    rep.add_argument("--list", action="store_true",
                     help="list the counterexamples shipped with hailan-sim and what they violate")
    rep.add_argument("--invariant", action="append", metavar="NAME", help="evaluate only this invariant (repeatable)")
    rep.add_argument("--plot", metavar="PNG", help="save the timeline plot")
    rep.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    rep.add_argument("--objective", action="append", metavar="KEY=VALUE", type=_objective,
                     help="override an objective (repeatable), e.g. rto_s=60 (docs/invariants.md)")
    _data_root(rep)
    _capacity_flag(rep)
    sweep = _add_sweep_parser(sub)
    for parser in (run, topo, schema, chk, rep, sweep):
        _version_option(parser)
    return p


def _capacity_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-capacity-check", dest="capacity_check", action="store_false",
                        help="simulate even when the analytic offered load says the run cannot finish "
                             "in memory or in hours (models/capacity.py)")


def _check_capacity(scenario: Scenario, args: argparse.Namespace, source: Optional[str]) -> None:
    """Refuse, before simulating, a scenario whose expected work or queues cannot fit."""
    if not args.capacity_check:
        return
    from hailan_sim.models.capacity import CapacityError, check_capacity
    from hailan_sim.models.loader import line_in_file

    try:
        check_capacity(scenario)
    except CapacityError as exc:
        line = line_in_file(source, exc.keys) if source else None
        raise ScenarioError(source or "<built-in default>", str(exc), line) from None


def _data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", metavar="DIR",
                        help="data files the scenario names (csv:, file:) may lie anywhere under DIR "
                             "(default: only in the scenario file's folder)")


def _version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"hailan-sim {__version__}")


def _progress_shown(args: argparse.Namespace) -> bool:
    """A progress bar only on a terminal: a log file or a CI pipe gets none."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _header(settings: dict) -> dict:
    """What every JSON report starts with: the version and the settings it ran with
    (a ``settings`` object other report fields can join)."""
    return {"version": __version__, "settings": settings}


def _scenario_name(path: Optional[str]) -> str:
    return path if path is not None else "(built-in default)"


def _default_jobs() -> int:
    import os

    return max(1, min(os.cpu_count() or 1, 8))


def _load(path: Optional[str], data_root: Optional[str] = None) -> Scenario:
    if data_root is not None and not Path(data_root).is_dir():
        raise ScenarioError(data_root, "--data-root: no such folder")
    return load_scenario(path, data_root=data_root)


def _with_profile(scenario: Scenario, profile: Optional[str]) -> Scenario:
    """``--profile``: a scenario the profile does not fit (e.g. tokens from a service it
    lacks) is bad input, one line, not a traceback."""
    if profile is None:
        return scenario
    try:
        return scenario.with_profile(profile)
    except ValueError as exc:  # pydantic's ValidationError is one
        errors = getattr(exc, "errors", None)
        msg = errors()[0]["msg"] if callable(errors) else str(exc)
        raise ScenarioError("command line", f"--profile {profile}: " + msg.removeprefix("Value error, ")) from None


def _cmd_schema(args: argparse.Namespace) -> int:
    if getattr(args, "sweep", False):
        from hailan_sim.sweeps import Sweep

        print(json.dumps(Sweep.model_json_schema(), indent=2, sort_keys=True))
        return EXIT_OK
    print(json.dumps(Scenario.model_json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _cmd_topology(args: argparse.Namespace) -> int:
    scenario = _load(args.scenario, args.data_root)
    report = analyse(scenario)
    if args.json:
        print(json.dumps({**_header({"scenario": _scenario_name(args.scenario)}),
                          "scenario": scenario.name, **report.to_dict()}, indent=2))
        return EXIT_OK
    print(f"scenario {scenario.name}: {len(report.services)} services, "
          f"{len(report.infrastructure)} infrastructure components\n")
    width = max(len(s["name"]) for s in report.services)
    print(f"{'service':<{width}}  port   inst  depends on")
    for s in report.services:
        print(f"{s['name']:<{width}}  {s['port']:<5}  {s['instances']:<4}  {', '.join(s['depends_on']) or '-'}")
    if report.infrastructure:
        print()
        for c in report.infrastructure:
            port = c["port"] if c["port"] is not None else "-"
            print(f"{c['name']:<{width}}  {port!s:<5}  {c['kind']} (capacity {c['capacity']})")
    print("\ndependency cycles:")
    for cycle in report.cycles:
        print("  " + " -> ".join([*cycle, cycle[0]]))
    if not report.cycles:
        print("  none")
    print("\ntransitive dependents (blast radius if it fails):")
    for name, deps in report.dependents.items():
        print(f"  {name:<{width}}  {len(deps):>2}  {', '.join(deps) or '-'}")
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from hailan_sim.sim import simulate

    scenario = _load(args.scenario, args.data_root)
    scenario = _with_profile(scenario, args.profile)
    changes = {}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.duration is not None:
        changes["duration_s"] = args.duration
    if args.warmup is not None:
        if not (math.isfinite(args.warmup) and args.warmup >= 0):
            raise ScenarioError("command line", f"--warmup: must be a finite number >= 0 (seconds), got {args.warmup:g}")
        changes["warmup_s"] = args.warmup
    if changes:
        try:
            scenario = scenario.with_run(**changes)
        except Exception as exc:  # pydantic ValidationError
            msg = getattr(exc, "errors", lambda: [{"msg": str(exc)}])()[0]["msg"]
            raise ScenarioError("command line", msg.removeprefix("Value error, ")) from None
    _check_capacity(scenario, args, args.scenario)
    from contextlib import ExitStack

    from hailan_sim.sim.export import EventWriter, SpanWriter

    if args.events and args.spans and Path(args.events).resolve() == Path(args.spans).resolve():
        raise ScenarioError("command line", "--events and --spans name the same file")
    started = time.perf_counter()
    with ExitStack() as files:
        # Opened (and their paths and formats checked) before the run; streamed as it goes;
        # renamed into place only if it completes (an exception or Ctrl-C removes them).
        sinks = [files.enter_context(cls(path)) for cls, path in
                 ((EventWriter, args.events), (SpanWriter, args.spans)) if path]
        result = simulate(scenario, progress=None if _progress_shown(args) else False, sinks=sinks)
    wall = time.perf_counter() - started
    if args.json:
        settings = {"scenario": _scenario_name(args.scenario), "profile": scenario.profile,
                    "seed": scenario.run.seed, "duration_s": scenario.run.duration_s,
                    "warmup_s": scenario.run.warmup_s, "drain_s": scenario.run.drain_s,
                    "events": args.events, "spans": args.spans}
        out = {**_header(settings), "objectives": scenario.objectives.model_dump(mode="json"),
               "scenario": scenario.name, "profile": scenario.profile,
               **result.to_dict(), "wall_s": round(wall, 3)}
        print(json.dumps(out, indent=2))
        return EXIT_OK
    _print_run(scenario, result, wall)
    return EXIT_OK


def _fmt(v, column: str) -> str:
    if v is None:
        return "-"
    if column in ("utilisation", "mean_queue", "p_wait"):
        return f"{v:.3f}"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def _table(title: str, key: str, rows: dict, columns: list[str]) -> None:
    width = max([len(key), *map(len, rows)])
    print(title)
    print(f"  {key:<{width}}  " + "  ".join(f"{c:>11}" for c in columns))
    for name, row in rows.items():
        print(f"  {name:<{width}}  " + "  ".join(f"{_fmt(row[c], c):>11}" for c in columns))
    print()


def _print_run(scenario: Scenario, result, wall: float) -> None:
    d = result.to_dict()
    req = d["requests"]
    total = sum(v for k, v in req.items() if k != "unfinished")
    profile = f"  profile {scenario.profile}" if scenario.profile else ""
    print(f"scenario {scenario.name}{profile}  seed {d['seed']}  {d['duration_s']:g} s simulated "
          f"(warm-up {d['warmup_s']:g} s) in {wall:.1f} s wall, {d['sim_events']} events")
    ok = req["ok"] / total * 100 if total else 0.0
    print(f"requests: {total} after warm-up, {ok:.2f}% ok, {req['error']} error, "
          f"{req['timeout']} timeout, {req['rejected']} rejected, {req['unfinished']} unfinished\n")
    cols = ["ok", "error", "timeout", "rejected", "mean_ms", "ok_mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"]
    _table("endpoints (latency over all outcomes; ok_mean_ms: served requests only)", "endpoint",
           d["endpoints"], cols)
    _table("services (calls as their callers saw them; queue and wait at the instances)", "service",
           d["services"], [*cols[:4], "mean_ms", "p99_ms", "utilisation", "mean_queue", "max_queue",
                           "mean_wait_ms", "p_wait", "wait_p99_ms", "orphaned_calls"])
    if d["infrastructure"]:
        _table("infrastructure", "component", d["infrastructure"],
               ["ok", "error", "timeout", "rejected", "mean_ms", "p99_ms", "utilisation", "mean_queue",
                "mean_wait_ms"])
    m = d["mechanisms"]
    busy = {k: v for k, v in m.items() if k != "breaker_transitions" and v}
    if busy or m["breaker_transitions"]:
        print("mechanisms: " + ", ".join(f"{k} {v}" for k, v in busy.items()))
        for k, v in m["breaker_transitions"].items():
            print(f"  breaker {k}: {v}")
        print()
    print(f"event log sha256 {d['event_log_sha256']}")


def _check_scenario(args: argparse.Namespace) -> Scenario:
    from hailan_sim.properties.checker import check_duration

    scenario = _load(args.scenario, args.data_root)
    scenario = _with_profile(scenario, args.profile)
    warmup = min(scenario.run.warmup_s, 10.0)
    try:
        scenario = scenario.with_run(warmup_s=warmup, duration_s=max(scenario.run.duration_s, warmup + 1))
        duration = args.duration or check_duration(scenario)
        scenario = scenario.with_run(duration_s=duration)
    except Exception as exc:
        raise ScenarioError("command line", str(exc).splitlines()[0]) from None
    _check_capacity(scenario, args, args.scenario)
    return scenario


def _known_invariants(names) -> None:
    from hailan_sim.properties import invariants as inv

    for n in names or ():
        if n not in inv.INVARIANTS:
            raise ScenarioError("command line", f"--invariant: unknown invariant {n!r}; "
                                                f"known: {', '.join(inv.INVARIANTS)}")


def _cmd_check(args: argparse.Namespace) -> int:
    from hailan_sim.models.faults import FAULT_KINDS
    from hailan_sim.properties import checker

    scenario = _with_objectives(_check_scenario(args), args.objective)
    _known_invariants(args.invariant)
    for k in args.kinds or ():
        if k not in FAULT_KINDS:
            raise ScenarioError("command line", f"--kinds: unknown fault kind {k!r}; kinds: {', '.join(FAULT_KINDS)}")
    from tqdm import tqdm

    out = None if args.exhaustive else _fresh_out(Path(args.out), args.overwrite)
    tqdm.monitor_interval = 0  # no monitor thread: workers are forked from this process
    bar = tqdm(unit="sim", file=sys.stderr, desc="check", leave=False, dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    settings = {"scenario": _scenario_name(args.scenario), "profile": scenario.profile,
                "invariants": args.invariant, "max_examples": args.max_examples,
                "max_faults": args.max_faults, "kinds": args.kinds, "seed": args.seed,
                "duration_s": scenario.run.duration_s, "warmup_s": scenario.run.warmup_s,
                "cover": args.cover, "exhaustive": args.exhaustive, "jobs": args.jobs,
                "rerun_every": args.rerun_every,
                "out": None if out is None else str(out), "overwrite": args.overwrite}
    if args.exhaustive:
        return _check_exhaustive(args, scenario, bar, settings)
    try:
        report = checker.check(
            scenario, invariants=args.invariant, max_examples=args.max_examples, max_faults=args.max_faults,
            kinds=args.kinds, seed=args.seed, cover=args.cover, jobs=args.jobs, out_dir=out,
            progress=bar.update, rerun_every=args.rerun_every,
        )
    except ValueError as exc:  # a bad option the strategies refused
        raise ScenarioError("command line", str(exc)) from None
    finally:
        bar.close()
    doc = {**_header(settings), "objectives": scenario.objectives.model_dump(mode="json"), **report.to_dict()}
    _write_atomic(out / _REPORT, json.dumps(doc, indent=2) + "\n")
    code = EXIT_INTERRUPTED if report.interrupted else EXIT_OK if report.ok else EXIT_VIOLATED
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_check(scenario, report)
    if report.interrupted:
        print(f"hailan-sim: interrupted after {report.simulations} simulations; the report above "
              f"covers what was checked (also in {out / _REPORT})", file=sys.stderr)
    return code


_REPORT = "report.json"


def _fresh_out(out: Path, overwrite: bool) -> Path:
    """``check --out``: a new or empty folder, or with ``overwrite`` one an earlier check
    wrote (only counterexamples and its report, which are deleted first); checked and
    created before anything runs."""
    if out.exists() and not out.is_dir():
        raise ScenarioError(str(out), "check --out: exists and is not a folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise ScenarioError(str(out), f"check --out: the folder is not empty ({len(entries)} entries, e.g. "
                                      f"{entries[0].name}); choose a new folder, or pass --overwrite "
                                      f"to replace an earlier check's results")
    if entries:
        foreign = [e for e in entries if not (e.is_file() and (e.suffix == ".yaml" or e.name == _REPORT))]
        if foreign:
            raise ScenarioError(str(out), f"check --out --overwrite: the folder holds {foreign[0].name}, "
                                          f"which check does not write; refusing to empty it")
        for e in entries:
            e.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(str(out), f"check --out: cannot create the folder: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ScenarioError(str(out), "check --out: the folder is not writable")
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _print_check(scenario: Scenario, report) -> None:
    from hailan_sim.models.faults import describe
    from hailan_sim.models.objectives import describe_objectives

    what = "checked" if not report.interrupted else "INTERRUPTED; checked so far"
    print(f"{what} {scenario.name}" + (f" (profile {scenario.profile})" if scenario.profile else "")
          + f": {report.simulations} simulations in {report.wall_s:.0f} s"
          + (f" ({report.on_baseline} of them with no fault, judged on their baseline's run)"
             if report.on_baseline else ""))
    print(f"objectives: {describe_objectives(scenario.objectives)}")
    print("fault kinds fired: " + (", ".join(f"{k} x{v}" for k, v in report.fault_kinds_fired.items()) or "none"))
    print("witnessed: " + (", ".join(f"{k} x{v}" for k, v in report.witnessed.items()) or "nothing"))
    print("never witnessed: " + (", ".join(report.not_witnessed) or "none (every applicable mechanism was)"))
    if report.not_applicable:
        print("not applicable here: " + ", ".join(report.not_applicable))
    if report.cover:
        print("\ncover phase (one fault of each kind, seed 0):")
        width = max(len(c["fault"]) for c in report.cover)
        for c in report.cover:
            print(f"  {c['fault']:<{width}}  {', '.join(c['violated']) or 'every invariant held'}")
    print()
    for r in report.invariants:
        if r.status in ("held", "unfinished"):
            print(f"  {r.status:<9} {r.name} ({r.examples} examples)")
            continue
        how = "the cover phase" if r.found_by == "cover" else "the search"
        print(f"  VIOLATED  {r.name} (found by {how}, {r.seconds_to_find} s into the check)")
        print(f"            {r.explanation}")
        for f in r.faults:
            print(f"            fault: {describe(f)}")
        for why in r.lost_for_good.values():
            print(f"            beyond any policy: {why} (only another instance of it helps)")
        if r.counterexample:
            print(f"            seed {r.seed}; replay: hailan-sim replay {r.counterexample}")
    d = report.determinism
    if d:
        what = (f"{d['reruns']} re-runs reproduced their event-log hash" if not d["mismatches"] else
                f"{len(d['mismatches'])} of {d['reruns']} re-runs gave another event-log hash")
        sample = f"about one in {d['every']}" if d["every"] else "none: --rerun-every 0"
        print(f"\ndeterminism: {what} ({d['baselines']} baselines, {d['counterexamples']} "
              f"counterexamples, {d['examples']} sampled examples, {sample})")
    c = report.cpu_s
    if c:
        reruns = sum(v for k, v in c.items() if k.startswith("re-runs"))
        print(f"CPU: {c['total']:.0f} s, of which simulating examples {c['examples: simulation']:.0f}, "
              f"their invariants {c['examples: invariants']:.0f}, baselines {c['baselines']:.0f}, "
              f"determinism re-runs {reruns:.0f}, the rest {c['rest']:.0f} (--json: cpu_s)")


def _check_exhaustive(args, scenario: Scenario, bar, settings: dict) -> int:
    from hailan_sim.properties import checker
    from hailan_sim.properties.alphabet import single_faults

    try:
        faults = single_faults(scenario, kinds=args.kinds)
        bar.total = len(faults) + 1
        table, runner = checker.exhaustive(scenario, faults, invariants=args.invariant, seed=args.seed,
                                           jobs=args.jobs, progress=bar.update)
    finally:
        bar.close()
    violated = (table.drop(columns=["fault", "kind"]) == "VIOLATED").any(axis=1)
    if args.json:
        print(json.dumps({**_header(settings), "objectives": scenario.objectives.model_dump(mode="json"),
                          "scenario": scenario.name, "profile": scenario.profile, "faults": len(table),
                          "violating": int(violated.sum()), "table": table.to_dict(orient="records")}, indent=2))
    else:
        with_pd_width = table.to_string(index=False)
        print(with_pd_width)
        print(f"\n{len(table)} single faults tried, {int(violated.sum())} break at least one invariant")
    return EXIT_VIOLATED if violated.any() else EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from hailan_sim.properties import checker
    from hailan_sim.properties.timeline import plot_timeline, timeline_events, windowed_success

    from hailan_sim.findings import shipped
    from hailan_sim.models.objectives import describe_objectives

    if args.list:
        for name, info in shipped().items():
            print(f"{name:<32}  violates {info['invariant']}: {info['fault']}")
        return EXIT_OK
    if args.file is None:
        raise ScenarioError("command line", "replay: give a counterexample FILE or the name of a shipped one "
                                            "(hailan-sim replay --list)")
    path = _replay_file(args.file)
    if args.plot:
        plot = _check_plot(args.plot)
    scenario = _with_objectives(_load(str(path), args.data_root), args.objective)
    _check_capacity(scenario, args, str(path))
    _known_invariants(args.invariant)
    record, verdicts = checker.replay(scenario, args.invariant)
    result = record.result
    ok = all(v.holds for v in verdicts)
    if args.plot:
        tmp = plot.with_name(f".{plot.stem}.{os.getpid()}.tmp{plot.suffix}")
        try:
            plot_timeline(record, tmp, title=f"{args.file}: " + ", ".join(
                v.name for v in verdicts if not v.holds) or "all invariants hold")
            os.replace(tmp, plot)
        finally:
            tmp.unlink(missing_ok=True)
    if args.json:
        print(json.dumps({
            **_header({"file": args.file, "path": str(path), "invariants": args.invariant, "plot": args.plot}),
            "file": args.file, "event_log_sha256": result.event_log_sha256, "ok": ok,
            "objectives": scenario.objectives.model_dump(mode="json"),
            "invariants": {v.name: {"holds": v.holds, "explanation": v.explanation,
                                    "window": list(v.window) if v.window else None} for v in verdicts},
            "plot": args.plot,
        }, indent=2))
        return EXIT_OK if ok else EXIT_VIOLATED
    print(f"replay {path}: event log sha256 {result.event_log_sha256}\n")
    print("timeline")
    for line in timeline_events(result.events()):
        print("  " + line)
    print("\nsuccess ratio per 5 s window (rows: window start, s)")
    print(windowed_success(result.windows).to_string())
    print(f"\ninvariants, judged by the objectives: {describe_objectives(scenario.objectives)}")
    for v in verdicts:
        print(f"  {'held    ' if v.holds else 'VIOLATED'}  {v.name}: {v.explanation}")
    if args.plot:
        print(f"\nplot: {args.plot}")
    return EXIT_OK if ok else EXIT_VIOLATED


def _replay_file(name: str) -> Path:
    """A file path, or the name of a counterexample shipped with the package
    (``registry_outage`` or ``registry_outage.yaml``)."""
    from hailan_sim.findings import shipped_path

    p = Path(name)
    if p.exists() or p.parent != Path("."):
        return p
    found = shipped_path(name)
    return found if found is not None else p


def _check_plot(name: str) -> Path:
    p = Path(name)
    if p.suffix.lower() != ".png":
        raise ScenarioError(name, "--plot: unknown format; use a .png file name")
    if not p.parent.is_dir():
        raise ScenarioError(name, "--plot: the folder to write it in does not exist")
    return p
# --------------------------------------------------------------------------- sweep


def _add_sweep_parser(sub) -> argparse.ArgumentParser:
    sw = sub.add_parser(
        "sweep", help="run a parameter sweep (points x fault schedules x seeds) and recommend a setting",
        description="Run every point of a sweep file under each of its fault schedules and seeds, on local "
                    "processes or Dask; results are appended to Parquet in --out as runs finish, so "
                    "--resume finishes a stopped sweep. Prints the summary per point (mean and 95%% CI "
                    "over seeds), the Pareto front and the recommendation. Exit 0: done; 2: bad input.")
    sw.add_argument("file", nargs="?", metavar="SWEEP", help="sweep YAML file (docs/sweeps.md; schema --sweep)")
    sw.add_argument("--workers", type=_positive(int), metavar="N",
                    help=f"processes (or Dask LocalCluster workers) at once (default: all cores, here "
                         f"{_sweep_default_workers()}); results do not depend on it")
    ex = sw.add_mutually_exclusive_group()
    ex.add_argument("--scheduler", metavar="ADDR", help="run on this Dask scheduler (tcp://host:8786); "
                                                      "needs pip install 'hailan-sim[dask]'")
    ex.add_argument("--dask", action="store_true", help="run on a Dask LocalCluster of --workers workers")
    sw.add_argument("--out", metavar="DIR", help="results folder (default: sweep-<name>)")
    sw.add_argument("--resume", action="store_true", help="finish the sweep in --out: run only what is missing")
    sw.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    sw.add_argument("--list-faults", action="store_true", help="list the shipped fault schedules and exit")
    return sw


def _sweep_default_workers() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else max(1, os.cpu_count() or 1)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from hailan_sim.sweeps import by_point, load_sweep, pareto_front, recommend, run_sweep, shipped_schedules

    if args.list_faults:
        for name, text in shipped_schedules().items():
            print(f"{name:<24} {text}")
        return EXIT_OK
    if args.file is None:
        raise ScenarioError("command line", "give a sweep file (hailan-sim sweep SWEEP.yaml; "
                                            "examples/sweeps/seed-breaker.yaml is one)")
    plan = load_sweep(args.file)
    out = args.out or f"sweep-{plan.sweep.name}"
    started = time.perf_counter()
    try:
        table = run_sweep(plan, out, workers=args.workers, resume=args.resume,
                          executor="dask" if (args.dask or args.scheduler) else "local", scheduler=args.scheduler,
                          progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        from hailan_sim.sweeps import load_results

        kept = len(load_results(out)) if Path(out, "manifest.json").exists() else 0
        print(f"hailan-sim: interrupted: {kept} of {len(plan.runs)} runs kept in {out}; "
              f"finish with: hailan-sim sweep {args.file} --out {out} --resume", file=sys.stderr)
        return 130
    wall = time.perf_counter() - started
    rec = recommend(table)
    points = by_point(table)
    objectives = [(o["metric"], o["goal"]) for o in table.attrs["objectives"] if o["metric"] in table.columns]
    front = pareto_front(points, objectives)
    axes = plan.sweep.axes
    if args.json:
        def clean(v):
            return None if isinstance(v, float) and v != v else v.item() if hasattr(v, "item") else v

        print(json.dumps({
            "sweep": plan.sweep.name, "out": out, "spec_sha256": plan.sha256, "runs": len(table),
            "ran_now": table.attrs["ran"],
            "wall_s": round(wall, 3), "recommendation": rec["line"],
            "recommended": {k: clean(v) for k, v in rec["settings"].items()},
            "points": [{k: clean(v) for k, v in r.items()} for r in points.to_dict(orient="records")],
            "pareto_front": [int(p) for p in front["point"]],
        }, indent=2))
        return EXIT_OK
    print(f"sweep {plan.sweep.name}: {len(plan.points)} points x {len(plan.schedules)} fault schedules x "
          f"{plan.sweep.replications} seeds = {len(plan.runs)} runs, {len(table)} in {out} "
          f"({table.attrs['ran']} run now in {wall:.0f} s wall)\n")
    short = {a: a.rsplit(".", 1)[-1] for a in axes}
    cols = [c for m, _ in objectives for c in (m,)]
    head = "  ".join(f"{short[a]:>{max(6, len(short[a]))}}" for a in axes)
    print("per point, at its worst fault schedule (mean [95% CI] over seeds); * on the Pareto front")
    print(f"  {'point':>5}  {head}  " + "  ".join(f"{c:>26}" for c in cols))
    on_front = set(front["point"].tolist())
    for _, r in points.iterrows():
        vals = "  ".join(f"{_short_val(r[a]):>{max(6, len(short[a]))}}" for a in axes)
        figs = "  ".join(f"{_ci_text(c, r[c], r[f'{c}.low'], r[f'{c}.high']):>26}" for c in cols)
        star = "*" if r["point"] in on_front else " "
        print(f"{star} {int(r['point']):>5}  {vals}  {figs}")
    print(f"\nrecommended: {rec['line']}")
    print(f"results: {out} (load with hailan_sim.sweeps.load_results({out!r}))")
    return EXIT_OK


def _short_val(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _ci_text(metric: str, m: float, lo: float, hi: float) -> str:
    def f(v: float) -> str:
        if v != v:
            return "-"
        if metric.startswith("availability"):
            return f"{v * 100:.2f}%"
        return f"{v:.1f}"

    return f"{f(m)} [{f(lo)}, {f(hi)}]"


_COMMANDS = {"run": _cmd_run, "topology": _cmd_topology, "schema": _cmd_schema,
             "check": _cmd_check, "replay": _cmd_replay, "sweep": _cmd_sweep}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from hailan_sim.sim.export import OutputError

    try:
        args = _build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except (ScenarioError, OutputError) as exc:
        print(f"hailan-sim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK
    except KeyboardInterrupt:
        # Ctrl-C: one line, no traceback; output files were removed, not left half written.
        print("hailan-sim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

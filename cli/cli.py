"""The ``hailan-sim`` command line.

Exit codes: 0 success, 2 bad input (the message names the file, the field and what is
allowed; never a traceback). Machine-readable output with ``--json`` goes to stdout;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import math
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from hailan_sim.models import ScenarioError, analyse, load_scenario
from hailan_sim.models.policies import PROFILES
from hailan_sim.models.scenario import Scenario

__all__ = ["main"]

EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_BAD_INPUT = 2


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
    run.add_argument("--events", metavar="FILE", help="write the event log (.parquet, otherwise CSV)")
    run.add_argument("--spans", metavar="FILE", help="write every request's span tree as JSON (OpenTelemetry shape)")
    run.add_argument("--no-progress", action="store_true", help="never show the progress bar")

    topo = sub.add_parser("topology", help="services, dependencies, cycles and blast radius",
                          description="Print services, ports, dependencies, dependency cycles and "
                                      "each component's transitive dependents.")
    topo.add_argument("scenario", nargs="?", metavar="SCENARIO", help="scenario YAML file (default: built-in)")
    topo.add_argument("--json", action="store_true", help="print one JSON object to stdout")

    sub.add_parser("schema", help="print the JSON Schema of a scenario file",
                   description="Print the JSON Schema every scenario file must satisfy.")

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
    chk.add_argument("--exhaustive", action="store_true",
                     help="instead of searching, run every single fault of the alphabet and tabulate")
    chk.add_argument("--out", metavar="DIR", default="counterexamples", help="where counterexamples go")
    chk.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    chk.add_argument("--objective", action="append", metavar="KEY=VALUE", type=_objective,
                     help="override an objective (repeatable), e.g. rto_s=60 (docs/invariants.md)")

    rep = sub.add_parser(
        "replay", help="re-run a counterexample and re-evaluate the invariants",
        description="Re-run a counterexample file, print its timeline and invariant verdicts. "
                    "Exit 1 while an invariant is still violated, 0 when all hold, 2 on bad input.")
    rep.add_argument("file", metavar="FILE", help="a counterexample (any scenario file)")
    rep.add_argument("--invariant", action="append", metavar="NAME", help="evaluate only this invariant (repeatable)")
    rep.add_argument("--plot", metavar="PNG", help="save the timeline plot")
    rep.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    rep.add_argument("--objective", action="append", metavar="KEY=VALUE", type=_objective,
                     help="override an objective (repeatable), e.g. rto_s=60 (docs/invariants.md)")
    return p


def _default_jobs() -> int:
    import os

    return max(1, min(os.cpu_count() or 1, 8))


def _load(path: Optional[str]) -> Scenario:
    return load_scenario(path)


def _cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Scenario.model_json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _cmd_topology(args: argparse.Namespace) -> int:
    scenario = _load(args.scenario)
    report = analyse(scenario)
    if args.json:
        print(json.dumps({"scenario": scenario.name, **report.to_dict()}, indent=2))
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

    scenario = _load(args.scenario)
    if args.profile is not None:
        scenario = scenario.with_profile(args.profile)
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
    for path in (args.events, args.spans):
        if path and not Path(path).parent.exists():
            raise ScenarioError(path, "the folder to write it in does not exist")
    started = time.perf_counter()
    result = simulate(scenario, keep_events=bool(args.events or args.spans),
                      progress=False if args.no_progress else None)
    wall = time.perf_counter() - started
    if args.events:
        result.write_events(args.events)
    if args.spans:
        Path(args.spans).write_text(json.dumps({"spans": result.spans()}, indent=1), encoding="utf-8")
    if args.json:
        out = {"scenario": scenario.name, "profile": scenario.profile, **result.to_dict(), "wall_s": round(wall, 3)}
        print(json.dumps(out, indent=2))
        return EXIT_OK
    _print_run(scenario, result, wall)
    return EXIT_OK


def _fmt(v, column: str) -> str:
    if v is None:
        return "-"
    if column == "utilisation":
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
    cols = ["ok", "error", "timeout", "rejected", "p50_ms", "p95_ms", "p99_ms", "max_ms"]
    _table("endpoints", "endpoint", d["endpoints"], cols)
    _table("services (calls as their callers saw them)", "service", d["services"],
           [*cols[:4], "p50_ms", "p99_ms", "utilisation", "max_queue", "orphaned_calls"])
    if d["infrastructure"]:
        _table("infrastructure", "component", d["infrastructure"],
               ["ok", "error", "timeout", "rejected", "p50_ms", "p99_ms", "utilisation"])
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

    scenario = _load(args.scenario)
    if args.profile is not None:
        scenario = scenario.with_profile(args.profile)
    warmup = min(scenario.run.warmup_s, 10.0)
    try:
        scenario = scenario.with_run(warmup_s=warmup, duration_s=max(scenario.run.duration_s, warmup + 1))
        duration = args.duration or check_duration(scenario)
        return scenario.with_run(duration_s=duration)
    except Exception as exc:
        raise ScenarioError("command line", str(exc).splitlines()[0]) from None


def _known_invariants(names) -> None:
    from hailan_sim.properties import invariants as inv

    for n in names or ():
        if n not in inv.INVARIANTS:
            raise ScenarioError("command line", f"--invariant: unknown invariant {n!r}; "
                                                f"known: {', '.join(inv.INVARIANTS)}")


def _cmd_check(args: argparse.Namespace) -> int:
    from hailan_sim.models.faults import FAULT_KINDS, describe
    from hailan_sim.models.objectives import describe_objectives
    from hailan_sim.properties import checker

    scenario = _with_objectives(_check_scenario(args), args.objective)
    _known_invariants(args.invariant)
    for k in args.kinds or ():
        if k not in FAULT_KINDS:
            raise ScenarioError("command line", f"--kinds: unknown fault kind {k!r}; kinds: {', '.join(FAULT_KINDS)}")
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: workers are forked from this process
    bar = tqdm(unit="sim", file=sys.stderr, desc="check", leave=False, dynamic_ncols=True)
    if args.exhaustive:
        return _check_exhaustive(args, scenario, bar)
    try:
        report = checker.check(
            scenario, invariants=args.invariant, max_examples=args.max_examples, max_faults=args.max_faults,
            kinds=args.kinds, seed=args.seed, cover=args.cover, jobs=args.jobs, out_dir=Path(args.out),
            progress=bar.update,
        )
    except ValueError as exc:  # a bad option the strategies refused
        raise ScenarioError("command line", str(exc)) from None
    finally:
        bar.close()
    if args.json:
        print(json.dumps({**report.to_dict(), "objectives": scenario.objectives.model_dump(mode="json")},
                         indent=2))
        return EXIT_OK if report.ok else EXIT_VIOLATED
    print(f"checked {scenario.name}" + (f" (profile {scenario.profile})" if scenario.profile else "")
          + f": {report.simulations} simulations in {report.wall_s:.0f} s")
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
        if r.status == "held":
            print(f"  held      {r.name} ({r.examples} examples)")
            continue
        how = "the cover phase" if r.found_by == "cover" else "the search"
        print(f"  VIOLATED  {r.name} (found by {how}, {r.seconds_to_find} s into the check)")
        print(f"            {r.explanation}")
        for f in r.faults:
            print(f"            fault: {describe(f)}")
        print(f"            seed {r.seed}; replay: hailan-sim replay {r.counterexample}")
    return EXIT_OK if report.ok else EXIT_VIOLATED


def _check_exhaustive(args, scenario: Scenario, bar) -> int:
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
        print(json.dumps({"scenario": scenario.name, "profile": scenario.profile, "faults": len(table),
                          "violating": int(violated.sum()), "table": table.to_dict(orient="records")}, indent=2))
    else:
        with_pd_width = table.to_string(index=False)
        print(with_pd_width)
        print(f"\n{len(table)} single faults tried, {int(violated.sum())} break at least one invariant")
    return EXIT_VIOLATED if violated.any() else EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from hailan_sim.properties import checker
    from hailan_sim.properties.timeline import plot_timeline, timeline_events, windowed_success

    from hailan_sim.models.objectives import describe_objectives

    scenario = _with_objectives(_load(args.file), args.objective)
    _known_invariants(args.invariant)
    record, verdicts = checker.replay(scenario, args.invariant)
    result = record.result
    ok = all(v.holds for v in verdicts)
    if args.plot:
        plot_timeline(record, Path(args.plot), title=f"{args.file}: " + ", ".join(
            v.name for v in verdicts if not v.holds) or "all invariants hold")
    if args.json:
        print(json.dumps({
            "file": args.file, "event_log_sha256": result.event_log_sha256, "ok": ok,
            "objectives": scenario.objectives.model_dump(mode="json"),
            "invariants": {v.name: {"holds": v.holds, "explanation": v.explanation,
                                    "window": list(v.window) if v.window else None} for v in verdicts},
            "plot": args.plot,
        }, indent=2))
        return EXIT_OK if ok else EXIT_VIOLATED
    print(f"replay {args.file}: event log sha256 {result.event_log_sha256}\n")
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


_COMMANDS = {"run": _cmd_run, "topology": _cmd_topology, "schema": _cmd_schema,
             "check": _cmd_check, "replay": _cmd_replay}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ScenarioError as exc:
        print(f"hailan-sim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

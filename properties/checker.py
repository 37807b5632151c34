"""The checker: search fault schedules for invariant violations, shrink them, replay them.

For each invariant, Hypothesis searches ``(fault schedule, seed)`` pairs drawn from
:func:`properties.strategies.fault_schedules` and :func:`~properties.strategies.seeds` for one
that violates it, and shrinks the first it finds to a minimal schedule (fewer, shorter,
later, simpler faults). Every example is simulated once: the verdicts of *all* invariants
are cached by schedule and seed, so the searches for later invariants mostly replay what
the first one already ran. The fault-free baseline is simulated once per seed.

A counterexample is written as a complete scenario file (the scenario with its profile,
the minimal faults and the seed), so ``hailan-sim replay FILE`` (or ``hailan-sim run
FILE``) reproduces it exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from models.faults import describe
from models.scenario import Scenario
from properties import invariants as inv
from properties.strategies import fault_schedules, with_faults
from sim import simulate

__all__ = ["CheckReport", "InvariantReport", "Runner", "check", "check_duration", "exhaustive",
           "fault_horizon", "replay", "write_counterexample"]


@dataclass
class InvariantReport:
    name: str
    status: str  # "held" | "violated"
    examples: int
    explanation: str = ""
    window: Optional[tuple[float, float]] = None
    faults: list = field(default_factory=list)
    seed: Optional[int] = None
    counterexample: Optional[str] = None
    seconds_to_find: Optional[float] = None
    replay_hash: Optional[str] = None

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "examples": self.examples,
            "explanation": self.explanation,
            "window": list(self.window) if self.window else None,
            "faults": [f.model_dump(mode="json") for f in self.faults],
            "seed": self.seed,
            "counterexample": self.counterexample,
            "seconds_to_find": self.seconds_to_find,
            "event_log_sha256": self.replay_hash,
        }


@dataclass
class CheckReport:
    scenario: str
    profile: Optional[str]
    invariants: list[InvariantReport]
    simulations: int
    wall_s: float
    fault_kinds_fired: dict[str, int]
    witnessed: dict[str, int]

    @property
    def ok(self) -> bool:
        return all(r.status == "held" for r in self.invariants)

    def to_dict(self) -> dict:
        return {
            "scenario": self.scenario,
            "profile": self.profile,
            "ok": self.ok,
            "simulations": self.simulations,
            "wall_s": round(self.wall_s, 3),
            "examples_per_minute": round(self.simulations / self.wall_s * 60, 2) if self.wall_s else None,
            "fault_kinds_fired": self.fault_kinds_fired,
            "witnessed": self.witnessed,
            "invariants": {r.name: r.to_dict() for r in self.invariants},
        }


class Runner:
    """Simulates schedules and evaluates invariants, caching baselines and verdicts."""

    def __init__(self, scenario: Scenario, names: Sequence[str], progress: Optional[Callable[[], None]] = None):
        self.scenario = scenario
        self.names = list(names)
        self.progress = progress
        self._baselines: dict[int, object] = {}
        self._verdicts: dict[str, dict] = {}
        self.simulations = 0
        self.fault_kinds_fired: dict[str, int] = {}
        self.witnessed: dict[str, int] = {}

    def scenario_for(self, faults: list, seed: int) -> Scenario:
        return with_faults(self.scenario, faults).with_run(seed=seed)

    def baseline(self, seed: int):
        b = self._baselines.get(seed)
        if b is None:
            # Events kept: retry amplification compares calls per request with the baseline's.
            b = self._baselines[seed] = simulate(self.scenario_for([], seed), keep_events=True)
            self.simulations += 1
        return b

    def record(self, faults: list, seed: int):
        scenario = self.scenario_for(faults, seed)
        result = simulate(scenario, keep_events=True)
        self.simulations += 1
        if self.progress is not None:
            self.progress()
        return inv.Record(scenario=scenario, result=result, baseline=self.baseline(seed))

    def verdicts(self, faults: list, seed: int) -> dict:
        """Every checked invariant's verdict for this schedule and seed (cached)."""
        key = f"{seed}|" + "|".join(f.model_dump_json() for f in faults)
        hit = self._verdicts.get(key)
        if hit is not None:
            return hit
        record = self.record(faults, seed)
        out = {v.name: v for v in inv.evaluate(record, self.names)}
        for kind in dict.fromkeys(f.kind for f in faults):
            self.fault_kinds_fired[kind] = self.fault_kinds_fired.get(kind, 0) + 1
        for what, seen in inv.witnessed(record).items():
            if seen:
                self.witnessed[what] = self.witnessed.get(what, 0) + 1
        self._verdicts[key] = out
        return out


def check(
    scenario: Scenario,
    *,
    invariants: Optional[Sequence[str]] = None,
    max_examples: int = 12,
    max_faults: int = 2,
    kinds: Optional[Sequence[str]] = None,
    targets: Optional[Sequence[str]] = None,
    horizon: Optional[tuple[float, float]] = None,
    seed: int = 0,
    n_seeds: int = 3,
    out_dir: Optional[Path] = None,
    progress: Optional[Callable[[], None]] = None,
) -> CheckReport:
    """Search for a violation of each invariant; shrink and save what is found.

    ``seed`` fixes Hypothesis's search (derandomized, keyed by it), so the same command
    explores the same schedules; the simulation seed of each example is drawn too.
    """
    names = list(invariants) if invariants else [n for n in inv.INVARIANTS if n != "determinism"]
    for n in names:
        inv.get(n)  # unknown names raise KeyError with the known ones
    if horizon is None:
        horizon = fault_horizon(scenario)
    started = time.perf_counter()
    runner = Runner(scenario, names, progress)
    # The simulation seed is drawn too, from a few values, so the fault-free baseline (one
    # run per seed) is shared by many examples; it shrinks towards seed 0.
    strategy = st.tuples(
        # min_faults=0: an empty schedule never violates anything, and with every fault
        # optional the shrinker can delete any of them (a required first fault could not be).
        fault_schedules(scenario, max_faults=max_faults, min_faults=0, kinds=kinds, targets=targets, horizon=horizon),
        st.integers(0, max(0, n_seeds - 1)),
    )
    reports = []
    for name in names:
        t0 = time.perf_counter()
        seen = {"n": 0}

        def violates(example, name=name, seen=seen) -> bool:
            seen["n"] += 1
            faults, sim_seed = example
            return not runner.verdicts(faults, sim_seed)[name].holds

        # Reproducible: no example database, and the search seeded from ``seed`` and the
        # invariant's name (``find`` turns ``random`` into ``@seed``).
        search = settings(
            max_examples=max_examples,
            derandomize=False,
            database=None,
            deadline=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        try:
            faults, sim_seed = find(strategy, violates, settings=search, random=_Random(seed))
        except NoSuchExample:
            reports.append(InvariantReport(name, "held", seen["n"]))
            continue
        verdict = runner.verdicts(faults, sim_seed)[name]
        report = InvariantReport(
            name, "violated", seen["n"], verdict.explanation, verdict.window, list(faults), sim_seed,
            seconds_to_find=round(time.perf_counter() - t0, 1),
        )
        if out_dir is not None:
            path = write_counterexample(runner.scenario_for(faults, sim_seed), Path(out_dir) / f"{name}.yaml", report)
            report.counterexample = str(path)
        reports.append(report)
    return CheckReport(
        scenario=scenario.name,
        profile=scenario.profile,
        invariants=reports,
        simulations=runner.simulations,
        wall_s=time.perf_counter() - started,
        fault_kinds_fired=dict(sorted(runner.fault_kinds_fired.items())),
        witnessed=dict(sorted(runner.witnessed.items())),
    )


def fault_horizon(scenario: Scenario) -> tuple[float, float]:
    """When faults may happen: after the warm-up, and early enough that the run still
    holds the recovery time the policies need (:func:`properties.invariants.default_recovery_s`)
    after the last one ends."""
    run = scenario.run
    after = _after_faults_s(scenario)
    end = run.duration_s - after
    if end - run.warmup_s < 5.0:
        need = run.warmup_s + 5.0 + after
        raise ValueError(
            f"the run is too short to watch recovery: faults need at least 5 s after the "
            f"warm-up plus {after:g} s to recover and be judged; make duration_s >= {need:g}"
        )
    return (run.warmup_s, end)


def _after_faults_s(scenario: Scenario) -> float:
    """Time kept free after the last fault: the policies' recovery time, plus the longest
    restart a crash can add, plus a window in which recovery can actually be judged
    (shrinking pushes faults as late as allowed, so without it a run could end before
    there is anything to judge)."""
    restart = max((s.startup_s for s in scenario.services), default=0.0)
    return inv.default_recovery_s(scenario) + restart + 20.0


def check_duration(scenario: Scenario, fault_window_s: float = 40.0) -> float:
    """A run long enough for ``fault_window_s`` of faults after the warm-up and then the
    time recovery needs (:func:`fault_horizon`)."""
    return scenario.run.warmup_s + fault_window_s + _after_faults_s(scenario)


class _Random:
    """``find(random=...)`` wants a ``random.Random``. Every invariant's search gets a fresh
    one with the same seed, so they all generate the same examples in the same order: the
    second and later searches replay the first's simulations from the verdict cache, and
    only shrinking runs new ones. Each search stays reproducible and independent of the
    order invariants are checked in."""

    def __new__(cls, seed: int):
        import random

        return random.Random(seed)


def write_counterexample(scenario: Scenario, path: Path, report: Optional[InvariantReport] = None) -> Path:
    """Save ``scenario`` (profile, faults and seed included) as a replayable YAML file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = scenario.model_dump(mode="json", exclude_unset=True)
    header = ["# hailan-sim counterexample: replay with `hailan-sim replay " + str(path) + "`"]
    if report is not None:
        header.append(f"# invariant: {report.name}")
        for line in report.explanation.splitlines():
            header.append(f"#   {line}")
        for f in report.faults:
            header.append(f"# fault: {describe(f)}")
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path


def replay(scenario: Scenario, names: Optional[Sequence[str]] = None):
    """Re-run a counterexample and its baseline; returns ``(record, verdicts)``."""
    names = list(names) if names else list(inv.INVARIANTS)
    record = inv.Record.from_scenario(scenario, rerun=True)
    return record, inv.evaluate(record, names)


def exhaustive(scenario: Scenario, faults: Sequence, *, invariants: Optional[Sequence[str]] = None,
               seed: int = 0, progress: Optional[Callable[[], None]] = None):
    """Run every single fault of ``faults`` alone and tabulate which invariants it breaks."""
    import pandas as pd

    names = list(invariants) if invariants else [n for n in inv.INVARIANTS if n != "determinism"]
    runner = Runner(scenario, names, progress)
    rows = []
    for f in faults:
        verdicts = runner.verdicts([f], seed)
        rows.append({"fault": describe(f), "kind": f.kind,
                     **{n: ("ok" if verdicts[n].holds else "VIOLATED") for n in names}})
    return pd.DataFrame(rows), runner

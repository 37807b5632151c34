"""The sweep file: what to vary, how to sample it, under which faults, how often, what to keep.

A sweep is YAML validated by pydantic (``hailan-sim schema --sweep`` prints its JSON
Schema). It names a base scenario (a file, or the built-in default) and a profile, the
axes to vary by field path into the scenario, a design that turns the axes into points,
the fault schedules every point is run under, the replications, and the metrics to keep::

    name: seed-breaker
    base: {profile: seed, run: {duration_s: 90, warmup_s: 10}}
    axes:
      policies.breaker.failure_threshold: [3, 5, 10]
      policies.breaker.timeout_s: {low: 10, high: 60, steps: 3}
      "policies.edges[caller=order-service,callee=payment-service].timeout_s": [2, 5]
    design: {kind: grid}
    faults: [payment-errors, order-crash]
    replications: 5

Every run of a sweep is one (point, fault schedule, replication); its seed is derived from
the sweep's seed, the point and the replication with SHA-256 (never ``hash()``), so a run
is the same wherever and whenever it is computed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import orjson
import yaml
from pydantic import Field, ValidationError, model_validator

from hailan_sim.models._base import Frozen
from hailan_sim.models.faults import Fault
from hailan_sim.models.loader import (
    FieldType,
    ScenarioError,
    compose_yaml,
    default_scenario,
    describe_validation_error,
    line_of,
    load_scenario,
    read_yaml_file,
    show_value,
    text_path,
)
from hailan_sim.models.scenario import Scenario

__all__ = [
    "METRICS",
    "Design",
    "FaultSchedule",
    "Run",
    "Sweep",
    "SweepPlan",
    "load_sweep",
    "parse_sweep",
    "run_seed",
    "shipped_schedules",
]

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
Scalar = Union[bool, int, float, str, None]

# What a run can measure (sweeps/metrics.py computes them; docs/metrics.md defines them).
METRICS = (
    "availability",         # ok / requests after the warm-up, overall and per endpoint
    "p99",                  # p99 latency (ms) of every endpoint, all outcomes
    "recovery",             # seconds from the last fault's end until the success ratio is back
    "retry_amplification",  # attempts / first attempts
    "false_trips",          # breaker trips while no fault was active
    "breaker_trips",        # every closed -> open transition
    "invariants",           # each registered invariant's verdict (runs the fault-free baseline too)
    "cost",                 # instances the scenario runs
)
DEFAULT_METRICS = ("availability", "p99", "recovery", "retry_amplification", "false_trips", "breaker_trips", "cost")


class Range(Frozen):
    """A numeric axis: ``steps`` values from ``low`` to ``high`` (both included) on a grid,
    or anywhere in between for random, Latin hypercube and Sobol designs."""

    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    steps: Optional[Annotated[int, Field(ge=2, le=1000)]] = Field(
        None, description="values on a grid design (required there)")
    log: bool = Field(False, description="spaced evenly on a log scale (low and high must be > 0)")
    integer: bool = Field(False, description="round every value to a whole number")

    @model_validator(mode="after")
    def _order(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be less than high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low:g})")
        return self

    def grid(self) -> list:
        if self.steps is None:
            raise ValueError("a grid design needs 'steps' on every range (or list the values)")
        return [self.at(i / (self.steps - 1)) for i in range(self.steps)]

    def at(self, u: float) -> Union[int, float]:
        """The value at the fraction ``u`` in [0, 1] of the range."""
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        v = min(max(v, self.low), self.high)
        return int(round(v)) if self.integer else float(v)


Axis = Union[Annotated[list[Scalar], Field(min_length=1)], Range]


class Design(Frozen):
    """How axes become points: every combination (grid), or ``points`` samples of the unit
    cube mapped onto the axes (random, Latin hypercube, scrambled Sobol; scipy.stats.qmc)."""

    kind: Literal["grid", "random", "lhs", "sobol"] = "grid"
    points: Optional[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        None, description="samples (random, lhs, sobol; sobol wants a power of two)")

    @model_validator(mode="after")
    def _points(self) -> Design:
        if self.kind == "grid" and self.points is not None:
            raise ValueError("a grid design has every combination; 'points' is for random, lhs and sobol")
        if self.kind != "grid" and self.points is None:
            raise ValueError(f"a {self.kind} design needs 'points' (how many samples)")
        return self


class BaseRun(Frozen):
    duration_s: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    warmup_s: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    drain_s: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    window_s: Optional[float] = Field(None, gt=0, allow_inf_nan=False)


class Base(Frozen):
    scenario: Optional[str] = Field(
        None, description="scenario file, relative to the sweep file; omitted: the built-in default")
    profile: Optional[Literal["seed", "hardened"]] = None
    run: BaseRun = Field(default_factory=BaseRun, description="overrides of the scenario's run settings")
    load: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description="multiply every arrival rate")
    policies: dict[str, Any] = Field(
        default_factory=dict,
        description="policies every point shares, deep-merged over the scenario's own (as a scenario's "
                    "policies: are over its profile's)")


class FileSchedule(Frozen):
    file: str = Field(description="a YAML file with a list of faults (or a scenario file's faults: key)")
    name: Optional[Name] = None


class InlineSchedule(Frozen):
    name: Name
    faults: list[Fault]


FaultSchedule = Union[Name, FileSchedule, InlineSchedule]


class Recovery(Frozen):
    """When a run counts as recovered: every window from then on to the end of the
    arrivals has a success ratio of at least ``success_ratio`` (windows of ``window_s``)."""

    success_ratio: float = Field(0.99, gt=0, le=1)
    window_s: float = Field(5.0, gt=0, allow_inf_nan=False)
    false_trip_grace_s: float = Field(
        10.0, ge=0, allow_inf_nan=False,
        description="a breaker trip this long after a fault ends still counts as caused by it")


class Objective(Frozen):
    metric: str
    goal: Literal["max", "min"]


class Sweep(Frozen):
    """A parameter sweep (see the module docstring and docs/sweeps.md)."""

    version: Literal[1] = 1
    name: Name
    description: str = ""
    base: Base = Field(default_factory=Base)
    axes: dict[str, Axis] = Field(min_length=1, description="field path in the scenario -> values")
    design: Design = Field(default_factory=Design)
    faults: list[FaultSchedule] = Field(
        default_factory=lambda: ["none"], min_length=1,
        description="schedules every point runs under: shipped names (hailan-sim sweep --list-faults), files, or inline")
    replications: int = Field(5, ge=1, le=10_000, description="seeds per point and schedule")
    seed: int = Field(0, ge=0, lt=2**63)
    seeds: Literal["per_point", "common"] = Field(
        "per_point",
        description="per_point: seeds from the sweep seed, the point and the replication; common: the "
                    "same seeds at every point (common random numbers: differences between points vary less)")
    metrics: list[Literal[METRICS]] = Field(default_factory=lambda: list(DEFAULT_METRICS))  # type: ignore[valid-type]
    recovery: Recovery = Field(default_factory=Recovery)
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="availability", goal="max"),
                                 Objective(metric="recovery_s", goal="min"),
                                 Objective(metric="false_trips", goal="min")],
        description="what the analysis ranks by (Pareto front, best per objective, recommendation)")


# --------------------------------------------------------------------------- field paths

_SEGMENT = re.compile(r"([A-Za-z_][\w-]*)((?:\[[^\]]*\])*)")
_SELECTOR = re.compile(r"\[([^\]]*)\]")


def _parse_field_path(path: str) -> list:
    """``policies.edges[caller=a,callee=b].timeout_s`` -> ``['policies', 'edges', {'caller': 'a',
    'callee': 'b'}, 'timeout_s']``; ``services[2]`` -> ``['services', 2]``."""
    out: list = []
    for part in path.split("."):
        m = _SEGMENT.fullmatch(part)
        if not m:
            raise ValueError(f"{part!r} is not a field name (a path is like policies.breaker.failure_threshold)")
        out.append(m.group(1))
        for sel in _SELECTOR.findall(m.group(2)):
            sel = sel.strip()
            if sel.isdigit():
                out.append(int(sel))
                continue
            match: dict = {}
            for item in sel.split(","):
                k, eq, v = item.partition("=")
                if not eq or not k.strip() or not v.strip():
                    raise ValueError(f"[{sel}] selects a list item by index ([0]) or by fields ([name=order-service])")
                match[k.strip()] = v.strip()
            out.append(match)
    return out


def _set_path(data: dict, path: list, value: Any, text: str) -> None:
    node: Any = data
    for i, key in enumerate(path):
        last = i == len(path) - 1
        nxt = path[i + 1] if not last else None
        if isinstance(key, str):
            if not isinstance(node, dict):
                raise ValueError(f"{text}: {text_path(path[:i]) or 'the scenario'} is not a mapping")
            if last:
                node[key] = value
                return
            if node.get(key) is None:
                node[key] = [] if not isinstance(nxt, str) else {}
            node = node[key]
        elif isinstance(key, int):
            if not isinstance(node, list) or not 0 <= key < len(node):
                raise ValueError(f"{text}: no item [{key}] (the list has {len(node) if isinstance(node, list) else 0})")
            if last:
                node[key] = value
                return
            node = node[key]
        else:  # a selector
            if not isinstance(node, list):
                raise ValueError(f"{text}: a [field=value] selector needs a list")
            found = [x for x in node if isinstance(x, dict) and all(str(x.get(k)) == v for k, v in key.items())]
            if found:
                node = found[-1]  # the last matching edge is the one that wins
            elif path[i - 1] == "edges":
                node.append(dict(key))
                node = node[-1]
            else:
                what = ", ".join(f"{k}={v}" for k, v in key.items())
                raise ValueError(f"{text}: no item with {what}")
            if last:
                raise ValueError(f"{text}: a path must end with a field name")


# --------------------------------------------------------------------------- fault schedules


def shipped_schedules() -> dict[str, str]:
    """Name -> one-line description of the fault schedules shipped with the package."""
    out = {"none": "no faults (the baseline)"}
    folder = resources.files("hailan_sim.sweeps") / "data" / "faults"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            doc = yaml.safe_load(entry.read_text(encoding="utf-8"))
            out[entry.name.removesuffix(".yaml")] = doc.get("description", "")
    return out


def _schedule_faults(name: str) -> list:
    if name == "none":
        return []
    ref = resources.files("hailan_sim.sweeps") / "data" / "faults" / f"{name}.yaml"
    return yaml.safe_load(ref.read_text(encoding="utf-8"))["faults"]


# --------------------------------------------------------------------------- the plan


class Run(Frozen):
    """One run of a sweep: which point, schedule and replication, and its seed."""

    index: int
    point: int
    point_key: str
    schedule: str
    replication: int
    seed: int


def run_seed(sweep_seed: int, point_key: str, replication: int) -> int:
    """A run's seed: the first 8 bytes of SHA-256 of the sweep seed, the point and the
    replication, below 2**63. A point's runs get the same seeds under every fault schedule,
    so schedules are compared on the same traffic."""
    digest = hashlib.sha256(f"{sweep_seed}/{point_key}/{replication}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _canonical(values: dict) -> str:
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode()


class SweepPlan:
    """A validated sweep turned into scenarios and runs (no simulation yet).

    Attributes: ``sweep``, ``source`` (the file), ``base`` (the base scenario), ``points``
    (one dict of axis values per point, in design order), ``schedules`` (name -> faults),
    ``scenarios`` ((point, schedule) -> Scenario, seed not yet set), ``runs``, ``sha256``
    (of the canonical sweep spec and of every scenario it builds)."""

    def __init__(self, sweep: Sweep, source: str, base_dir: Path, *, root: Any = None) -> None:
        self.sweep = sweep
        self.source = source
        self.base_dir = base_dir
        self._root = root
        self.base = self._base()
        self.points = self._points()
        self.schedules = self._schedules()
        self.scenarios: dict[tuple[int, str], Scenario] = {}
        for p, values in enumerate(self.points):
            for name, faults in self.schedules.items():
                self.scenarios[(p, name)] = self._build(values, faults, name)
        self.point_keys = [_canonical(v) for v in self.points]
        runs = []
        for p, key in enumerate(self.point_keys):
            for name in self.schedules:
                for r in range(sweep.replications):
                    seed = run_seed(sweep.seed, key if sweep.seeds == "per_point" else "", r)
                    runs.append(Run(index=len(runs), point=p, point_key=key, schedule=name,
                                    replication=r, seed=seed))
        self.runs = runs
        # Where the base scenario and schedule files live is left out: what they contain is
        # in the scenarios' hashes, and a moved sweep folder still resumes.
        spec = sweep.model_dump(mode="json")
        spec["base"].pop("scenario", None)
        spec["faults"] = [f if isinstance(f, str) else {k: v for k, v in f.items() if k != "file"}
                          for f in spec["faults"]]
        h = hashlib.sha256(_canonical(spec).encode())
        for key in sorted(self.scenarios):
            h.update(_canonical(self.scenarios[key].model_dump(mode="json")).encode())
        self.sha256 = h.hexdigest()

    # ------------------------------------------------------------------ errors

    def _error(self, keys: list, message: str) -> ScenarioError:
        path = text_path(keys)
        return ScenarioError(self.source, f"{path}: {message}" if path else message,
                             line_of(self._root, keys), path)

    # ------------------------------------------------------------------ building

    def _base(self) -> Scenario:
        b = self.sweep.base
        if b.scenario is None:
            scenario = default_scenario()
        else:
            path = Path(b.scenario)
            if not path.is_absolute():
                path = self.base_dir / path
            scenario = load_scenario(path)  # its own errors name its own file and line
        try:
            if b.policies:
                from hailan_sim.models.policies import merge_policies

                data = scenario.model_dump(mode="python", exclude_unset=True)
                data["policies"] = merge_policies(data.get("policies") or {}, b.policies)
                scenario = Scenario.model_validate(data, context={"base_dir": str(self.base_dir)})
            if b.profile is not None:
                scenario = scenario.with_profile(b.profile)
            run = b.run.model_dump(exclude_none=True)
            if run:
                scenario = scenario.with_run(**run)
            if b.load is not None:
                scenario = scenario.with_load(b.load)
        except (ValidationError, ValueError) as exc:
            raise self._error(["base"], _first_message(exc)) from None
        return scenario

    def _points(self) -> list[dict]:
        axes = self.sweep.axes
        names = list(axes)
        for name in names:
            try:
                _parse_field_path(name)
            except ValueError as exc:
                raise self._error(["axes", name], str(exc)) from None
        design = self.sweep.design
        if design.kind == "grid":
            columns = []
            for name in names:
                axis = axes[name]
                try:
                    columns.append(axis.grid() if isinstance(axis, Range) else list(axis))
                except ValueError as exc:
                    raise self._error(["axes", name], str(exc)) from None
            return [dict(zip(names, combo)) for combo in itertools.product(*columns)]
        unit = _unit_samples(design.kind, len(names), design.points, self.sweep.seed)
        points = []
        for row in unit:
            values = {}
            for name, u in zip(names, row):
                axis = axes[name]
                if isinstance(axis, Range):
                    values[name] = axis.at(float(u))
                else:
                    values[name] = list(axis)[min(int(u * len(axis)), len(axis) - 1)]
            points.append(values)
        return points

    def _schedules(self) -> dict[str, list]:
        out: dict[str, list] = {}
        known = None
        for i, entry in enumerate(self.sweep.faults):
            if isinstance(entry, str):
                if known is None:
                    known = shipped_schedules()
                if entry not in known:
                    raise self._error(["faults", i], f"no shipped fault schedule {entry!r} (shipped: "
                                                     f"{', '.join(known)}; or give {{file: PATH}})")
                name, faults = entry, _schedule_faults(entry)
            elif isinstance(entry, FileSchedule):
                name, faults = self._schedule_file(entry, i)
            else:
                name, faults = entry.name, [f.model_dump(mode="json", exclude_unset=True) | {"kind": f.kind}
                                            for f in entry.faults]
            if name in out:
                raise self._error(["faults", i], f"two fault schedules are called {name!r}; give one a 'name'")
            out[name] = faults
        return out

    def _schedule_file(self, entry: FileSchedule, i: int) -> tuple[str, list]:
        path = Path(entry.file)
        if not path.is_absolute():
            path = self.base_dir / path
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self._error(["faults", i, "file"], f"cannot read {str(path)!r} "
                                                     f"({getattr(exc, 'strerror', None) or exc})") from None
        _, doc = compose_yaml(text, str(path))
        faults = doc.get("faults") if isinstance(doc, dict) else doc
        if not isinstance(faults, list):
            raise ScenarioError(str(path), "expected a list of faults, or a mapping with a 'faults' list", 1)
        return entry.name or path.stem.lower().replace(" ", "-"), faults

    def _build(self, values: dict, faults: list, schedule: str) -> Scenario:
        data = self.base.model_dump(mode="python", exclude_unset=True)
        for name, value in values.items():
            try:
                _set_path(data, _parse_field_path(name), value, name)
            except ValueError as exc:
                raise self._error(["axes", name], str(exc).removeprefix(f"{name}: ")) from None
        data["faults"] = [*data.get("faults", []), *faults]
        try:
            return Scenario.model_validate(data, context={"base_dir": str(self.base_dir)})
        except ValidationError as exc:
            path, _, msg = describe_validation_error(exc.errors(include_url=False)[0], data)
            where = f"{path}: " if path else ""
            if path.startswith("faults"):
                i = next(k for k, e in enumerate(self.sweep.faults)
                         if (e if isinstance(e, str) else getattr(e, "name", None) or
                             Path(getattr(e, "file", "")).stem.lower()) == schedule)
                raise self._error(["faults", i], f"schedule {schedule!r} does not fit the base scenario: "
                                                 f"{where}{msg}") from None
            axis = next((n for n in values if path.startswith(n.split("[")[0])), next(iter(values)))
            shown = ", ".join(f"{k}={show_value(v)}" for k, v in values.items())
            raise self._error(["axes", axis], f"the point {shown} makes an invalid scenario: {where}{msg}") from None

    def scenario(self, run: Run) -> Scenario:
        """The scenario of one run, its seed set."""
        return self.scenarios[(run.point, run.schedule)].with_run(seed=run.seed)


def _unit_samples(kind: str, d: int, n: int, seed: int):
    """``n`` points in the unit cube [0, 1)^d. Random and LHS use numpy's generator seeded
    from the sweep seed; Sobol is scrambled (Owen) with the same seed (scipy.stats.qmc)."""
    import numpy as np
    from scipy.stats import qmc

    rng = np.random.default_rng(np.random.SeedSequence(seed))
    if kind == "random":
        return rng.random((n, d))
    if kind == "lhs":
        return qmc.LatinHypercube(d=d, rng=rng).random(n)
    import warnings

    with warnings.catch_warnings():  # a non-power-of-two n unbalances Sobol; the docs say so
        warnings.simplefilter("ignore", UserWarning)
        return qmc.Sobol(d=d, scramble=True, rng=rng).random(n)


def _first_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    return str(exc).splitlines()[0]


# --------------------------------------------------------------------------- loading


def _describe_sweep_error(err: dict, data: Any) -> tuple[list, str]:
    """(data keys, message) for a pydantic error in a sweep file, walking its location
    through the sweep's types with the scenario loader's type machinery."""
    ty: Optional[FieldType] = FieldType(Sweep)
    parent = None
    keys: list = []
    for item in err["loc"]:
        if ty is not None and ty.is_union and isinstance(item, str):
            # pydantic names the member it tried; an unusual label ("function-after[_order(),
            # Range]") names the model inside it
            member = ty.member_by_label(item) or next(
                (m for m in ty.members() if m.is_model and f"{m.tp.__name__}]" in item), None)
            ty = member
            continue
        if item == "[key]":
            continue
        parent = ty
        keys.append(item)
        ty = ty.child(item) if ty is not None else None
    kind = err["type"]
    value = err.get("input")
    axis_shape = "a list of values ([3, 5, 10]) or a range ({low: 1, high: 10, steps: 3})"
    if keys == ["axes"] and kind in ("dict_type", "too_short"):
        return keys, f"got {show_value(value)}, expected a mapping of field path -> {axis_shape}"
    if len(keys) == 2 and keys[0] == "axes" and kind in ("list_type", "model_type", "model_attributes_type"):
        return keys, f"got {show_value(value)}, expected {axis_shape}"
    if kind == "extra_forbidden":
        allowed = parent.fields() if parent is not None else []
        import difflib

        close = difflib.get_close_matches(str(keys[-1]), allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return keys[:-1], f"unknown field {show_value(keys[-1])} ({hint}allowed here: {', '.join(allowed)})"
    if kind == "missing":
        return keys[:-1] if keys else keys, (
            f"required field {keys[-1]!r} is missing" + (f" (add it: {ty.describe()})" if ty is not None else ""))
    if kind in ("value_error", "assertion_error"):
        return keys, err["msg"].removeprefix("Value error, ")
    if ty is not None:
        return keys, f"got {show_value(value)}, expected {ty.describe()}"
    return keys, f"{err['msg']} (got {show_value(value)})"


def parse_sweep(text: str, source: str = "<sweep>", base_dir: Union[str, Path] = ".") -> SweepPlan:
    """Validate sweep YAML and plan it; every problem is a one-line :class:`ScenarioError`
    ``FILE:LINE: field.path: what is allowed``."""
    root, data = compose_yaml(text, source)
    if not isinstance(data, dict):
        raise ScenarioError(source, "expected a mapping with at least name and axes (a sweep file)",
                            root.start_mark.line + 1 if root is not None else 1)
    try:
        sweep = Sweep.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A value that fits no member of a union is reported once per member: prefer the
        # member of the value's own shape (a mapping: the model, a list: the list).
        errors.sort(key=lambda e: _shape_mismatch(e))
        keys, msg = _describe_sweep_error(errors[0], data)
        path = text_path(keys)
        raise ScenarioError(source, f"{path}: {msg}" if path else msg, line_of(root, keys), path) from None
    return SweepPlan(sweep, source, Path(base_dir), root=root)


def _shape_mismatch(err: dict) -> int:
    loc = [str(x) for x in err["loc"]]
    if err["type"] in ("list_type", "model_type", "model_attributes_type") or any(
            x.startswith("list[") for x in loc) and isinstance(err.get("input"), dict):
        return 1
    if err["type"] == "string_pattern_mismatch" or "str" in loc or "constrained-str" in loc:
        return 1 if isinstance(err.get("input"), dict) else 0
    return 0


def load_sweep(path: Union[str, Path]) -> SweepPlan:
    """Load and plan a sweep file (see :func:`parse_sweep`)."""
    p = Path(path)
    # The scenario files' reader: regular files only (a FIFO or /dev/zero is refused at
    # once), bounded in size, UTF-8, each failure one line.
    return parse_sweep(read_yaml_file(p, "sweep"), str(p), p.parent)

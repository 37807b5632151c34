"""From a sweep's runs to a decision: summaries with confidence intervals, the Pareto front,
the best setting per objective, a one-line recommendation with its evidence, and plots.

Points are judged by their *worst* fault schedule (a breaker setting must survive every
fault it is tested under): for each objective, the mean over replications is taken per
(point, schedule), and the schedule where it is worst stands for the point.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from hailan_sim.sim.stats import summarise

__all__ = ["best_per_objective", "by_point", "pareto_front", "plot_heatmap", "plot_lines", "recommend",
           "summary"]


def _objectives(table: pd.DataFrame, objectives: Optional[Sequence]) -> list[tuple[str, str]]:
    objs = objectives if objectives is not None else table.attrs.get("objectives") or [
        {"metric": "availability", "goal": "max"}]
    out = []
    for o in objs:
        m, g = (o["metric"], o["goal"]) if isinstance(o, dict) else (o.metric, o.goal) if hasattr(o, "goal") else o
        if m not in table.columns:
            continue
        out.append((m, g))
    if not out:
        raise ValueError("none of the objectives' metrics is in the table")
    return out


def _axes(table: pd.DataFrame) -> list[str]:
    return list(table.attrs.get("axes") or [])


def summary(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Mean and confidence interval over replications, per point and schedule, with the
    axis values: columns ``point``, ``schedule``, the axes, then ``<m>``, ``<m>.low``,
    ``<m>.high``, ``<m>.n`` per metric."""
    axes = _axes(table)
    metrics = [c for c in table.columns
               if c not in {"run", "point", "schedule", "replication", "seed", "event_log_sha256", *axes}
               and pd.api.types.is_numeric_dtype(table[c])]
    s = summarise(table, ["point", "schedule"], metrics, confidence)
    values = table.drop_duplicates("point").set_index("point")[axes]
    s = s.join(values, on="point")
    s = s[["point", "schedule", *axes, *[c for c in s.columns if c not in ("point", "schedule", *axes)]]]
    s.attrs.update(table.attrs)
    return s


def by_point(table: pd.DataFrame, objectives: Optional[Sequence] = None, confidence: float = 0.95) -> pd.DataFrame:
    """One row per point: each objective at the point's worst schedule (mean, CI, and which
    schedule), with the axis values."""
    s = summary(table, confidence)
    axes = _axes(table)
    rows = []
    for p, g in s.groupby("point", sort=True):
        row = {"point": p, **{a: g[a].iloc[0] for a in axes}}
        for m, goal in _objectives(table, objectives):
            col = g[m].to_numpy(dtype=float)
            if np.isnan(col).all():
                i = 0
            else:
                i = int(np.nanargmin(col) if goal == "max" else np.nanargmax(col))
            worst = g.iloc[i]
            row[m] = worst[m]
            row[f"{m}.low"] = worst[f"{m}.low"]
            row[f"{m}.high"] = worst[f"{m}.high"]
            row[f"{m}.worst_under"] = worst["schedule"]
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(table.attrs)
    out.attrs["schedules"] = sorted(table["schedule"].unique().tolist())
    return out


def pareto_front(points: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The rows of ``points`` no other row dominates (at least as good in every objective,
    better in one), by mean; ``objectives`` as ``(metric, "max"|"min")``."""
    objectives = [(o["metric"], o["goal"]) if isinstance(o, dict) else tuple(o) for o in objectives]
    vals = np.column_stack([points[m].to_numpy(dtype=float) * (1 if g == "max" else -1) for m, g in objectives])
    vals = np.where(np.isnan(vals), -np.inf, vals)
    keep = []
    for i in range(len(vals)):
        dominated = np.any(np.all(vals >= vals[i], axis=1) & np.any(vals > vals[i], axis=1))
        keep.append(not dominated)
    return points[np.array(keep, dtype=bool)]


def best_per_objective(points: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """For each objective, the point with the best mean (the first point on ties)."""
    rows = []
    for m, g in objectives:
        col = points[m].to_numpy(dtype=float)
        i = int(np.nanargmax(col) if g == "max" else np.nanargmin(col))
        rows.append({"objective": m, "goal": g, **points.iloc[i].to_dict()})
    return pd.DataFrame(rows)


def _fmt(metric: str, v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if metric.startswith("availability"):
        return f"{v * 100:.2f}%"
    if metric.endswith("_s"):
        return f"{v:.0f} s" if abs(v) >= 10 else f"{v:.1f} s"
    if metric.endswith("_ms"):
        return f"{v:.0f} ms"
    return f"{v:.3g}" if not float(v).is_integer() else f"{v:.0f}"


def recommend(table: pd.DataFrame, objectives: Optional[Sequence] = None, confidence: float = 0.95) -> dict:
    """The recommended setting and its evidence.

    Objectives are taken in order; for each, the points kept are those not significantly
    worse than the best: whose CI reaches the best mean (a point without a CI, from one
    replication, must equal it). Among what is left after the last objective, the best means
    win, in objective order (the first point on ties). Returns ``{"point", "settings", "line", "evidence",
    "candidates"}``; ``line`` is the one-line recommendation."""
    objs = _objectives(table, objectives)
    pts = by_point(table, [{"metric": m, "goal": g} for m, g in objs], confidence)
    cand = pts
    for m, g in objs:
        col = cand[m].to_numpy(dtype=float)
        if np.isnan(col).all():
            continue
        best = np.nanmax(col) if g == "max" else np.nanmin(col)
        reach = cand[f"{m}.high" if g == "max" else f"{m}.low"].to_numpy(dtype=float)
        reach = np.where(np.isnan(reach), col, reach)
        ok = reach >= best if g == "max" else reach <= best
        cand = cand[ok | (col == best)]
    # Among the survivors, the best means in objective order (the first objective first).
    keys = [cand[m].to_numpy(dtype=float) * (-1 if g == "max" else 1) for m, g in objs]
    keys = [np.where(np.isnan(k), np.inf, k) for k in keys]
    order = np.lexsort([np.arange(len(cand)), *reversed(keys)])
    chosen = cand.iloc[int(order[0])]
    axes = _axes(table)
    settings = {a: chosen[a] for a in axes}
    shown = ", ".join(f"{a.rsplit('.', 1)[-1]} {_val(settings[a])}" for a in axes)
    parts = []
    for m, g in objs:
        lo, hi = chosen[f"{m}.low"], chosen[f"{m}.high"]
        ci = f" [{_fmt(m, lo)}, {_fmt(m, hi)}]" if not (isinstance(lo, float) and math.isnan(lo)) else ""
        parts.append(f"{m} {_fmt(m, chosen[m])}{ci}")
    schedules = pts.attrs.get("schedules", [])
    n = int(table.groupby("point")["replication"].nunique().min())
    line = (f"{shown}: " + ", ".join(parts) +
            f" (worst of {', '.join(schedules)}; {n} seeds, {int(confidence * 100)}% CI)")
    return {"point": int(chosen["point"]), "settings": settings, "line": line,
            "evidence": chosen.to_dict(), "candidates": cand.reset_index(drop=True)}


def _val(v):
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


# --------------------------------------------------------------------------- plots


def plot_heatmap(table: pd.DataFrame, x: str, y: str, metric: str, *, schedule: Optional[str] = None,
                 ax=None, fmt: str = "{:.3g}", cmap: str = "viridis", **fixed):
    """A heatmap of ``metric``'s mean over replications against two axes (other axes fixed
    by ``fixed``, e.g. ``**{"policies.breaker.success_threshold": 1}``, or averaged), for
    one schedule (or the worst over schedules when None). Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    s = summary(table)
    for k, v in fixed.items():
        s = s[s[k] == v]
    if schedule is not None:
        s = s[s["schedule"] == schedule]
        grid = s.groupby([y, x])[metric].mean()
    else:
        worst = s.groupby(["point", x, y])[metric]
        higher_is_better = metric.startswith("availability") or metric.startswith("holds.")
        grid = (worst.min() if higher_is_better else worst.max()).groupby([y, x]).mean()
    grid = grid.unstack(x)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(grid.to_numpy(dtype=float), origin="lower", cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(grid.columns)), [str(_val(v)) for v in grid.columns])
    ax.set_yticks(range(len(grid.index)), [str(_val(v)) for v in grid.index])
    ax.set_xlabel(x.rsplit(".", 1)[-1])
    ax.set_ylabel(y.rsplit(".", 1)[-1])
    for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
        if not np.isnan(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", color="w", fontsize=8)
    where = ", ".join(f"{k.rsplit('.', 1)[-1]} {_val(v)}" for k, v in fixed.items())
    ax.set_title(f"{metric}" + (f" ({schedule})" if schedule else " (worst schedule)")
                 + (f"\n{where}" if where else ""), fontsize=9)
    ax.figure.colorbar(im, ax=ax)
    return ax


def plot_lines(table: pd.DataFrame, x: str, metric: str, *, hue: Optional[str] = None,
               schedule: Optional[str] = None, ax=None, confidence: float = 0.95, **fixed):
    """``metric``'s mean against axis ``x`` with its confidence band, one line per value of
    ``hue`` (another axis) or per schedule. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    t = table
    for k, v in fixed.items():
        t = t[t[k] == v]
    if schedule is not None:
        t = t[t["schedule"] == schedule]
    by = [x] + ([hue] if hue else ["schedule"])
    s = summarise(t, by, [metric], confidence)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    for key, g in s.groupby(by[1], sort=True):
        g = g.sort_values(x)
        ax.plot(g[x], g[metric], "o-", label=f"{by[1].rsplit('.', 1)[-1]} {_val(key)}")
        ax.fill_between(g[x], g[f"{metric}.low"], g[f"{metric}.high"], alpha=0.2)
    ax.set_xlabel(x.rsplit(".", 1)[-1])
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    return ax

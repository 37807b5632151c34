"""Windows and the statistical tests: requests by start time, per-endpoint window
widths, the one-sided Agresti-Caffo test of a drop in success ratio (Bonferroni-corrected)
and the p99 rule. docs/invariants.md, "Common ground for the statistical invariants"."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from hailan_sim.properties.record import Record


# --------------------------------------------------------------------------- windowed statistics

_WIDTHS = (5.0, 10.0, 15.0, 20.0, 30.0, 60.0)


def _widths(record: Record, min_requests: int, window_s: Optional[float]) -> dict[str, float]:
    """Per endpoint, the window width: the narrowest of 5, 10, 15, 20, 30, 60 s (and not
    below the run's own window) in which the baseline averages at least ``min_requests``
    requests; 60 s if none does. ``window_s`` forces one width."""
    run = record.scenario.run
    names = [e.name for e in record.scenario.workload.endpoints]
    if window_s is not None:
        return {e: float(window_s) for e in names}
    measured = run.duration_s - run.warmup_s
    counts = record.baseline.endpoints["total"] if "total" in record.baseline.endpoints else None
    out = {}
    for e in names:
        rate = float(counts.get(e, 0)) / measured if counts is not None else 0.0
        width = _WIDTHS[-1]
        for w in _WIDTHS:
            if w >= run.window_s and rate * w >= min_requests:
                width = w
                break
        out[e] = max(width, run.window_s)
    return out


def _nearest_rank(values: np.ndarray, q: float) -> float:
    if len(values) == 0:
        return math.nan
    v = np.sort(values)
    return float(v[max(1, math.ceil(q * len(v))) - 1])


def _table_from_requests(req: pd.DataFrame, widths: dict, t0: float, t1: float) -> pd.DataFrame:
    """(endpoint, j) -> n, ok, p99_ms for requests *started* in [t0 + jW, t0 + (j+1)W) < t1."""
    df = req[(req["start"] >= t0) & (req["start"] < t1)]
    if df.empty:
        return pd.DataFrame(columns=["endpoint", "j", "n", "ok", "p99_ms"])
    w = df["endpoint"].map(widths).to_numpy(dtype=float)
    j = np.floor((df["start"].to_numpy() - t0) / w).astype(np.int64)
    lat = df["latency_ms"].to_numpy(dtype=float)
    ok = (df["outcome"] == "ok").to_numpy()
    # Every (endpoint, window) at once (issue 12: no Python loop per window): rows sorted
    # by endpoint name, window and latency (NaN, an unfinished request, sorts last), so
    # each group is one run of rows and its p99 is the nearest-rank element of the run's
    # finished prefix, as _nearest_rank takes it.
    ecode, names = pd.factorize(df["endpoint"].to_numpy(dtype=object), sort=True)
    order = np.lexsort((lat, j, ecode))
    ecode, j, lat, ok = ecode[order], j[order], lat[order], ok[order]
    first = np.flatnonzero(np.r_[True, (ecode[1:] != ecode[:-1]) | (j[1:] != j[:-1])])
    n = np.diff(np.r_[first, len(order)])
    done = np.add.reduceat((~np.isnan(lat)).astype(np.int64), first)
    rank = np.maximum(1, np.ceil(0.99 * done)).astype(np.int64) - 1
    p99 = np.where(done > 0, lat[first + np.minimum(rank, np.maximum(done - 1, 0))], math.nan)
    return pd.DataFrame({"endpoint": np.asarray(names, dtype=object)[ecode[first]], "j": j[first],
                         "n": n.astype(np.int64), "ok": np.add.reduceat(ok.astype(np.int64), first),
                         "p99_ms": p99.astype(float)})


def _table_from_windows(windows: pd.DataFrame, widths: dict, t0: float, t1: float) -> pd.DataFrame:
    """The same from a run's per-window table (completions by end time; p99 of a merged
    window: the largest of its windows' p99, an upper bound)."""
    df = windows[(windows["window_start_s"] >= t0) & (windows["window_start_s"] < t1)]
    rows = []
    if not df.empty:
        w = df["endpoint"].map(widths).to_numpy(dtype=float)
        j = np.floor((df["window_start_s"].to_numpy() - t0) / w).astype(np.int64)
        tmp = pd.DataFrame({"endpoint": df["endpoint"].to_numpy(dtype=object), "j": j,
                            "n": df["total"].to_numpy(), "ok": df["ok"].to_numpy(),
                            "p99": df["p99_ms"].to_numpy(dtype=float)})
        for (e, jj), g in tmp.groupby(["endpoint", "j"], sort=True):
            rows.append((e, int(jj), int(g["n"].sum()), int(g["ok"].sum()), float(np.nanmax(g["p99"]))
                         if g["p99"].notna().any() else math.nan))
    return pd.DataFrame(rows, columns=["endpoint", "j", "n", "ok", "p99_ms"])


def _compare_windows(record: Record, endpoints: Sequence[str], widths: dict, t0: float, t1: float
                     ) -> pd.DataFrame:
    """Faulted vs baseline, per endpoint and window from ``t0``: n0, ok0, p99_0, n1, ok1, p99_1."""
    return _compare_frames(record, record.requests, endpoints, widths, t0, t1)


def _compare_frames(record: Record, requests: pd.DataFrame, endpoints: Sequence[str], widths: dict,
                    t0: float, t1: float) -> pd.DataFrame:
    """:func:`_compare_windows` with the run's requests given (e.g. with some outcomes
    recounted: ``no_cascading_failure`` counts direct failures as not collateral).

    Every (endpoint, window) either table has, for the endpoints given, in their order and
    then by window: the outer join of the two tables on (endpoint, j), counts 0 and p99 NaN
    where a side has no row. Joined with numpy (issue 12: a pandas merge, filter, fill and
    sort cost about 8 ms a call, four calls an example); tests/properties/test_invariants.py
    checks it against that merge."""
    f = _table_from_requests(requests, widths, t0, t1)
    if record.baseline_requests is not None:
        # The baseline's table depends on the windows only: computed once per baseline.
        b = record.baseline_log.memo(
            ("table", tuple(sorted(widths.items())), t0, t1),
            lambda: _table_from_requests(record.baseline_requests, widths, t0, t1))
    else:
        b = _table_from_windows(record.baseline.windows, widths, t0, t1)
    order = {e: i for i, e in enumerate(endpoints)}
    sides = []
    for t in (b, f):
        o = np.array([order.get(e, -1) for e in t["endpoint"].tolist()], dtype=np.int64)
        kept = o >= 0
        sides.append((o[kept], t["j"].to_numpy(dtype=np.int64)[kept], t["n"].to_numpy(dtype=np.int64)[kept],
                      t["ok"].to_numpy(dtype=np.int64)[kept], t["p99_ms"].to_numpy(dtype=float)[kept]))
    o = np.concatenate([s[0] for s in sides])
    j = np.concatenate([s[1] for s in sides])
    by = np.lexsort((j, o))
    so, sj = o[by], j[by]
    new = np.r_[True, (so[1:] != so[:-1]) | (sj[1:] != sj[:-1])] if len(by) else np.zeros(0, bool)
    at = np.empty(len(by), dtype=np.intp)
    at[by] = np.cumsum(new) - 1  # each table row's place among the distinct (endpoint, j)
    uo, uj = so[new], sj[new]
    cols: dict = {"endpoint": pd.Series(np.asarray(list(endpoints), dtype=object)[uo], dtype=object), "j": uj}
    nb = len(sides[0][0])
    for side, rows, (_, _, n, ok, p99) in zip(("_0", "_1"), (at[:nb], at[nb:]), sides):
        cols["n" + side] = np.zeros(len(uo), dtype=np.int64)
        cols["ok" + side] = np.zeros(len(uo), dtype=np.int64)
        cols["p99_ms" + side] = np.full(len(uo), math.nan)
        cols["n" + side][rows], cols["ok" + side][rows], cols["p99_ms" + side][rows] = n, ok, p99
    w = np.array([float(widths.get(e, math.nan)) for e in endpoints], dtype=float)[uo]
    cols["start"] = t0 + uj * w
    cols["end"] = np.minimum(cols["start"] + w, t1)
    return pd.DataFrame({k: cols[k] for k in ("endpoint", "j", "n_0", "ok_0", "p99_ms_0", "n_1", "ok_1",
                                             "p99_ms_1", "start", "end")})


def _ratio_drop(m: pd.DataFrame, z: float, margin: float) -> np.ndarray:
    """True where the run's success ratio is below the baseline's by more than ``margin``
    plus ``z`` standard errors (Agresti-Caffo: one success and one failure added to each
    side, so small and all-ok windows get honest errors)."""
    n0, k0 = m["n_0"].to_numpy(float), m["ok_0"].to_numpy(float)
    n1, k1 = m["n_1"].to_numpy(float), m["ok_1"].to_numpy(float)
    p0 = (k0 + 1) / (n0 + 2)
    p1 = (k1 + 1) / (n1 + 2)
    se = np.sqrt(p0 * (1 - p0) / (n0 + 2) + p1 * (1 - p1) / (n1 + 2))
    return (n0 > 0) & (n1 > 0) & (p0 - p1 - margin > z * se)


def _p99_worse(m: pd.DataFrame, ref_run: Mapping[str, float], ratio: float, abs_ms: float,
               min_requests: int) -> np.ndarray:
    """True where the run's p99 exceeds ``max(ratio x ref, ref + abs_ms)``, ref being the
    larger of the baseline window's p99 and the baseline run's; only where both windows
    hold ``min_requests`` requests."""
    ref = np.fmax(m["p99_ms_0"].to_numpy(float), m["endpoint"].map(ref_run).to_numpy(float))
    limit = np.maximum(ratio * ref, ref + abs_ms)
    enough = (m["n_0"].to_numpy() >= min_requests) & (m["n_1"].to_numpy() >= min_requests)
    return enough & (m["p99_ms_1"].to_numpy(float) > limit)


def _z(alpha: float, comparisons: int) -> float:
    """One-sided normal quantile at the Bonferroni-corrected level ``alpha / comparisons``."""
    return NormalDist().inv_cdf(1.0 - alpha / max(1, comparisons))


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _window_rows(m: pd.DataFrame, mask: np.ndarray, limit: int = 20) -> list[dict]:
    out = []
    for _, r in m[mask].head(limit).iterrows():
        out.append({
            "endpoint": r["endpoint"], "window": (float(r["start"]), float(r["end"])),
            "baseline_ratio": float(r["ok_0"] / r["n_0"]) if r["n_0"] else None,
            "ratio": float(r["ok_1"] / r["n_1"]) if r["n_1"] else None,
            "baseline_requests": int(r["n_0"]), "requests": int(r["n_1"]),
            "baseline_p99_ms": None if pd.isna(r["p99_ms_0"]) else float(r["p99_ms_0"]),
            "p99_ms": None if pd.isna(r["p99_ms_1"]) else float(r["p99_ms_1"]),
        })
    return out

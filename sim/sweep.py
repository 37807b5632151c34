"""Parameter sweeps: many independent runs, in parallel, with results in a tidy DataFrame.

Each point of a sweep is a complete scenario, so a sweep is just ``simulate`` mapped over
``points x seeds``. Runs are independent and pure, so the table is the same whether it is
computed serially or on a process pool; rows come back in input order.

This is the quick in-memory loop for notebooks. Sweep files, fault schedules, Dask,
results kept on disk with ``--resume``, confidence intervals and recommendations are in
:mod:`hailan_sim.sweeps` (docs/sweeps.md); replications and intervals in
:mod:`hailan_sim.sim.stats`.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from typing import Callable, Hashable, Iterable, Mapping, Optional

import pandas as pd

from hailan_sim.models.scenario import Scenario
from hailan_sim.sim.result import Result
from hailan_sim.sim.runner import simulate

__all__ = ["summary_metrics", "sweep"]


def summary_metrics(result: Result) -> dict:
    """Default per-run figures: request outcomes, per-endpoint success and p99, and per
    service utilisation, p99 of its calls, mean queue length and mean wait for a worker."""
    req = result.requests
    total = sum(req.values())
    out: dict = {
        "requests": total,
        "success_ratio": req["ok"] / total if total else None,
        **{f"requests_{k}": v for k, v in req.items()},
    }
    for name, row in result.endpoints.iterrows():
        out[f"{name}.p99_ms"] = row["p99_ms"]
        out[f"{name}.success_ratio"] = row["ok"] / row["total"] if row["total"] else None
    for name, row in result.services.iterrows():
        out[f"{name}.utilisation"] = row["utilisation"]
        out[f"{name}.p99_ms"] = row["p99_ms"]
        out[f"{name}.mean_queue"] = row["mean_queue"]
        out[f"{name}.mean_wait_ms"] = row["mean_wait_ms"]
    return out


def _one(task: tuple) -> dict:
    scenario, metrics = task
    return metrics(simulate(scenario))


def sweep(
    points: Mapping[Hashable, Scenario],
    *,
    seeds: Iterable[int] = (0,),
    metrics: Callable[[Result], dict] = summary_metrics,
    workers: int = 1,
    progress: Optional[bool] = None,
) -> pd.DataFrame:
    """Run every point with every seed; one row per run: ``point``, ``seed``, then ``metrics(result)``.

    ``workers > 1`` uses a process pool (``metrics`` must then be a module-level function).
    ``progress``: True, False, or None for a bar only when there are more than four runs.
    """
    seeds = list(seeds)
    if workers < 1:
        raise ValueError(f"{workers=} must be >= 1")
    keys = [(label, seed) for label in points for seed in seeds]
    tasks = [(points[label].with_run(seed=seed), metrics) for label, seed in keys]
    show = progress if progress is not None else len(tasks) > 4
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit="run", file=sys.stderr, leave=False)
    rows: list[dict] = []
    if workers == 1:
        for task in tasks:
            rows.append(_one(task))
            if bar is not None:
                bar.update()
    else:
        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            for row in pool.map(_one, tasks):
                rows.append(row)
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()
    return pd.DataFrame([{"point": label, "seed": seed, **row} for (label, seed), row in zip(keys, rows)])

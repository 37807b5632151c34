"""Parameter sweeps: a sweep file -> thousands of deterministic runs -> a decision.

``load_sweep`` validates and plans a sweep file (:mod:`.spec`), ``run_sweep`` runs it on
local processes or Dask with results kept on disk (:mod:`.execute`), ``load_results``
reads a sweep folder back as a DataFrame, and :mod:`.analysis` summarises it (confidence
intervals, Pareto front, best per objective, recommendation, plots). docs/sweeps.md has
the file format; docs/metrics.md defines every metric.

This package sits above :mod:`hailan_sim.properties` (a sweep can report invariant
verdicts), next to the CLI.
"""

from hailan_sim.sweeps.analysis import best_per_objective as best_per_objective
from hailan_sim.sweeps.analysis import by_point as by_point
from hailan_sim.sweeps.analysis import pareto_front as pareto_front
from hailan_sim.sweeps.analysis import plot_heatmap as plot_heatmap
from hailan_sim.sweeps.analysis import plot_lines as plot_lines
from hailan_sim.sweeps.analysis import recommend as recommend
from hailan_sim.sweeps.analysis import summary as summary
from hailan_sim.sweeps.execute import load_results as load_results
from hailan_sim.sweeps.execute import run_sweep as run_sweep
from hailan_sim.sweeps.spec import Sweep as Sweep
from hailan_sim.sweeps.spec import SweepPlan as SweepPlan
from hailan_sim.sweeps.spec import load_sweep as load_sweep
from hailan_sim.sweeps.spec import parse_sweep as parse_sweep
from hailan_sim.sweeps.spec import shipped_schedules as shipped_schedules

__all__ = [
    "Sweep", "SweepPlan", "best_per_objective", "by_point", "load_results", "load_sweep", "pareto_front",
    "parse_sweep", "plot_heatmap", "plot_lines", "recommend", "run_sweep", "shipped_schedules", "summary",
]

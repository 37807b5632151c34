"""The deterministic engine: drives :mod:`models` on a SimPy clock and records the run."""

from hailan_sim.sim.engine import Engine as Engine
from hailan_sim.sim.eventlog import COLUMNS as COLUMNS
from hailan_sim.sim.eventlog import EVENTS as EVENTS
from hailan_sim.sim.export import EventWriter as EventWriter
from hailan_sim.sim.export import SpanWriter as SpanWriter
from hailan_sim.sim.result import Result as Result
from hailan_sim.sim.rng import Streams as Streams
from hailan_sim.sim.runner import simulate as simulate

__all__ = ["COLUMNS", "EVENTS", "Engine", "EventWriter", "Result", "SpanWriter", "Streams", "simulate"]
from hailan_sim.sim.sweep import summary_metrics as summary_metrics  # noqa: E402
from hailan_sim.sim.sweep import sweep as sweep  # noqa: E402

__all__ += ["summary_metrics", "sweep"]
from hailan_sim.sim.stats import mean_ci as mean_ci  # noqa: E402
from hailan_sim.sim.stats import replicate as replicate  # noqa: E402
from hailan_sim.sim.stats import summarise as summarise  # noqa: E402

__all__ += ["mean_ci", "replicate", "summarise"]

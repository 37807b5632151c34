"""The deterministic engine: drives :mod:`models` on a SimPy clock and records the run."""

from sim.engine import Engine as Engine
from sim.eventlog import COLUMNS as COLUMNS
from sim.eventlog import EVENTS as EVENTS
from sim.result import Result as Result
from sim.rng import Streams as Streams
from sim.runner import simulate as simulate

__all__ = ["COLUMNS", "EVENTS", "Engine", "Result", "Streams", "simulate"]
from sim.sweep import summary_metrics as summary_metrics  # noqa: E402
from sim.sweep import sweep as sweep  # noqa: E402

__all__ += ["summary_metrics", "sweep"]

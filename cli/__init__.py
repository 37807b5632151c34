"""hailan-sim: a deterministic simulator and model checker for microservice resilience.

The public API in one place; the layers underneath are :mod:`models` (what is simulated),
:mod:`sim` (the engine) and :mod:`properties` (invariants and the checker).
"""

from hailan_sim._version import __version__ as __version__
from hailan_sim.models import Scenario as Scenario
from hailan_sim.models import ScenarioError as ScenarioError
from hailan_sim.models import analyse as analyse
from hailan_sim.models import default_scenario as default_scenario
from hailan_sim.models import load_scenario as load_scenario
from hailan_sim.models import parse_scenario as parse_scenario
from hailan_sim.sim import Result as Result
from hailan_sim.sim import simulate as simulate

__all__ = [
    "Result",
    "__version__",
    "Scenario",
    "ScenarioError",
    "analyse",
    "default_scenario",
    "load_scenario",
    "parse_scenario",
    "simulate",
]

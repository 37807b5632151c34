"""hailan-sim: a deterministic simulator and model checker for microservice resilience.

The public API in one place; the layers underneath are :mod:`models` (what is simulated),
:mod:`sim` (the engine) and :mod:`properties` (invariants and the checker).
"""

from models import Scenario as Scenario
from models import ScenarioError as ScenarioError
from models import analyse as analyse
from models import default_scenario as default_scenario
from models import load_scenario as load_scenario
from models import parse_scenario as parse_scenario
from sim import Result as Result
from sim import simulate as simulate

__all__ = [
    "Result",
    "Scenario",
    "ScenarioError",
    "analyse",
    "default_scenario",
    "load_scenario",
    "parse_scenario",
    "simulate",
]

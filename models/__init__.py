"""What is simulated: validated scenario descriptions and pure component behaviours.

Nothing here imports SimPy; the engine in :mod:`sim` drives these.
"""

from models.arrivals import RateSchedule as RateSchedule
from models.loader import DEFAULT_SCENARIO as DEFAULT_SCENARIO
from models.loader import ScenarioError as ScenarioError
from models.loader import default_scenario as default_scenario
from models.loader import load_scenario as load_scenario
from models.loader import parse_scenario as parse_scenario
from models.scenario import Scenario as Scenario
from models.topology import TopologyReport as TopologyReport
from models.topology import analyse as analyse

__all__ = [
    "DEFAULT_SCENARIO",
    "RateSchedule",
    "Scenario",
    "ScenarioError",
    "TopologyReport",
    "analyse",
    "default_scenario",
    "load_scenario",
    "parse_scenario",
]

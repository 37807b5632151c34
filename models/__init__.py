"""What is simulated: validated scenario descriptions and pure component behaviours.

Nothing here imports SimPy; the engine in :mod:`sim` drives these.
"""

from hailan_sim.models.arrivals import RateSchedule as RateSchedule
from hailan_sim.models.loader import DEFAULT_SCENARIO as DEFAULT_SCENARIO
from hailan_sim.models.loader import ScenarioError as ScenarioError
from hailan_sim.models.loader import default_scenario as default_scenario
from hailan_sim.models.loader import load_scenario as load_scenario
from hailan_sim.models.loader import parse_scenario as parse_scenario
from hailan_sim.models.scenario import Scenario as Scenario
from hailan_sim.models.topology import TopologyReport as TopologyReport
from hailan_sim.models.topology import analyse as analyse

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

"""Invariants over a run's record, fault-schedule strategies, the checker and replay.

Use it from your own tests (see ``docs/checking.md``)::

    from hypothesis import given
    from hailan_sim.properties import Record, evaluate, fault_schedules, seeds, with_faults
"""

from hailan_sim.properties.invariants import INVARIANTS as INVARIANTS
from hailan_sim.properties.invariants import Record as Record
from hailan_sim.properties.invariants import Verdict as Verdict
from hailan_sim.properties.invariants import evaluate as evaluate
from hailan_sim.properties.invariants import register as register
from hailan_sim.properties.invariants import unregister as unregister
from hailan_sim.properties.invariants import witnessed as witnessed
from hailan_sim.properties.strategies import balancers as balancers
from hailan_sim.properties.strategies import fault_schedules as fault_schedules
from hailan_sim.properties.strategies import retry_policies as retry_policies
from hailan_sim.properties.strategies import seeds as seeds
from hailan_sim.properties.strategies import sliding_window_breakers as sliding_window_breakers
from hailan_sim.properties.strategies import spec_breakers as spec_breakers
from hailan_sim.properties.strategies import with_faults as with_faults
from hailan_sim.properties.strategies import with_policies as with_policies

__all__ = [
    "INVARIANTS",
    "Record",
    "Verdict",
    "balancers",
    "evaluate",
    "fault_schedules",
    "retry_policies",
    "register",
    "seeds",
    "sliding_window_breakers",
    "spec_breakers",
    "unregister",
    "witnessed",
    "with_faults",
    "with_policies",
]

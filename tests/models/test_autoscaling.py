"""The autoscaling rule alone: thresholds, bounds, step and cool-down."""

import pytest
from pydantic import ValidationError

from hailan_sim.models.autoscaling import Autoscaler, AutoscalingPolicy


def test_scales_out_and_in_within_bounds_and_cooldown():
    a = Autoscaler(AutoscalingPolicy(scale_out_above=0.7, scale_in_below=0.3, hold_s=60,
                                     min_instances=2, max_instances=4, step=1))
    assert a.decide(0.0, 0.9, 2) == 1
    assert a.decide(30.0, 0.9, 3) == 0  # cool-down
    assert a.decide(60.0, 0.9, 3) == 1
    assert a.decide(120.0, 0.95, 4) == 0  # at max
    assert a.decide(130.0, 0.5, 4) == 0  # inside the band
    assert a.decide(180.0, 0.1, 4) == -1
    assert a.decide(240.0, 0.1, 2) == 0  # at min


def test_step_is_capped_by_the_bounds():
    a = Autoscaler(AutoscalingPolicy(step=3, min_instances=1, max_instances=5, hold_s=0))
    assert a.decide(0.0, 0.99, 4) == 1
    assert a.decide(1.0, 0.0, 2) == -1


def test_inconsistent_policies_are_rejected():
    with pytest.raises(ValidationError, match="scale_in_below"):
        AutoscalingPolicy(scale_out_above=0.5, scale_in_below=0.6)
    with pytest.raises(ValidationError, match="min_instances"):
        AutoscalingPolicy(min_instances=5, max_instances=2)

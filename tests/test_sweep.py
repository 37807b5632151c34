"""Sweeps: every point x seed runs, serially or on a pool, with identical tables."""

from __future__ import annotations

import pandas as pd
import pytest

from hailan_sim.sim import sweep


def test_sweep_rows_and_parallel_equals_serial(small):
    base = small.with_run(duration_s=10, warmup_s=1)
    points = {f: base.with_load(f) for f in (0.5, 1.0, 2.0)}
    serial = sweep(points, seeds=[1, 2])
    parallel = sweep(points, seeds=[1, 2], workers=2)
    pd.testing.assert_frame_equal(serial, parallel)
    assert list(serial["point"]) == [0.5, 0.5, 1.0, 1.0, 2.0, 2.0]
    assert list(serial["seed"]) == [1, 2, 1, 2, 1, 2]
    # more load, more requests (roughly in proportion)
    by_point = serial.groupby("point")["requests"].sum()
    assert by_point[0.5] < by_point[1.0] < by_point[2.0]
    # Poisson counts: the ratio's relative standard error is sqrt(1/n1 + 1/n2)
    lo, hi = by_point[0.5], by_point[2.0]
    assert hi / lo == pytest.approx(4.0, rel=4.4 * (1 / lo + 1 / hi) ** 0.5)


def test_with_load_scales_every_arrival(small):
    doubled = small.with_load(2.0)
    assert doubled.workload.arrival.rate == 2 * small.workload.arrival.rate
    with pytest.raises(ValueError, match="must be > 0"):
        small.with_load(0)

"""The per-window rows (Result.windows) against the event log, group by group.

sim.metrics.Recorder computes every (window, endpoint) group's counts and nearest-rank
percentiles at once with numpy; this recomputes them one group at a time in plain Python
from the kept event log (a request's latency is its request_end time less its
request_start time, the same subtraction the engine makes), so a wrong group boundary,
count or percentile index shows up as a differing row.
"""

from __future__ import annotations

import math
from collections import defaultdict

from hailan_sim.sim import simulate
from hailan_sim.sim.metrics import OUTCOMES


def _rank(sorted_values: list, q: float) -> float:
    return sorted_values[max(1, math.ceil(q * len(sorted_values))) - 1]


def _expected(records, width, start_event, end_event, id_index):
    """(key, window start, counts by outcome..., p50 ms, p99 ms) per group, one at a time."""
    started = {}
    groups: dict = defaultdict(lambda: ({o: 0 for o in OUTCOMES}, []))
    for rec in records:
        t, event, target, outcome = rec[0], rec[1], rec[6], rec[9]
        if event == start_event:
            started[rec[id_index]] = t
        elif event == end_event:
            counts, lats = groups[(target, math.floor(t / width) * width)]
            counts[outcome] += 1
            lats.append(t - started[rec[id_index]])
    rows = []
    for (key, start), (counts, lats) in sorted(groups.items()):
        lats.sort()
        rows.append((key, start, *counts.values(), _rank(lats, 0.5) * 1000, _rank(lats, 0.99) * 1000))
    return rows, {sum(c.values()) for c, _ in groups.values()}


def test_window_rows_match_the_event_log(small):
    r = simulate(small, keep_events=True)
    records = r._events.records()
    width = small.run.window_s
    for frame, key, start_event, end_event, id_index in (
        (r.windows, "endpoint", "request_start", "request_end", 2),  # per request
        (r.service_windows, "service", "call_start", "call_end", 3),  # per call
    ):
        expected, sizes = _expected(records, width, start_event, end_event, id_index)
        got = [tuple(row) for row in frame[[key, "window_start_s", *OUTCOMES, "p50_ms", "p99_ms"]]
               .itertuples(index=False)]
        assert len(got) == len(expected) > 20
        assert got == expected
    # groups of the sizes the rank rule tells apart were compared: a single call, and more
    # than 100 (where the p99 is no longer the maximum)
    assert min(sizes) == 1 and max(sizes) > 100

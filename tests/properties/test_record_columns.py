"""The log's columns as the invariants read them (properties/record.py): text columns coded
by identity first, and each event kind's rows computed once (issue 12 item 2). Both must give
exactly what the plain way gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hailan_sim.models.loader import load_scenario
from hailan_sim.properties import record
from hailan_sim.properties.record import _Log, factorize
from hailan_sim.sim import simulate
from hailan_sim.sim.eventlog import COLUMNS

SMALL = Path(__file__).parent.parent / "scenarios" / "small.yaml"
WORDS = ("ok", "error", "front", "back-0", "call_start")


def _fresh(word: str) -> str:
    # An equal string that is another object (as an f-string or str(number) in the engine gives).
    return "".join(list(word))


# A cell: one of a few shared strings, an equal string held as another object, or None.
_cell = st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS).map(_fresh), st.none())


def _same_as_pandas(values: np.ndarray) -> None:
    want_codes, want_uniques = pd.factorize(values)
    codes, uniques = factorize(values)
    assert codes.tolist() == want_codes.tolist() and codes.dtype == want_codes.dtype
    assert uniques.dtype == object and list(uniques) == list(want_uniques)


@settings(max_examples=200, deadline=None)
@given(cells=st.lists(_cell, max_size=60), step=st.sampled_from([1, 2]))
def test_factorize_by_identity_gives_what_pandas_gives(cells, step):
    # Every array goes the identity way here (the threshold lowered); a strided view and an
    # empty array go pandas' way. Equal strings held as distinct objects share a code, None
    # is -1, and codes follow first appearance.
    values = np.empty(len(cells), dtype=object)
    values[:] = cells
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(record, "_BY_IDENTITY_FROM", 1)
        _same_as_pandas(values[::step])


def test_equal_strings_that_are_other_objects_share_a_code(monkeypatch):
    monkeypatch.setattr(record, "_BY_IDENTITY_FROM", 1)
    values = np.array(["back-0", None, _fresh("back-0"), "ok", _fresh("ok"), "back-0"], dtype=object)
    assert values[0] is not values[2]
    codes, uniques = factorize(values)
    assert codes.tolist() == [0, -1, 0, 1, 1, 0] and list(uniques) == ["back-0", "ok"]


@pytest.fixture(scope="module")
def small_log() -> _Log:
    sc = load_scenario(SMALL).with_run(duration_s=20.0)
    crash = {"kind": "crash_instance", "instance": "back-0", "start_s": 8.0, "duration_s": 6.0}
    from hailan_sim.properties.strategies import with_faults

    return _Log(simulate(with_faults(sc, [crash]), keep_events=True)._events.columns())


def test_a_real_logs_text_columns_code_as_pandas_codes_them(small_log):
    # Long enough for the identity way at the shipped threshold.
    assert small_log.n >= record._BY_IDENTITY_FROM
    for name in COLUMNS:
        column = getattr(small_log, name)
        if column.dtype == object:
            _same_as_pandas(column)


def test_rows_are_each_kinds_rows_in_log_order_computed_once(small_log):
    for events in [("call_start",), ("call_end",), ("request_start",), ("instance_down", "instance_up"), ("instance_down",),
                   ("no_such_event",), ("call_end", "no_such_event")]:
        rows = small_log.rows(*events)
        assert rows.tolist() == np.flatnonzero(np.isin(small_log.event, list(events))).tolist()
        # Shared by every invariant that asks: the same array, which none may change.
        assert small_log.rows(*events) is rows
        with pytest.raises(ValueError):
            rows[:1] = 0
    assert len(small_log.rows("call_start")) > 0 and len(small_log.rows("instance_down")) > 0

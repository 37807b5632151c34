"""The kept event log is held column by column (sim.eventlog.KeptLog, issue 12 item 4): the
records, the DataFrame and the hash it gives are those of the engine's own record tuples."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hailan_sim import load_scenario, simulate
from hailan_sim.sim.eventlog import COLUMNS, KeptLog, canonical

ROOT = Path(__file__).resolve().parent.parent


class _Tuples:
    """A sink keeping every record tuple the engine wrote, as the old list-of-tuples log did."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def write(self, records) -> None:
        self.records.extend(records)


@pytest.fixture(scope="module", params=["small", "bounded_recovery"])
def run(request, small):
    if request.param == "small":
        sc = small
    else:  # faults, breakers, messages, parents of every kind
        sc = load_scenario(ROOT / "findings" / "counterexamples" / "bounded_recovery.yaml")
        sc = sc.with_run(duration_s=40)
    sink = _Tuples()
    result = simulate(sc, keep_events=True, sinks=[sink])
    return result, sink.records


def test_kept_records_are_the_engines_tuples(run):
    result, tuples = run
    assert isinstance(result._events, KeptLog) and len(result._events) == result.event_count
    records = result._kept()
    assert len(records) == len(tuples) == result.event_count > 1000
    assert records == tuples
    # same values of the same types (1 == 1.0 would pass ==, not the hash)
    assert [tuple(map(type, r)) for r in records] == [tuple(map(type, r)) for r in tuples]
    assert hashlib.sha256(canonical(records)).hexdigest() == result.event_log_sha256
    assert any(r[4] is None for r in records) and any(r[4] is not None for r in records)


def test_events_frame_is_the_one_built_from_the_tuples(run):
    result, tuples = run
    want = pd.DataFrame.from_records(tuples, columns=list(COLUMNS))
    for col in ("request", "call", "parent"):
        want[col] = want[col].astype("Int64")
    for col in ("event", "source", "target", "instance", "operation", "outcome"):
        want[col] = want[col].astype("string")
    pd.testing.assert_frame_equal(result.events(), want)


def test_columns_hold_ids_as_int64_with_minus_one_for_none(run):
    result, tuples = run
    cols = result._events.columns()
    assert list(cols) == list(COLUMNS)
    assert cols["t"].dtype == np.float64 and np.array_equal(cols["t"], [r[0] for r in tuples])
    for i, name in ((2, "request"), (3, "call"), (4, "parent")):
        assert cols[name].dtype == np.int64
        assert cols[name].tolist() == [-1 if r[i] is None else r[i] for r in tuples]
    assert result._events.columns() is cols  # joined once


def test_batches_join_in_order_and_later_batches_add_on():
    recs = [(i if i == 0 else 0.5 * i, "call_start", i, i + 10, None if i % 2 else i + 100, "a-0", "b", None, "op", None)
            for i in range(7)]
    kept = KeptLog()
    kept.add(recs[:3])
    kept.add(recs[3:5])
    assert kept.records() == recs[:5]
    kept.add(recs[5:])
    assert kept.records() == recs and len(kept) == 7
    assert type(kept.records()[0][0]) is int and type(kept.records()[2][0]) is float
    assert KeptLog.from_records([]).records() == [] and len(KeptLog.from_records([])) == 0


def test_an_empty_kept_log_gives_an_empty_frame(small):
    r = simulate(small.with_run(duration_s=0.001, warmup_s=0.0), keep_events=True)
    df = r.events()
    assert list(df.columns) == list(COLUMNS) and len(df) == r.event_count

"""Streaming metrics, aggregated a batch at a time with numpy.

The engine adds five numbers per completed request or call, ``(t, key, outcome, latency,
tracked)``, to a flat list (``recorder.buf.extend(row)``: no tuple kept per completion, and
numpy converts a flat list of numbers three times faster than a list of tuples);
:meth:`Recorder.flush` (called by the runner at fixed points in simulated time) folds the
batch into:

* per-key summaries of the tracked completions (those that started after the warm-up):
  exact counts by outcome, sum and maximum of latency, and a log-bucketed histogram
  (buckets 1% wide, as HdrHistogram with two significant digits), so a summary percentile
  is within 0.5% of the exact order statistic; the sums and histograms are also kept per
  outcome (a rejected call's 0 ms must not pull down the mean of served ones);
* per-window rows for every completion, by completion time, with *exact* per-window
  percentiles: completions arrive in time order, so a window is final once the clock has
  passed its end, and only the open window's records are carried to the next batch.

Memory is bounded by the number of keys, the number of windows and one batch, never by
the number of requests.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ["OUTCOMES", "OUTCOME_INDEX", "Recorder", "WaitHistogram"]

OUTCOMES = ("ok", "error", "timeout", "rejected")
OUTCOME_INDEX = {o: i for i, o in enumerate(OUTCOMES)}

ROW = 5  # numbers per completion in Recorder.buf
_BUCKETS = 4096
_LOG_BASE = math.log(1.01)
_FLOOR_S = 1e-6  # latencies under a microsecond share bucket 0


def buckets_of(seconds: np.ndarray) -> np.ndarray:
    """Log-bucket index of each latency (seconds)."""
    with np.errstate(divide="ignore"):
        idx = np.floor(np.log(seconds / _FLOOR_S) / _LOG_BASE) + 1
    idx[seconds < _FLOOR_S] = 0
    return np.minimum(idx, _BUCKETS - 1).astype(np.int64)


def bucket_value(index: int) -> float:
    """Seconds at the geometric middle of a bucket."""
    if index == 0:
        return 0.0
    return math.exp((index - 0.5) * _LOG_BASE) * _FLOOR_S


def nearest_rank(sorted_values: np.ndarray, q: float) -> float:
    """The q-quantile by the nearest-rank rule (the smallest value with at least q of the mass)."""
    n = len(sorted_values)
    return float(sorted_values[max(1, math.ceil(q * n)) - 1])


class Recorder:
    """Outcomes and latencies of completions, per key (an endpoint or a service)."""

    def __init__(self, keys: list[str], window_s: float) -> None:
        self.keys = keys
        self.width = window_s
        k = len(keys)
        self.buf: list = []  # ROW numbers per completion, see the module docstring
        self.counts = np.zeros((k, 4), dtype=np.int64)
        self.hist = np.zeros((k, _BUCKETS), dtype=np.int64)
        self.total = np.zeros(k)
        # The same per outcome, so a rejected call's 0 ms never pulls down the served ones'.
        self.hist_by = np.zeros((k, 4, _BUCKETS), dtype=np.int64)
        self.total_by = np.zeros((k, 4))
        self.max = np.zeros(k)
        self._carry = np.empty((0, 5))
        self._rows: list[tuple] = []

    @property
    def pending(self) -> int:
        """Completions buffered since the last flush."""
        return len(self.buf) // ROW

    def flush(self, now: Optional[float]) -> None:
        """Fold buffered completions in; finalise windows that end at or before ``now``
        (every window when ``now`` is None: the run is over)."""
        if self.buf:
            batch = np.array(self.buf, dtype=float).reshape(-1, ROW)
            self.buf.clear()
            self._summarise(batch)
            pending = np.concatenate([self._carry, batch]) if len(self._carry) else batch
        else:
            pending = self._carry
        if not len(pending):
            return
        w = np.floor(pending[:, 0] / self.width)
        if now is None:
            done = np.ones(len(pending), dtype=bool)
        else:
            done = w < math.floor(now / self.width)
        if done.any():
            self._windows(pending[done], w[done])
        self._carry = pending[~done]

    def _summarise(self, batch: np.ndarray) -> None:
        tracked = batch[batch[:, 4] == 1.0]
        if not len(tracked):
            return
        k = self.counts.shape[0]
        key = tracked[:, 1].astype(np.int64)
        out = tracked[:, 2].astype(np.int64)
        lat = tracked[:, 3]
        self.counts += np.bincount(key * 4 + out, minlength=k * 4).reshape(k, 4)
        self.hist += np.bincount(key * _BUCKETS + buckets_of(lat), minlength=k * _BUCKETS).reshape(k, _BUCKETS)
        self.total += np.bincount(key, weights=lat, minlength=k)
        ko = key * 4 + out
        self.hist_by += np.bincount(ko * _BUCKETS + buckets_of(lat), minlength=k * 4 * _BUCKETS).reshape(k, 4, _BUCKETS)
        self.total_by += np.bincount(ko, weights=lat, minlength=k * 4).reshape(k, 4)
        np.maximum.at(self.max, key, lat)

    def _windows(self, rows: np.ndarray, w: np.ndarray) -> None:
        key = rows[:, 1].astype(np.int64)
        order = np.lexsort((rows[:, 3], key, w))
        rows, w, key = rows[order], w[order], key[order]
        group = w * len(self.keys) + key
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        n = np.diff(np.r_[starts, len(rows)])
        # NOTE: for speed, every (window, key) group at once instead of a Python loop per group
        # (the loop was about 0.4% of a run; benchmarks/README.md, h12g): counts by outcome by one bincount, and each percentile picked by
        # the nearest-rank rule of nearest_rank (index max(1, ceil(q * n)) - 1 of the group's
        # sorted latencies, the same float64 arithmetic), so the rows are the same numbers.
        group_no = np.repeat(np.arange(len(starts)), n)
        counts = np.bincount(group_no * 4 + rows[:, 2].astype(np.int64), minlength=len(starts) * 4)
        lat = rows[:, 3]
        p50, p99 = (lat[starts + np.maximum(1, np.ceil(q * n)).astype(np.int64) - 1] for q in (0.5, 0.99))
        self._rows.extend(zip(key[starts].tolist(), (w[starts] * self.width).tolist(),
                              *counts.reshape(-1, 4).T.tolist(), p50.tolist(), p99.tolist()))

    def summary(self, index: int) -> dict:
        """Counts by outcome and latency figures (ms) of one key's tracked completions."""
        counts = self.counts[index]
        n = int(counts.sum())
        out = {o: int(counts[i]) for i, o in enumerate(OUTCOMES)}
        out["total"] = n
        if n == 0:
            out.update(mean_ms=None, p50_ms=None, p95_ms=None, p99_ms=None, max_ms=None)
            return out
        cum = np.cumsum(self.hist[index])
        mx = float(self.max[index])

        def q(p: float) -> float:
            b = int(np.searchsorted(cum, max(1, math.ceil(p * n))))
            return min(bucket_value(b), mx) * 1000

        out.update(
            mean_ms=float(self.total[index]) / n * 1000,
            p50_ms=q(0.50), p95_ms=q(0.95), p99_ms=q(0.99), max_ms=mx * 1000,
        )
        out.update(self.by_outcome(index))
        return out

    def by_outcome(self, index: int) -> dict:
        """Latency (ms) of one key's tracked completions per outcome: ``<outcome>_mean_ms``
        and ``<outcome>_p99_ms`` for each outcome, and ``ok_p50_ms``, ``ok_p95_ms`` (None
        where an outcome never happened). Same buckets and rule as :meth:`summary`; each
        percentile is capped at the key's maximum."""
        mx = float(self.max[index])
        out: dict = {}
        for i, o in enumerate(OUTCOMES):
            counts = self.hist_by[index, i]
            n = int(self.counts[index, i])
            qs = (0.50, 0.95, 0.99) if o == "ok" else (0.99,)
            if n == 0:
                out[f"{o}_mean_ms"] = None
                out.update({f"{o}_p{round(p * 100)}_ms": None for p in qs})
                continue
            cum = np.cumsum(counts)
            out[f"{o}_mean_ms"] = float(self.total_by[index, i]) / n * 1000
            for p in qs:
                b = int(np.searchsorted(cum, max(1, math.ceil(p * n))))
                out[f"{o}_p{round(p * 100)}_ms"] = min(bucket_value(b), mx) * 1000
        return out

    def window_rows(self) -> list[tuple]:
        """``(key index, window start s, ok, error, timeout, rejected, p50 s, p99 s)`` rows,
        in the order windows were finalised (by window, then key)."""
        return self._rows


class WaitHistogram:
    """Waits for a worker at one service: the tracked calls a worker took, in the latency
    buckets above (percentiles within 0.5%, capped at the longest wait).

    Only positive waits are folded in; a call that found a worker free waited exactly 0 and
    is counted by ``served`` (the instances' ``wait_n``), so P(wait) and the percentiles
    include those zeros without a bucket for them.
    """

    QUANTILES = (0.50, 0.95, 0.99)

    def __init__(self) -> None:
        self.hist = np.zeros(_BUCKETS, dtype=np.int64)
        self.max = 0.0

    def fold(self, waits: list) -> None:
        """Add a buffer of positive waits (seconds) and empty it."""
        if not waits:
            return
        a = np.array(waits, dtype=float)
        waits.clear()
        self.hist += np.bincount(buckets_of(a), minlength=_BUCKETS)
        self.max = max(self.max, float(a.max()))

    def summary(self, served: int) -> dict:
        """``p_wait`` (the fraction of the ``served`` calls that waited at all) and
        ``wait_p50_ms`` / ``wait_p95_ms`` / ``wait_p99_ms`` over all of them, zeros included
        (nearest rank, as :meth:`Recorder.summary`). None when nothing was served."""
        keys = ["p_wait", *(f"wait_p{round(p * 100)}_ms" for p in self.QUANTILES)]
        if served <= 0:
            return dict.fromkeys(keys)
        waited = int(self.hist.sum())
        zeros = served - waited
        cum = np.cumsum(self.hist)
        out = {"p_wait": waited / served}
        for p in self.QUANTILES:
            rank = max(1, math.ceil(p * served))
            if rank <= zeros:
                v = 0.0
            else:
                b = int(np.searchsorted(cum, rank - zeros))
                v = min(bucket_value(b), self.max) * 1000
            out[f"wait_p{round(p * 100)}_ms"] = v
        return out

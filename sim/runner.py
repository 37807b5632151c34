"""``simulate(scenario) -> Result``: the one entry point to a run.

The run advances in fixed slices of simulated time whether or not anyone watches, so
progress output cannot change the order of events; keeping the event log only keeps what
is hashed anyway. Arrivals stop at ``duration_s``; the run then drains (requests in flight
finish, queued messages are delivered) for at most ``drain_s`` more.
"""

from __future__ import annotations

import gc
import sys
from typing import Optional, Sequence

import pandas as pd

from hailan_sim.models.scenario import Scenario
from hailan_sim.sim.engine import Engine
from hailan_sim.sim.metrics import OUTCOMES, WaitHistogram
from hailan_sim.sim.result import Result

__all__ = ["simulate"]

_MIN_SLICES = 200
_FLUSH_AT = 16384


def simulate(
    scenario: Scenario,
    *,
    keep_events: bool = False,
    progress: Optional[bool] = False,
    sinks: Sequence = (),
) -> Result:
    """Run ``scenario`` and return its :class:`Result`.

    Args:
        scenario: what to run (its ``run.seed`` fixes every random draw).
        keep_events: keep the full event log in the result (memory grows with the run).
        progress: show a progress bar on stderr: ``True``, ``False``, or ``None`` for
            "only if the run takes more than two seconds".
        sinks: writers that receive the event log batch by batch as the run goes
            (:class:`hailan_sim.sim.export.EventWriter`, :class:`~hailan_sim.sim.export.SpanWriter`):
            the log is drained to them between the runner's slices, so exports need no
            memory that grows with the run. The caller closes them.
    """
    gc_threshold = gc.get_threshold()
    # NOTE: the collector's generation-0 passes cost a third of a run's time, scanning
    # objects that mostly die young by reference counting; run it far less often. It is
    # restored on the way out, and nothing in the model depends on it.
    gc.set_threshold(max(gc_threshold[0], 200_000), *gc_threshold[1:])
    try:
        return _simulate(scenario, keep_events, progress, tuple(sinks))
    finally:
        gc.set_threshold(*gc_threshold)


def _simulate(scenario: Scenario, keep_events: bool, progress: Optional[bool], sinks: tuple) -> Result:
    engine = Engine(scenario, keep_events=keep_events)
    engine.log.sinks = sinks  # drained at every flush below (and at the end, by sha256())
    env = engine.env
    engine.start()
    run = scenario.run
    # Fixed slices of simulated time, the same whether or not a bar is shown. A slice is at
    # most one second, so what the recorders buffer between flushes does not grow with
    # the run's length.
    step = min(run.duration_s / _MIN_SLICES, 1.0)
    bar = None
    if progress is not False:
        from tqdm import tqdm

        bar = tqdm(total=round(run.duration_s), unit="sim s", file=sys.stderr,
                   delay=0 if progress else 2.0, leave=False, dynamic_ncols=True)
    shown = 0
    recorders = (engine.request_rec, engine.call_rec)
    services = list(engine.services.values())
    for svc in services:
        svc.wait_hist = WaitHistogram()
    # After duration_s the run drains, in the same slices, until nothing is in flight or
    # drain_s is up. Slice ends are computed from integers, never accumulated.
    end = run.duration_s
    limit = end + run.drain_s
    # Drain slices: like the run's, but never so thin that a long drain after a very short
    # run takes hundreds of thousands of them.
    drain_step = min(max(step, run.drain_s / _MIN_SLICES), 1.0)
    i = 0
    first_drain = None
    while True:
        i += 1
        t = step * i
        if t >= end:
            if first_drain is None:
                first_drain = i
            t = min(end + drain_step * (i - first_drain), limit)
        if t > env.now:
            engine.run_until(t)
        for rec in recorders:
            if rec.pending >= _FLUSH_AT:
                rec.flush(env.now)
        for svc in services:
            if len(svc.waits) >= _FLUSH_AT:
                svc.wait_hist.fold(svc.waits)
        if len(engine.log.buf) >= _FLUSH_AT:
            engine.log.flush()
        if bar is not None:
            now = min(round(env.now), round(end))
            bar.update(now - shown)
            shown = now
        # NOTE: no "the heap is empty" test: under env.run it never fired (SimPy leaves its
        # stop event queued after every run), so a run whose heap empties with work still
        # outstanding drains until drain_s, as it always has.
        if t >= end and (t >= limit or not (engine.outstanding or engine.messages_pending)):
            break
    if bar is not None:
        bar.close()
    for rec in recorders:
        rec.flush(None)
    for svc in services:
        svc.wait_hist.fold(svc.waits)
    return _result(engine)


def _result(engine: Engine) -> Result:
    sc = engine.scenario
    run = sc.run
    measured = run.duration_s - run.warmup_s
    req = engine.request_rec
    calls = engine.call_rec

    endpoints = pd.DataFrame(
        [{"endpoint": e.name, **req.summary(e.key)} for e in engine.endpoints]
    ).set_index("endpoint")

    svc_rows, inst_rows = [], []
    for svc in engine.services.values():
        workers = qarea = barea = 0.0
        qmax = served = rejected = orphans = wait_n = 0
        orphan_s = wait_sum = 0.0
        for inst in svc.instances:
            iq = inst.snap[2] - inst.snap[0]
            ib = inst.snap[3] - inst.snap[1]
            inst_rows.append({
                "instance": inst.name, "service": svc.name, "node": inst.node, "zone": inst.zone,
                "utilisation": ib / (inst.workers * measured), "mean_queue": iq / measured,
                "mean_wait_ms": inst.wait_sum / inst.wait_n * 1000 if inst.wait_n else None,
                "max_queue": inst.qmax, "served": inst.served, "rejected": inst.rejected,
                "orphaned_calls": inst.orphans, "orphaned_s": inst.orphan_s,
            })
            workers += inst.workers
            qarea += iq
            barea += ib
            qmax = max(qmax, inst.qmax)
            served += inst.served
            rejected += inst.rejected
            orphans += inst.orphans
            orphan_s += inst.orphan_s
            wait_sum += inst.wait_sum
            wait_n += inst.wait_n
        svc_rows.append({
            "service": svc.name,
            "kind": "service" if svc.infra is None else svc.infra.kind,
            **calls.summary(svc.key),
            "utilisation": barea / (workers * measured),
            "mean_queue": qarea / measured,
            "mean_wait_ms": wait_sum / wait_n * 1000 if wait_n else None,
            **svc.wait_hist.summary(wait_n),
            "max_queue": qmax,
            "served": served,
            "rejected_at_callee": rejected,
            "orphaned_calls": orphans,
            "orphaned_s": orphan_s,
        })
    services = pd.DataFrame(svc_rows).set_index("service")
    instances = pd.DataFrame(inst_rows).set_index("instance")

    def window_frame(key: str, rec) -> pd.DataFrame:
        cols = [key, "window_start_s", *OUTCOMES, "p50_ms", "p99_ms"]
        df = pd.DataFrame(rec.window_rows(), columns=cols)
        df[key] = [rec.keys[k] for k in df[key]]
        df["total"] = df[list(OUTCOMES)].sum(axis=1)
        df["success_ratio"] = df["ok"] / df["total"]
        df["p50_ms"] *= 1000
        df["p99_ms"] *= 1000
        df = df.sort_values([key, "window_start_s"], kind="stable").reset_index(drop=True)
        return df[[key, "window_start_s", *OUTCOMES, "total", "success_ratio", "p50_ms", "p99_ms"]]

    counts = req.counts.sum(axis=0)
    return Result(
        seed=run.seed,
        duration_s=run.duration_s,
        warmup_s=run.warmup_s,
        end_s=engine.env.now,
        event_log_sha256=engine.log.sha256(),
        event_count=engine.log.count,
        sim_events=engine.env_events(),
        requests={o: int(counts[i]) for i, o in enumerate(OUTCOMES)},
        unfinished_requests=engine.outstanding,
        messages_pending=engine.messages_pending,
        endpoints=endpoints,
        services=services,
        instances=instances,
        windows=window_frame("endpoint", req),
        service_windows=window_frame("service", calls),
        mechanisms={**engine.counters, "breaker_transitions": dict(sorted(engine.breaker_transitions.items()))},
        streams=engine.streams.names,
        calls_started=engine.n_calls - engine.n_published,  # message ids share the counter
        breaker_trips=[t for cl in engine._clients.values() for br in cl.breakers.values()
                       for t, a, b in br.transitions if a == "closed" and b == "open"],
        _events=engine.log.kept,
    )

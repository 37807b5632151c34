"""Running a sweep: executors (local processes, Dask) and results that survive a kill.

A run is a pure function of its scenario (seed included), so each is an independent task
and the table does not depend on where, in which order or on how many workers the runs
were computed: rows are keyed by the run's index and sorted by it.

On disk (``--out DIR``):

* ``manifest.json``: the sweep's name, the SHA-256 of its spec and of every scenario it
  builds, the project version, the axes, each point's key and values, the schedules and
  the runs (point, schedule, replication, seed);
* ``journal.jsonl``: one line per finished run, appended and flushed as it finishes, so a
  kill loses at most the runs in flight;
* ``batch-NNNNN.parquet``: the journal's rows, moved into a Parquet file every
  ``batch_size`` runs (written to a temporary name, then renamed: a file is whole or absent).

``--resume`` reads the batches and the journal's complete lines and runs only what is
missing; a run found twice (a kill between writing a batch and emptying the journal) is
kept once.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import orjson
import pandas as pd

from hailan_sim.models.loader import ScenarioError
from hailan_sim.sim.runner import simulate
from hailan_sim.sweeps.metrics import needs_events, run_metrics
from hailan_sim.sweeps.spec import Run, SweepPlan

__all__ = ["SweepStore", "default_workers", "load_results", "run_sweep"]

MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
KEY_COLUMNS = ["run", "point", "schedule", "replication", "seed"]


def default_workers() -> int:
    """Every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _version() -> str:
    try:
        return metadata.version("hailan-sim")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- one run


def run_task(payload: tuple, cpu: Optional[dict] = None) -> dict:
    """Simulate one run and measure it (module level: pickled to workers).

    ``cpu``: if given, the process CPU seconds of the simulations (the run, and the
    baseline that ``invariants`` needs) and of the metrics are added to its ``"simulate"``
    and ``"metrics"`` entries (benchmarks/bench_sweep.py's overhead by parts)."""
    clock = time.process_time
    t0 = clock()
    index, scenario, metrics, recovery = payload
    keep = needs_events(metrics)
    result = simulate(scenario, keep_events=keep)
    baseline = None
    if "invariants" in metrics:
        from hailan_sim.properties.invariants import without_faults

        baseline = simulate(without_faults(scenario), keep_events=True)
    t1 = clock()
    row = run_metrics(scenario, result, metrics, success_ratio=recovery["success_ratio"],
                      window_s=recovery["window_s"], false_trip_grace_s=recovery["false_trip_grace_s"],
                      baseline=baseline)
    if cpu is not None:
        cpu["simulate"] = cpu.get("simulate", 0.0) + (t1 - t0)
        cpu["metrics"] = cpu.get("metrics", 0.0) + (clock() - t1)
    return {"run": index, **row}


def _payloads(plan: SweepPlan, runs: Iterable[Run]) -> Iterator[tuple]:
    metrics = list(plan.sweep.metrics)
    recovery = plan.sweep.recovery.model_dump()
    for run in runs:
        yield run.index, plan.scenario(run), metrics, recovery


# --------------------------------------------------------------------------- executors


def _die_with_parent() -> None:
    """Worker initialiser: on Linux, ask for SIGKILL when the sweep process dies (prctl
    PR_SET_PDEATHSIG), so a killed sweep leaves no worker simulating on its own."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: workers exit after their run
            pass


def _local(payloads: Iterator[tuple], workers: int) -> Iterator[dict]:
    if workers == 1:
        for p in payloads:
            yield run_task(p)
        return
    with cf.ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent) as pool:
        pending: set = set()
        for p in payloads:
            pending.add(pool.submit(run_task, p))
            if len(pending) >= 2 * workers:  # a bounded queue: scenarios are built as needed
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in sorted(done, key=id):
                    yield f.result()
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for f in sorted(done, key=id):
                yield f.result()


def _dask(payloads: Iterator[tuple], *, scheduler: Optional[str], workers: int) -> Iterator[dict]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ScenarioError("command line", "Dask is not installed: pip install 'hailan-sim[dask]'") from None
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ScenarioError("command line", f"--scheduler: cannot reach {scheduler!r} ({exc})") from None
    try:
        limit = 2 * max(1, len(client.scheduler_info().get("workers", {})) or workers)
        it = iter(payloads)
        ac = as_completed()
        for p in it:
            ac.add(client.submit(run_task, p, pure=False))
            if ac.count() >= limit:
                break
        for fut in ac:
            yield fut.result()
            nxt = next(it, None)
            if nxt is not None:
                ac.add(client.submit(run_task, nxt, pure=False))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------- storage


class SweepStore:
    """A sweep's folder: manifest, journal and Parquet batches."""

    def __init__(self, out: Union[str, Path], plan: SweepPlan, *, resume: bool, batch_size: int = 64) -> None:
        self.dir = Path(out)
        self.plan = plan
        self.batch_size = batch_size
        manifest = self.dir / MANIFEST
        if manifest.exists():
            if not resume:
                raise ScenarioError(str(self.dir), "already holds a sweep (manifest.json); pass --resume to "
                                                   "finish it, or choose another --out")
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ScenarioError(str(manifest), f"cannot read the manifest ({exc})") from None
            if old.get("spec_sha256") != plan.sha256:
                raise ScenarioError(str(manifest), "was written by a different sweep (spec SHA-256 "
                                                   f"{str(old.get('spec_sha256'))[:12]}..., this one "
                                                   f"{plan.sha256[:12]}...): --resume needs the same sweep file "
                                                   "and base scenario; choose another --out")
        else:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ScenarioError(str(self.dir), f"cannot create the output folder ({exc.strerror or exc})") from None
            _atomic_write(manifest, json.dumps(manifest_of(plan), indent=1).encode())
        self._recover()

    def _batches(self) -> list[Path]:
        return sorted(self.dir.glob("batch-*.parquet"))

    def _recover(self) -> None:
        """Move the journal's complete lines into a batch (a torn last line is dropped)."""
        rows = _read_journal(self.dir / JOURNAL)
        if rows:
            self._write_batch(rows)
        (self.dir / JOURNAL).write_bytes(b"")
        self._journal = open(self.dir / JOURNAL, "ab")
        self._pending: list[dict] = []

    def done(self) -> set[int]:
        out: set[int] = set()
        for b in self._batches():
            out.update(pd.read_parquet(b, columns=["run"])["run"].tolist())
        return out

    def add(self, row: dict) -> None:
        self._journal.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._journal.flush()
        self._pending.append(row)
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._write_batch(self._pending)
            self._pending = []
            self._journal.truncate(0)
            self._journal.seek(0)

    def close(self) -> None:
        self.flush()
        self._journal.close()

    def _write_batch(self, rows: list[dict]) -> None:
        n = len(self._batches())
        path = self.dir / f"batch-{n:05d}.parquet"
        while path.exists():
            n += 1
            path = self.dir / f"batch-{n:05d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        _rows_frame(rows).to_parquet(tmp, index=False)
        os.replace(tmp, path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_journal(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:  # torn by a kill mid-write: that run is redone
            continue
    return rows


def _rows_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in df.columns:
        if c not in ("run", "event_log_sha256"):
            df[c] = df[c].astype("float64")
    df["run"] = df["run"].astype("int64")
    return df


def manifest_of(plan: SweepPlan) -> dict:
    return {
        "format": 1,
        "sweep": plan.sweep.name,
        "spec_sha256": plan.sha256,
        "hailan_sim_version": _version(),
        "source": plan.source,
        "axes": list(plan.sweep.axes),
        "points": [{"point": i, "key": k, "values": v} for i, (k, v) in enumerate(zip(plan.point_keys, plan.points))],
        "schedules": list(plan.schedules),
        "runs": [[r.point, r.schedule, r.replication, str(r.seed)] for r in plan.runs],
        "spec": plan.sweep.model_dump(mode="json"),
    }


def load_results(out: Union[str, Path]) -> pd.DataFrame:
    """A sweep folder as one DataFrame, one row per finished run, sorted by run: ``run``,
    ``point``, ``schedule``, ``replication``, ``seed``, the axis values (columns named by
    field path), then the metrics (docs/metrics.md)."""
    out = Path(out)
    manifest_path = out / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(str(out), "holds no sweep (no manifest.json)") from None
    frames = [pd.read_parquet(b) for b in sorted(out.glob("batch-*.parquet"))]
    journal = _read_journal(out / JOURNAL)
    if journal:
        frames.append(_rows_frame(journal))
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"run": pd.Series([], dtype="int64")})
    metrics = metrics.drop_duplicates("run", keep="first")
    runs = manifest["runs"]
    keys = pd.DataFrame({
        "run": range(len(runs)),
        "point": [r[0] for r in runs],
        "schedule": [r[1] for r in runs],
        "replication": [r[2] for r in runs],
        "seed": [int(r[3]) for r in runs],
    })
    axes = manifest["axes"]
    values = pd.DataFrame([p["values"] for p in manifest["points"]], columns=axes)
    values["point"] = range(len(values))
    table = keys.merge(values, on="point", how="left").merge(metrics, on="run", how="inner")
    table = table.sort_values("run", kind="stable").reset_index(drop=True)
    table.attrs["sweep"] = manifest["sweep"]
    table.attrs["axes"] = axes
    table.attrs["spec_sha256"] = manifest["spec_sha256"]
    table.attrs["objectives"] = manifest["spec"].get("objectives", [])
    return table


# --------------------------------------------------------------------------- the entry point


def run_sweep(
    plan: SweepPlan,
    out: Union[str, Path, None] = None,
    *,
    workers: Optional[int] = None,
    executor: str = "local",
    scheduler: Optional[str] = None,
    resume: bool = False,
    progress: Union[bool, Callable[[int, int], None]] = False,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Run every run of ``plan`` not yet in ``out`` and return the whole table
    (:func:`load_results`). ``executor``: ``"local"`` (processes; ``workers`` default all
    cores) or ``"dask"`` (``scheduler`` an address, or None for a LocalCluster of
    ``workers``). Without ``out`` the results go to a temporary folder."""
    import tempfile

    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"{workers=} must be >= 1")
    if executor not in ("local", "dask"):
        raise ValueError(f"unknown executor {executor!r} (local or dask)")
    if executor == "dask":
        import importlib.util

        if importlib.util.find_spec("distributed") is None:  # before anything is written
            raise ScenarioError("command line", "Dask is not installed: pip install 'hailan-sim[dask]'")
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="hailan-sweep-")
        out = tmp.name
    try:
        store = SweepStore(out, plan, resume=resume, batch_size=batch_size)
        done = store.done()
        todo = [r for r in plan.runs if r.index not in done]
        bar = None
        if progress is True:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread: local workers are forked
            bar = tqdm(total=len(plan.runs), initial=len(done), unit="run", file=sys.stderr,
                       desc=plan.sweep.name, dynamic_ncols=True, leave=False)
        try:
            payloads = _payloads(plan, todo)
            if executor == "local":
                rows = _local(payloads, workers)
            elif executor == "dask":
                rows = _dask(payloads, scheduler=scheduler, workers=workers)
            else:
                raise ValueError(f"unknown executor {executor!r} (local or dask)")
            finished = len(done)
            for row in rows:
                store.add(row)
                finished += 1
                if bar is not None:
                    bar.update()
                elif callable(progress):
                    progress(finished, len(plan.runs))
        finally:
            if bar is not None:
                bar.close()
            store.close()
        table = load_results(out)
        table.attrs["ran"] = finished - len(done)
        return table
    finally:
        if tmp is not None:
            tmp.cleanup()

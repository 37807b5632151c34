"""Data files a scenario names (a rate table, a trace), read within bounds.

A scenario file may point at data: ``csv:`` of a piecewise arrival (a ``t_s,rate`` table)
and ``file:`` of a trace arrival (a CSV or Parquet file with a column ``t_s``). Such a
path is resolved relative to the scenario file's folder and must stay inside a *data
root*: by default that same folder, so a scenario handed around cannot read
``/etc/passwd`` or climb out with ``../``; ``load_scenario(..., data_root=DIR)`` (the CLI's
``--data-root DIR``) allows a wider folder. Symbolic links are followed before the check,
so a link cannot lead outside either. Only regular files are read: a FIFO would block
for ever and ``/dev/zero`` never ends. Every file has a size limit, checked before it is
read and again while reading (a file may grow in between).

Nothing here knows the scenario's types: the validators in
:mod:`hailan_sim.models.scenario` call these functions, and a problem is a
``ValueError`` whose message the loader turns into its one-line form.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = [
    "MAX_INLINE_TIMES",
    "MAX_SCENARIO_BYTES",
    "MAX_TABLE_BYTES",
    "MAX_TRACE_BYTES",
    "MAX_TRACE_TIMES",
    "read_bounded",
    "read_data_file",
    "read_trace",
]

MiB = 2**20
# A scenario file: 50 times the built-in default (19 KB). Parsing YAML costs about 10 us
# per value even with libyaml, so this bounds the parse to a few seconds; large tables
# belong in data files, which are read by columnar readers.
MAX_SCENARIO_BYTES = 1 * MiB
# A rate table (t_s,rate): a day at one-second steps is about 1.5 MB.
MAX_TABLE_BYTES = 16 * MiB
# A trace file, and the times it may hold: 5 million times are about 160 MB as the list
# the scenario keeps (a Python float and its pointer each).
MAX_TRACE_BYTES = 128 * MiB
MAX_TRACE_TIMES = 5_000_000
# Times written inline in YAML (times_s: [...]); more belong in a file.
MAX_INLINE_TIMES = 10_000

_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``OSError`` if it cannot be
    opened or is a folder, ``ValueError`` (naming ``what``) if it is another kind of file
    (a FIFO, a device) or too large."""
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else (
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
            )
            raise ValueError(f"{what} is {kind}; only regular files are read")
        if st.st_size > limit:
            raise ValueError(f"{what} is {_size(st.st_size)}; at most {_size(limit)} is allowed")
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # the file object owns it now
            data = fh.read(limit + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:
        raise ValueError(f"{what} is larger than {_size(limit)}, the most allowed")
    return data


def read_data_file(name: str, context: Optional[Mapping[str, Any]], what: str, limit: int) -> tuple[Path, bytes]:
    """Resolve ``name`` against the scenario's folder, confine it to the data root and
    read it (see the module's docstring). ``context`` is the validation context the loader
    passes: ``base_dir`` (the scenario file's folder) and ``data_root`` (or None)."""
    ctx = context or {}
    base = Path(ctx.get("base_dir") or ".")
    root = Path(ctx.get("data_root") or base)
    given = Path(name)
    path = given if given.is_absolute() else base / given
    try:
        real = path.resolve()  # links followed as far as they exist: confined before it is looked at
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ValueError(f"cannot read {what} {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    root_real = root.resolve()
    if not real.is_relative_to(root_real):
        raise ValueError(
            f"{what} {name!r} is outside {str(root_real)!r}; data files must be inside the scenario "
            "file's folder (allow a wider folder with --data-root DIR, or load_scenario(..., data_root=DIR))"
        )
    try:
        return real, read_bounded(real, limit, f"{what} {name!r}")
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


def read_trace(name: str, context: Optional[Mapping[str, Any]]) -> list[float]:
    """The arrival times (seconds) in a trace file: a ``.csv`` file with a header and a
    column ``t_s`` (other columns are ignored) or a ``.parquet`` file with a column
    ``t_s``; finite, non-negative and in non-decreasing order."""
    import numpy as np
    import pyarrow as pa

    what = "the trace file"  # not "trace ...": a message starting with a word like a field is read as a path
    suffix = Path(name).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{what} {name!r}: expected a .csv or .parquet file with a column t_s")
    path, raw = read_data_file(name, context, what, MAX_TRACE_BYTES)
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(pa.BufferReader(raw), columns=["t_s"])
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(
                io.BytesIO(raw),
                convert_options=pcsv.ConvertOptions(
                    include_columns=["t_s"], column_types={"t_s": pa.float64()}, null_values=[""]
                ),
            )
        column = table.column("t_s")
    except (pa.ArrowException, KeyError, ValueError, OSError) as exc:
        detail = " ".join(str(exc).split())[:160]
        kind = "Parquet" if suffix == ".parquet" else "CSV"
        raise ValueError(
            f"cannot read {what} {name!r}: {detail} (expected a {kind} file with a numeric column t_s)"
        ) from None
    # CSV data row i is on line i + 2 (after the header); Parquet rows count from 1.
    row = (lambda i: f"line {i + 2}") if suffix == ".csv" else (lambda i: f"row {i + 1}")
    if len(column) == 0:
        raise ValueError(f"{what} {name!r} has no times (expected at least one row)")
    if len(column) > MAX_TRACE_TIMES:
        raise ValueError(f"{what} {name!r} has {len(column)} times; at most {MAX_TRACE_TIMES} are allowed")
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{what} {name!r}, {row(first)}: t_s is empty")
    try:
        times = column.cast(pa.float64()).to_numpy()
    except pa.ArrowException as exc:
        raise ValueError(f"{what} {name!r}: t_s must be numbers ({exc})") from None
    bad = np.flatnonzero(~np.isfinite(times) | (times < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{what} {name!r}, {row(i)}: t_s {float(times[i])!r} is not a finite number >= 0")
    down = np.flatnonzero(np.diff(times) < 0)
    if down.size:
        i = int(down[0]) + 1
        raise ValueError(
            f"{what} {name!r}, {row(i)}: t_s {times[i]:g} comes after {times[i - 1]:g}; "
            "times must be in non-decreasing order"
        )
    return times.tolist()

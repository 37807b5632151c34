"""A counterexample's story: the timeline of what happened, as text and as a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

__all__ = ["plot_timeline", "timeline_events", "windowed_success"]

_SHOWN = ("fault_start", "fault_end", "instance_down", "instance_up", "instance_drain", "instance_stop",
          "autoscale")


def timeline_events(events: pd.DataFrame, *, limit: int = 60) -> list[str]:
    """Faults, instance changes, deregistrations and breaker openings, one line each, in
    time order. Breaker transitions are grouped per second and scope, so a breaker that
    flaps is one line with a count."""
    lines: list[tuple[float, str]] = []
    ev = events
    for row in ev[ev.event.isin(_SHOWN)].itertuples(index=False):
        what = f"{row.event:<14} {row.target if not pd.isna(row.target) else ''}"
        if not pd.isna(row.instance):
            what += f" {row.instance}"
        if row.event.startswith("fault"):
            what += f" ({row.operation})"
        lines.append((row.t, what))
    reg = ev[(ev.event == "registry") & (ev.operation.isin(["deregistered", "status"]))]
    for row in reg.itertuples(index=False):
        lines.append((row.t, f"registry       {row.instance} {row.operation} {row.outcome}"))
    br = ev[ev.event == "breaker"]
    if len(br):
        br = br.assign(second=br.t.astype(int))
        for (second, src, scope, a, b), grp in br.groupby(["second", "source", "target", "operation", "outcome"], sort=True):
            n = len(grp)
            lines.append((grp.t.iloc[0], f"breaker        {src} [{scope}] {a} -> {b}" + (f" x{n}" if n > 1 else "")))
    lines.sort(key=lambda x: x[0])
    out = [f"{t:9.3f}s  {text}" for t, text in lines]
    if len(out) > limit:
        out = out[: limit // 2] + [f"   ... {len(out) - limit} more ..."] + out[-limit // 2 :]
    return out


def windowed_success(windows: pd.DataFrame, width_s: float = 5.0) -> pd.DataFrame:
    """Success ratio per endpoint over ``width_s`` windows (rows: window start)."""
    w = windows.assign(bucket=(windows.window_start_s // width_s) * width_s)
    g = w.groupby(["bucket", "endpoint"])[["ok", "total"]].sum()
    return (g["ok"] / g["total"]).unstack("endpoint").round(3)


def plot_timeline(record, path: Path, *, title: Optional[str] = None) -> Path:
    """Success ratio and p99 per endpoint against the baseline, with faults shaded and
    breaker openings, instance deaths and deregistrations marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = record.result.events()
    w = record.result.windows
    base = record.baseline.windows
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 9), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 3, 1.4]})
    for name, rows in w.groupby("endpoint"):
        line, = ax1.plot(rows.window_start_s, rows.success_ratio, lw=1.2, label=name)
        ax2.plot(rows.window_start_s, rows.p99_ms, lw=1.2, color=line.get_color())
        b = base[base.endpoint == name]
        ax1.plot(b.window_start_s, b.success_ratio, lw=0.6, ls=":", color=line.get_color())
        ax2.plot(b.window_start_s, b.p99_ms, lw=0.6, ls=":", color=line.get_color())
    starts = ev[ev.event == "fault_start"]
    ends = ev[ev.event == "fault_end"].set_index("outcome")["t"]
    end_t = record.result.end_s
    for row in starts.itertuples(index=False):
        stop = ends.get(row.outcome, end_t)
        for ax in (ax1, ax2, ax3):
            ax.axvspan(row.t, stop, color="tab:red", alpha=0.12)
        label = str(row.operation) if pd.isna(row.target) else f"{row.operation} {row.target}"
        ax1.text(row.t, 1.02, label, fontsize=7, color="tab:red", transform=ax1.get_xaxis_transform())
    marks = [
        ("breaker opened", ev[(ev.event == "breaker") & (ev.outcome == "open")]["t"], 2, "tab:orange"),
        ("instance down", ev[ev.event == "instance_down"]["t"], 1, "tab:red"),
        ("deregistered", ev[(ev.event == "registry") & (ev.operation == "deregistered")]["t"], 0, "tab:purple"),
    ]
    for label, ts, y, color in marks:
        ax3.scatter(ts, [y] * len(ts), s=8, color=color, label=f"{label} ({len(ts)})")
    ax3.set_yticks([0, 1, 2], ["deregistered", "instance down", "breaker opened"])
    ax1.set(ylabel="success ratio (dotted: baseline)", ylim=(-0.02, 1.05))
    ax2.set(ylabel="p99 (ms, dotted: baseline)", yscale="log")
    ax3.set(xlabel="simulated time (s)")
    ax1.legend(fontsize=7, ncol=5, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

"""Small helpers to write test scenarios in code."""

from __future__ import annotations

import pandas as pd

from hailan_sim.models.scenario import Scenario


def const(ms: float) -> dict:
    return {"dist": "constant", "value": ms}


def trace(*times: float) -> dict:
    return {"kind": "trace", "times_s": list(times)}


def svc(name: str, port: int, ops: dict, **kw) -> dict:
    return {"name": name, "port": port, "instances": 1, "workers": 1, "operations": ops, **kw}


def op(ms: float, calls=None, **kw) -> dict:
    out = {"service_time_ms": const(ms), **kw}
    if calls is not None:
        out["calls"] = calls
    return out


def build(services: list, endpoints: list, *, timeout_s=5.0, duration_s=10.0, **extra) -> Scenario:
    data = {
        "name": "t",
        "run": {"duration_s": duration_s, "seed": 1, **extra.pop("run", {})},
        "services": services,
        "workload": {"endpoints": endpoints},
        "policies": {"timeout_s": timeout_s},
        **extra,
    }
    return Scenario.model_validate(data)


def endpoint(entry: str, arrival: dict, name: str = "ep", timeout_s=None) -> dict:
    return {"name": name, "entry": entry, "arrival": arrival, "timeout_s": timeout_s}


def log(result, *, digits: int = 9) -> list[tuple]:
    """(event, t, target, outcome) for every record, times rounded to ``digits``."""
    df = result.events()
    outcomes = [None if pd.isna(o) else o for o in df["outcome"].tolist()]
    return [
        (ev, round(t, digits), tgt, out)
        for ev, t, tgt, out in zip(df["event"].tolist(), df["t"].tolist(), df["target"].tolist(), outcomes)
    ]

"""The counterexamples shipped with the package: ``hailan-sim replay --list`` and
``hailan-sim replay NAME``.

They live in the repository under ``findings/counterexamples/`` and install as the package
``hailan_sim.counterexamples`` (data files, see pyproject.toml), so a wheel carries them.
Each file's header (written by :func:`hailan_sim.properties.checker.write_counterexample`)
names the invariant it violates: ``replay`` of it exits 1 while that still holds true.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

__all__ = ["shipped", "shipped_path"]

_PACKAGE = "hailan_sim.counterexamples"


def _files() -> list:
    root = resources.files(_PACKAGE)
    return sorted((f for f in root.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)


def _header(text: str) -> dict:
    info = {"invariant": None, "fault": None}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].strip().partition(": ")
        if key in info and info[key] is None:
            info[key] = value.strip()
    return info


def shipped() -> dict[str, dict]:
    """Name (file name without ``.yaml``) -> ``{"invariant", "fault", "path"}`` for every
    shipped counterexample, by name."""
    out = {}
    for f in _files():
        info = _header(f.read_text(encoding="utf-8"))
        out[f.name.removesuffix(".yaml")] = {**info, "path": str(f)}
    return out


def shipped_path(name: str) -> Optional[Path]:
    """The installed file of shipped counterexample ``name`` (with or without ``.yaml``)."""
    stem = name.removesuffix(".yaml")
    for f in _files():
        if f.name == f"{stem}.yaml":
            return Path(str(f))
    return None

"""The wheel carries everything the package needs at run time, and nothing generic.

What is needed is worked out from the repository, not listed by hand: every module of the
folders pyproject.toml maps under ``hailan_sim``, every data file the code reads (the
default scenario, every shipped profile, every committed counterexample), and the console
script. ``.ci/run`` passes the wheel it built and installs in ``HAILAN_SIM_WHEEL``; without
it the test builds one with pip (build isolation: pip fetches setuptools once, then caches).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    given = os.environ.get("HAILAN_SIM_WHEEL")
    if given:
        return zipfile.ZipFile(given)
    out = tmp_path_factory.mktemp("dist")
    # From a clean copy, as from a fresh clone: a working tree's build/ and *.egg-info/
    # (left by earlier builds and editable installs) can add files the configuration does not.
    src = tmp_path_factory.mktemp("src") / "hailan-sim"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", ".venv", ".git", "__pycache__", ".hypothesis", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
                   check=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    (path,) = out.glob("hailan_sim-*.whl")
    return zipfile.ZipFile(path)


def _mapping() -> dict[str, str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return cfg["tool"]["setuptools"]["package-dir"]


def _installed(package: str, rel: Path) -> str:
    return "/".join([*package.split("."), *rel.parts])


def test_every_module_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    expected = set()
    for package, folder in _mapping().items():
        for py in (ROOT / folder).glob("*.py"):
            expected.add(_installed(package, py.relative_to(ROOT / folder)))
    assert expected and "hailan_sim/cli.py" in expected and "hailan_sim/sim/export.py" in expected
    assert sorted(expected - names) == []


def test_every_data_file_the_code_reads_is_in_the_wheel(wheel):
    from hailan_sim.models.policies import PROFILES

    names = set(wheel.namelist())
    data = ROOT / "models" / "data"
    needed = {_installed("hailan_sim.models", p.relative_to(ROOT / "models"))
              for p in data.rglob("*") if p.is_file()}
    needed |= {_installed("hailan_sim.counterexamples", p.relative_to(ROOT / "findings" / "counterexamples"))
               for p in (ROOT / "findings" / "counterexamples").glob("*.yaml")}
    # what the loader, the profiles and `replay NAME` open
    assert "hailan_sim/models/data/default.yaml" in needed
    for profile in PROFILES:
        assert f"hailan_sim/models/data/profiles/{profile}.yaml" in needed
    assert len([n for n in needed if n.startswith("hailan_sim/counterexamples/")]) >= 5
    assert sorted(needed - names) == []


def test_one_import_root_and_the_console_script(wheel):
    tops = {n.split("/")[0] for n in wheel.namelist()}
    dist = [t for t in tops if t.endswith(".dist-info")]
    assert tops - set(dist) == {"hailan_sim"}, tops
    (info,) = dist
    entry = wheel.read(f"{info}/entry_points.txt").decode()
    assert "hailan-sim = hailan_sim.cli:main" in entry
    requires = [ln for ln in wheel.read(f"{info}/METADATA").decode().splitlines()
                if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert requires and all("==" in ln for ln in requires)  # exact pins, as the code promises

"""tools/mutate.py, the project's mutation tool: its catalogues stay in step with the source
(every mutant's `find` occurs exactly once in its file, or the mutant would silently test
nothing), and a malformed catalogue is a one-line error with exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "mutate.py"

pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason="needs the source tree's tools/")


def _mutate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("catalogue", ["mutants.yaml", "invariants-mutants.yaml", "benchmarks-mutants.yaml"])
def test_every_shipped_mutant_applies_to_the_current_source(catalogue):
    path = ROOT / "tools" / catalogue
    out = _mutate("--catalogue", str(path), "--list")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert listed == [m["id"] for m in yaml.safe_load(path.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("text, message", [
    ("[1, 2\n", "not valid YAML (line 2"),
    ("a: 1\n", "must be a list of mutants"),
    ("- 3\n", "entry 0: must be a mapping"),
    ("- {id: x, file: y, find: 1, replace: b, why: c}\n", "entry 0: find must be text"),
    ("- {id: x, file: y}\n", "entry 0: missing find, replace, why"),
    ("- {id: x, file: no/such.py, find: a, replace: b, why: c}\n", "x: no file no/such.py"),
])
def test_a_malformed_catalogue_is_a_one_line_error(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    out = _mutate("--catalogue", str(bad), "--list")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_a_missing_catalogue_is_a_one_line_error(tmp_path):
    out = _mutate("--catalogue", str(tmp_path / "none.yaml"), "--list")
    assert out.returncode == 2 and "cannot read" in out.stderr and "Traceback" not in out.stderr

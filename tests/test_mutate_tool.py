"""tools/mutate.py, the planted-mutant tool itself: stopped mid-run, it leaves no mutant behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mutate_puts_the_file_back_when_terminated(tmp_path):
    """SIGTERM (kill, pkill, a CI timeout) while a mutant's tests run: the mutated file is
    restored and the tests' process is stopped, as on Ctrl-C. Before, SIGTERM ended the tool
    at once and the mutant stayed in the source (session 26 found one in properties/checker.py)."""
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "mutate.py", tmp_path / "tools" / "mutate.py")
    src = tmp_path / "thing.py"
    src.write_text("X = 1\n")
    running = tmp_path / "running"
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_waits.py").write_text(textwrap.dedent(f"""
        import os, time
        from pathlib import Path

        def test_waits():
            if "X = 2" in Path({str(src)!r}).read_text():  # the mutant is in place
                Path({str(running)!r}).write_text(str(os.getpid()))
                time.sleep(120)
    """))
    catalogue = tmp_path / "mutants.yaml"
    catalogue.write_text('- id: one\n  file: thing.py\n  find: "X = 1"\n  replace: "X = 2"\n  why: planted\n')
    proc = subprocess.Popen([sys.executable, str(tmp_path / "tools" / "mutate.py"), "--catalogue", str(catalogue),
                             "--tests", "tests/test_waits.py", "-k", ""],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not running.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.1)
        assert src.read_text() == "X = 2\n"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert src.read_text() == "X = 1\n"
    pid = int(running.read_text())
    for _ in range(50):  # the tests' process was killed with the tool
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the mutant's test process {pid} is still running")

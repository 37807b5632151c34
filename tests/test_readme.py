"""The README's examples stay true: its scenario validates and runs, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from hailan_sim.models import parse_scenario
from hailan_sim.sim import simulate

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_the_scenario_example_runs():
    block = re.search(r"```yaml\n(name: shop.*?)```", README, re.S).group(1)
    scenario = parse_scenario(block, "README.md").with_run(duration_s=20, warmup_s=2)
    result = simulate(scenario)
    assert result.requests["ok"] > 0
    assert set(result.services.index) >= {"order-service", "user-service", "redis", "rabbitmq"}


def test_the_quick_start_is_two_commands_and_ci_runs_the_second():
    quick = re.search(r"## Quick start.*?```sh\n(.*?)```", README, re.S).group(1)
    commands = [line for line in quick.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert "hailan-sim run" in commands[0]
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1].replace(" -q", "") in ci.replace(" -q", "")

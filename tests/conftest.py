from pathlib import Path

import pytest

from models import load_scenario

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def small():
    """A small scenario using every engine feature (tests/scenarios/small.yaml)."""
    return load_scenario(HERE / "scenarios" / "small.yaml")

from pathlib import Path

import pytest

from hailan_sim.models import load_scenario

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def small():
    """A small scenario using every engine feature (tests/scenarios/small.yaml)."""
    return load_scenario(HERE / "scenarios" / "small.yaml")


# Hypothesis profiles: "ci" (the default) is derandomized so a test run is reproducible;
# "deep" explores many more examples. Select with HAILAN_HYPOTHESIS_PROFILE=deep.
import os  # noqa: E402

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True)
settings.register_profile("deep", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HAILAN_HYPOTHESIS_PROFILE", "ci"))

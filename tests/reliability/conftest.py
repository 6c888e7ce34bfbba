"""Fixtures of the fault-injection suite: the seeded random source of kill points and an
uninterrupted reference run of the tiny recipe."""
import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from reliability_common import SEED_ENV, Portkit, read_metrics  # noqa: E402


@pytest.fixture(scope="session")
def portkit_cli():
    return Portkit()


@pytest.fixture(scope="session")
def fault_seed(request) -> int:
    """Different each run unless PORTKIT_FAULT_SEED is set; printed so a failure can be replayed."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1 << 31))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    line = f"reliability: random kill points from seed {seed} ({SEED_ENV}={seed} reproduces them)"
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even under -q and output capture
            reporter.write_line("\n" + line)
    return seed


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, portkit_cli):
    """The tiny recipe, uninterrupted: what every killed-and-resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = portkit_cli.run(out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="session")
def reference_metrics(reference_run) -> list[dict]:
    return read_metrics(reference_run)

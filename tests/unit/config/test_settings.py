"""The settings module refuses a node's environment that cannot work, saying why."""

import os
import subprocess
import sys

import pytest

from tests.integration.nodes import ROOT

GOOD = {"ROLE": "client", "NODE_ID": "laptop-9", "DEBUG": "1"}


def check(**environment: str) -> subprocess.CompletedProcess:
    """Run ``manage.py check`` with only the given node settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROLE", "NODE_ID")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(DATABASE_URL="sqlite:///:memory:", **environment)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_complete_environment_passes():
    assert check(**GOOD).returncode == 0


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"ROLE": "laptop"}, "ROLE='laptop' is not a role"),
        ({"NODE_ID": ""}, "NODE_ID"),
        ({"UPSTREAM_URL": "community-1:8643"}, "is not a server's address"),
        ({"UPSTREAM_URL": "ftp://community-1"}, "is not a server's address"),
        (
            {"UPSTREAM_URL": "https://community-1:8643/api/sync/v1/"},
            "e.g. https://community-1:8643",
        ),
    ],
)
def test_a_setting_that_cannot_work_stops_start_up_with_the_fix(change, says):
    result = check(**{**GOOD, **change})

    assert result.returncode != 0
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr

"""ansible/site.yml without hosts: syntax, and which tiers it provisions in order.

These run in seconds; test_site.py provisions real (stand-in) hosts.
"""

import os
import re
import subprocess

from tests.ansible.hosts import REPO

EXAMPLE = REPO / "ansible" / "inventories" / "example" / "hosts.yml"


def playbook(*args: str) -> str:
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(EXAMPLE),
         str(REPO / "ansible" / "site.yml"), *args],
        capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_site_playbook_is_valid():
    assert "playbook: " in playbook("--syntax-check")


def test_every_host_is_prepared_then_tiers_start_upstream_first():
    listed = playbook("--list-hosts")

    plays = re.findall(r"play #\d+ \(([\w:]+)\)", listed)
    assert plays == [
        "central:community_servers:middlemen:field_laptops",
        "central",
        "community_servers",
        "middlemen",
        "field_laptops",
    ]


def test_each_tier_gets_its_roles():
    listed = playbook("--list-tasks")
    plays = re.split(r"\n\s*play #\d+ ", listed)[1:]
    roles = [set(re.findall(r"^\s+(\w+) : ", play, re.MULTILINE)) for play in plays]

    # The images are included (app_stack, tasks_from), so --list-tasks shows
    # the include rather than the role's tasks.
    assert roles[0] == {"docker_engine", "node_identity"}
    assert roles[1] == {"app_stack", "db_backup"}
    # sftp_link and node_registration are included when an upstream is named,
    # so --list-tasks shows the include rather than the role's tasks.
    assert roles[2] >= {"app_stack", "db_backup"}
    assert roles[3] >= {"app_stack", "db_backup"}
    assert roles[4] >= {"app_stack"} and "db_backup" not in roles[4]

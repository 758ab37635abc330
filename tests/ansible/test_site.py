"""ansible/site.yml on stand-in hosts: a community server and a field laptop.

The first run makes each host serve its role and registers the laptop on the
server; a second run and a --check run change nothing.
"""

import re

import pytest

pytestmark = pytest.mark.ansible

COMMUNITY_PORT = 8643
LAPTOP_PORT = 8443


def changed_tasks(output: str) -> list[str]:
    """Return "host: task" for every task a playbook run reported as changed."""
    task, found = "", []
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        match = re.match(r"changed: \[([^\]]+)\]", line)
        if match:
            found.append(f"{match[1]}: {task}")
    return found


def host(deployment, name):
    return next(h for h in deployment.hosts if h.name == name)


def test_first_run_provisions_both_hosts_without_failures(deployment):
    _, recap = deployment.first_run
    assert set(recap) >= {"community-t1", "laptop-t1"}
    for name, counts in recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, (name, counts)
        assert counts["changed"] > 0, f"{name}: the first run changed nothing"


def test_each_host_serves_its_role(deployment):
    community = host(deployment, "community-t1").health(COMMUNITY_PORT)
    laptop = host(deployment, "laptop-t1").health(LAPTOP_PORT)

    assert community == {"status": "ok", "role": "community", "node": "community-t1"}
    assert laptop == {"status": "ok", "role": "client", "node": "laptop-t1"}


def test_server_lists_the_laptop_as_registered(deployment):
    listed = host(deployment, "community-t1").manage("sync", "node", "list")

    line = next(row for row in listed.splitlines() if row.startswith("laptop-t1 "))
    assert line.split()[1:3] == ["client", "active"]


def test_provisioned_laptop_pushes_to_provisioned_server(deployment):
    laptop = host(deployment, "laptop-t1")
    community = host(deployment, "community-t1")
    laptop.manage("seed", "--households", "3", "--seed", "7")

    pushed = laptop.manage("sync", "push")
    status = community.manage("sync", "status")

    sent = int(re.search(r"sent (\d+)", pushed)[1])
    assert sent > 0 and f"applied {sent}," in pushed and "failed 0" in pushed, pushed
    row = next(r for r in status.splitlines() if r.strip().startswith("laptop-t1"))
    assert f"applied {sent} " in row, status
    assert "failed 0" in row and "parked 0" in row, row


def test_community_server_dumps_its_database(deployment):
    community = host(deployment, "community-t1")

    dump = community.sh("/usr/local/sbin/collect-offline-backup").strip()

    assert community.sh(f"head -c 5 {dump}") == "PGDMP"
    cron = community.sh("cat /etc/cron.d/collect-offline-backup")
    assert "/usr/local/sbin/collect-offline-backup" in cron


def test_second_run_changes_nothing(deployment):
    output, recap = deployment.playbook()

    assert all(c["changed"] == 0 for c in recap.values()), changed_tasks(output)


def test_check_mode_reports_no_changes(deployment):
    output, recap = deployment.playbook("--check", "--diff")

    assert all(c["changed"] == 0 for c in recap.values()), changed_tasks(output)

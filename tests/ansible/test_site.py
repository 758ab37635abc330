"""ansible/site.yml on stand-in hosts, one per tier.

central-t1, community-t1 (pushing to central), middleman-t1 and laptop-t1 (both
of community-t1's site). The first run makes each host serve its role and
registers every node where it delivers or is pulled from; then what is entered
on the laptop travels the whole way on the provisioned links: pushed to the
site, pulled and relayed by the middleman, sent to central as a batch file
over the SFTP link, receipted back. A second run and a --check run change
nothing.
"""

import re

import pytest

from tests.e2e.harness import wait_for

pytestmark = pytest.mark.ansible

# Each host's role and https port (ansible/group_vars/<tier>.yml).
SERVES = {
    "central-t1": ("central", 8743),
    "community-t1": ("community", 8643),
    "middleman-t1": ("middleman", 8543),
    "laptop-t1": ("client", 8443),
}


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


def registered(deployment, on: str) -> dict[str, list[str]]:
    """Return ``sync node list`` on a host: node id -> role and flags."""
    listed = host(deployment, on).manage("sync", "node", "list")
    return {row.split()[0]: row.split()[1:-1] for row in listed.splitlines()}


def producer_row(status: str, producer: str) -> str:
    """Return a producer's "incoming per producer" line of ``sync status``."""
    rows = [r for r in status.splitlines() if r.strip().startswith(f"{producer} ")]
    assert rows, f"{producer} is not among the producers:\n{status}"
    return rows[0]


def made_here(node) -> int:
    """Return how many transactions a node has produced."""
    return int(re.search(r"outgoing (\d+) made here", node.manage("sync", "status"))[1])


def test_first_run_provisions_every_host_without_failures(deployment):
    _, recap = deployment.first_run
    assert set(recap) == set(SERVES)
    for name, counts in recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, (name, counts)
        assert counts["changed"] > 0, f"{name}: the first run changed nothing"


def test_each_host_serves_its_role(deployment):
    for name, (role, port) in SERVES.items():
        health = host(deployment, name).health(port)

        assert health == {"status": "ok", "role": role, "node": name}


def test_each_node_is_registered_where_its_data_goes(deployment):
    site = registered(deployment, "community-t1")
    central = registered(deployment, "central-t1")
    middleman = registered(deployment, "middleman-t1")
    laptop = registered(deployment, "laptop-t1")

    assert site["laptop-t1"] == ["client", "active"]
    assert site["middleman-t1"] == ["middleman", "active", "relay"]
    # The site takes only the receipts central signed.
    assert site["central-t1"] == ["central", "active"]
    assert central["community-t1"] == ["community", "active", "relay"]
    # Central verifies what is relayed to it from further down.
    assert central["laptop-t1"] == ["client", "active"]
    assert central["middleman-t1"] == ["middleman", "active"]
    # The middleman of the laptop's site may pull from it, and verifies it.
    assert laptop == {"middleman-t1": ["middleman", "active"]}
    assert middleman == {"laptop-t1": ["client", "active"]}


def test_provisioned_laptop_pushes_to_provisioned_server(deployment):
    laptop = host(deployment, "laptop-t1")
    community = host(deployment, "community-t1")
    laptop.manage("seed", "--households", "3", "--seed", "7")

    pushed = laptop.manage("sync", "push")
    status = community.manage("sync", "status")

    sent = int(re.search(r"sent (\d+)", pushed)[1])
    assert sent > 0 and f"applied {sent}," in pushed and "failed 0" in pushed, pushed
    row = producer_row(status, "laptop-t1")
    assert f"applied {sent} " in row, status
    assert "failed 0" in row and "parked 0" in row, row


def test_provisioned_middleman_pulls_from_the_laptop_and_relays_to_the_site(
    deployment,
):
    laptop = host(deployment, "laptop-t1")
    middleman = host(deployment, "middleman-t1")
    community = host(deployment, "community-t1")
    laptop.manage("seed", "--households", "2", "--seed", "8")
    made = made_here(laptop)

    pulled = middleman.manage("sync", "pull", "https://laptop-t1:8443")
    relayed = middleman.manage("sync", "push")

    assert f"now holding through #{made};" in pulled and "failed 0" in pulled, pulled
    assert f"relayed laptop-t1 through #{made}" in relayed, relayed
    row = producer_row(community.manage("sync", "status"), "laptop-t1")
    # Every transaction once: the first ones came directly, the rest relayed.
    assert f"held #{made} " in row and f"applied {made} " in row, row
    assert "failed 0" in row and "conflicts 0" in row, row


def test_site_sends_to_central_over_the_sftp_link_and_gets_a_receipt(deployment):
    laptop = host(deployment, "laptop-t1")
    community = host(deployment, "community-t1")
    central = host(deployment, "central-t1")
    made = made_here(laptop)

    exported = community.manage("sync", "export")
    sent = community.manage("sync", "send", "--sftp")

    assert "in 1 batches" in exported, exported
    assert "sent 1 batch files" in sent, sent

    def applied_at_central():
        status = central.manage("sync", "status")
        return f"applied {made} " in producer_row(status, "laptop-t1") and status

    # The importer looks at the drop every 30 s and lets a file settle 10 s.
    status = wait_for(
        applied_at_central,
        "central's importer to apply the site's batch",
        timeout=180,
        interval=5,
        hint="Is the batch in the drop, waiting or quarantined? See the logs below.",
    )
    assert "quarantined 0" in status, status

    def receipt_fetched():
        fetched = community.manage("sync", "fetch-receipts", "--sftp")
        # Done once a receipt came, whether the site took or quarantined it.
        return not fetched.startswith("imported 0 receipts, quarantined 0") and fetched

    fetched = wait_for(receipt_fetched, "central's receipt on the site", 120, 5)
    assert fetched.startswith("imported 1 receipts, quarantined 0"), fetched
    assert re.search(rf"\blaptop-t1 #{made}\b", fetched), fetched
    held = f"central-t1 holds laptop-t1 through #{made}"
    assert held in community.manage("sync", "status")


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

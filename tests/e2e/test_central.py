"""The whole way to central: laptops, a middleman, the site, SFTP, the importer."""

import re
import secrets

import pytest

from tests.e2e.central import CentralDrop, sftp_settings
from tests.e2e.harness import parallel, wait_for
from tests.e2e.proof import prove_delivered, snapshot

CENTRAL = "central-1"
SITE = "community-1"


@pytest.fixture
def drop(request, deployment):
    """Return central's SFTP drop and importer; logs on failure, always removed."""
    central_drop = CentralDrop(deployment, CENTRAL)
    try:
        yield central_drop
    finally:
        failed = any(
            getattr(getattr(request.node, f"report_{when}", None), "failed", False)
            for when in ("setup", "call")
        )
        if failed:
            print(central_drop.all_logs())
        central_drop.close()


def test_field_records_reach_central_over_sftp_and_receipts_come_back(deployment, drop):
    pull_token, relay_token = secrets.token_hex(24), secrets.token_hex(24)
    assert deployment.field_network.id  # made once, before the threads join it
    community, central, laptop1, laptop2, middleman, _ = parallel(
        lambda: deployment.community(SITE, **sftp_settings(CENTRAL)),
        lambda: deployment.server(CENTRAL, "central"),
        lambda: deployment.laptop("laptop-01", upstream=SITE),
        lambda: deployment.laptop("laptop-02", upstream=None),
        lambda: deployment.server(
            "middleman-1",
            "middleman",
            PULL_TOKEN=pull_token,
            UPSTREAM_URL=f"http://{SITE}:8000",
            UPSTREAM_TOKEN=relay_token,
        ),
        lambda: drop.start_sftp(SITE),
    )

    # Who may do what, as compose/bin/provision registers it: laptop-01 pushes
    # to the site; the middleman pulls from laptop-02 and relays to the site;
    # the site relays everything to central, which takes its batch files only
    # through its drop; every node above a producer knows its key; the site
    # takes receipts signed by central.
    def on_site():
        deployment.register(community, laptop1)
        deployment.register(community, middleman, "--relay", token=relay_token)
        deployment.register(community, laptop2, "--no-token")
        deployment.register(community, central, "--no-token")

    def on_central():
        deployment.register(central, community, "--relay", "--no-token")
        for producer in (laptop1, laptop2, middleman):
            deployment.register(central, producer, "--no-token")

    parallel(
        on_site,
        on_central,
        lambda: deployment.register(laptop2, middleman, token=pull_token),
        lambda: deployment.register(middleman, laptop2, "--no-token"),
        lambda: drop.give_site_access(community),
        lambda: drop.start_importer(
            central, SYNC_IMPORT_INTERVAL="1", SYNC_IMPORT_SETTLE_SECONDS="0"
        ),
    )

    # A field day on each laptop; both travel to the site, one through the
    # middleman.
    parallel(
        lambda: laptop1.manage("seed", "--households", "6", "--seed", "21"),
        lambda: laptop2.manage("seed", "--households", "5", "--seed", "22"),
    )

    def relay():
        pulled = middleman.manage("sync", "pull", f"http://{laptop2.node_id}:8000")
        assert "failed 0" in pulled.stdout, pulled.stdout
        return middleman.manage("sync", "push")

    pushed, relayed = parallel(lambda: laptop1.manage("sync", "push"), relay)
    assert "failed 0" in pushed.stdout, pushed.stdout
    assert "failed 0" in relayed.stdout, relayed.stdout

    # The site exports a batch and sends it to central's drop over SFTP.
    exported = community.manage("sync", "export")
    assert "in 1 batches" in exported.stdout, exported.stdout
    sent = community.manage("sync", "send", "--sftp")
    assert "sent 1 batch files" in sent.stdout, sent.stdout

    # Central's importer applies it and writes the site's receipt.
    receipts = f"receipts/{SITE}"
    wait_for(
        lambda: drop.drop_files(SITE, receipts),
        f"central's receipt in {SITE}'s drop",
        timeout=60,
        interval=0.5,
        hint="Is the batch waiting or quarantined? The importer's log is below.",
    )
    produced = [snapshot(laptop1), snapshot(laptop2)]
    proven = prove_delivered(snapshot(central), produced)
    through = {
        laptop.node_id: len(made.outgoing(laptop.node_id))
        for laptop, made in zip((laptop1, laptop2), produced, strict=True)
    }
    assert proven["transactions"] == sum(through.values())
    assert "quarantined 0" in central.status()

    # The site fetches the receipt; central's word reaches laptop-01 with its
    # next push, though it has nothing new to send, and laptop-02 with the
    # middleman's next pull, after the middleman's next push.
    fetched = community.manage("sync", "fetch-receipts", "--sftp")
    assert "imported 1 receipts" in fetched.stdout, fetched.stdout
    for producer, last in through.items():
        assert re.search(rf"\b{producer} #{last}\b", fetched.stdout), fetched.stdout
    assert drop.drop_files(SITE, receipts) == []  # taken off the drop

    def relay_again():
        middleman.manage("sync", "push")
        middleman.manage("sync", "pull", f"http://{laptop2.node_id}:8000")

    parallel(lambda: laptop1.manage("sync", "push"), relay_again)
    for laptop in (laptop1, laptop2):
        status = laptop.status()
        held = f"{CENTRAL} holds {laptop.node_id} through #{through[laptop.node_id]}"
        assert held in status, status

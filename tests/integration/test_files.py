"""Batch files from a site server to central, and receipts back, as operators run them.

The site and central are separate ``manage.py`` processes on their own
PostgreSQL databases; files move through a folder (a USB drive) or a real
OpenSSH server. The site holds its own field day and laptop-01's, pushed to
it over HTTP: both travel to central in the batches.
"""

import base64
import json
import math
import re
import shutil
import signal
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.conftest import LAPTOP
from tests.integration.files_fixtures import (
    CENTRAL,
    SITE,
    central_fixture,  # noqa: F401 (fixtures are found by name)
    file_templates_fixture,  # noqa: F401
    flip_envelope_byte,
    members_of,
    sftp_container_fixture,  # noqa: F401
    site_fixture,  # noqa: F401
    sshd_fixture,  # noqa: F401
    write_members,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

INCOMING = "sync_incomingtransaction"


def export(node, *args: str) -> list[str]:
    """Export from the site into its outbox; return the batch names, in order."""
    node.manage("sync", "export", *args)
    return sorted(path.name for path in node.outbox.glob("*.batch"))


def import_inbox(node, inbox, receipts=None):
    args = ["sync", "import", str(inbox)]
    if receipts is not None:
        args += ["--receipts", str(receipts)]
    return node.manage(*args)


def batch_names(count: int) -> list[str]:
    return [f"{SITE}-{n:06d}.batch" for n in range(1, count + 1)]


def quarantined(node) -> list[tuple[str, str]]:
    return node.rows(
        "SELECT file_name, code FROM sync_quarantinedfile ORDER BY file_name"
    )


def applied(node) -> int:
    return node.value(f"SELECT count(*) FROM {INCOMING} WHERE status = 'applied'")


def wait_until(condition, what: str, process=None, timeout: float = 60) -> None:
    """Poll ``condition`` until true; fail naming ``what`` (and the output)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the importer exited while waiting for {what}:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_folder_round_trip_applies_everything_once_and_receipt_acknowledges(
    site, central, tmp_path
):
    drive = tmp_path / "usb"
    drive.mkdir()
    total, own, relayed = site.held(), site.own_through(), site.held_through(LAPTOP)
    assert own and relayed  # its own transactions and those from the field

    batches = export(site, "--max-envelopes", "100")
    assert batches == batch_names(math.ceil(total / 100))
    assert export(site) == batches  # nothing new: no empty batch
    site.manage("sync", "send", "--folder", str(drive))
    assert sorted(p.name for p in (drive / "inbox").glob("*.batch")) == batches
    assert not list((drive / "inbox").glob(".*"))  # no temporary left behind

    import_inbox(central, drive / "inbox", drive / "receipts")
    assert central.count(INCOMING) == total
    assert applied(central) == total
    assert central.study_counts() == site.study_counts()
    assert central.rows(
        "SELECT number, status FROM sync_importedbatch ORDER BY number"
    ) == [(n, "imported") for n in range(1, len(batches) + 1)]
    assert central.value("SELECT sum(stored) FROM sync_importedbatch") == total
    assert not list((drive / "inbox").glob("*.batch"))
    assert len(list((drive / "receipts" / SITE).glob("*.receipt"))) == 1

    site.manage("sync", "fetch-receipts", "--folder", str(drive))
    assert site.acknowledgements(CENTRAL) == {SITE: own, LAPTOP: relayed}
    assert site.value(
        "SELECT count(*) FROM sync_exportedbatch WHERE receipted_at IS NOT NULL"
    ) == len(batches)
    assert not list(site.outbox.glob("*.batch"))  # receipted files are pruned
    assert not list((drive / "receipts" / SITE).iterdir())
    status = site.manage("sync", "status").stdout
    assert f"{CENTRAL} holds {SITE} through #{own}" in status
    assert f"batch files: exported through #{len(batches)} (0 without receipt)" in (
        status
    )


def test_sftp_uploads_batches_and_fetches_receipts_through_openssh(site, central, sshd):
    total = site.held()
    batches = export(site, "--max-envelopes", str(math.ceil(total / 2)))
    assert len(batches) == 2

    sent = site.manage("sync", "send", "--sftp", **sshd.settings()).stdout
    assert "sent 2 batch files" in sent
    assert sorted(p.name for p in (sshd.root / "inbox").iterdir()) == batches
    again = site.manage("sync", "send", "--sftp", **sshd.settings()).stdout
    assert "sent 0 batch files" in again and "2 sent before" in again
    resent = site.manage("sync", "send", "--sftp", "--resend", **sshd.settings()).stdout
    assert "2 already there" in resent

    import_inbox(central, sshd.root / "inbox", sshd.root / "receipts")
    assert central.count(INCOMING) == total

    fetched = site.manage("sync", "fetch-receipts", "--sftp", **sshd.settings())
    assert "imported 1 receipts" in fetched.stdout
    assert site.acknowledgements(CENTRAL) == {
        SITE: site.own_through(),
        LAPTOP: site.held_through(LAPTOP),
    }
    assert not list((sshd.root / "receipts" / SITE).iterdir())


def test_sftp_refuses_a_server_whose_host_key_is_not_known(site, sshd, tmp_path):
    export(site)
    other = tmp_path / "other_known_hosts"
    forged = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    blob = (
        len(b"ssh-ed25519").to_bytes(4, "big")
        + b"ssh-ed25519"
        + len(forged).to_bytes(4, "big")
        + forged
    )
    other.write_text(
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 {base64.b64encode(blob).decode()}\n"
    )
    changed = site.manage(
        "sync", "send", "--sftp", check=False,
        **sshd.settings(SYNC_SFTP_KNOWN_HOSTS=str(other)),
    )  # fmt: skip
    assert changed.returncode != 0
    assert "does not match the known-hosts file" in changed.stderr

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    unknown = site.manage(
        "sync", "send", "--sftp", check=False,
        **sshd.settings(SYNC_SFTP_KNOWN_HOSTS=str(empty)),
    )  # fmt: skip
    assert unknown.returncode != 0
    assert "not in the known-hosts file" in unknown.stderr
    assert not list((sshd.root / "inbox").iterdir())
    assert site.count("sync_exportedbatch") == 1
    assert site.value("SELECT sent_at FROM sync_exportedbatch") is None


def test_sftp_refuses_a_key_the_server_does_not_know(site, sshd, tmp_path):
    export(site)
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
    )
    refused = site.manage(
        "sync", "send", "--sftp", check=False,
        **sshd.settings(SYNC_SFTP_KEY_FILE=str(stranger)),
    )  # fmt: skip
    assert refused.returncode != 0
    assert "Authentication failed" in refused.stderr
    assert not list((sshd.root / "inbox").iterdir())


def test_tampered_batch_is_quarantined_later_ones_wait_and_a_resync_recovers(
    site, central, tmp_path
):
    total = site.held()
    drive = tmp_path / "usb"
    drive.mkdir()
    first, second, third = export(site, "--max-envelopes", str(math.ceil(total / 3)))
    site.manage("sync", "send", "--folder", str(drive))
    flip_envelope_byte(drive / "inbox" / second)

    import_inbox(central, drive / "inbox", drive / "receipts")
    first_count = site.value(
        "SELECT envelope_count FROM sync_exportedbatch WHERE number = 1"
    )
    assert central.count(INCOMING) == first_count
    assert quarantined(central) == [(second, "checksum_mismatch")]
    reason = (central.quarantine / f"{second}.reason").read_text()
    assert reason.startswith("checksum_mismatch: ")
    assert (central.quarantine / second).exists()
    assert not (drive / "inbox" / second).exists()
    assert (drive / "inbox" / third).exists()  # waits for batch 2
    problems = central.manage("sync", "problems").stdout
    assert f"quarantined {second} [checksum_mismatch]" in problems
    assert f"waiting  batch 3 of {SITE}" in problems
    status = central.manage("sync", "status").stdout
    assert "imported 1, waiting 1, quarantined 1" in status

    # The operator's way out: the receipt says what central holds, and the
    # site sends the rest again in one batch that follows batch 1.
    site.manage("sync", "fetch-receipts", "--folder", str(drive))
    (resync,) = set(export(site, "--from-acknowledged")) - {second, third}
    assert resync == f"{SITE}-000004.batch"
    site.manage("sync", "send", "--folder", str(drive))
    import_inbox(central, drive / "inbox", drive / "receipts")
    assert central.count(INCOMING) == total
    assert central.study_counts() == site.study_counts()
    assert central.rows(
        "SELECT number, status, stored FROM sync_importedbatch ORDER BY number"
    ) == [
        (1, "imported", first_count),
        (3, "imported", 0),
        (4, "imported", total - first_count),
    ]
    assert "waiting 0" in central.manage("sync", "status").stdout


def test_truncated_batch_is_quarantined(site, central, tmp_path):
    (batch,) = export(site)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = (site.outbox / batch).read_bytes()
    (inbox / batch).write_bytes(data[: len(data) // 2])

    import_inbox(central, inbox)
    assert central.count(INCOMING) == 0
    assert quarantined(central) == [(batch, "truncated")]


def test_unsigned_and_wrongly_signed_batches_are_quarantined(site, central, tmp_path):
    (batch,) = export(site)
    members = members_of(site.outbox / batch)
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    unsigned = dict(members)
    del unsigned["manifest.sig"]
    write_members(inbox / f"{SITE}-000001.batch", unsigned)

    stranger = Ed25519PrivateKey.generate()
    forged = dict(members)
    forged["manifest.sig"] = base64.b64encode(stranger.sign(members["manifest.json"]))
    write_members(inbox / f"{SITE}-000002.batch", forged)

    altered = dict(members)
    manifest = json.loads(members["manifest.json"])
    manifest["envelopes"]["count"] -= 1
    altered["manifest.json"] = json.dumps(manifest, sort_keys=True, indent=1).encode()
    write_members(inbox / f"{SITE}-000003.batch", altered)

    output = import_inbox(central, inbox).stdout
    assert "3 quarantined" in output
    assert central.count(INCOMING) == 0
    assert quarantined(central) == [
        (f"{SITE}-000001.batch", "unsigned"),
        (f"{SITE}-000002.batch", "bad_signature"),
        (f"{SITE}-000003.batch", "bad_signature"),
    ]
    assert central.count("sync_importedbatch") == 0


def test_batch_from_a_revoked_site_is_quarantined(site, central, tmp_path):
    (batch,) = export(site)
    central.manage("sync", "node", "revoke", SITE)
    inbox = tmp_path / "inbox"
    shutil.copytree(site.outbox, inbox)

    import_inbox(central, inbox)
    assert quarantined(central) == [(batch, "unknown_site")]
    assert central.count(INCOMING) == 0


def test_importing_a_batch_twice_changes_nothing(site, central, tmp_path):
    (batch,) = export(site)
    inbox = tmp_path / "inbox"
    shutil.copytree(site.outbox, inbox)
    import_inbox(central, inbox)
    before = central.study_counts()
    rows = f"SELECT id, status, applied_at FROM {INCOMING} ORDER BY id"
    applied_before = central.rows(rows)

    shutil.copy(site.outbox / batch, inbox / batch)
    output = import_inbox(central, inbox).stdout
    assert "imported 0 batches" in output and "1 already imported" in output
    assert central.study_counts() == before
    assert central.rows(rows) == applied_before
    assert central.count("sync_rejectedenvelope") == 0
    assert quarantined(central) == []
    assert not (inbox / batch).exists()


def test_a_gap_in_the_chain_waits_until_the_missing_batch_arrives(
    site, central, tmp_path
):
    total = site.held()
    first, second = export(site, "--max-envelopes", str(math.ceil(total / 2)))
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    shutil.copy(site.outbox / second, inbox / second)
    output = import_inbox(central, inbox).stdout
    assert "1 waiting" in output
    assert central.count(INCOMING) == 0
    assert (inbox / second).exists()  # kept in the inbox
    problems = central.manage("sync", "problems").stdout
    assert f"waiting  batch 2 of {SITE}" in problems
    assert f"waiting for batch 1 of {SITE}" in problems
    status = central.manage("sync", "status").stdout
    assert "waiting 1" in status
    assert f"{SITE}: batches imported through #0, waiting #2" in status
    assert not (tmp_path / "receipts").exists()  # nothing imported: no receipt

    shutil.copy(site.outbox / first, inbox / first)
    import_inbox(central, inbox)
    assert central.count(INCOMING) == total
    assert central.study_counts() == site.study_counts()
    assert central.rows(
        "SELECT number, status FROM sync_importedbatch ORDER BY number"
    ) == [(1, "imported"), (2, "imported")]
    assert "no problems" in central.manage("sync", "problems").stdout


def test_batch_that_breaks_the_chain_is_quarantined(site, central, tmp_path):
    export(site, "--max-envelopes", str(math.ceil(site.held() / 2)))
    inbox = tmp_path / "inbox"
    shutil.copytree(site.outbox, inbox)
    import_inbox(central, inbox)

    # The site's record of batch 2 no longer matches the batch central holds
    # (its database was damaged or restored): its next batch cannot follow.
    site.execute(
        "UPDATE sync_exportedbatch SET manifest_digest = %s WHERE number = 2",
        ("0" * 64,),
    )
    site.manage("seed", "--households", "1", "--seed", "2")
    forked = f"{SITE}-000003.batch"
    assert forked in export(site)
    shutil.copy(site.outbox / forked, inbox / forked)
    import_inbox(central, inbox)
    assert quarantined(central) == [(forked, "chain_broken")]
    assert central.count(INCOMING) == site.held() - site.value(
        "SELECT envelope_count FROM sync_exportedbatch WHERE number = 3"
    )


def test_after_a_lost_drive_export_from_acknowledged_resends_what_central_lacks(
    site, central, tmp_path
):
    total = site.held()
    drive = tmp_path / "usb"
    drive.mkdir()
    first, *lost = export(site, "--max-envelopes", str(math.ceil(total / 3)))
    assert len(lost) == 2
    late = tmp_path / "late"
    late.mkdir()
    for name in lost:  # the drive with batches 2 and 3 goes missing
        shutil.move(site.outbox / name, late / name)
    site.manage("sync", "send", "--folder", str(drive))
    import_inbox(central, drive / "inbox", drive / "receipts")
    site.manage("sync", "fetch-receipts", "--folder", str(drive))
    first_count = central.count(INCOMING)
    assert first_count == math.ceil(total / 3)

    assert export(site, "--from-acknowledged") == [f"{SITE}-000004.batch"]
    site.manage("sync", "send", "--folder", str(drive))
    import_inbox(central, drive / "inbox", drive / "receipts")
    assert central.count(INCOMING) == total
    assert central.study_counts() == site.study_counts()

    # The lost drive turns up after all: its batches bring only duplicates.
    for name in lost:
        shutil.copy(late / name, drive / "inbox" / name)
    import_inbox(central, drive / "inbox", drive / "receipts")
    assert central.count(INCOMING) == total
    assert central.rows(
        "SELECT number, status, stored FROM sync_importedbatch ORDER BY number"
    ) == [
        (1, "imported", first_count),
        (2, "imported", 0),
        (3, "imported", 0),
        (4, "imported", total - first_count),
    ]
    assert quarantined(central) == []
    site.manage("sync", "fetch-receipts", "--folder", str(drive))
    assert site.acknowledgements(CENTRAL) == {
        SITE: site.own_through(),
        LAPTOP: site.held_through(LAPTOP),
    }


def test_export_adopts_a_complete_batch_its_crash_left_unrecorded(site):
    (batch,) = export(site)
    digest = site.value("SELECT manifest_digest FROM sync_exportedbatch")
    site.execute("DELETE FROM sync_exportedbatch")  # the commit never happened
    (site.outbox / f".{SITE}-000002.batch.tmp").write_bytes(b"half a file")

    assert export(site) == [batch]  # adopted, not written again
    assert site.rows("SELECT number, manifest_digest FROM sync_exportedbatch") == [
        (1, digest)
    ]
    assert not list(site.outbox.glob(".*"))


def test_site_refuses_a_receipt_not_signed_by_central(site, central, tmp_path):
    export(site)
    inbox = tmp_path / "inbox"
    shutil.copytree(site.outbox, inbox)
    receipts = tmp_path / "receipts"
    import_inbox(central, inbox, receipts)
    (receipt,) = (receipts / SITE).iterdir()
    wrapper = json.loads(receipt.read_text())
    body = json.loads(wrapper["receipt"])
    body["held"][SITE] = 10**6
    wrapper["receipt"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    receipt.write_text(json.dumps(wrapper))

    site.manage("sync", "fetch-receipts", "--folder", str(tmp_path))
    assert site.count("sync_acknowledgement") == 0
    assert site.rows("SELECT code FROM sync_quarantinedfile") == [("bad_signature",)]
    assert (
        site.value(
            "SELECT count(*) FROM sync_exportedbatch WHERE receipted_at IS NOT NULL"
        )
        == 0
    )


def test_import_watch_applies_batches_as_they_arrive(site, central, tmp_path):
    total = site.held()
    first, second = export(site, "--max-envelopes", str(math.ceil(total / 2)))
    inbox, receipts = tmp_path / "inbox", tmp_path / "receipts"
    inbox.mkdir()
    importer = central.start_manage(
        "sync", "import", str(inbox), "--receipts", str(receipts),
        "--watch", "--interval", "0.3", SYNC_IMPORT_SETTLE_SECONDS="0.5",
    )  # fmt: skip
    try:
        shutil.copy(site.outbox / second, inbox / second)
        wait_until(
            lambda: central.count("sync_importedbatch") == 1,
            "batch 2 to be seen waiting",
            importer,
        )
        assert central.rows("SELECT number, status FROM sync_importedbatch") == [
            (2, "waiting")
        ]
        shutil.copy(site.outbox / first, inbox / first)
        wait_until(lambda: applied(central) == total, "every envelope", importer)
        wait_until(
            lambda: list((receipts / SITE).glob("*.receipt")), "a receipt", importer
        )
    finally:
        importer.send_signal(signal.SIGTERM)
        importer.communicate(timeout=30)
    assert central.rows(
        "SELECT number, status FROM sync_importedbatch ORDER BY number"
    ) == [(1, "imported"), (2, "imported")]


def test_central_receipt_reaches_the_laptop_on_its_next_push(
    file_templates, central, tmp_path
):
    drive = tmp_path / "usb"
    drive.mkdir()
    site = file_templates.site_server()
    try:
        export(site)
        site.manage("sync", "send", "--folder", str(drive))
        import_inbox(central, drive / "inbox", drive / "receipts")
        site.manage("sync", "fetch-receipts", "--folder", str(drive))
        at_central = site.acknowledgements(CENTRAL)[LAPTOP]

        laptop = file_templates.laptop(site.url)
        assert CENTRAL not in laptop.manage("sync", "status").stdout
        laptop.manage("seed", "--households", "1", "--seed", "11")  # a new day
        laptop.manage("sync", "push")
    finally:
        site.stop()
    assert (
        laptop.value(
            "SELECT through_sequence FROM sync_acknowledgement "
            "WHERE holder = %s AND producer = %s",
            (CENTRAL, LAPTOP),
        )
        == at_central
    )
    status = laptop.manage("sync", "status").stdout
    assert f"{CENTRAL} holds {LAPTOP} through #{at_central}" in status


@pytest.mark.docker
def test_central_sftp_container_gives_each_registered_site_its_own_drop(
    site, central, sftp_container, tmp_path
):
    total = site.held()
    batches = export(site, "--max-envelopes", str(math.ceil(total / 2)))
    drop = sftp_container.settings(SYNC_SFTP_USER=SITE)

    sent = site.manage("sync", "send", "--sftp", **drop).stdout
    assert "sent 2 batch files" in sent
    inbox = sftp_container.drop() / "inbox"
    assert sorted(p.name for p in inbox.iterdir()) == batches
    assert {p.stat().st_uid for p in inbox.iterdir()} == {10001}  # the importer's

    # Another registered site cannot deliver the site's batches as its own.
    other = sftp_container.settings(
        SYNC_SFTP_USER="community-2", SYNC_SFTP_KEY_FILE=str(sftp_container.other_key)
    )
    site.manage("sync", "send", "--sftp", "--resend", **other)
    assert (
        sorted(p.name for p in (sftp_container.drop("community-2") / "inbox").iterdir())
        == batches
    )

    # What the importer service does, on the same folders.
    central.manage(
        "sync", "import", "--sites", "--watch", "--loops", "1",
        SYNC_SITES_DIR=str(sftp_container.root),
        SYNC_QUARANTINE_DIR=str(tmp_path / "quarantine"),
        SYNC_IMPORT_SETTLE_SECONDS="0",
    )  # fmt: skip
    assert central.count(INCOMING) == total
    assert sorted(quarantined(central)) == [(name, "wrong_drop") for name in batches]
    assert not list(
        (sftp_container.drop("community-2") / "receipts").rglob("*.receipt")
    )

    fetched = site.manage("sync", "fetch-receipts", "--sftp", **drop).stdout
    assert "imported 1 receipts" in fetched
    assert site.acknowledgements(CENTRAL)[SITE] == site.own_through()
    assert not list((sftp_container.drop() / "receipts" / SITE).iterdir())

    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
    )
    refused = site.manage(
        "sync", "send", "--sftp", "--resend", check=False,
        **{**drop, "SYNC_SFTP_KEY_FILE": str(stranger)},
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout
    assert "Authentication failed" in refused.stderr
    assert "accepting 2 keys of 2 sites" in sftp_container.logs()


def test_envelopes_of_a_producer_central_does_not_know_are_sent_again_later(
    site, central, tmp_path
):
    total, own = site.held(), site.own_through()
    drive = tmp_path / "usb"
    drive.mkdir()
    laptop_key = central.value(
        "SELECT public_key FROM sync_node WHERE node_id = %s", (LAPTOP,)
    )
    central.manage("sync", "node", "revoke", LAPTOP)

    export(site)
    site.manage("sync", "send", "--folder", str(drive))
    output = import_inbox(central, drive / "inbox", drive / "receipts").stdout
    assert f"{total - own} rejected" in output
    assert central.count(INCOMING) == own  # the site's own still apply
    assert applied(central) == own
    problems = central.manage("sync", "problems").stdout
    assert re.search(
        rf"rejected {LAPTOP}#\d+ from {SITE} \[unknown_producer\]", problems
    )
    site.manage("sync", "fetch-receipts", "--folder", str(drive))
    assert site.acknowledgements(CENTRAL) == {SITE: own}

    # Once central knows the laptop, the site sends what central lacks.
    central.manage(
        "sync", "node", "add", LAPTOP, "--role", "client",
        "--public-key", laptop_key, "--no-token",
    )  # fmt: skip
    (resync,) = set(export(site, "--from-acknowledged"))
    manifest = json.loads(members_of(site.outbox / resync)["manifest.json"])
    assert list(manifest["producers"]) == [LAPTOP]
    site.manage("sync", "send", "--folder", str(drive))
    import_inbox(central, drive / "inbox", drive / "receipts")
    assert central.count(INCOMING) == total
    assert central.study_counts() == site.study_counts()
    site.manage("sync", "fetch-receipts", "--folder", str(drive))
    assert site.acknowledgements(CENTRAL) == {
        SITE: own,
        LAPTOP: site.held_through(LAPTOP),
    }


def test_a_batch_signed_by_a_node_that_is_not_a_site_is_quarantined(
    site, central, tmp_path
):
    (batch,) = export(site)
    central.execute("UPDATE sync_node SET role = 'client' WHERE node_id = %s", (SITE,))
    inbox = tmp_path / "inbox"
    shutil.copytree(site.outbox, inbox)

    import_inbox(central, inbox)
    assert quarantined(central) == [(batch, "not_a_site")]


def test_a_laptop_with_nothing_new_still_learns_what_central_holds(
    file_templates, central, tmp_path
):
    drive = tmp_path / "usb"
    drive.mkdir()
    site = file_templates.site_server()
    try:
        export(site)
        site.manage("sync", "send", "--folder", str(drive))
        import_inbox(central, drive / "inbox", drive / "receipts")
        site.manage("sync", "fetch-receipts", "--folder", str(drive))
        laptop = file_templates.laptop(site.url)
        laptop.manage("sync", "push")
    finally:
        site.stop()
    assert laptop.value(
        "SELECT count(*) FROM sync_acknowledgement WHERE holder = %s", (CENTRAL,)
    )

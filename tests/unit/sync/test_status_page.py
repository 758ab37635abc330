"""The status page: what a data manager sees of batch files on central."""

from django.contrib.auth import get_user_model
from sync.models import ImportedBatch, QuarantinedFile


def test_status_page_shows_waiting_and_quarantined_batch_files(client, db):
    staff = get_user_model().objects.create_user("dm", password="pw", is_staff=True)
    client.force_login(staff)
    ImportedBatch.objects.create(
        site="community-1", number=1, manifest_digest="a" * 64,
        file_name="community-1-000001.batch", status=ImportedBatch.Status.IMPORTED,
    )  # fmt: skip
    ImportedBatch.objects.create(
        site="community-1", number=3, manifest_digest="c" * 64,
        file_name="community-1-000003.batch", status=ImportedBatch.Status.WAITING,
    )  # fmt: skip
    QuarantinedFile.objects.create(
        file_name="community-1-000002.batch", moved_to="/srv/quarantine",
        code="checksum_mismatch", detail="envelopes.jsonl.gz does not match",
    )  # fmt: skip

    page = client.get("/sync/").text

    assert "<h2>Batch files</h2>" in page
    assert "last imported #1; waiting: #3" in page
    assert (
        "batch #3 from community-1 waits for an earlier batch "
        "(community-1-000003.batch)" in page
    )
    assert (
        "quarantined community-1-000002.batch [checksum_mismatch]: envelopes.jsonl.gz "
        "does not match (moved to /srv/quarantine)" in page
    )


def test_status_page_of_a_laptop_shows_no_batch_files(client, db):
    staff = get_user_model().objects.create_user("ra", password="pw", is_staff=True)
    client.force_login(staff)

    page = client.get("/sync/").text

    assert "Sync status of" in page
    assert "Batch files" not in page
    assert "<li>nothing</li>" in page

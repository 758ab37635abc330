"""Batch files: what export writes reads back unchanged, and the chain rules."""

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sync import keys
from sync.envelope import Envelope
from sync.models import (
    ExportedBatch,
    ImportedBatch,
    Node,
    OutgoingTransaction,
    QuarantinedFile,
)
from sync.transport.files import (
    BatchFile,
    BatchRefused,
    _fits,
    export,
    import_sites,
    read_batch,
)

from tests.factories import household_tree

pytestmark = pytest.mark.django_db


def this_node(site: str) -> Node:
    return Node(
        node_id=site,
        role=Node.Role.COMMUNITY,
        public_key=keys.public_key_text(),
        can_relay=True,
    )


def manifest_of(path: Path) -> dict:
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile("manifest.json").read())


def test_exported_envelopes_read_back_exactly_as_stored(tmp_path):
    household_tree()
    household_tree()

    summary = export(tmp_path, max_envelopes=7)

    outbox = OutgoingTransaction.objects.order_by("sequence")
    assert summary.envelopes == outbox.count()
    assert len(summary.batches) == -(-outbox.count() // 7)
    read = []
    for name in summary.batches:
        batch = read_batch(tmp_path / name, this_node)
        for chunk in batch.chunks(3):
            read.extend(item.to_wire() for item in chunk)
    assert read == [Envelope.from_row(row).to_wire() for row in outbox]


def test_each_batch_names_the_digest_of_the_one_before(tmp_path):
    household_tree()

    names = export(tmp_path, max_envelopes=5).batches

    manifests = [manifest_of(tmp_path / name) for name in names]
    assert manifests[0]["previous"] is None
    for before, after, name in zip(manifests, manifests[1:], names, strict=False):
        digest = hashlib.sha256(
            tarfile.open(tmp_path / name).extractfile("manifest.json").read()
        ).hexdigest()
        assert after["previous"] == {"number": before["number"], "digest": digest}
    recorded = ExportedBatch.objects.order_by("number").values_list(
        "manifest_digest", flat=True
    )
    assert [m["previous"]["digest"] for m in manifests[1:]] == list(recorded)[:-1]


def test_nothing_new_writes_no_batch(tmp_path):
    household_tree()
    export(tmp_path)

    again = export(tmp_path)

    assert again.batches == []
    assert ExportedBatch.objects.count() == 1


def test_a_batch_signed_with_another_key_is_refused(tmp_path):
    household_tree()
    (name,) = export(tmp_path).batches
    stranger = keys.public_key_text(Ed25519PrivateKey.generate())

    def impostor(site):
        return Node(node_id=site, role="community", public_key=stranger)

    with pytest.raises(BatchRefused) as refused:
        read_batch(tmp_path / name, impostor)
    assert refused.value.code == "bad_signature"


def batch(number: int, previous: int = 0, digest: str = "", resync=False):
    manifest = {
        "site": "site-1",
        "number": number,
        "previous": {"number": previous, "digest": digest} if previous else None,
        "resync": resync,
    }
    return BatchFile(Path(f"site-1-{number:06d}.batch"), manifest, f"d{number}")


def imported(number: int) -> ImportedBatch:
    return ImportedBatch.objects.create(
        site="site-1",
        number=number,
        manifest_digest=f"d{number}",
        file_name=f"site-1-{number:06d}.batch",
        status=ImportedBatch.Status.IMPORTED,
    )


def test_the_first_batch_and_the_next_in_the_chain_fit():
    assert _fits(batch(1), None)
    assert _fits(batch(2, previous=1, digest="d1"), imported(1))


def test_a_batch_after_a_gap_waits():
    assert not _fits(batch(3, previous=2, digest="d2"), imported(1))


def test_a_batch_naming_another_predecessor_breaks_the_chain():
    with pytest.raises(BatchRefused) as refused:
        _fits(batch(2, previous=1, digest="forged"), imported(1))
    assert refused.value.code == "chain_broken"


def test_only_a_resync_may_follow_an_older_batch():
    imported(1)
    last = imported(2)
    with pytest.raises(BatchRefused):
        _fits(batch(3, previous=1, digest="d1"), last)
    assert _fits(batch(3, previous=1, digest="d1", resync=True), last)


def test_a_batch_a_resync_overtook_still_fits():
    imported(1)
    last = imported(4)
    assert _fits(batch(2, previous=1, digest="d1"), last)


def test_export_needs_this_nodes_signing_key(tmp_path, settings):
    household_tree()
    settings.SYNC_SIGNING_KEY_FILE = str(tmp_path / "missing.pem")
    keys.forget_cached_keys()
    try:
        with pytest.raises(keys.KeyMissing):
            export(tmp_path / "out")
    finally:
        keys.forget_cached_keys()
    assert not list((tmp_path / "out").glob("*.batch"))
    assert ExportedBatch.objects.count() == 0


def test_a_sites_drop_takes_only_that_sites_batches(tmp_path, settings):
    settings.SYNC_QUARANTINE_DIR = tmp_path / "quarantine"
    Node.objects.create(
        node_id=settings.SYNC_NODE_ID,
        role=Node.Role.COMMUNITY,
        public_key=keys.public_key_text(),
        can_relay=True,
    )
    household_tree()
    (name,) = export(tmp_path / "drops" / "other-site" / "inbox").batches

    summary = import_sites(tmp_path / "drops")

    assert (summary.imported, summary.quarantined) == (0, 1)
    assert list(QuarantinedFile.objects.values_list("file_name", "code")) == [
        (name, "wrong_drop")
    ]
    assert (tmp_path / "quarantine" / f"{name}.reason").exists()


def test_no_site_drops_yet_is_not_an_error(tmp_path):
    assert import_sites(tmp_path / "missing").imported == 0

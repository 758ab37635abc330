"""Receive: only envelopes their producer signed are stored, and each only once."""

import dataclasses
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from django.conf import settings
from django.db import transaction
from study.models import Household, HouseholdMember, SymptomsReview
from sync import envelope, keys
from sync.apply import apply_pending
from sync.models import (
    IncomingStatus,
    IncomingTransaction,
    RejectedEnvelope,
    next_in_sequence,
)
from sync.receive import _insert, receive

from tests.factories import (
    RemoteProducer,
    household,
    household_tree,
    outbox_envelopes,
)


def test_duplicate_delivery_is_acknowledged_not_reapplied(remote):
    laptop = remote("laptop-a")
    home = household("laptop-a")
    envelopes = laptop.save(home, username="mpho")

    first = receive(envelopes, delivered_by="laptop-a")
    apply_pending()
    again = receive(envelopes, delivered_by="middleman-1")
    report = apply_pending()

    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (0, 2)
    assert again.acknowledged == {"laptop-a": 2}
    assert report.applied == 0
    assert IncomingTransaction.objects.count() == 2
    assert Household.objects.filter(pk=home.pk).count() == 1
    assert Household.history.filter(id=home.pk).count() == 1


def test_same_batch_delivered_twice_in_one_push_is_stored_once(remote):
    laptop = remote("laptop-a")
    envelopes = laptop.save(household("laptop-a"))

    receipt = receive(envelopes + envelopes, delivered_by="laptop-a")
    apply_pending()

    assert (receipt.stored, receipt.duplicates) == (2, 2)
    assert Household.objects.count() == 1


@pytest.mark.parametrize("picked", [[0, 2], [0, 5], [5, 1]])
def test_scattered_redelivery_is_recognised_as_held(remote, picked):
    laptop = remote("laptop-a")
    envelopes = [e for _ in range(3) for e in laptop.save(household("laptop-a"))]
    receive(envelopes, delivered_by="laptop-a")

    again = receive([envelopes[i] for i in picked], delivered_by="middleman-1")

    assert (again.stored, again.duplicates, again.rejected) == (0, 2, [])
    assert IncomingTransaction.objects.count() == 6


def test_reused_sequence_number_with_other_content_is_rejected(remote):
    laptop = remote("laptop-a")
    receive(laptop.save(household("laptop-a")), delivered_by="laptop-a")
    restored = RemoteProducer("laptop-a")  # same node, back from an old backup
    restored.key = laptop.key

    receipt = receive(restored.save(household("laptop-a")), delivered_by="laptop-a")
    apply_pending()

    assert [r["code"] for r in receipt.rejected] == ["sequence_reused"] * 2
    assert Household.objects.count() == 1


def test_tampered_header_is_rejected_and_never_applied(remote):
    laptop = remote("laptop-a")
    history, record = laptop.save(household("laptop-a", village="Mochudi"))
    forged = dataclasses.replace(record, action="delete")

    receipt = receive([history, forged], delivered_by="middleman-1")
    apply_pending()

    assert [r["code"] for r in receipt.rejected] == ["bad_signature"]
    rejected = RejectedEnvelope.objects.get()
    assert (rejected.producer, rejected.sequence, rejected.code) == (
        "laptop-a",
        2,
        "bad_signature",
    )
    assert rejected.delivered_by == "middleman-1"
    assert not IncomingTransaction.objects.filter(id=record.id).exists()
    assert Household.objects.count() == 0


def test_tampered_ciphertext_is_rejected_and_the_genuine_copy_still_applies(remote):
    laptop = remote("laptop-a")
    history, record = laptop.save(household("laptop-a"))
    flipped = bytes([record.ciphertext[0] ^ 1]) + record.ciphertext[1:]

    receipt = receive(
        [history, dataclasses.replace(record, ciphertext=flipped)],
        delivered_by="middleman-1",
    )
    apply_pending()
    assert [r["code"] for r in receipt.rejected] == ["bad_signature"]
    assert Household.objects.count() == 0

    receive([record], delivered_by="laptop-a")
    apply_pending()
    assert Household.objects.filter(pk=record.record_id).exists()


def test_envelope_from_an_unknown_node_is_rejected(db):
    stranger = RemoteProducer("laptop-x")  # never entered in the register

    receipt = receive(stranger.save(household("laptop-x")), delivered_by="laptop-x")

    assert [r["code"] for r in receipt.rejected] == ["unknown_producer"] * 2
    assert RejectedEnvelope.objects.count() == 2
    assert IncomingTransaction.objects.count() == 0


def test_payload_sealed_under_another_data_key_fails_and_is_not_applied(remote):
    laptop = remote("laptop-a")
    history, record = laptop.save(household("laptop-a"))
    foreign = ChaCha20Poly1305(os.urandom(32)).encrypt(
        record.nonce, b'{"fields": {}}', record.header_bytes()
    )
    sealed_elsewhere = laptop.resign(record, ciphertext=foreign)

    receipt = receive([history, sealed_elsewhere], delivered_by="laptop-a")
    report = apply_pending()

    assert receipt.rejected == []  # the producer did sign it
    assert report.failed == 1
    row = IncomingTransaction.objects.get(id=record.id)
    assert row.status == IncomingStatus.FAILED
    assert "fails authentication" in row.detail
    assert Household.objects.count() == 0


@pytest.mark.parametrize("plaintext", [b"not json", b"\xff\xfe not text"])
def test_payload_that_opens_but_is_not_json_fails_and_is_not_applied(remote, plaintext):
    laptop = remote("laptop-a")
    history, record = laptop.save(household("laptop-a"))
    keyring = keys.data_keyring()
    garbled = keyring.cipher(record.key_id).encrypt(
        record.nonce, plaintext, record.header_bytes()
    )

    receive([history, laptop.resign(record, ciphertext=garbled)], "laptop-a")
    report = apply_pending()

    assert (report.applied, report.failed) == (1, 1)
    row = IncomingTransaction.objects.get(id=record.id)
    assert row.status == IncomingStatus.FAILED
    assert "opens but is not JSON" in row.detail
    assert Household.objects.count() == 0


def test_payload_under_a_data_key_this_node_lacks_fails_with_a_hint(remote):
    laptop = remote("laptop-a")
    history, record = laptop.save(household("laptop-a"))
    unknown_key = laptop.resign(record, key_id="0badc0de")

    receive([history, unknown_key], delivered_by="laptop-a")
    apply_pending()

    row = IncomingTransaction.objects.get(id=record.id)
    assert row.status == IncomingStatus.FAILED
    assert "data key 0badc0de is not on this node" in row.detail
    assert Household.objects.count() == 0


@pytest.mark.django_db(databases=["default", "peer"])
def test_altered_envelope_inside_a_push_is_named_and_the_rest_is_held(peer):
    household_tree()
    envelopes = outbox_envelopes()
    third = envelopes[2]
    flipped = bytes([third.ciphertext[0] ^ 1]) + third.ciphertext[1:]
    envelopes[2] = dataclasses.replace(third, ciphertext=flipped)

    receipt = receive(envelopes, delivered_by="middleman-1", using="peer")
    apply_pending(using="peer")

    assert [(r["sequence"], r["code"]) for r in receipt.rejected] == [
        (3, "bad_signature")
    ]
    assert receipt.stored == len(envelopes) - 1
    assert receipt.acknowledged == {settings.SYNC_NODE_ID: 2}
    assert Household.objects.using("peer").count() == 1  # sequences 1 and 2 only
    assert HouseholdMember.objects.using("peer").count() == 0

    receive([third], delivered_by=settings.SYNC_NODE_ID, using="peer")
    apply_pending(using="peer")

    assert HouseholdMember.objects.using("peer").count() == 1
    assert SymptomsReview.objects.using("peer").count() == 1


def test_pages_in_sequence_order_step_over_gaps_and_stop_at_the_end(remote):
    laptop = remote("laptop-a")
    envelopes = [e for _ in range(6) for e in laptop.save(household("laptop-a"))]
    # Held: 1-3 and 9-12; 4-8 have not arrived.
    receive(envelopes[:3] + envelopes[8:], delivered_by="laptop-a")
    held = IncomingTransaction.objects.filter(producer="laptop-a")

    def sequences(after, limit):
        return [row.sequence for row in next_in_sequence(held, after, limit)]

    assert sequences(0, 2) == [1, 2]
    assert sequences(2, 2) == [3, 9]
    assert sequences(3, 2) == [9, 10]
    assert sequences(10, 5) == [11, 12]
    assert sequences(12, 5) == []


@pytest.mark.postgres
def test_a_delivery_that_races_another_stores_each_envelope_once(remote):
    laptop = remote("laptop-a")
    envelopes = [e for _ in range(3) for e in laptop.save(household("laptop-a"))]
    receive(envelopes[:4], delivered_by="laptop-a")

    # The second delivery looked before the first had stored its envelopes:
    # its insert meets four that are held now.
    with transaction.atomic():
        _insert(envelopes, "middleman-1", "default")

    stored = IncomingTransaction.objects.filter(producer="laptop-a")
    assert sorted(stored.values_list("sequence", flat=True)) == [1, 2, 3, 4, 5, 6]
    assert stored.get(sequence=1).delivered_by == "laptop-a"
    assert stored.get(sequence=6).delivered_by == "middleman-1"


def test_envelopes_next_in_sequence_are_applied_as_they_are_stored(remote):
    laptop = remote("laptop-a")
    first, second = (
        laptop.save(household("laptop-a")),
        laptop.save(household("laptop-a")),
    )

    behind_a_gap = receive(second, delivered_by="laptop-a", and_apply=True)
    in_turn = receive(first, delivered_by="laptop-a", and_apply=True)

    assert behind_a_gap.applied.applied == 0  # 3 and 4 wait for 1 and 2
    assert in_turn.applied.applied == 2
    assert in_turn.acknowledged == {"laptop-a": 4}
    statuses = dict(IncomingTransaction.objects.values_list("sequence", "status"))
    assert statuses == {1: "applied", 2: "applied", 3: "received", 4: "received"}
    assert apply_pending().applied == 2
    assert Household.objects.count() == 2


def test_envelopes_whose_apply_on_arrival_breaks_are_stored_for_apply(
    remote, monkeypatch
):
    def broken(*args):
        raise RuntimeError("a fault in apply")

    monkeypatch.setattr("sync.receive.apply_arriving", broken)
    laptop = remote("laptop-a")
    home = household("laptop-a")

    receipt = receive(laptop.save(home), delivered_by="laptop-a", and_apply=True)

    assert (receipt.stored, receipt.acknowledged) == (2, {"laptop-a": 2})
    assert not Household.objects.exists()
    assert apply_pending().applied == 2
    assert Household.objects.filter(pk=home.pk).exists()


def test_envelopes_that_cannot_be_prepared_ahead_are_applied_all_the_same(
    remote, monkeypatch
):
    # Payloads are opened and drafted before the apply lock is taken; a
    # fault there (here: the first two opens) leaves the work to apply.
    opens = {"count": 0}
    open_payload = envelope.open_payload

    def failing_at_first(item):
        opens["count"] += 1
        if opens["count"] <= 2:
            raise OSError("the data key could not be read just then")
        return open_payload(item)

    monkeypatch.setattr(envelope, "open_payload", failing_at_first)
    laptop = remote("laptop-a")
    home = household("laptop-a")

    receipt = receive(laptop.save(home), delivered_by="laptop-a", and_apply=True)

    assert opens["count"] == 4  # two ahead that failed, two again in apply
    assert receipt.applied.applied == 2
    assert Household.objects.filter(pk=home.pk).exists()

"""Capture: every write of a travelling model fills the outbox, atomically."""

import threading

import pytest
from django.db import connection, connections, transaction
from study.models import Household, Symptom
from sync import keys
from sync.envelope import Envelope, open_payload
from sync.errors import CaptureRefused, KeyMissing
from sync.models import OutgoingTransaction

from tests.factories import household, household_tree


class Interrupted(Exception):
    """Raised by a test to abandon a transaction half way."""


def outbox(model: str | None = None) -> list[OutgoingTransaction]:
    rows = OutgoingTransaction.objects.order_by("sequence")
    return list(rows.filter(model=model) if model else rows)


def sequences() -> list[int]:
    return list(
        OutgoingTransaction.objects.order_by("sequence").values_list(
            "sequence", flat=True
        )
    )


@pytest.fixture
def without_data_keys(settings, tmp_path):
    """Point the node at an empty data keys folder, as on a node set up half way."""
    settings.SYNC_DATA_KEYS_DIR = str(tmp_path)
    keys.forget_cached_keys()
    yield
    keys.forget_cached_keys()


def test_save_writes_the_record_and_its_outgoing_transactions(db):
    home = household()
    home.save()

    assert Household.objects.filter(pk=home.pk).exists()
    record = outbox("study.household")
    assert [(r.record_id, r.action) for r in record] == [(home.pk, "insert")]
    assert len(outbox("study.historicalhousehold")) == 1
    payload = open_payload(Envelope.from_row(record[0]))
    assert payload["fields"]["household_identifier"] == home.household_identifier


def test_rolled_back_save_leaves_neither_record_nor_outgoing_transaction(db):
    home = household()
    with pytest.raises(Interrupted), transaction.atomic():
        home.save()
        raise Interrupted

    assert not Household.objects.filter(pk=home.pk).exists()
    assert outbox() == []


@pytest.mark.django_db(transaction=True)
def test_shell_save_in_autocommit_commits_record_and_outgoing_together():
    home = household()
    home.save()

    assert Household.objects.filter(pk=home.pk).exists()
    assert [r.action for r in outbox("study.household")] == ["insert"]


@pytest.mark.django_db(transaction=True)
def test_save_whose_outgoing_transaction_fails_leaves_no_record(without_data_keys):
    home = household()
    with pytest.raises(KeyMissing):
        home.save()

    assert not Household.objects.filter(pk=home.pk).exists()
    assert outbox() == []


def test_sequences_stay_gap_free_when_saves_roll_back(db):
    for n in range(6):
        try:
            with transaction.atomic():
                household().save()
                if n % 2:
                    raise Interrupted
        except Interrupted:
            pass

    # Each save captures its history row and the record.
    assert sequences() == list(range(1, 7))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_expose_a_gap_in_the_sequence():
    writers, saves_each = 4, 6
    committed, snapshots, errors = [], [], []
    done = threading.Event()

    def write(worker: int) -> None:
        try:
            for n in range(saves_each):
                try:
                    with transaction.atomic():
                        household().save()
                        if (worker + n) % 3 == 0:
                            raise Interrupted
                    committed.append(1)
                except Interrupted:
                    pass
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    def read() -> None:
        # A pusher reads the outbox while writers commit: it must never see
        # a sequence number before every smaller one is visible.
        try:
            while not done.is_set():
                snapshots.append(sequences())
        finally:
            connection.close()

    reader = threading.Thread(target=read)
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()

    assert errors == []
    assert sequences() == list(range(1, 2 * len(committed) + 1))
    assert len(committed) < writers * saves_each  # some did roll back
    gapped = [seen for seen in snapshots if seen != list(range(1, len(seen) + 1))]
    assert gapped == []
    assert len(snapshots) > 1
    connections.close_all()


def test_queryset_update_is_refused_and_changes_nothing(db):
    home = household(village="Molepolole")
    home.save()

    with pytest.raises(CaptureRefused):
        Household.objects.filter(pk=home.pk).update(village="Mochudi")

    home.refresh_from_db()
    assert home.village == "Molepolole"


def test_bulk_update_is_refused(db):
    home = household()
    home.save()
    home.village = "Mochudi"

    with pytest.raises(CaptureRefused):
        Household.objects.bulk_update([home], ["village"])

    assert Household.objects.get(pk=home.pk).village != "Mochudi"


def test_bulk_create_captures_each_record_and_its_history(db):
    homes = Household.objects.bulk_create([household(), household()])

    assert {r.record_id for r in outbox("study.household")} == {h.pk for h in homes}
    assert Household.history.filter(id__in=[h.pk for h in homes]).count() == 2
    history = outbox("study.historicalhousehold")
    assert len(history) == 2
    assert sequences() == [1, 2, 3, 4]


def test_symptom_changes_each_travel_with_the_whole_set(db):
    review = household_tree()["review"]
    cough, fever = (
        Symptom.objects.get(short_name="cough"),
        Symptom.objects.get(short_name="fever"),
    )
    before = len(outbox("study.symptomsreview"))

    review.symptoms.add(cough, fever)
    review.symptoms.remove(cough)
    fever.symptomsreview_set.add(review)  # from the other side: no change
    cough.symptomsreview_set.add(review)
    review.symptoms.clear()

    changes = outbox("study.symptomsreview")[before:]
    sets = [
        sorted(
            s["natural_key"][0]
            for s in open_payload(Envelope.from_row(c))["fields"]["symptoms"]
        )
        for c in changes
    ]
    assert [c.action for c in changes] == ["update"] * 4
    assert sets == [["cough", "fever"], ["fever"], ["cough", "fever"], []]

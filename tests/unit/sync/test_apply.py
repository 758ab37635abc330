"""Apply: received changes become records, in order, whatever order they came in."""

import decimal
from io import StringIO

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from study.models import (
    Household,
    HouseholdMember,
    Symptom,
    SymptomsReview,
    VitalSigns,
)
from sync.apply import apply_pending
from sync.models import (
    Conflict,
    IncomingStatus,
    IncomingTransaction,
    OutgoingTransaction,
    RecordVersion,
)
from sync.receive import receive
from sync.registry import site_models
from sync.resolve import reapply_loser
from sync.serialization import serialize
from sync.status import problems

from tests.factories import household, household_tree, member, outbox_envelopes

# Every test here runs twice: envelopes stored, then applied by the apply
# worker; and applied as they arrive, as a push delivers them.
on_arrival = {"apply": False}


@pytest.fixture(autouse=True, params=["stored then applied", "applied on arrival"])
def delivery_mode(request):
    on_arrival["apply"] = request.param == "applied on arrival"


def deliver(envelopes, by="middleman-1"):
    receipt = receive(envelopes, delivered_by=by, and_apply=on_arrival["apply"])
    report = receipt.applied
    report += apply_pending()
    return report


def status_of(sealed) -> str:
    return IncomingTransaction.objects.get(id=sealed.id).status


def test_member_that_arrives_before_its_household_waits_then_applies(remote):
    laptop_a, laptop_b = remote("laptop-a"), remote("laptop-b")
    home = household("laptop-a")
    home_envelopes = laptop_a.save(home)
    elsewhere = household("laptop-b")
    person = member(home, age_in_years=34)

    first = deliver(laptop_b.save(elsewhere) + laptop_b.save(person))
    person.age_in_years = 35
    history_of_edit, edit = laptop_b.save(person, "update")
    second = deliver([history_of_edit, edit])
    waiting = IncomingTransaction.objects.get(
        model="study.householdmember", action="insert"
    )

    assert first.parked == 1 and first.applied == 3
    assert Household.objects.filter(pk=elsewhere.pk).exists()  # unrelated: applied
    assert not HouseholdMember.objects.filter(pk=person.pk).exists()
    assert waiting.status == IncomingStatus.PARKED
    assert waiting.waiting_for == f"record:study.household:{home.pk}"
    assert second.parked == 1
    assert status_of(edit) == IncomingStatus.PARKED
    assert IncomingTransaction.objects.get(id=edit.id).waiting_for == f"tx:{waiting.id}"

    deliver(home_envelopes, by="laptop-a")

    applied = HouseholdMember.objects.get(pk=person.pk)
    assert applied.household_id == home.pk
    assert applied.age_in_years == 35
    assert status_of(edit) == IncomingStatus.APPLIED
    assert RecordVersion.objects.get(record_id=person.pk).tx_id == edit.id
    assert problems()["incoming"] == []


def test_remote_edit_newer_than_the_local_one_wins_and_local_is_kept(remote):
    laptop = remote("laptop-a")
    home = household("test-node", village="Gabane")
    home.save()
    created = RecordVersion.objects.get(record_id=home.pk)
    laptop.saw(home.pk, created.tx_id, created.hlc)
    home.village = "Molepolole"
    home.save()
    local = RecordVersion.objects.get(record_id=home.pk)
    theirs = Household.objects.get(pk=home.pk)
    theirs.village = "Mochudi"

    history, edit = laptop.save(theirs, "update", hlc=local.hlc + 1)
    report = deliver([history, edit])

    assert report.conflicts == 1
    assert Household.objects.get(pk=home.pk).village == "Mochudi"
    assert status_of(edit) == IncomingStatus.APPLIED
    conflict = Conflict.objects.get(record_id=home.pk)
    assert conflict.kind == Conflict.Kind.CONCURRENT
    assert (conflict.winner_tx, conflict.loser_tx) == (edit.id, local.tx_id)
    assert conflict.loser_producer == "test-node"
    assert conflict.loser_payload["fields"]["village"] == "Molepolole"

    last = OutgoingTransaction.objects.order_by("sequence").last()
    reapply_loser(conflict, by="supervisor")

    assert Household.objects.get(pk=home.pk).village == "Molepolole"
    change = OutgoingTransaction.objects.filter(
        model="study.household", sequence__gt=last.sequence
    ).get()
    assert (change.record_id, change.action) == (home.pk, "update")
    assert change.base_version == edit.id
    assert change.hlc > edit.hlc
    conflict.refresh_from_db()
    assert conflict.resolved_at is not None


def test_remote_edit_older_than_the_local_one_loses_and_is_kept(remote):
    laptop = remote("laptop-a")
    home = household("test-node", village="Gabane")
    home.save()
    created = RecordVersion.objects.get(record_id=home.pk)
    laptop.saw(home.pk, created.tx_id, created.hlc)
    home.village = "Molepolole"
    home.save()
    local = RecordVersion.objects.get(record_id=home.pk)
    theirs = Household.objects.get(pk=home.pk)
    theirs.village = "Mochudi"

    history, edit = laptop.save(theirs, "update", hlc=local.hlc - 1)
    report = deliver([history, edit])

    assert report.conflicts == 1
    assert Household.objects.get(pk=home.pk).village == "Molepolole"
    assert status_of(edit) == IncomingStatus.CONFLICT
    conflict = Conflict.objects.get(record_id=home.pk)
    assert (conflict.winner_tx, conflict.loser_tx) == (local.tx_id, edit.id)
    assert conflict.loser_producer == "laptop-a"
    assert conflict.loser_payload["fields"]["village"] == "Mochudi"

    before = OutgoingTransaction.objects.filter(model="study.household").count()
    reapply_loser(conflict, by="supervisor")

    assert Household.objects.get(pk=home.pk).village == "Mochudi"
    assert OutgoingTransaction.objects.filter(model="study.household").count() == (
        before + 1
    )
    assert RecordVersion.objects.get(record_id=home.pk).tx_id != local.tx_id


def test_delete_applies_and_a_later_edit_does_not_bring_the_record_back(remote):
    laptop_a, laptop_b = remote("laptop-a"), remote("laptop-b")
    home = household("laptop-a", village="Gabane")
    history, created = laptop_a.save(home)
    deliver([history, created])
    laptop_b.saw(home.pk, created.id, created.hlc)

    deliver(laptop_a.save(home, "delete"))
    assert not Household.objects.filter(pk=home.pk).exists()
    assert RecordVersion.objects.get(record_id=home.pk).deleted

    home.village = "Mochudi"
    history, edit = laptop_b.save(home, "update")
    report = deliver([history, edit])

    assert report.conflicts == 1
    assert not Household.objects.filter(pk=home.pk).exists()
    assert status_of(edit) == IncomingStatus.CONFLICT
    conflict = Conflict.objects.get(record_id=home.pk)
    assert conflict.kind == Conflict.Kind.EDIT_AFTER_DELETE
    assert conflict.loser_payload["fields"]["village"] == "Mochudi"


def test_delete_of_a_household_with_members_fails_with_a_reason(remote):
    laptop_a, laptop_b = remote("laptop-a"), remote("laptop-b")
    home = household("laptop-a")
    deliver(laptop_a.save(home))
    deliver(laptop_b.save(member(home)))

    history, delete = laptop_a.save(home, "delete")
    report = deliver([history, delete])

    assert report.failed == 1
    assert Household.objects.filter(pk=home.pk).exists()
    row = IncomingTransaction.objects.get(id=delete.id)
    assert row.status == IncomingStatus.FAILED
    assert row.detail == "cannot delete: still used by 1 household member record(s)"
    assert row in problems()["incoming"]


def test_failed_delete_applies_on_retry_once_what_blocked_it_is_gone(remote):
    laptop_a, laptop_b = remote("laptop-a"), remote("laptop-b")
    home = household("laptop-a")
    person = member(home)
    deliver(laptop_a.save(home))
    deliver(laptop_b.save(person))
    history, delete = laptop_a.save(home, "delete")
    deliver([history, delete])

    deliver(laptop_b.save(person, "delete"))
    output = StringIO()
    call_command("sync", "retry", stdout=output)

    assert output.getvalue().strip() == "1 applied, 0 parked, 0 conflicts, 0 failed"
    assert not Household.objects.filter(pk=home.pk).exists()
    row = IncomingTransaction.objects.get(id=delete.id)
    assert (row.status, row.detail) == (IncomingStatus.APPLIED, "")
    assert row.applied_at is not None
    assert problems()["incoming"] == []
    assert RecordVersion.objects.get(record_id=home.pk).deleted


@pytest.mark.parametrize(
    "link", ["not-a-link", {"pk": "not-a-uuid"}, {"key": "no pk"}, ["a", "list"]]
)
def test_a_signed_payload_with_a_malformed_link_fails_alone_with_a_reason(remote, link):
    laptop = remote("laptop-a")
    home = household("laptop-a")
    person = member(home)
    broken = serialize(site_models.get_for_model(HouseholdMember), person)
    broken["fields"]["household"] = link
    envelopes = laptop.save(home) + [laptop.seal(person, "insert", payload=broken)]

    report = deliver(envelopes)

    assert (report.applied, report.failed) == (2, 1)
    assert Household.objects.filter(pk=home.pk).exists()
    row = IncomingTransaction.objects.get(id=envelopes[-1].id)
    assert row.status == IncomingStatus.FAILED
    assert row.detail.startswith("payload does not fit study.householdmember: ")
    assert row in problems()["incoming"]


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"no": "fields"}, "payload of study.household has no 'fields' object"),
        (["a", "list"], "payload of study.household has no 'fields' object"),
        (
            {"fields": {"report_datetime": "yesterday"}},
            "payload does not fit study.household: ",
        ),
    ],
)
def test_a_signed_payload_of_the_wrong_shape_fails_alone_with_a_reason(
    remote, payload, says
):
    laptop = remote("laptop-a")
    good, bad = household("laptop-a"), household("laptop-a")
    envelopes = laptop.save(good) + [laptop.seal(bad, "insert", payload=payload)]

    report = deliver(envelopes)

    assert (report.applied, report.failed) == (2, 1)
    assert Household.objects.filter(pk=good.pk).exists()
    row = IncomingTransaction.objects.get(id=envelopes[-1].id)
    assert row.status == IncomingStatus.FAILED
    assert row.detail.startswith(says), row.detail


def test_a_record_that_breaks_a_rule_of_the_database_fails_alone(remote):
    # A laptop restored from an old backup hands out an identifier again.
    laptop = remote("laptop-a")
    first = household("laptop-a", household_identifier="HH-LAPTOPA-00001-X")
    deliver(laptop.save(first))
    again = household("laptop-a", household_identifier="HH-LAPTOPA-00001-X")
    other = household("laptop-a")
    history, copy = laptop.save(again)
    envelopes = [history, copy, *laptop.save(other), *laptop.save(member(other))]

    report = deliver(envelopes)

    assert (report.applied, report.failed) == (5, 1)
    assert Household.objects.filter(pk=other.pk).exists()
    assert HouseholdMember.objects.filter(household=other.pk).exists()
    assert not Household.objects.filter(pk=again.pk).exists()
    row = IncomingTransaction.objects.get(id=copy.id)
    assert row.status == IncomingStatus.FAILED
    assert row.detail.startswith("the database refused it: "), row.detail
    assert "household_identifier" in row.detail, row.detail
    assert row in problems()["incoming"]
    assert not RecordVersion.objects.filter(record_id=again.pk).exists()
    # A later edit of the refused record waits for it, and says so.
    again.household_identifier = "HH-LAPTOPA-00099-X"
    history_of_edit, edit = laptop.save(again, "update")
    deliver([history_of_edit, edit])
    assert status_of(edit) == IncomingStatus.PARKED


@pytest.mark.postgres
@pytest.mark.parametrize(
    "value",
    [
        {"village": "V" * 80},  # longer than its column
        {"latitude": decimal.Decimal("12345.5")},  # more digits than it holds
        {"comment": "nul \x00 in text"},  # PostgreSQL text cannot hold it
    ],
    ids=["too long", "too many digits", "nul character"],
)
def test_a_value_its_column_cannot_hold_fails_alone(remote, value):
    laptop = remote("laptop-a")
    unfit = household("laptop-a", **value)
    envelopes = laptop.save(unfit) + laptop.save(household("laptop-a"))

    report = deliver(envelopes)

    # The record and its history row are both refused.
    assert (report.applied, report.failed) == (2, 2)
    row = IncomingTransaction.objects.get(id=envelopes[1].id)
    assert row.detail.startswith("the database refused it: "), row.detail


def test_a_record_held_here_without_a_version_takes_the_incoming_change(remote):
    laptop = remote("laptop-a")
    home = household("laptop-a", village="Mochudi")
    # Loaded before this node synced: the record is here, no version of it is.
    Household.objects.bulk_create([household("laptop-a", id=home.id)])
    RecordVersion.objects.filter(record_id=home.id).delete()

    report = deliver(laptop.save(home))

    assert (report.applied, report.failed) == (2, 0)
    assert Household.objects.get(pk=home.pk).village == "Mochudi"


@pytest.mark.postgres
@pytest.mark.parametrize("age", [70_000, -1], ids=["past its range", "negative"])
def test_a_number_its_column_cannot_hold_fails_alone(remote, age):
    laptop = remote("laptop-a")
    home = household("laptop-a")
    envelopes = laptop.save(home) + laptop.save(member(home, age_in_years=age))

    report = deliver(envelopes)

    # The member and its history row are both refused; the household applies.
    assert (report.applied, report.failed) == (2, 2)
    row = IncomingTransaction.objects.get(id=envelopes[-1].id)
    assert row.detail.startswith("the database refused it: "), row.detail


# -- between two nodes: capture on this node, apply on its peer ---------------

TWO_NODES = pytest.mark.django_db(databases=["default", "peer"])


def ship_to_peer() -> None:
    """Carry this node's whole outbox to the peer and apply it there."""
    receipt = receive(
        outbox_envelopes(), delivered_by=settings.SYNC_NODE_ID, using="peer"
    )
    assert receipt.rejected == []
    apply_pending(using="peer")
    assert problems_on_peer() == []


def problems_on_peer() -> list:
    return list(
        IncomingTransaction.objects.using("peer")
        .exclude(status=IncomingStatus.APPLIED)
        .values_list("model", "status", "detail")
    )


def symptoms_on_peer(review) -> set[str]:
    held = SymptomsReview.objects.using("peer").get(pk=review.pk)
    return set(held.symptoms.values_list("short_name", flat=True))


@TWO_NODES
def test_symptoms_added_removed_and_cleared_arrive_as_the_same_set(peer):
    review = household_tree()["review"]
    cough, fever, rash = (
        Symptom.objects.get(short_name=name) for name in ("cough", "fever", "rash")
    )

    review.symptoms.add(cough, fever, rash)
    review.symptoms.remove(rash)
    ship_to_peer()
    assert symptoms_on_peer(review) == {"cough", "fever"}

    review.symptoms.clear()
    ship_to_peer()
    assert symptoms_on_peer(review) == set()

    rash.symptomsreview_set.add(review)
    ship_to_peer()
    assert symptoms_on_peer(review) == {"rash"}


HISTORY_COLUMNS = (
    "history_id",
    "id",
    "history_type",
    "history_node",
    "history_username",
    "history_date",
)


def history_on(using: str, model) -> set[tuple]:
    return set(model.history.using(using).values_list(*HISTORY_COLUMNS))


@TWO_NODES
def test_history_arrives_intact_and_applying_writes_none_of_its_own(peer):
    nurse = get_user_model().objects.create(username="mpho")
    tree = household_tree()
    home, vitals = tree["household"], tree["vitals"]
    home._history_user = nurse
    home.village = "Mochudi"
    home.save()
    vitals.delete()

    ship_to_peer()

    models = [type(record) for record in tree.values()]
    for model in models:
        assert history_on("peer", model) == history_on("default", model), model
    edits = Household.history.using("peer").filter(history_type="~")
    assert [(h.history_username, h.village) for h in edits] == [("mpho", "Mochudi")]
    assert Household.objects.using("peer").get(pk=home.pk).village == "Mochudi"
    assert not VitalSigns.objects.using("peer").filter(pk=vitals.pk).exists()
    assert [
        h.history_type
        for h in VitalSigns.history.using("peer").order_by("history_date")
    ] == ["+", "-"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_apply_workers_apply_each_change_once_and_in_order(remote, settings):
    import threading

    from django.db import connection

    settings.SYNC_CHUNK_SIZE = 7
    laptops = [remote("laptop-a"), remote("laptop-b")]
    homes, envelopes = [], []
    for laptop in laptops:
        for n in range(12):
            home = household(laptop.node_id)
            envelopes += laptop.save(home)
            # Later edits must land after the insert, whichever worker runs.
            for visit in (1, 2):
                home.comment = f"visit {visit} of {n}"
                envelopes += laptop.save(home, "update")
            homes.append(home)
    receive(envelopes, delivered_by="middleman-1")
    errors = []

    def work() -> None:
        try:
            apply_pending()
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=work) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    history = Household.history.model.objects
    assert errors == []
    assert set(IncomingTransaction.objects.values_list("status", flat=True)) == {
        IncomingStatus.APPLIED
    }
    assert IncomingTransaction.objects.count() == len(envelopes)
    for home in homes:
        assert Household.objects.get(pk=home.pk).comment == home.comment
        # One insert and two edits: three history rows, none applied twice.
        assert history.filter(id=home.pk).count() == 3

"""Reconciliation: scanned specimens matched to requisitions, and the page."""

import dataclasses
import datetime
import decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from reconcile.matching import clean_scans, expected_requisitions, match
from reconcile.models import Outcome, Reconciliation, ReconciliationLine
from study.models import SubjectRequisition, SubjectVisit
from sync.models import OutgoingTransaction

from tests.factories import household_tree, identifier


@dataclasses.dataclass
class Requisition:
    specimen_identifier: str
    is_drawn: bool = True


def requisitions(count: int, **values) -> list[Requisition]:
    return [Requisition(identifier("SPC", "laptop-a"), **values) for _ in range(count)]


def labels(items) -> list[str]:
    return [getattr(item, "specimen_identifier", item) for item in items]


def test_scanned_requisitions_are_matched_and_the_rest_missing():
    first, second, third = requisitions(3)

    result = match([first, second, third], [third.specimen_identifier])

    assert labels(result.matched) == [third.specimen_identifier]
    assert labels(result.missing) == sorted(
        [first.specimen_identifier, second.specimen_identifier]
    )
    assert result.unexpected == result.invalid == []
    assert not result.all_accounted_for


def test_valid_label_without_requisition_is_unexpected():
    (expected,) = requisitions(1)
    stray = identifier("SPC", "laptop-b")

    result = match([expected], [expected.specimen_identifier, stray])

    assert result.unexpected == [stray]
    assert result.invalid == []
    assert result.missing == []


def test_label_with_wrong_check_character_is_invalid_not_unexpected():
    (expected,) = requisitions(1)
    body = expected.specimen_identifier[:-1]
    wrong = "0" if expected.specimen_identifier[-1] != "0" else "1"

    result = match([expected], [body + wrong, "SPC-12345"])

    assert result.invalid == [body + wrong, "SPC-12345"]
    assert result.unexpected == []
    assert labels(result.missing) == [expected.specimen_identifier]


def test_duplicate_scans_count_once_and_are_reported():
    (expected,) = requisitions(1)
    label = expected.specimen_identifier

    result = match([expected], [label, f"  {label.lower()} ", "", label])

    assert labels(result.matched) == [label]
    assert result.duplicates == [label]
    assert result.scanned_count == 1
    assert result.all_accounted_for


def test_scans_are_stripped_upper_cased_and_blank_lines_dropped():
    assert clean_scans([" spc-a-1 ", "", "   ", "SPC-A-1", "spc-b-2"]) == (
        ["SPC-A-1", "SPC-B-2"],
        ["SPC-A-1"],
    )


def test_requisition_not_drawn_is_not_expected():
    drawn, not_drawn = requisitions(1) + requisitions(1, is_drawn=False)

    quiet = match([drawn, not_drawn], [])
    scanned = match([drawn, not_drawn], [not_drawn.specimen_identifier])

    assert labels(quiet.missing) == [drawn.specimen_identifier]
    assert scanned.unexpected == [not_drawn.specimen_identifier]


# --- the page ---------------------------------------------------------------


def requisition(visit, panel, *, is_drawn=True, drawn=None) -> SubjectRequisition:
    made = SubjectRequisition(
        visit=visit,
        panel=panel,
        is_drawn=is_drawn,
        drawn_datetime=(drawn or timezone.now()) if is_drawn else None,
        reason_not_drawn="" if is_drawn else "refused",
        estimated_volume_ml=decimal.Decimal("5.0"),
    )
    made.save()
    return made


@pytest.fixture
def field_day(db, settings):
    """Requisitions made on laptop-a today and yesterday, and one on laptop-b."""
    panel = SubjectRequisition.Panel
    settings.SYNC_NODE_ID = "laptop-a"
    tree = household_tree()
    later = SubjectVisit(
        consent=tree["consent"],
        visit_code=SubjectVisit.Code.YEAR_1,
        reason=SubjectVisit.Reason.UNSCHEDULED,
    )
    later.save()
    made = {
        "viral_load": requisition(tree["visit"], panel.VIRAL_LOAD),
        "cd4": requisition(tree["visit"], panel.CD4),
        "pbmc": requisition(tree["visit"], panel.PBMC),
        "not_drawn": requisition(later, panel.VIRAL_LOAD, is_drawn=False),
        "yesterday": requisition(
            later, panel.CD4, drawn=timezone.now() - datetime.timedelta(days=1)
        ),
    }
    settings.SYNC_NODE_ID = "laptop-b"
    made["other_laptop"] = requisition(household_tree()["visit"], panel.CD4)
    settings.SYNC_NODE_ID = "test-node"
    return made


@pytest.fixture
def driver(client, db):
    user = get_user_model().objects.create_user("driver", password="not-used")
    client.force_login(user)
    return client


def test_expected_requisitions_are_the_laptops_for_that_day(field_day):
    found = expected_requisitions("laptop-a", timezone.localdate())

    assert set(found) == {
        field_day[name] for name in ("viral_load", "cd4", "pbmc", "not_drawn")
    }


def test_page_needs_a_login(client, db):
    response = client.get(reverse("reconcile:reconcile"))

    assert response.status_code == 302
    assert "login" in response["Location"]


def test_page_offers_the_laptops_that_made_requisitions(driver, field_day):
    response = driver.get(reverse("reconcile:reconcile"))

    assert response.status_code == 200
    assert response.context["laptops"] == ["laptop-a", "laptop-b"]
    assert "Reconcile specimens" in response.text


def test_saving_scans_shows_the_counts_and_keeps_the_outcome(driver, field_day):
    scans = [
        field_day["viral_load"].specimen_identifier.lower(),
        field_day["cd4"].specimen_identifier,
        field_day["cd4"].specimen_identifier,
        field_day["other_laptop"].specimen_identifier,
        "SPC-LAPTOPA-0000X-Q",
    ]

    response = driver.post(
        reverse("reconcile:reconcile"),
        {
            "producer": "laptop-a",
            "shift_date": timezone.localdate().isoformat(),
            "scans": "\r\n".join(scans),
            "notes": "cool box 2",
            "save": "Save",
        },
        follow=True,
    )

    assert response.status_code == 200
    result = response.context["result"]
    assert (
        len(result.matched),
        len(result.missing),
        len(result.unexpected),
        len(result.invalid),
    ) == (2, 1, 1, 1)
    page = response.text
    assert '<span class="number">2</span><span class="label">matched</span>' in page
    assert '<span class="number">1</span><span class="label">missing</span>' in page
    assert "requisitioned on laptop-b" in page

    saved = Reconciliation.objects.get()
    assert (saved.username, saved.node, saved.producer) == (
        "driver",
        "test-node",
        "laptop-a",
    )
    assert saved.shift_date == timezone.localdate()
    assert saved.closed_datetime is not None
    assert saved.notes == "cool box 2"
    assert saved.reconciliation_identifier.startswith("REC-TESTNODE-")
    outcomes = {
        line.specimen_identifier: (line.outcome, line.requisition)
        for line in saved.lines.all()
    }
    assert outcomes == {
        field_day["viral_load"].specimen_identifier: (
            Outcome.MATCHED,
            field_day["viral_load"],
        ),
        field_day["cd4"].specimen_identifier: (Outcome.MATCHED, field_day["cd4"]),
        field_day["pbmc"].specimen_identifier: (Outcome.MISSING, field_day["pbmc"]),
        field_day["other_laptop"].specimen_identifier: (Outcome.UNEXPECTED, None),
        "SPC-LAPTOPA-0000X-Q": (Outcome.INVALID_LABEL, None),
    }
    assert ReconciliationLine.history.filter(history_username="driver").count() == 5
    # The outcome travels: each record and its history row is in the outbox.
    outbox = OutgoingTransaction.objects.filter(model__startswith="reconcile.")
    assert outbox.filter(model="reconcile.reconciliationline").count() == 5
    assert outbox.filter(model="reconcile.historicalreconciliation").count() == 1


def test_past_reconciliations_are_listed_with_their_counts(driver, field_day):
    form = {"producer": "laptop-a", "shift_date": timezone.localdate().isoformat()}
    driver.post(reverse("reconcile:reconcile"), {**form, "scans": "", "save": "1"})

    response = driver.get(reverse("reconcile:reconcile"))

    (past,) = response.context["recent"]
    assert (past.matched_count, past.missing_count, past.unexpected_count) == (
        0,
        3,
        0,
    )
    assert past.reconciliation_identifier in response.text


def test_checking_without_saving_keeps_nothing(driver, field_day):
    response = driver.post(
        reverse("reconcile:reconcile"),
        {
            "producer": "laptop-a",
            "shift_date": timezone.localdate().isoformat(),
            "scans": field_day["pbmc"].specimen_identifier,
            "check": "Check without saving",
        },
    )

    assert response.status_code == 200
    assert len(response.context["result"].matched) == 1
    assert "not saved yet" in response.text
    assert not Reconciliation.objects.exists()

"""Provides the matching of scanned specimens to requisitions, and its saving.

``match()`` is pure: given the requisitions a field laptop made for a shift
and the identifiers scanned, it sorts every specimen into matched, missing,
unexpected or not a valid label. The other functions read requisitions from
the database and save the outcome as a travelling ``Reconciliation``.
"""

import dataclasses
import datetime
import logging
from collections.abc import Iterable
from typing import Protocol

from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from study.identifiers import is_valid
from study.models import SubjectRequisition

from .models import Outcome, Reconciliation, ReconciliationLine

logger = logging.getLogger(__name__)


class Requisition(Protocol):
    specimen_identifier: str
    is_drawn: bool


@dataclasses.dataclass(frozen=True)
class Result:
    """Specimens sorted by outcome, each list in scan or identifier order."""

    matched: list[Requisition]
    missing: list[Requisition]
    unexpected: list[str]
    invalid: list[str]
    duplicates: list[str] = dataclasses.field(default_factory=list)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def scanned_count(self) -> int:
        return len(self.matched) + len(self.unexpected) + len(self.invalid)

    @property
    def expected_count(self) -> int:
        return len(self.matched) + len(self.missing)

    @property
    def all_accounted_for(self) -> bool:
        return not (self.missing or self.unexpected or self.invalid)

    @property
    def unexpected_with_notes(self) -> list[tuple[str, str]]:
        return [(i, self.notes.get(i, "")) for i in self.unexpected]

    @classmethod
    def from_lines(cls, lines: Iterable[ReconciliationLine]) -> "Result":
        """Return the result a saved reconciliation's lines record."""
        sorted_lines: dict[str, list[ReconciliationLine]] = {o: [] for o in Outcome}
        for line in lines:
            sorted_lines[line.outcome].append(line)
        return cls(
            matched=[line.requisition for line in sorted_lines[Outcome.MATCHED]],
            missing=[line.requisition for line in sorted_lines[Outcome.MISSING]],
            unexpected=[
                line.specimen_identifier for line in sorted_lines[Outcome.UNEXPECTED]
            ],
            invalid=[
                line.specimen_identifier for line in sorted_lines[Outcome.INVALID_LABEL]
            ],
            notes={
                line.specimen_identifier: line.note
                for line in sorted_lines[Outcome.UNEXPECTED]
                + sorted_lines[Outcome.INVALID_LABEL]
                if line.note
            },
        )


def clean_scans(scans: Iterable[str]) -> tuple[list[str], list[str]]:
    """Return the scanned identifiers once each, in order, and those repeated.

    Each is stripped and upper-cased; blank lines are dropped.
    """
    seen: dict[str, int] = {}
    for scan in scans:
        identifier = scan.strip().upper()
        if identifier:
            seen[identifier] = seen.get(identifier, 0) + 1
    return list(seen), [identifier for identifier, n in seen.items() if n > 1]


def match(requisitions: Iterable[Requisition], scans: Iterable[str]) -> Result:
    """Sort the scanned specimens and the requisitions expected into outcomes.

    Only drawn requisitions are expected in hand. A scan that matches none of
    them is unexpected if its check character is right, and otherwise not a
    valid label (most likely mistyped).
    """
    expected = {r.specimen_identifier: r for r in requisitions if r.is_drawn}
    scanned, duplicates = clean_scans(scans)
    matched, unexpected, invalid = [], [], []
    for identifier in scanned:
        if identifier in expected:
            matched.append(expected[identifier])
        elif is_valid(identifier):
            unexpected.append(identifier)
        else:
            invalid.append(identifier)
    found = {r.specimen_identifier for r in matched}
    missing = [r for key, r in sorted(expected.items()) if key not in found]
    return Result(
        matched=matched,
        missing=missing,
        unexpected=unexpected,
        invalid=invalid,
        duplicates=duplicates,
    )


def field_laptops() -> list[str]:
    """Return the nodes where requisitions were made, by name."""
    history = SubjectRequisition.history.filter(history_type="+")
    return sorted(set(history.values_list("history_node", flat=True)))


def expected_requisitions(
    producer: str, shift_date: datetime.date
) -> QuerySet[SubjectRequisition]:
    """Return the requisitions ``producer`` made for the shift on ``shift_date``.

    Which node made a requisition is read from its creation row in the audit
    trail, which travels with the data. Its day is the day it was drawn, or
    for one not drawn the day it was entered.
    """
    created = SubjectRequisition.history.filter(history_type="+", history_node=producer)
    created_that_day = created.filter(history_date__date=shift_date)
    return (
        SubjectRequisition.objects.filter(id__in=created.values("id"))
        .filter(
            Q(drawn_datetime__date=shift_date)
            | Q(drawn_datetime__isnull=True, id__in=created_that_day.values("id"))
        )
        .select_related("visit__consent")
        .order_by("specimen_identifier")
    )


def explain(identifiers: Iterable[str], producer: str) -> dict[str, str]:
    """Return, for specimens found unexpected, what is known of their labels."""
    identifiers = list(identifiers)
    requisitions = SubjectRequisition.objects.filter(
        specimen_identifier__in=identifiers
    ).in_bulk(field_name="specimen_identifier")
    made_on = dict(
        SubjectRequisition.history.filter(
            history_type="+", id__in=[r.pk for r in requisitions.values()]
        ).values_list("id", "history_node")
    )
    notes = {}
    for identifier in identifiers:
        requisition = requisitions.get(identifier)
        if requisition is None:
            notes[identifier] = "no requisition for this label has reached this node"
        elif made_on.get(requisition.pk, producer) != producer:
            notes[identifier] = f"requisitioned on {made_on[requisition.pk]}"
        elif not requisition.is_drawn:
            notes[identifier] = "the requisition says it was not drawn"
        elif requisition.drawn_datetime:
            drawn = timezone.localdate(requisition.drawn_datetime)
            notes[identifier] = f"drawn on {drawn:%d %b %Y}"
    return notes


def check(producer: str, shift_date: datetime.date, scans: Iterable[str]) -> Result:
    """Match ``scans`` against what ``producer`` requisitioned on ``shift_date``."""
    result = match(expected_requisitions(producer, shift_date), scans)
    return dataclasses.replace(result, notes=explain(result.unexpected, producer))


def save_reconciliation(
    *,
    username: str,
    producer: str,
    shift_date: datetime.date,
    result: Result,
    notes: str = "",
    started: datetime.datetime | None = None,
) -> Reconciliation:
    """Save a closed reconciliation with one line per specimen, all or nothing."""
    lines = (
        [(r.specimen_identifier, Outcome.MATCHED, r) for r in result.matched]
        + [(r.specimen_identifier, Outcome.MISSING, r) for r in result.missing]
        + [(i, Outcome.UNEXPECTED, None) for i in result.unexpected]
        + [(i, Outcome.INVALID_LABEL, None) for i in result.invalid]
    )
    now = timezone.now()
    with transaction.atomic():
        reconciliation = Reconciliation(
            username=username,
            producer=producer,
            shift_date=shift_date,
            created_datetime=started or now,
            closed_datetime=now,
            notes=notes,
        )
        reconciliation.save()
        for identifier, outcome, requisition in lines:
            ReconciliationLine(
                reconciliation=reconciliation,
                specimen_identifier=identifier,
                outcome=outcome,
                requisition=requisition,
                note=result.notes.get(identifier, "")[:200],
            ).save()
    logger.info(
        "saved reconciliation %s of %s for %s by %s: %d matched, %d missing, "
        "%d unexpected, %d not valid labels",
        reconciliation,
        producer,
        shift_date,
        username,
        len(result.matched),
        len(result.missing),
        len(result.unexpected),
        len(result.invalid),
    )
    return reconciliation


def with_counts(queryset: QuerySet[Reconciliation]) -> QuerySet[Reconciliation]:
    """Return ``queryset`` with the number of lines of each outcome."""

    def count(outcome: str) -> Count:
        return Count("lines", filter=Q(lines__outcome=outcome))

    return queryset.annotate(
        matched_count=count(Outcome.MATCHED),
        missing_count=count(Outcome.MISSING),
        unexpected_count=count(Outcome.UNEXPECTED),
        invalid_count=count(Outcome.INVALID_LABEL),
    )

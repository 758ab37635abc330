"""Provides reconciliations: specimens in hand checked against requisitions.

A driver (on the middleman laptop) or a lab assistant (on the community
server) scans the specimens they hold from one field laptop's shift. The
outcome is saved here and travels upstream like the study's data.
"""

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone
from study.identifiers import next_identifier
from study.models import SubjectRequisition
from sync.base import SyncedHistoricalRecords, SyncManager, SyncModel


def _this_node() -> str:
    return settings.SYNC_NODE_ID


class ReconciliationManager(SyncManager):
    def get_by_natural_key(self, reconciliation_identifier):
        return self.get(reconciliation_identifier=reconciliation_identifier)


class Reconciliation(SyncModel):
    """One check of the specimens in hand from one field laptop's shift."""

    reconciliation_identifier = models.CharField(
        max_length=40, unique=True, editable=False
    )
    username = models.CharField("checked by", max_length=150)
    node = models.CharField("checked on", max_length=64, default=_this_node)
    producer = models.CharField("field laptop", max_length=64)
    shift_date = models.DateField()
    created_datetime = models.DateTimeField("started", default=timezone.now)
    closed_datetime = models.DateTimeField("closed", null=True, blank=True)
    notes = models.TextField(blank=True, default="")

    objects = ReconciliationManager()
    history = SyncedHistoricalRecords()

    class Meta:
        ordering = ["-created_datetime"]

    def __str__(self) -> str:
        return self.reconciliation_identifier

    def save(self, *args, **kwargs):
        if not self.reconciliation_identifier:
            self.reconciliation_identifier = next_identifier("REC")
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse(
            "reconcile:reconciliation", args=[self.reconciliation_identifier]
        )

    def natural_key(self):
        return (self.reconciliation_identifier,)


class Outcome(models.TextChoices):
    MATCHED = "matched", "matched"
    MISSING = "missing", "missing"
    UNEXPECTED = "unexpected", "unexpected"
    INVALID_LABEL = "invalid_label", "not a valid label"


class LineManager(SyncManager):
    def get_by_natural_key(self, reconciliation_identifier, specimen_identifier):
        return self.get(
            reconciliation__reconciliation_identifier=reconciliation_identifier,
            specimen_identifier=specimen_identifier,
        )


class ReconciliationLine(SyncModel):
    """What became of one specimen: requisitioned, scanned, or both."""

    reconciliation = models.ForeignKey(
        Reconciliation, on_delete=models.CASCADE, related_name="lines"
    )
    specimen_identifier = models.CharField(max_length=40)
    outcome = models.CharField(max_length=15, choices=Outcome.choices)
    requisition = models.ForeignKey(
        SubjectRequisition,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="reconciliation_lines",
    )
    note = models.CharField(max_length=200, blank=True, default="")

    objects = LineManager()
    history = SyncedHistoricalRecords()

    class Meta:
        ordering = ["outcome", "specimen_identifier"]
        constraints = [
            models.UniqueConstraint(
                fields=["reconciliation", "specimen_identifier"],
                name="one_line_per_specimen",
            )
        ]

    def __str__(self) -> str:
        return f"{self.specimen_identifier} {self.outcome}"

    def natural_key(self):
        return self.reconciliation.natural_key() + (self.specimen_identifier,)

    natural_key.dependencies = ["reconcile.reconciliation", "study.subjectrequisition"]

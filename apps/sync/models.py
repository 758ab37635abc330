"""Provides the sync engine's tables: clock, outbox, incoming, versions, problems."""

import uuid

from django.db import models
from django.utils import timezone

from .envelope import LONGEST


class ProducerClock(models.Model):
    """The last sequence number and clock value this node handed out.

    Its row is locked by every captured write and every apply, so sequence
    numbers are gap-free and follow commit order.
    """

    node_id = models.CharField(max_length=64, primary_key=True)
    last_sequence = models.BigIntegerField(default=0)
    last_hlc = models.BigIntegerField(default=0)
    last_digest = models.BinaryField(default=b"")

    def __str__(self) -> str:
        return f"{self.node_id} at #{self.last_sequence}"


class EnvelopeFields(models.Model):
    """The columns of an envelope, kept exactly as signed."""

    id = models.UUIDField(primary_key=True, editable=False)
    producer = models.CharField(max_length=LONGEST["producer"])
    sequence = models.BigIntegerField()
    model = models.CharField(max_length=LONGEST["model"])
    record_id = models.UUIDField()
    action = models.CharField(max_length=6)
    hlc = models.BigIntegerField()
    base_version = models.UUIDField(null=True, blank=True)
    schema_version = models.CharField(max_length=LONGEST["schema_version"])
    key_id = models.CharField(max_length=LONGEST["key_id"])
    nonce = models.BinaryField()
    ciphertext = models.BinaryField()
    signature = models.BinaryField()
    prev_digest = models.BinaryField(default=b"")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.producer}#{self.sequence} {self.action} {self.model}"


def next_in_sequence(rows: models.QuerySet, after: int, limit: int) -> list:
    """Return the first ``limit`` of ``rows`` past sequence ``after``, in order.

    Asked as a range of the sequence, (after, after + limit], which is the
    whole answer when the sequence has no gap there. Asked as "the next
    ``limit``", PostgreSQL, whose statistics lag behind a large backlog
    written moments ago, reads and sorts every row left instead of walking
    the index: each page would cost as much as the whole outbox.
    """
    ordered = rows.order_by("sequence")
    page = list(ordered.filter(sequence__gt=after, sequence__lte=after + limit))
    if len(page) == limit:
        return page
    # The end of the rows, where few are left, or a gap in the range.
    return list(ordered.filter(sequence__gt=after)[:limit])


class OutgoingTransaction(EnvelopeFields):
    """A change made on this node, waiting to be carried upstream."""

    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["producer", "sequence"], name="outgoing_producer_sequence"
            )
        ]


class IncomingStatus(models.TextChoices):
    RECEIVED = "received", "received, not applied yet"
    APPLIED = "applied", "applied"
    PARKED = "parked", "waiting for a record that has not arrived"
    CONFLICT = "conflict", "lost a conflict; kept"
    FAILED = "failed", "could not be applied"


class IncomingTransaction(EnvelopeFields):
    """A change received from another node, and what became of it."""

    delivered_by = models.CharField(max_length=64)
    received_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(
        max_length=10, choices=IncomingStatus.choices, default=IncomingStatus.RECEIVED
    )
    waiting_for = models.CharField(max_length=200, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["producer", "sequence"], name="incoming_producer_sequence"
            )
        ]
        # Only the few rows that wait or failed are looked up by status, what
        # they wait for or their record: the indexes hold those rows alone,
        # so storing and applying the many others writes two index entries
        # per row (key, sequence) instead of four.
        indexes = [
            models.Index(
                fields=["waiting_for"],
                condition=models.Q(status="parked"),
                name="incoming_parked_waiting",
            ),
            models.Index(
                fields=["record_id"],
                condition=models.Q(status="parked"),
                name="incoming_parked_record",
            ),
            models.Index(
                fields=["producer", "sequence"],
                condition=models.Q(status__in=["parked", "failed"]),
                name="incoming_needs_attention",
            ),
        ]


class RejectedEnvelope(models.Model):
    """An envelope refused on arrival (bad signature, unknown key, ...)."""

    received_at = models.DateTimeField(default=timezone.now)
    delivered_by = models.CharField(max_length=64)
    producer = models.CharField(max_length=64, blank=True)
    sequence = models.BigIntegerField(null=True, blank=True)
    code = models.CharField(max_length=40)
    detail = models.TextField()
    envelope = models.JSONField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.producer}#{self.sequence}: {self.code}"


class ProducerState(models.Model):
    """How far this node holds and has applied one producer's sequence."""

    producer = models.CharField(max_length=64, primary_key=True)
    contiguous = models.BigIntegerField(default=0)
    highest = models.BigIntegerField(default=0)
    processed_through = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.producer}: held to #{self.contiguous}"


class RecordVersion(models.Model):
    """The transaction that made the current version of a record here."""

    model = models.CharField(max_length=100)
    record_id = models.UUIDField()
    tx_id = models.UUIDField()
    hlc = models.BigIntegerField()
    producer = models.CharField(max_length=64)
    deleted = models.BooleanField(default=False)

    class Meta:
        constraints = [
            # Record first: apply looks versions up by record alone.
            models.UniqueConstraint(
                fields=["record_id", "model"], name="one_version_per_record"
            )
        ]

    def __str__(self) -> str:
        state = "deleted" if self.deleted else "current"
        return f"{self.model} {self.record_id}: {state} as of {self.tx_id}"


class Conflict(models.Model):
    """A version that lost to a concurrent one; kept so it can be re-applied."""

    class Kind(models.TextChoices):
        CONCURRENT = "concurrent", "changed on two nodes"
        EDIT_AFTER_DELETE = "edit_after_delete", "edited after it was deleted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created = models.DateTimeField(default=timezone.now)
    model = models.CharField(max_length=100)
    record_id = models.UUIDField()
    kind = models.CharField(max_length=20, choices=Kind.choices)
    winner_tx = models.UUIDField()
    winner_producer = models.CharField(max_length=64)
    winner_hlc = models.BigIntegerField()
    loser_tx = models.UUIDField()
    loser_producer = models.CharField(max_length=64)
    loser_hlc = models.BigIntegerField()
    loser_action = models.CharField(max_length=6)
    loser_payload = models.JSONField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=200, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.model} {self.record_id}: {self.get_kind_display()}"


class Node(models.Model):
    """A node allowed to deliver to this one: its key, credential and rights."""

    class Role(models.TextChoices):
        CLIENT = "client"
        MIDDLEMAN = "middleman"
        COMMUNITY = "community"
        CENTRAL = "central"

    node_id = models.CharField(max_length=64, primary_key=True)
    role = models.CharField(max_length=10, choices=Role.choices)
    public_key = models.CharField(max_length=64, help_text="Ed25519, base64")
    token_hash = models.CharField(max_length=64, blank=True, default="")
    is_active = models.BooleanField(default=True)
    can_relay = models.BooleanField(
        default=False, help_text="May deliver envelopes produced by other nodes."
    )
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.node_id} ({self.role})"


class Acknowledgement(models.Model):
    """How far ``holder`` is known to hold the sequence of ``producer``."""

    holder = models.CharField(max_length=64)
    producer = models.CharField(max_length=64)
    through_sequence = models.BigIntegerField(default=0)
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["holder", "producer"], name="one_ack_per_holder_producer"
            )
        ]

    def __str__(self) -> str:
        return f"{self.holder} holds {self.producer} to #{self.through_sequence}"


class ExportedBatch(models.Model):
    """A batch file this site wrote for central: its place in the chain."""

    number = models.PositiveIntegerField(primary_key=True)
    file_name = models.CharField(max_length=120)
    manifest_digest = models.CharField(max_length=64, help_text="SHA-256, hex")
    envelope_count = models.PositiveIntegerField()
    producers = models.JSONField(help_text="{producer: {first, last, count}}")
    resync = models.BooleanField(
        default=False, help_text="Sent again from central's acknowledgements."
    )
    created = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    receipted_at = models.DateTimeField(
        null=True, blank=True, help_text="When central's receipt covered it."
    )

    def __str__(self) -> str:
        return f"batch {self.number} ({self.envelope_count} envelopes)"


class ImportedBatch(models.Model):
    """A site's batch file seen on central: imported, or waiting for its turn."""

    class Status(models.TextChoices):
        IMPORTED = "imported", "imported"
        WAITING = "waiting", "waiting for an earlier batch"

    site = models.CharField(max_length=64)
    number = models.PositiveIntegerField()
    manifest_digest = models.CharField(max_length=64, help_text="SHA-256, hex")
    file_name = models.CharField(max_length=120)
    status = models.CharField(max_length=10, choices=Status.choices)
    envelope_count = models.PositiveIntegerField(default=0)
    stored = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    producers = models.JSONField(
        default=dict, help_text="{producer: {first, last, count}}, from the manifest"
    )
    location = models.CharField(
        max_length=500, blank=True, default="", help_text="Folder a waiting file is in."
    )
    detail = models.TextField(blank=True, default="")
    seen_at = models.DateTimeField(default=timezone.now)
    imported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["site", "number"], name="one_batch_per_site_number"
            )
        ]

    def __str__(self) -> str:
        return f"{self.site} batch {self.number}: {self.status}"


class QuarantinedFile(models.Model):
    """A batch or receipt file refused on arrival, moved aside with the reason."""

    created = models.DateTimeField(default=timezone.now)
    file_name = models.CharField(max_length=200)
    moved_to = models.CharField(max_length=500)
    code = models.CharField(max_length=40)
    detail = models.TextField()
    site = models.CharField(max_length=64, blank=True, default="")
    number = models.PositiveIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.file_name}: {self.code}"

"""Provides what a node knows of its own sync: pending, held, problems."""

from django.conf import settings
from django.db.models import Count, Q

from .models import (
    Acknowledgement,
    Conflict,
    ExportedBatch,
    ImportedBatch,
    IncomingStatus,
    IncomingTransaction,
    Node,
    OutgoingTransaction,
    ProducerState,
    QuarantinedFile,
    RejectedEnvelope,
)


def upstream_acknowledgements():
    """Return what nodes up the line acknowledged of this node's own sequence.

    A middleman that pulled from this laptop has picked the changes up, not
    delivered them: its word counts as progress, never as a push.
    """
    pickers = Node.objects.filter(role=Node.Role.MIDDLEMAN).values_list(
        "node_id", flat=True
    )
    return (
        Acknowledgement.objects.filter(producer=settings.SYNC_NODE_ID)
        .exclude(holder=settings.SYNC_NODE_ID)
        .exclude(holder__in=list(pickers))
    )


def upstream_acknowledged(holder: str | None = None) -> int:
    """Return how far upstream holds this node's own sequence."""
    acks = upstream_acknowledgements()
    if holder:
        acks = acks.filter(holder=holder)
    return max(acks.values_list("through_sequence", flat=True), default=0)


def node_status() -> dict:
    outgoing = OutgoingTransaction.objects.filter(producer=settings.SYNC_NODE_ID)
    acknowledged = upstream_acknowledged()
    counts = {
        row["producer"]: row
        for row in IncomingTransaction.objects.values("producer").annotate(
            applied=Count("id", filter=Q(status=IncomingStatus.APPLIED)),
            parked=Count("id", filter=Q(status=IncomingStatus.PARKED)),
            failed=Count("id", filter=Q(status=IncomingStatus.FAILED)),
            conflicts=Count("id", filter=Q(status=IncomingStatus.CONFLICT)),
            held=Count("id"),
        )
    }
    producers = []
    for state in ProducerState.objects.order_by("producer"):
        row = counts.get(state.producer, {})
        producers.append(
            {
                "producer": state.producer,
                "contiguous": state.contiguous,
                "highest": state.highest,
                "gaps": state.highest - row.get("held", 0),
                "applied": row.get("applied", 0),
                "parked": row.get("parked", 0),
                "failed": row.get("failed", 0),
                "conflicts": row.get("conflicts", 0),
            }
        )
    last_push = (
        upstream_acknowledgements()
        .order_by("-updated")
        .values_list("updated", flat=True)
        .first()
    )
    return {
        "node": settings.SYNC_NODE_ID,
        "role": settings.SYNC_ROLE,
        "upstream": settings.SYNC_UPSTREAM_URL,
        "outgoing_total": outgoing.count(),
        "outgoing_pending": outgoing.filter(sequence__gt=acknowledged).count(),
        "acknowledgements": list(
            Acknowledgement.objects.order_by("holder", "producer")
        ),
        "last_push": last_push,
        "producers": producers,
        "rejected": RejectedEnvelope.objects.count(),
        "open_conflicts": Conflict.objects.filter(resolved_at=None).count(),
        "batch_files": batch_file_status(),
    }


def batch_file_status() -> dict:
    """Return the batch files this node exported, imported, or holds back."""
    exported = ExportedBatch.objects.order_by("number")
    imported = ImportedBatch.objects.filter(status=ImportedBatch.Status.IMPORTED)
    return {
        "exported_last": exported.values_list("number", flat=True).last() or 0,
        "exported_unreceipted": exported.filter(receipted_at=None).count(),
        "imported": imported.count(),
        "waiting": ImportedBatch.objects.filter(
            status=ImportedBatch.Status.WAITING
        ).count(),
        "quarantined": QuarantinedFile.objects.count(),
        "sites": _sites(),
    }


def _sites() -> list[dict]:
    """Return, per site that sent batch files, the last imported and those waiting."""
    sites: dict[str, dict] = {}
    rows = ImportedBatch.objects.order_by("site", "number")
    for site, number, status in rows.values_list("site", "number", "status"):
        row = sites.setdefault(site, {"site": site, "last": 0, "waiting": []})
        if status == ImportedBatch.Status.IMPORTED:
            row["last"] = number
        else:
            row["waiting"].append(number)
    return list(sites.values())


def problems(limit: int = 200) -> dict:
    """Return what needs a person's attention, newest first."""
    return {
        "incoming": list(
            IncomingTransaction.objects.filter(
                status__in=[IncomingStatus.PARKED, IncomingStatus.FAILED]
            ).order_by("producer", "sequence")[:limit]
        ),
        "rejected": list(RejectedEnvelope.objects.order_by("-received_at")[:limit]),
        "conflicts": list(
            Conflict.objects.filter(resolved_at=None).order_by("-created")[:limit]
        ),
        "waiting_batches": list(
            ImportedBatch.objects.filter(status=ImportedBatch.Status.WAITING).order_by(
                "site", "number"
            )[:limit]
        ),
        "quarantined": list(QuarantinedFile.objects.order_by("-created")[:limit]),
    }

"""Provides acknowledgements: how far each node up the line holds a sequence.

A field laptop learns from its middleman, its community server and, through
them, from central, so a research assistant can see how far each change got.
"""

from django.db import transaction
from django.utils import timezone

from .models import Acknowledgement, Node


def record_acknowledgement(
    holder: str, producer: str, through: int, exact: bool = False
) -> None:
    """Record that ``holder`` holds ``producer``'s sequence through ``through``.

    Hearsay only moves forward. ``exact`` takes the holder's own word even
    when it is lower: a server restored from a backup holds less, and what it
    lost must be sent again.
    """
    with transaction.atomic():
        ack, created = Acknowledgement.objects.select_for_update().get_or_create(
            holder=holder,
            producer=producer,
            defaults={"through_sequence": through, "updated": timezone.now()},
        )
        if created or (ack.through_sequence == through):
            return
        if exact or through > ack.through_sequence:
            ack.through_sequence = through
            ack.updated = timezone.now()
            ack.save(update_fields=["through_sequence", "updated"])


def progress(producer: str, sequence: int) -> list[str]:
    """Return the holders known to hold ``producer``'s change ``sequence``."""
    return sorted(
        Acknowledgement.objects.filter(
            producer=producer, through_sequence__gte=sequence
        ).values_list("holder", flat=True)
    )


def reach(producer: str, last: int) -> list[dict]:
    """Return how far ``producer``'s changes #1 to #``last`` got, as spans.

    Each span is a run of sequences held by the same nodes: ``first``,
    ``last``, ``count`` and ``holders`` (furthest first), with a ``label`` a
    person reads: "only on this node", "picked up by middleman-1",
    "acknowledged by community-1".
    """
    acks = list(
        Acknowledgement.objects.filter(producer=producer, through_sequence__gt=0)
        .exclude(holder=producer)
        .order_by("-through_sequence", "holder")
    )
    roles = dict(Node.objects.values_list("node_id", "role"))
    marks = sorted({min(a.through_sequence, last) for a in acks} | {0, last})
    spans = []
    for low, high in zip(marks, marks[1:], strict=False):
        holders = [a.holder for a in acks if a.through_sequence > low]
        # Nodes further up first: a middleman only picks up, the rest hold.
        holders.sort(key=lambda h: (roles.get(h) == Node.Role.MIDDLEMAN, h))
        spans.append(
            {
                "first": low + 1,
                "last": high,
                "count": high - low,
                "holders": holders,
                "label": "; ".join(_describe(h, roles.get(h)) for h in holders)
                or "only on this node",
            }
        )
    return spans


def _describe(holder: str, role: str | None) -> str:
    verb = "picked up by" if role == Node.Role.MIDDLEMAN else "acknowledged by"
    return f"{verb} {holder}"

"""Provides acknowledgements: how far each node up the line holds a sequence.

A field laptop learns from its middleman, its community server and, through
them, from central, so a research assistant can see how far each change got.
"""

from django.db import transaction
from django.utils import timezone

from .models import Acknowledgement


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

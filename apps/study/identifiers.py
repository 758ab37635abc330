"""Provides identifiers made offline that never collide between nodes.

An identifier joins a prefix, this node's id, a per-node counter and a check
character: ``HH-LAPTOP01-00042-K``. Node ids are unique in a deployment, so
two laptops never hand out the same identifier, and the check character
catches a mistyped label.
"""

from django.conf import settings
from django.db import transaction

from .models_local import IdentifierCounter

ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def check_character(text: str) -> str:
    total = sum((i + 1) * ALPHABET.find(c) for i, c in enumerate(text) if c in ALPHABET)
    return ALPHABET[total % len(ALPHABET)]


def is_valid(identifier: str) -> bool:
    body, _, check = identifier.rpartition("-")
    return bool(body) and check == check_character(body)


def next_identifier(prefix: str) -> str:
    """Return the next identifier for ``prefix`` on this node."""
    node = settings.SYNC_NODE_ID.upper().replace("-", "").replace("_", "")
    with transaction.atomic():
        counter, _ = IdentifierCounter.objects.select_for_update().get_or_create(
            prefix=prefix
        )
        counter.last += 1
        counter.save(update_fields=["last"])
    body = f"{prefix}-{node}-{counter.last:05d}"
    return f"{body}-{check_character(body)}"

"""Provides receive: verify envelopes and store them, once, for apply.

Storing is separate from applying: a delivery is acknowledged as soon as its
envelopes are safely stored, and apply works through them in bounded chunks.
"""

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Max
from django.utils import timezone

from . import bulk, envelope
from .apply import ApplyReport, apply_arriving, prepare
from .capture import lock_clock
from .errors import EnvelopeInvalid
from .models import (
    IncomingStatus,
    IncomingTransaction,
    Node,
    ProducerState,
    RejectedEnvelope,
)

log = logging.getLogger(__name__)
security_log = logging.getLogger("sync.security")


@dataclass
class Receipt:
    """What became of one delivery."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)
    acknowledged: dict[str, int] = field(default_factory=dict)
    applied: ApplyReport = field(default_factory=ApplyReport)


def receive(
    envelopes: list[envelope.Envelope],
    delivered_by: str,
    using: str = "default",
    and_apply: bool = False,
) -> Receipt:
    """Verify and store ``envelopes``; return what is held per producer.

    With ``and_apply``, envelopes that are next in their producer's sequence
    are applied as they are stored (see ``apply_arriving``); the rest wait
    for apply as usual.
    """
    receipt = Receipt()
    producers = {e.producer for e in envelopes}
    keys = dict(
        Node.objects.using(using)
        .filter(node_id__in=producers, is_active=True)
        .values_list("node_id", "public_key")
    )
    known = []
    for item in envelopes:
        if item.producer in keys:
            known.append(item)
            continue
        exc = EnvelopeInvalid(
            f"producer {item.producer} is not an active node here; "
            "register it with: manage.py sync node add",
            "unknown_producer",
        )
        receipt.rejected.append(_reject(item, exc, delivered_by, using))
    valid, refused = envelope.verify_runs(known, keys)
    for item, exc in refused:
        receipt.rejected.append(_reject(item, exc, delivered_by, using))

    prepared = prepare(valid, using) if and_apply else {}
    with transaction.atomic(using=using):
        # Taken before anything is read: apply takes it before the
        # producers' rows, and two deliveries of one producer queue here.
        clock = lock_clock(using) if and_apply else None
        for producer in sorted(producers):
            mine = [e for e in valid if e.producer == producer]
            _store(producer, mine, delivered_by, receipt, using, clock, prepared)
    return receipt


def _store(producer, envelopes, delivered_by, receipt, using, clock, prepared) -> None:
    held = _held(producer, [e.sequence for e in envelopes], using)
    fresh = {}
    for item in envelopes:
        if item.sequence not in held and item.sequence not in fresh:
            fresh[item.sequence] = item
        elif held.get(item.sequence, item.id) == item.id:
            receipt.duplicates += 1
        else:
            # A laptop restored from an old backup hands out numbers again.
            receipt.rejected.append(
                _reject(
                    item,
                    EnvelopeInvalid(
                        f"{producer}#{item.sequence} is already held with other "
                        "content: the producer reused a sequence number (was "
                        "it restored from a backup?)",
                        "sequence_reused",
                    ),
                    delivered_by,
                    using,
                )
            )
    arriving = sorted(fresh.values(), key=lambda item: item.sequence)
    if clock is None or not _next_to_apply(producer, arriving, using):
        _insert(arriving, delivered_by, using)
    else:
        try:
            with transaction.atomic(using=using):
                receipt.applied += apply_arriving(
                    arriving, delivered_by, clock, using, prepared
                )
        except Exception:
            # Stored is stored: the apply worker takes them up again.
            log.exception("applying %s's envelopes as they arrived failed", producer)
            _insert(arriving, delivered_by, using)
    receipt.stored += len(fresh)
    state = advance(producer, using)
    receipt.acknowledged[producer] = state.contiguous


def _next_to_apply(producer: str, arriving: list, using: str) -> bool:
    """Tell whether ``arriving`` is one apply chunk that continues the applied run.

    Locks the producer's state, so that it stays so until the delivery commits.
    """
    state, _ = (
        ProducerState.objects.using(using)
        .select_for_update()
        .get_or_create(producer=producer)
    )
    return (
        0 < len(arriving) <= settings.SYNC_CHUNK_SIZE
        and state.processed_through == state.contiguous
        and arriving[0].sequence == state.contiguous + 1
        and arriving[-1].sequence == state.contiguous + len(arriving)
    )


def _held(producer: str, sequences: list[int], using: str) -> dict:
    """Return the id of each of ``sequences`` that is held already."""
    if not sequences:
        return {}
    rows = IncomingTransaction.objects.using(using).filter(producer=producer)
    low, high = min(sequences), max(sequences)
    if high - low < 2 * len(sequences):
        # A chunk is a run of sequences: one range of the key to read,
        # rather than a lookup per number.
        rows = rows.filter(sequence__range=(low, high))
    else:
        rows = rows.filter(bulk.among("sequence", sequences, using))
    wanted = set(sequences)
    return {
        sequence: tx_id
        for sequence, tx_id in rows.values_list("sequence", "id")
        if sequence in wanted
    }


def advance(producer: str, using: str = "default") -> ProducerState:
    """Move the producer's contiguous mark over every sequence now held."""
    state, _ = (
        ProducerState.objects.using(using)
        .select_for_update()
        .get_or_create(producer=producer)
    )
    held = IncomingTransaction.objects.using(using).filter(producer=producer)
    while True:
        sequences = list(
            held.filter(sequence__gt=state.contiguous)
            .order_by("sequence")
            .values_list("sequence", flat=True)[:5000]
        )
        step = 0
        for expected, sequence in enumerate(sequences, start=state.contiguous + 1):
            if sequence != expected:
                break
            step += 1
        state.contiguous += step
        if step < 5000:
            break
    highest = held.aggregate(top=Max("sequence"))["top"] or 0
    state.highest = max(state.highest, highest)
    state.save(using=using)
    return state


def _insert(envelopes: list[envelope.Envelope], delivered_by: str, using: str):
    """Store ``envelopes``, skipping any that another delivery stored meanwhile."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        IncomingTransaction.objects.using(using).bulk_create(
            [
                IncomingTransaction(**_values(item), delivered_by=delivered_by)
                for item in envelopes
            ],
            ignore_conflicts=True,
        )
        return
    # Every column is a UUID, text, integer, bytes or time, which psycopg
    # adapts itself: no per-value round through Django's field machinery.
    fresh = {
        "delivered_by": delivered_by,
        "received_at": timezone.now(),
        "status": IncomingStatus.RECEIVED.value,
        "waiting_for": "",
        "detail": "",
        "applied_at": None,
    }
    columns = [f.column for f in IncomingTransaction._meta.concrete_fields]
    rows = [
        [values[name] for name in columns]
        for values in ({**_values(item), **fresh} for item in envelopes)
    ]
    # Every value was checked to fit by Envelope.from_wire: binary is safe.
    bulk.copy_new(
        connection,
        [bulk.Copy(IncomingTransaction._meta.db_table, columns, rows, binary=True)],
    )


def _values(item: envelope.Envelope) -> dict:
    return {name: getattr(item, name) for name in envelope.COLUMNS}


def _reject(item, exc: EnvelopeInvalid, delivered_by: str, using: str) -> dict:
    security_log.warning(
        "rejected %s#%s delivered by %s: %s",
        item.producer,
        item.sequence,
        delivered_by,
        exc.reason,
    )
    RejectedEnvelope.objects.using(using).create(
        delivered_by=delivered_by,
        producer=item.producer,
        sequence=item.sequence,
        code=exc.code,
        detail=exc.reason,
        envelope=item.to_wire(),
    )
    return {
        "producer": item.producer,
        "sequence": item.sequence,
        "code": exc.code,
        "detail": exc.reason,
    }

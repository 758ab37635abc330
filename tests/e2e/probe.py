"""Provides a read-only look into a running node, printed as JSON.

Copied into every app container and run there with ``docker exec``, as the
node's own user and environment, so it reads the node's database the way the
node does (SQLite on a laptop, PostgreSQL on a server)::

    python /e2e/probe.py counts
    python /e2e/probe.py snapshot
    python /e2e/probe.py outbox --after 0 --limit 100

The test process never imports the node's settings; it only reads this output.
"""

import argparse
import hashlib
import json
import sys

import django

django.setup()

from django.db.models import Count  # noqa: E402
from sync.envelope import Envelope, PayloadEncoder  # noqa: E402
from sync.models import (  # noqa: E402
    Conflict,
    IncomingTransaction,
    OutgoingTransaction,
    ProducerClock,
    ProducerState,
    RecordVersion,
    RejectedEnvelope,
)
from sync.registry import site_models  # noqa: E402
from sync.serialization import serialize  # noqa: E402

TX_FIELDS = ("id", "producer", "sequence", "model", "record_id", "action", "hlc")
INCOMING_FIELDS = (*TX_FIELDS, "status", "delivered_by", "applied_at")


def _canonical(payload: dict) -> dict:
    """Drop local primary keys of reference data: only natural keys travel."""
    fields = {}
    for name, value in payload["fields"].items():
        if isinstance(value, dict) and "natural_key" in value:
            value = {"natural_key": value["natural_key"]}
        elif isinstance(value, list):
            value = sorted(
                (
                    {"natural_key": v["natural_key"]} if "natural_key" in v else v
                    for v in value
                ),
                key=lambda v: json.dumps(v, cls=PayloadEncoder, sort_keys=True),
            )
        fields[name] = value
    return fields


def _text_ids(names, row) -> list:
    return [
        str(v) if k in ("id", "record_id") else v
        for k, v in zip(names, row, strict=True)
    ]


def _digest(fields: dict) -> str:
    text = json.dumps(fields, cls=PayloadEncoder, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def counts() -> dict:
    incoming = {
        f"{row['producer']}:{row['status']}": row["n"]
        for row in IncomingTransaction.objects.values("producer", "status").annotate(
            n=Count("id")
        )
    }
    return {
        "outgoing": OutgoingTransaction.objects.count(),
        "incoming": IncomingTransaction.objects.count(),
        "incoming_by_status": incoming,
        "held": {
            s.producer: [s.contiguous, s.highest, s.processed_through]
            for s in ProducerState.objects.all()
        },
        "rejected": RejectedEnvelope.objects.count(),
        "conflicts": Conflict.objects.count(),
    }


def snapshot(full: bool) -> dict:
    records = {}
    for synced in site_models:
        rows = {}
        for obj in synced.model._base_manager.order_by().iterator(chunk_size=2000):
            fields = _canonical(serialize(synced, obj))
            rows[str(obj.pk)] = fields if full else _digest(fields)
        records[synced.label] = rows
    history_of = {}
    for synced in site_models:
        if synced.append_only:
            # A history row keeps the id of the record it describes in "id".
            rows = synced.model._base_manager.values_list("pk", "id")
            history_of[synced.label] = {str(pk): str(record) for pk, record in rows}
    clock = ProducerClock.objects.first()
    return {
        "counts": counts(),
        "append_only": sorted(s.label for s in site_models if s.append_only),
        "history_of": history_of,
        "records": records,
        "versions": [
            [v.model, str(v.record_id), str(v.tx_id), v.hlc, v.producer, v.deleted]
            for v in RecordVersion.objects.order_by().iterator(chunk_size=5000)
        ],
        "outgoing": [
            _text_ids(TX_FIELDS, row)
            for row in OutgoingTransaction.objects.order_by("sequence")
            .values_list(*TX_FIELDS)
            .iterator(chunk_size=5000)
        ],
        "incoming": [
            _text_ids(INCOMING_FIELDS, row)
            for row in IncomingTransaction.objects.order_by("producer", "sequence")
            .values_list(*TX_FIELDS, "status", "delivered_by", "applied_at")
            .iterator(chunk_size=5000)
        ],
        "conflicts": [
            {
                "model": c.model,
                "record_id": str(c.record_id),
                "kind": c.kind,
                "winner_tx": str(c.winner_tx),
                "winner_producer": c.winner_producer,
                "winner_hlc": c.winner_hlc,
                "loser_tx": str(c.loser_tx),
                "loser_producer": c.loser_producer,
                "loser_hlc": c.loser_hlc,
                "loser_payload": c.loser_payload,
                "resolved": c.resolved_at is not None,
            }
            for c in Conflict.objects.all()
        ],
        "rejected": [
            {
                "producer": r.producer,
                "sequence": r.sequence,
                "code": r.code,
                "delivered_by": r.delivered_by,
            }
            for r in RejectedEnvelope.objects.all()
        ],
        "clock": [clock.last_sequence, clock.last_hlc] if clock else None,
    }


def outbox(after: int, limit: int) -> list[dict]:
    rows = OutgoingTransaction.objects.filter(sequence__gt=after).order_by("sequence")
    return [Envelope.from_row(row).to_wire() for row in rows[:limit]]


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("counts")
    snap = sub.add_parser("snapshot")
    snap.add_argument("--full", action="store_true", help="values, not digests")
    box = sub.add_parser("outbox")
    box.add_argument("--after", type=int, default=0)
    box.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    if args.what == "counts":
        result = counts()
    elif args.what == "snapshot":
        result = snapshot(args.full)
    else:
        result = outbox(args.after, args.limit)
    json.dump(result, sys.stdout, cls=PayloadEncoder)


if __name__ == "__main__":
    main()

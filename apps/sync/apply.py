"""Provides apply: stored incoming transactions become local records.

Each producer's transactions are applied in sequence order, one bounded chunk
per database transaction, with a handful of queries per chunk. A transaction
whose linked record has not arrived is parked (waiting), and so are later
changes to the same record; everything else goes on. Parked transactions are
retried as soon as what they wait for is applied.

Conflicts are found by version: an envelope names the version it changed
(``base_version``). If that is not the version held here, the record was
changed on two nodes; the newer by hybrid logical clock wins (producer id
breaks ties) and the other version is kept as a Conflict. An edit never
brings a deleted record back: it is kept as a conflict instead.
"""

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, DataError, IntegrityError, connections, transaction
from django.db.models import F, ProtectedError, RestrictedError
from django.db.models.deletion import Collector
from django.utils import timezone

from . import bulk, envelope, hlc, state
from .capture import lock_clock
from .errors import EnvelopeInvalid
from .models import (
    Conflict,
    IncomingStatus,
    IncomingTransaction,
    OutgoingTransaction,
    ProducerState,
    RecordVersion,
)
from .registry import site_models
from .serialization import serialize

log = logging.getLogger(__name__)

# Each round retries what the previous one made possible; a chain of waits
# longer than this is finished by the next apply.
MAX_UNPARK_ROUNDS = 1000


@dataclass
class ApplyReport:
    applied: int = 0
    parked: int = 0
    conflicts: int = 0
    failed: int = 0

    def __iadd__(self, other: "ApplyReport") -> "ApplyReport":
        self.applied += other.applied
        self.parked += other.parked
        self.conflicts += other.conflicts
        self.failed += other.failed
        return self

    def __str__(self) -> str:
        return (
            f"{self.applied} applied, {self.parked} parked, "
            f"{self.conflicts} conflicts, {self.failed} failed"
        )


def apply_pending(max_chunks: int | None = None, using: str = "default") -> ApplyReport:
    """Apply what has been received, chunk by chunk; return the totals."""
    report = ApplyReport()
    started = time.monotonic()
    chunks = 0
    while max_chunks is None or chunks < max_chunks:
        done = _apply_next_chunk(using)
        if done is None:
            break
        report += done
        chunks += 1
    if chunks:
        log.info(
            "applied %d chunks in %.1f s: %s",
            chunks,
            time.monotonic() - started,
            report,
        )
    return report


def apply_delivered(marks: dict[str, int], using: str = "default") -> ApplyReport:
    """Apply one chunk after a delivery, and a second if the delivery needs it.

    ``marks`` says how far the delivery left each producer held. Normally one
    chunk applies what it brought. When a pusher's two chunks arrive out of
    order, the later one is stored first, behind a gap, and its delivery can
    apply nothing; the earlier one's delivery then closes the gap and applies
    both, so nothing is left waiting for the next delivery.
    """
    behind = ProducerState.objects.using(using).filter(
        processed_through__lt=F("contiguous")
    )
    if not behind.exists():
        # Applied as it arrived. Asked without the clock's lock, which another
        # delivery may hold meanwhile: its answer need not wait for that one.
        return ApplyReport()
    report = apply_pending(max_chunks=1, using=using)
    applied = dict(
        ProducerState.objects.using(using)
        .filter(producer__in=list(marks))
        .values_list("producer", "processed_through")
    )
    if any(applied.get(producer, 0) < mark for producer, mark in marks.items()):
        report += apply_pending(max_chunks=1, using=using)
    return report


def retry(rows: list[IncomingTransaction], using: str = "default") -> ApplyReport:
    """Apply failed or parked transactions again, in producer order."""
    with transaction.atomic(using=using):
        clock = lock_clock(using)
        return _run(clock, using, [_Pending.of(row) for row in rows])


def apply_arriving(
    envelopes: list[envelope.Envelope],
    delivered_by: str,
    clock,
    using: str,
    prepared: dict | None = None,
) -> ApplyReport:
    """Apply verified envelopes as they arrive, and store them with the outcome.

    For receive, when they are next in their producer's sequence and nothing
    received before them waits to be applied, inside its transaction and
    with the clock locked. Storing each with its outcome saves storing it
    as received, reading it back and marking what became of it.
    ``prepared`` holds what ``prepare`` worked out for them ahead.
    """
    received_at = timezone.now()
    prepared = prepared or {}
    rows = []
    for item in envelopes:
        row = _Pending(*(getattr(item, name) for name in _Pending.columns))
        row.stored, row.delivered_by, row.received_at = False, delivered_by, received_at
        row.payload, row.draft = prepared.get(item.id, (None, None))
        rows.append(row)
    report = _run(clock, using, rows)
    ProducerState.objects.using(using).filter(producer=rows[-1].producer).update(
        processed_through=rows[-1].sequence
    )
    return report


def prepare(envelopes: list[envelope.Envelope], using: str) -> dict:
    """Open each of ``envelopes`` and draft its record; return both by id.

    Done ahead, before a delivery takes the clock's lock, this cuts the time
    it holds it: what is left for apply is deciding against what is held.
    A payload that does not open is opened again by apply, which records why.
    """
    prepared, natural = {}, {}
    for item in envelopes:
        try:
            payload = envelope.open_payload(item)
            if _has_fields(payload):
                prepared[item.id] = (payload, _draft(item, payload, using, natural))
        except Exception:
            # Apply opens and drafts it again, and records what went wrong
            # (or leaves it stored for the apply worker, if apply breaks).
            log.debug("could not prepare %s#%s ahead", item.producer, item.sequence)
    return prepared


class _Pending:
    """An incoming transaction as apply reads it, and what became of it.

    Lighter than a model instance: apply reads a thousand at a time. One
    that has just arrived is not ``stored`` yet: apply stores it.
    """

    columns = envelope.COLUMNS
    __slots__ = (
        *columns,
        "status",
        "waiting_for",
        "detail",
        "applied_at",
        "stored",
        "delivered_by",
        "received_at",
        "payload",
        "draft",
    )

    def __init__(self, *values):
        for name, value in zip(self.columns, values, strict=True):
            setattr(self, name, value)
        self.status = IncomingStatus.RECEIVED
        self.waiting_for = self.detail = ""
        self.applied_at = None
        self.stored = True
        self.payload = self.draft = None  # worked out ahead, if they were

    @classmethod
    def of(cls, row: IncomingTransaction) -> "_Pending":
        return cls(*(getattr(row, name) for name in cls.columns))


class _Draft(NamedTuple):
    """A record as its payload describes it, before apply weighs it up.

    Working it out needs the payload alone (and reference data), so it can
    be done before apply takes the clock's lock. ``links`` are the records
    of this site it links to, which must be here before it can be.
    """

    values: dict  # by attribute name
    m2m: dict
    links: tuple = ()  # (label, pk)
    fault: str = ""  # why the payload does not fit its model, if it does not


class _Version(NamedTuple):
    """The version of a record held here: which transaction made it."""

    tx_id: object
    hlc: int
    producer: str
    deleted: bool


def _apply_next_chunk(using: str) -> ApplyReport | None:
    with transaction.atomic(using=using):
        # The clock lock makes this the only apply, and orders it against
        # local writes: two workers never apply the same chunk.
        clock = lock_clock(using)
        producer = (
            ProducerState.objects.using(using)
            .filter(processed_through__lt=F("contiguous"))
            .order_by("processed_through", "producer")
            .first()
        )
        if producer is None:
            return None
        # Everything through the contiguous mark is held, so the next chunk
        # is a range of the sequence (an index walk even when PostgreSQL's
        # statistics lag behind a large delivery).
        through = min(
            producer.contiguous, producer.processed_through + settings.SYNC_CHUNK_SIZE
        )
        rows = [
            _Pending(*values)
            for values in IncomingTransaction.objects.using(using)
            .filter(
                producer=producer.producer,
                sequence__gt=producer.processed_through,
                sequence__lte=through,
            )
            .order_by("sequence")
            .values_list(*_Pending.columns)
        ]
        report = _run(clock, using, rows)
        producer.processed_through = rows[-1].sequence
        producer.save(using=using, update_fields=["processed_through"])
        return report


def _order(row) -> tuple:
    return (row.producer, row.sequence)


def _run(clock, using: str, rows: list[_Pending]) -> ApplyReport:
    """Apply ``rows``, then every parked transaction whose wait is over."""
    report = ApplyReport()
    for _ in range(MAX_UNPARK_ROUNDS):
        arrived = _apply_rows(clock, using, sorted(rows, key=_order), report)
        rows = _ready(arrived, using)
        if not rows:
            break
        log.info("retrying %d parked transactions", len(rows))
    return report


def _apply_rows(clock, using: str, rows: list[_Pending], report) -> set[str]:
    """Apply ``rows`` together; add to ``report``; return what arrived.

    If the database refuses the writes (a value too long for its column, a
    second record with a key that must be unique), the rows are applied
    again one at a time, so that only the ones it refuses fail.
    """
    chunk = _Chunk(clock, using)
    try:
        with transaction.atomic(using=using):
            chunk.run(rows)
            _check_deferred(using)
    except (IntegrityError, DataError) as exc:
        log.warning(
            "the database refused a chunk (%s); applying it row by row",
            _database_says(exc),
        )
    else:
        report += chunk.report
        return chunk.arrived
    arrived, blocked = set(), {}
    for row in rows:
        single = _Chunk(clock, using, blocked)
        try:
            with transaction.atomic(using=using):
                single.run([row])
                _check_deferred(using)
        except (IntegrityError, DataError) as exc:
            single = _Chunk(clock, using, blocked)
            single.refused(row, exc)
        report += single.report
        arrived |= single.arrived
    return arrived


def _database_says(exc: DatabaseError) -> str:
    """Return the database's message on one line (PostgreSQL adds DETAIL lines)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _check_deferred(using: str) -> None:
    """Check the constraints PostgreSQL would otherwise check at commit."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        # A connection plans each foreign key's check once and keeps the
        # plan. One made while a table was nearly empty reads the whole
        # table for every key, and a server keeps its connections: checking
        # a thousand keys took 4 ms on a fresh server and 44 ms fifty
        # thousand records later. Planned again, each check is an index
        # lookup; planning again costs a fraction of a millisecond.
        with connection.cursor() as cursor:
            cursor.execute("DISCARD PLANS")
        connection.check_constraints()


def _ready(arrived: set[str], using: str) -> list[_Pending]:
    """Return parked transactions waiting for ``arrived``, and those behind them."""
    parked = IncomingTransaction.objects.using(using).filter(
        status=IncomingStatus.PARKED
    )
    if not parked.exists():
        return []
    tokens = list(arrived)
    ready = {}
    for start in range(0, len(tokens), 500):
        for row in parked.filter(waiting_for__in=tokens[start : start + 500]):
            ready[row.id] = row
    records = list({row.record_id for row in ready.values()})
    for start in range(0, len(records), 500):
        for row in parked.filter(record_id__in=records[start : start + 500]):
            ready[row.id] = row
    return [_Pending.of(row) for row in ready.values()]


class _Chunk:
    """One atomic pass over a list of incoming transactions."""

    def __init__(self, clock, using: str, blocked: dict | None = None):
        self.clock = clock
        self.using = using
        self.report = ApplyReport()
        self.now = timezone.now()
        self.versions: dict[tuple, _Version] = {}
        # Records with a version here, and records this node holds as far as
        # versions and the writes of this chunk tell.
        self.versioned: set[tuple] = set()
        self.stored: set[tuple] = set()
        self.changed_versions: dict[tuple, _Version] = {}
        # Records whose earlier change did not apply: later ones wait.
        self.blocked: dict[tuple, str] = {} if blocked is None else blocked
        self.present: dict[str, set] = defaultdict(set)
        self.pending: dict[str, dict] = defaultdict(
            dict
        )  # label -> pk -> (values, m2m)
        self.natural: dict[tuple, object] = {}
        self.conflicts: list[Conflict] = []
        self.arrived: set[str] = set()

    def run(self, rows: list[_Pending]) -> ApplyReport:
        with state.applying_incoming():
            payloads = self._open(rows)
            drafts = self._draft(rows, payloads)
            self._load(rows, drafts)
            for row in rows:
                if row.id in payloads:
                    self._apply_one(row, payloads[row.id], drafts[row.id])
            self._flush()
            self._save_outcomes(rows)
        return self.report

    # -- loading ---------------------------------------------------------------

    def _open(self, rows) -> dict:
        payloads = {}
        for row in rows:
            try:
                payload = row.payload or envelope.open_payload(row)
            except EnvelopeInvalid as exc:
                self._fail(row, exc.reason)
                continue
            if _has_fields(payload):
                payloads[row.id] = payload
            else:
                self._fail(row, f"payload of {row.model} has no 'fields' object")
        return payloads

    def _draft(self, rows, payloads) -> dict:
        """Return each row's draft, worked out now unless it was ahead."""
        return {
            row.id: row.draft or _draft(row, payloads[row.id], self.using, self.natural)
            for row in rows
            if row.id in payloads
        }

    def _load(self, rows, drafts) -> None:
        """Fetch versions, blockers and linked records for the whole chunk."""
        ids = {row.record_id for row in rows}
        held = RecordVersion.objects.using(self.using).filter(
            bulk.among("record_id", ids, self.using)
        )
        for model, record_id, *version in held.values_list(
            "model", "record_id", "tx_id", "hlc", "producer", "deleted"
        ):
            self.versions[(model, record_id)] = _Version(*version)
            self.versioned.add((model, record_id))
        self.stored.update(self.versioned)
        chunk = {row.id for row in rows}
        parked = IncomingTransaction.objects.using(self.using).filter(
            status=IncomingStatus.PARKED
        )
        if not parked.exists():  # the rule: one look at an empty index
            parked = parked.none()  # then nothing to look for among the records
        parked = (
            parked.filter(bulk.among("record_id", ids, self.using))
            .order_by("producer", "sequence")
            .values_list("id", "model", "record_id")
        )
        for tx_id, model, record_id in parked:
            if tx_id not in chunk:
                self.blocked[(model, record_id)] = f"tx:{tx_id}"
        wanted = defaultdict(set)
        for draft in drafts.values():
            for label, pk in draft.links:
                wanted[label].add(pk)
        for label, pks in wanted.items():
            model = site_models.get(label).model
            found = model._base_manager.using(self.using).filter(
                bulk.among("pk", pks, self.using)
            )
            self.present[label].update(
                str(pk) for pk in found.values_list("pk", flat=True)
            )

    # -- deciding --------------------------------------------------------------

    def _apply_one(self, row, payload, draft: _Draft) -> None:
        key = (row.model, row.record_id)
        if key in self.blocked:
            self._park(row, self.blocked[key], "an earlier change to this record waits")
            return
        if draft.fault:
            self._fail(row, draft.fault)
            return
        if row.action != "delete" and not self._links_here(row, draft.links):
            return
        synced = site_models.get(row.model)
        values, m2m = draft.values, draft.m2m
        if synced.append_only:
            self.pending[synced.label][row.record_id] = (values, m2m)
            self._applied(row)
            return

        current = self.versions.get(key)
        if current is None or current.tx_id == row.base_version:
            if current is None and row.base_version is not None:
                if not self._known(row.base_version):
                    self._park(
                        row,
                        f"tx:{row.base_version}",
                        "the version this change was made on has not arrived",
                    )
                    return
            self._write(synced, row, values, m2m)
            return
        if not self._known(row.base_version) and row.base_version is not None:
            self._park(
                row,
                f"tx:{row.base_version}",
                "the version this change was made on has not arrived",
            )
            return
        self._resolve(synced, row, payload, values, m2m, current)

    def _resolve(self, synced, row, payload, values, m2m, current) -> None:
        """Decide between the version held here and a concurrent one."""
        if current.deleted:
            if row.action == "delete":
                self._applied(row)
                return
            self._keep_loser(
                row, payload, current, Conflict.Kind.EDIT_AFTER_DELETE, incoming=True
            )
            return
        incoming_wins = (row.hlc, row.producer) > (current.hlc, current.producer)
        if not incoming_wins:
            self._keep_loser(row, payload, current, Conflict.Kind.CONCURRENT, True)
            return
        self._flush()  # the losing version must be read as it stands
        held = synced.model._base_manager.using(self.using).filter(pk=row.record_id)
        # Stored as JSON, in the form an incoming payload has (decimals and
        # datetimes as text), so reapply_loser reads either kind alike.
        snapshot = _as_json(serialize(synced, held.get())) if held.exists() else {}
        self._keep_loser(row, snapshot, current, Conflict.Kind.CONCURRENT, False)
        self._write(synced, row, values, m2m)

    def _keep_loser(self, row, loser_payload, current, kind, incoming: bool) -> None:
        if incoming:
            winner = (current.tx_id, current.producer, current.hlc)
            loser = (row.id, row.producer, row.hlc, row.action)
        else:
            winner = (row.id, row.producer, row.hlc)
            loser = (current.tx_id, current.producer, current.hlc, "update")
        self.conflicts.append(
            Conflict(
                model=row.model,
                record_id=row.record_id,
                kind=kind,
                winner_tx=winner[0],
                winner_producer=winner[1],
                winner_hlc=winner[2],
                loser_tx=loser[0],
                loser_producer=loser[1],
                loser_hlc=loser[2],
                loser_action=loser[3],
                loser_payload=loser_payload,
            )
        )
        self.report.conflicts += 1
        log.warning(
            "conflict on %s %s: %s#%s %s",
            row.model,
            row.record_id,
            row.producer,
            row.sequence,
            "kept as loser" if incoming else "won",
        )
        if incoming:
            self._set(row, IncomingStatus.CONFLICT, detail=f"lost to {winner[1]}")
        else:
            # The incoming version won and is applied below.
            pass

    def _write(self, synced, row, values, m2m) -> None:
        key = (row.model, row.record_id)
        if row.action == "delete":
            if not self._delete(synced, row):
                return
        else:
            self.pending[synced.label][row.record_id] = (values, m2m)
            self.present[synced.label].add(str(row.record_id))
        version = _Version(row.id, row.hlc, row.producer, row.action == "delete")
        self.versions[key] = self.changed_versions[key] = version
        self._applied(row)

    def _known(self, tx_id) -> bool:
        """True if the transaction that made a version was seen on this node."""
        if tx_id is None:
            return True
        if any(v.tx_id == tx_id for v in self.changed_versions.values()):
            return True
        seen = IncomingTransaction.objects.using(self.using).filter(
            id=tx_id, status__in=[IncomingStatus.APPLIED, IncomingStatus.CONFLICT]
        )
        return (
            seen.exists()
            or OutgoingTransaction.objects.using(self.using).filter(id=tx_id).exists()
        )

    # -- links -----------------------------------------------------------------

    def _links_here(self, row, links) -> bool:
        """True if the records ``row`` links to are here; if not, say why not."""
        for label, pk in links:
            if str(pk) in self.present[label]:
                continue
            gone = self.versions.get((label, pk))
            if gone is not None and gone.deleted:
                self._fail(
                    row,
                    f"payload does not fit {row.model}: it links to {label} {pk}, "
                    "which was deleted",
                )
            else:
                waits = f"waits for {label} {pk} to arrive"
                self._park(row, f"record:{label}:{pk}", waits)
            return False
        return True

    # -- writing ---------------------------------------------------------------

    def _flush(self) -> None:
        """Write pending records, a statement or two per model."""
        new, held = [], []
        for label, records in self.pending.items():
            if not records:
                continue
            synced = site_models.get(label)
            write = partial(
                bulk.Write,
                synced.model,
                unique_fields=[synced.model._meta.pk.name],
                update_fields=(
                    None if synced.append_only else [f.name for f in synced.fields]
                ),
            )
            # A record with no version here is most likely new: it is copied
            # straight in. The others update the rows they replace.
            fresh, replacing = [], []
            for pk, (values, _) in records.items():
                (replacing if (label, pk) in self.stored else fresh).append(values)
                self.stored.add((label, pk))
            new.append(write(fresh))
            held.append(write(replacing))
        bulk.write_new(new, self.using)
        for write in held:
            if write.rows:
                bulk.write_values(
                    write.model,
                    write.rows,
                    self.using,
                    write.unique_fields,
                    write.update_fields,
                )
        for label, records in self.pending.items():
            synced = site_models.get(label)
            for pk, (_, m2m) in records.items():
                if m2m:
                    obj = synced.model(pk=pk)
                    obj._state.adding, obj._state.db = False, self.using
                    for name, pks in m2m.items():
                        getattr(obj, name).set(pks)
                self.arrived.add(f"record:{label}:{pk}")
            records.clear()

    def _delete(self, synced, row) -> bool:
        """Delete a record now; record an error if something protects it."""
        self._flush()
        rows = synced.model._base_manager.using(self.using).filter(pk=row.record_id)
        try:
            with transaction.atomic(using=self.using):
                collector = Collector(using=self.using)
                collector.collect(list(rows))
                collector.delete()
        except ProtectedError as exc:
            self._fail(row, f"cannot delete: {_users(exc.protected_objects)}")
            return False
        except RestrictedError as exc:
            self._fail(row, f"cannot delete: {_users(exc.restricted_objects)}")
            return False
        self.present[synced.label].discard(str(row.record_id))
        return True

    # -- outcomes --------------------------------------------------------------

    def _applied(self, row) -> None:
        self._set(row, IncomingStatus.APPLIED)
        self.arrived.add(f"tx:{row.id}")
        self.report.applied += 1

    def _park(self, row, token: str, reason: str) -> None:
        self._set(row, IncomingStatus.PARKED, waiting_for=token, detail=reason)
        self.blocked[(row.model, row.record_id)] = f"tx:{row.id}"
        self.report.parked += 1
        log.warning("parked %s#%s: %s", row.producer, row.sequence, reason)

    def _fail(self, row, reason: str) -> None:
        self._set(row, IncomingStatus.FAILED, detail=reason)
        self.blocked[(row.model, row.record_id)] = f"tx:{row.id}"
        self.report.failed += 1
        log.warning("could not apply %s#%s: %s", row.producer, row.sequence, reason)

    def refused(self, row, exc: DatabaseError) -> None:
        """Record that the database refused ``row``'s write, and why."""
        self._fail(row, f"the database refused it: {_database_says(exc)}")
        self._save_outcomes([row])

    def _set(self, row, status, waiting_for: str = "", detail: str = "") -> None:
        row.status = status
        row.waiting_for = waiting_for
        row.detail = detail
        row.applied_at = self.now if status == IncomingStatus.APPLIED else None

    def _save_outcomes(self, rows) -> None:
        versions = {True: [], False: []}
        for key, version in self.changed_versions.items():
            versions[key in self.versioned].append(
                {"model": key[0], "record_id": key[1], **version._asdict()}
            )
        write = partial(
            bulk.Write,
            RecordVersion,
            unique_fields=["model", "record_id"],
            update_fields=["tx_id", "hlc", "producer", "deleted"],
        )
        bulk.write_new([write(versions[False])], self.using)
        bulk.write_values(RecordVersion, versions[True], self.using, **write.keywords)
        Conflict.objects.using(self.using).bulk_create(self.conflicts)
        _store_arrived([row for row in rows if not row.stored], self.using)
        stored = [row for row in rows if row.stored]
        incoming = IncomingTransaction.objects.using(self.using)
        applied = [row.id for row in stored if row.status == IncomingStatus.APPLIED]
        for start in range(0, len(applied), 5000):
            incoming.filter(
                bulk.among("id", applied[start : start + 5000], self.using)
            ).update(
                status=IncomingStatus.APPLIED,
                waiting_for="",
                detail="",
                applied_at=self.now,
            )
        outcomes = ["status", "waiting_for", "detail", "applied_at"]
        others = [
            IncomingTransaction(
                id=row.id, **{name: getattr(row, name) for name in outcomes}
            )
            for row in stored
            if row.status != IncomingStatus.APPLIED
        ]
        incoming.bulk_update(others, outcomes, batch_size=200)
        newest = max((row.hlc for row in rows), default=0)
        if newest > self.clock.last_hlc:
            self.clock.last_hlc = hlc.merge(self.clock.last_hlc, newest)
            self.clock.save(using=self.using, update_fields=["last_hlc"])


def _store_arrived(rows: list[_Pending], using: str) -> None:
    """Store transactions that arrived with this apply, with their outcomes.

    Receive made sure none is held (and holds the lock that keeps it so),
    so a key held after all is an error, not something to skip.
    """
    if not rows:
        return
    names = [f.attname for f in IncomingTransaction._meta.concrete_fields]
    connection = connections[using]
    if connection.vendor != "postgresql":
        IncomingTransaction.objects.using(using).bulk_create(
            [
                IncomingTransaction(**{name: getattr(row, name) for name in names})
                for row in rows
            ]
        )
        return
    # Every value was checked to fit by Envelope.from_wire: binary is safe.
    bulk.copy_straight(
        connection,
        bulk.Copy(
            IncomingTransaction._meta.db_table,
            [IncomingTransaction._meta.get_field(name).column for name in names],
            [[getattr(row, name) for name in names] for row in rows],
            binary=True,
        ),
    )


def _has_fields(payload) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("fields"), dict)


def _draft(row, payload: dict, using: str, natural: dict) -> _Draft:
    """Work out the record ``payload`` describes, for ``row``'s model.

    ``natural`` caches keys of reference data looked up by natural key.
    """
    synced = site_models.find(row.model)
    if synced is None:
        unknown = f"{row.model} is not registered for offline use here"
        return _Draft({}, {}, fault=unknown)
    values = {synced.model._meta.pk.attname: row.record_id}
    m2m, links = {}, []
    given = payload["fields"]
    try:
        for field in synced.fields:
            if field.name not in given:
                continue
            value = given[field.name]
            if field.is_relation:
                value = _link(synced, field, value, links, using, natural)
            else:
                value = field.to_python(value)
            values[field.attname] = value
        for field in synced.m2m_fields:
            if field.name in given:
                m2m[field.name] = [
                    _link(synced, field, link, links, using, natural)
                    for link in given[field.name]
                ]
    except (_Unusable, ValueError, TypeError, KeyError) as exc:
        return _Draft({}, {}, fault=f"payload does not fit {row.model}: {exc}")
    except ValidationError as exc:
        reason = " ".join(exc)
        return _Draft({}, {}, fault=f"payload does not fit {row.model}: {reason}")
    return _Draft(values, m2m, tuple(links))


def _link(synced, field, link, links: list, using: str, natural: dict):
    """Return the key ``link`` names; note it in ``links`` if it must be here."""
    if link is None:
        return None
    target = field.related_model
    if synced.append_only:
        return _linked_pk(target, link)
    if target in site_models:
        linked = _linked_pk(target, link)
        links.append((target._meta.label_lower, linked))
        return linked
    if "natural_key" in link and hasattr(target._default_manager, "get_by_natural_key"):
        cache_key = (target, tuple(link["natural_key"]))
        if cache_key not in natural:
            try:
                found = target._default_manager.db_manager(using).get_by_natural_key(
                    *link["natural_key"]
                )
            except target.DoesNotExist:
                raise _Unusable(
                    f"{target._meta.label} {link['natural_key']} is not on this "
                    "node; add the reference data, then retry"
                ) from None
            natural[cache_key] = found.pk
        return natural[cache_key]
    return _linked_pk(target, link)


def _linked_pk(target, link):
    """Return the key a link names, as ``target`` holds its keys."""
    if not isinstance(link, dict) or "pk" not in link:
        raise _Unusable(f"a link to {target._meta.label} must name its 'pk'")
    try:
        return target._meta.pk.to_python(link["pk"])
    except ValidationError:
        raise _Unusable(
            f"{str(link['pk'])[:60]!r} is not a key of {target._meta.label}"
        ) from None


def _as_json(payload: dict) -> dict:
    return json.loads(json.dumps(payload, cls=envelope.PayloadEncoder))


def _users(objects) -> str:
    labels = sorted({obj._meta.verbose_name for obj in objects})
    return f"still used by {len(objects)} {', '.join(labels)} record(s)"


class _Unusable(Exception):
    pass

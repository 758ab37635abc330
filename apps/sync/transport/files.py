"""Provides batch files between a site server and central: export, import, receipts.

Where no network reaches central, a site server's envelopes travel as batch
files (on a USB drive, in a folder rsync fills, or over SFTP) and central's
receipts travel back the same way.

A batch file ``<site>-<number:06d>.batch`` is a tar of three members:

- ``envelopes.jsonl.gz``: the original envelopes, one wire form per line,
  unchanged (each still signed by its producer);
- ``manifest.json``: site, number, schema version, per-producer sequence
  ranges and counts, the SHA-256 of the envelopes member, and the number and
  manifest digest of the batch it follows, which chains a site's batches so
  a missing one is noticed;
- ``manifest.sig``: the site's Ed25519 signature of ``manifest.json``.

A batch is written under a temporary name, synced to disk and renamed; only
then is it recorded, so a crash leaves a complete batch or none, and the next
batch's chain link always names a file that exists. A complete file whose
record was never committed is adopted by the next export.

Central imports each site's batches in chain order: a batch whose
predecessor has not arrived waits in the inbox; a file that fails any check
is moved to quarantine with the reason; importing a batch twice changes
nothing. A receipt is signed JSON from central: how far it holds each
producer's sequence the site sent, and the last batch of the site it imported.

The site records a receipt as central's acknowledgements, which its push
and ``/held/`` answers hand down to the laptops (a middleman passes them on
to the laptops it pulls from), so a laptop learns that central holds its
changes on its next sync, even with nothing new to send.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from django import db
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from .. import keys
from ..acknowledgements import record_acknowledgement
from ..apply import apply_pending
from ..envelope import Envelope
from ..errors import EnvelopeInvalid, SyncError
from ..models import (
    Acknowledgement,
    ExportedBatch,
    ImportedBatch,
    IncomingTransaction,
    Node,
    OutgoingTransaction,
    ProducerState,
    QuarantinedFile,
    next_in_sequence,
)
from ..receive import receive

log = logging.getLogger(__name__)
security_log = logging.getLogger("sync.security")

FORMAT = 1
BATCH_SUFFIX = ".batch"
RECEIPT_SUFFIX = ".receipt"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ENVELOPES = "envelopes.jsonl.gz"
MEMBERS = (MANIFEST, SIGNATURE, ENVELOPES)
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_RECEIPT_BYTES = 8 * 1024 * 1024
PAGE = 1000
INBOX = "inbox"
RECEIPTS = "receipts"
DONE = "imported"


class BatchRefused(SyncError):
    """A batch or receipt file failed a check; ``code`` names which."""

    def __init__(self, reason: str, code: str):
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransferFailed(SyncError):
    """Files could not be moved to or from the drop; the message says why."""


def batch_name(site: str, number: int) -> str:
    return f"{site}-{number:06d}{BATCH_SUFFIX}"


# -- writing files safely -------------------------------------------------------


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees all of it or nothing."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _tar_member(tar: tarfile.TarFile, name: str, data: io.IOBase, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, data)


# -- export (site) --------------------------------------------------------------


@dataclass
class ExportSummary:
    batches: list[str] = field(default_factory=list)
    envelopes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        names = ", ".join(self.batches) or "no batch: nothing new to export"
        return (
            f"exported {self.envelopes} envelopes in {len(self.batches)} "
            f"batches ({names}) in {self.seconds:.1f} s"
        )


@contextlib.contextmanager
def exclusive(name: str) -> Iterator[None]:
    """Run the block as the only holder of lock ``name`` on this database.

    Two exports at once would write the same batch number; two imports at
    once would move the same files. On PostgreSQL this is a session advisory
    lock, released even if the process dies. SQLite nodes are laptops, which
    neither export nor import batches, so there it is not taken.
    """
    connection = db.connection
    if connection.vendor != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        if not cursor.fetchone()[0]:
            log.info("waiting for another %s to finish", name)
            cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def export(
    directory: str | Path | None = None,
    from_acknowledged: bool = False,
    max_envelopes: int | None = None,
) -> ExportSummary:
    """Write what central does not have yet as batch files; return a summary.

    Without ``from_acknowledged``, that is everything not exported before;
    with it, everything central's receipts do not acknowledge (after a drive
    was lost). The site's own outbox and what it holds of other producers,
    up to each one's contiguous mark, are both exported.
    """
    with exclusive("sync export"):
        return _export(directory, from_acknowledged, max_envelopes)


def _export(directory, from_acknowledged, max_envelopes) -> ExportSummary:
    started = time.monotonic()
    me = settings.SYNC_NODE_ID
    directory = Path(directory or settings.SYNC_EXPORT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    cap = max_envelopes or settings.SYNC_BATCH_MAX_ENVELOPES
    for stale in directory.glob(f".{me}-*.tmp"):
        stale.unlink()
    _adopt_unrecorded(directory)

    starts = _acknowledged_marks() if from_acknowledged else _exported_marks()
    ranges = [
        (producer, starts.get(producer, 0), through)
        for producer, through in sorted(_holdings().items())
        if through > starts.get(producer, 0)
    ]
    log.info(
        "exporting %d producers to %s%s",
        len(ranges),
        directory,
        " from central's acknowledgements" if from_acknowledged else "",
    )
    if from_acknowledged:
        previous = (
            ExportedBatch.objects.exclude(receipted_at=None).order_by("number").last()
        )
    else:
        previous = ExportedBatch.objects.order_by("number").last()
    last = ExportedBatch.objects.aggregate(top=Max("number"))["top"] or 0
    summary = ExportSummary()
    envelopes = _stream(ranges)
    for number in itertools.count(last + 1):
        record = _write_batch(
            directory,
            number,
            previous,
            itertools.islice(envelopes, cap),
            resync=from_acknowledged,
        )
        if record is None:
            break
        summary.batches.append(record.file_name)
        summary.envelopes += record.envelope_count
        previous = record
    summary.seconds = time.monotonic() - started
    log.info("export done: %s", summary)
    return summary


def _holdings() -> dict[str, int]:
    """Return how far this node holds each producer's sequence, gap-free."""
    me = settings.SYNC_NODE_ID
    held = dict(
        ProducerState.objects.exclude(producer=me)
        .exclude(producer__in=_central_ids())
        .filter(contiguous__gt=0)
        .values_list("producer", "contiguous")
    )
    own = OutgoingTransaction.objects.filter(producer=me).aggregate(
        top=Max("sequence")
    )["top"]
    if own:
        held[me] = own
    return held


def _central_ids() -> list[str]:
    return list(
        Node.objects.filter(role=Node.Role.CENTRAL).values_list("node_id", flat=True)
    )


def _exported_marks() -> dict[str, int]:
    marks: dict[str, int] = {}
    for producers in ExportedBatch.objects.values_list("producers", flat=True):
        for producer, span in producers.items():
            marks[producer] = max(marks.get(producer, 0), span["last"])
    return marks


def _acknowledged_marks() -> dict[str, int]:
    marks: dict[str, int] = {}
    acks = Acknowledgement.objects.filter(holder__in=_central_ids())
    for producer, through in acks.values_list("producer", "through_sequence"):
        marks[producer] = max(marks.get(producer, 0), through)
    return marks


def _stream(ranges: list[tuple[str, int, int]]) -> Iterator[Envelope]:
    """Yield the envelopes of each (producer, after, through), a page at a time."""
    me = settings.SYNC_NODE_ID
    for producer, after, through in ranges:
        table = OutgoingTransaction if producer == me else IncomingTransaction
        rows = table.objects.filter(producer=producer, sequence__lte=through)
        while after < through:
            page = next_in_sequence(rows, after, PAGE)
            if not page:
                break
            for row in page:
                yield Envelope.from_row(row)
            after = page[-1].sequence


def _write_batch(
    directory: Path,
    number: int,
    previous: ExportedBatch | None,
    envelopes: Iterator[Envelope],
    resync: bool,
) -> ExportedBatch | None:
    """Write one batch from ``envelopes``; return its record, None if empty."""
    me = settings.SYNC_NODE_ID
    name = batch_name(me, number)
    packed = directory / f".{name}.envelopes.tmp"
    producers: dict[str, dict[str, int]] = {}
    count = 0
    with (
        open(packed, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as stream,
    ):
        for item in envelopes:
            line = json.dumps(item.to_wire(), separators=(",", ":"))
            stream.write(line.encode() + b"\n")
            span = producers.setdefault(
                item.producer, {"first": item.sequence, "last": 0, "count": 0}
            )
            span["last"] = item.sequence
            span["count"] += 1
            count += 1
    if not count:
        packed.unlink()
        return None
    checksum, size = _sha256_file(packed)
    manifest = {
        "format": FORMAT,
        "kind": "batch",
        "site": me,
        "number": number,
        "created": timezone.now().isoformat(),
        "schema_version": settings.SYNC_SCHEMA_VERSION,
        "previous": (
            {"number": previous.number, "digest": previous.manifest_digest}
            if previous
            else None
        ),
        "resync": resync,
        "envelopes": {"count": count, "bytes": size, "sha256": checksum},
        "producers": producers,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, indent=1).encode()
    signature = base64.b64encode(keys.signing_key().sign(manifest_bytes))

    temporary = directory / f".{name}.tmp"
    with open(temporary, "wb") as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _tar_member(tar, MANIFEST, io.BytesIO(manifest_bytes), len(manifest_bytes))
            _tar_member(tar, SIGNATURE, io.BytesIO(signature), len(signature))
            with open(packed, "rb") as data:
                _tar_member(tar, ENVELOPES, data, size)
        out.flush()
        os.fsync(out.fileno())
    packed.unlink()
    os.replace(temporary, directory / name)
    fsync_directory(directory)
    # Recorded only once the file is complete under its name: a crash before
    # this commit leaves a file the next export adopts (_adopt_unrecorded).
    record = ExportedBatch.objects.create(
        number=number,
        file_name=name,
        manifest_digest=hashlib.sha256(manifest_bytes).hexdigest(),
        envelope_count=count,
        producers=producers,
        resync=resync,
    )
    log.info("wrote %s: %d envelopes of %d producers", name, count, len(producers))
    return record


def _adopt_unrecorded(directory: Path) -> None:
    """Record a complete batch file whose export crashed before its commit."""
    me = settings.SYNC_NODE_ID
    last = ExportedBatch.objects.aggregate(top=Max("number"))["top"] or 0
    path = directory / batch_name(me, last + 1)
    if not path.exists():
        return
    try:
        batch = read_batch(path, lambda site: _own_node(site))
    except BatchRefused as exc:
        aside = path.with_name(path.name + ".broken")
        os.replace(path, aside)
        log.warning("moved unrecorded %s aside to %s: %s", path, aside, exc.reason)
        return
    ExportedBatch.objects.create(
        number=batch.number,
        file_name=path.name,
        manifest_digest=batch.digest,
        envelope_count=batch.count,
        producers=batch.producers,
        resync=batch.resync,
    )
    log.warning("adopted %s, written by an export that stopped early", path.name)


def _own_node(site: str) -> Node:
    if site != settings.SYNC_NODE_ID:
        raise BatchRefused(f"batch of {site}, not of this node", "foreign_batch")
    return Node(
        node_id=site,
        role=settings.SYNC_ROLE,
        public_key=keys.public_key_text(),
        can_relay=True,
    )


# -- reading and checking a batch -----------------------------------------------


@dataclass
class BatchFile:
    """A batch file whose signature, checksum and manifest have been checked."""

    path: Path
    manifest: dict
    digest: str

    @property
    def site(self) -> str:
        return self.manifest["site"]

    @property
    def number(self) -> int:
        return self.manifest["number"]

    @property
    def previous(self) -> tuple[int, str]:
        previous = self.manifest["previous"] or {"number": 0, "digest": ""}
        return previous["number"], previous["digest"]

    @property
    def resync(self) -> bool:
        return bool(self.manifest.get("resync"))

    @property
    def count(self) -> int:
        return self.manifest["envelopes"]["count"]

    @property
    def producers(self) -> dict:
        return self.manifest["producers"]

    def chunks(self, size: int) -> Iterator[list[Envelope]]:
        """Yield the envelopes in chunks of ``size``, read from the file."""
        with tarfile.open(self.path, "r:") as tar:
            lines = _envelope_lines(tar)
            while chunk := [
                Envelope.from_wire(json.loads(line))
                for line in itertools.islice(lines, size)
            ]:
                yield chunk


def read_batch(path: Path, node_of: Callable[[str], Node]) -> BatchFile:
    """Check a batch file completely; raise BatchRefused saying what is wrong.

    ``node_of(site)`` returns the registered node of the site (or raises
    BatchRefused). Nothing is stored: this only reads.
    """
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if SIGNATURE not in members:
                raise BatchRefused(f"{path.name} has no {SIGNATURE}", "unsigned")
            missing = [name for name in MEMBERS if name not in members]
            extra = sorted(set(members) - set(MEMBERS))
            if missing or extra:
                raise BatchRefused(
                    f"{path.name} is not a batch file: missing {missing}, "
                    f"unexpected {extra}",
                    "not_a_batch",
                )
            if any(not members[name].isfile() for name in MEMBERS):
                raise BatchRefused(
                    f"{path.name} has a member that is not a file", "not_a_batch"
                )
            if members[MANIFEST].size > MAX_MANIFEST_BYTES:
                raise BatchRefused(
                    f"{MANIFEST} of {path.name} is too large", "not_a_batch"
                )
            manifest_bytes = tar.extractfile(MANIFEST).read()
            signature = tar.extractfile(SIGNATURE).read(1024)
            manifest = _parse_manifest(path, manifest_bytes)
            node = node_of(manifest["site"])
            _verify_signature(path, node, manifest_bytes, signature)
            _check_envelopes(path, tar, manifest, node)
    except BatchRefused:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BatchRefused(
            f"{path.name} is truncated or damaged: {exc}", "truncated"
        ) from None
    return BatchFile(path, manifest, hashlib.sha256(manifest_bytes).hexdigest())


def _parse_manifest(path: Path, data: bytes) -> dict:
    try:
        manifest = json.loads(data)
        ok = (
            isinstance(manifest, dict)
            and manifest.get("format") == FORMAT
            and manifest.get("kind") == "batch"
            and isinstance(manifest.get("site"), str)
            and _is_count(manifest.get("number"))
            and isinstance(manifest.get("schema_version"), int)
            and isinstance(manifest.get("envelopes"), dict)
            and isinstance(manifest.get("producers"), dict)
            and (
                manifest.get("previous") is None
                or (
                    _is_count(manifest["previous"].get("number"))
                    and isinstance(manifest["previous"].get("digest"), str)
                )
            )
        )
    except (ValueError, AttributeError, TypeError):
        ok = False
    if not ok:
        raise BatchRefused(f"{MANIFEST} of {path.name} is malformed", "bad_manifest")
    return manifest


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _verify_signature(path: Path, node: Node, data: bytes, signature: bytes) -> None:
    try:
        keys.public_key_from_text(node.public_key).verify(
            base64.b64decode(signature, validate=True), data
        )
    except (InvalidSignature, ValueError):
        security_log.warning(
            "batch %s: signature does not match the key of %s", path.name, node.node_id
        )
        raise BatchRefused(
            f"{path.name}: the manifest's signature does not match the registered "
            f"key of {node.node_id}; it was altered or signed by another node",
            "bad_signature",
        ) from None


def _envelope_lines(tar: tarfile.TarFile) -> Iterator[bytes]:
    with gzip.GzipFile(fileobj=tar.extractfile(ENVELOPES), mode="rb") as stream:
        while line := stream.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                raise BatchRefused("an envelope line is too long", "bad_envelope")
            yield line


def _check_envelopes(path: Path, tar: tarfile.TarFile, manifest: dict, node) -> None:
    """Match the envelopes member against the manifest's checksum and ranges."""
    expected = manifest["envelopes"]
    digest = hashlib.sha256()
    size = 0
    member = tar.extractfile(ENVELOPES)
    while block := member.read(1024 * 1024):
        digest.update(block)
        size += len(block)
    if digest.hexdigest() != expected.get("sha256") or size != expected.get("bytes"):
        raise BatchRefused(
            f"{path.name}: {ENVELOPES} does not match the manifest's checksum; "
            "it was altered or damaged on the way",
            "checksum_mismatch",
        )
    producers = manifest["producers"]
    foreign = sorted(set(producers) - {node.node_id})
    if foreign and not node.can_relay:
        raise BatchRefused(
            f"{path.name}: {node.node_id} carries envelopes of {', '.join(foreign)} "
            "but may not relay; register it with --relay",
            "not_relay",
        )
    seen: dict[str, list[int]] = {}
    try:
        for index, line in enumerate(_envelope_lines(tar)):
            item = Envelope.from_wire(json.loads(line))
            span = producers.get(item.producer)
            last = seen.setdefault(item.producer, [0, 0])
            if (
                not isinstance(span, dict)
                or not span["first"] <= item.sequence <= span["last"]
                or item.sequence <= last[0]
            ):
                raise BatchRefused(
                    f"{path.name}: envelope {index + 1} ({item.producer}#"
                    f"{item.sequence}) is outside the manifest's ranges or order",
                    "manifest_mismatch",
                )
            last[0] = item.sequence
            last[1] += 1
    except (EnvelopeInvalid, ValueError, KeyError, TypeError) as exc:
        raise BatchRefused(
            f"{path.name}: bad envelope: {exc}", "bad_envelope"
        ) from None
    counts = {producer: last[1] for producer, last in seen.items()}
    if counts != {p: span.get("count") for p, span in producers.items()} or sum(
        counts.values()
    ) != expected.get("count"):
        raise BatchRefused(
            f"{path.name}: envelope counts do not match the manifest",
            "manifest_mismatch",
        )


# -- import (central) -----------------------------------------------------------


@dataclass
class ImportSummary:
    imported: int = 0
    repeated: int = 0
    waiting: int = 0
    quarantined: int = 0
    receipts: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    seconds: float = 0.0
    # Sites with a batch imported or seen again: each gets a fresh receipt.
    receipted: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        return (
            f"imported {self.imported} batches ({self.stored} envelopes stored, "
            f"{self.duplicates} duplicates, {self.rejected} rejected), "
            f"{self.repeated} already imported, {self.waiting} waiting, "
            f"{self.quarantined} quarantined, {self.receipts} receipts "
            f"in {self.seconds:.1f} s"
        )

    def __iadd__(self, other: ImportSummary) -> ImportSummary:
        for name, value in vars(other).items():
            if name == "receipted":
                self.receipted |= value
            else:
                setattr(self, name, getattr(self, name) + value)
        return self


def import_sites(root: str | Path | None = None, settle: float = 0.0) -> ImportSummary:
    """Import each site's own drop under ``root`` (SYNC_SITES_DIR).

    That is the layout of central's SFTP container: each site logs in to
    ``<root>/<site>/`` and finds ``inbox/`` and ``receipts/<site>/`` there. A
    batch in a site's inbox must be signed by that site.
    """
    root = Path(root or settings.SYNC_SITES_DIR)
    summary = ImportSummary()
    if not root.is_dir():
        log.warning("no site drops to import: %s is not a directory", root)
        return summary
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and (folder / INBOX).is_dir():
            summary += import_directory(
                folder / INBOX, folder / RECEIPTS, settle, site=folder.name
            )
    return summary


def import_directory(
    directory: str | Path | None = None,
    receipts_dir: str | Path | None = None,
    settle: float = 0.0,
    site: str | None = None,
) -> ImportSummary:
    """Import every batch and receipt file in ``directory``; return a summary.

    Each site's batches are imported in chain order and applied; a batch
    whose predecessor is missing waits in the directory. Central writes a
    receipt for each site whose batches it saw into ``receipts_dir``. Files
    changed less than ``settle`` seconds ago are left for the next pass: they
    may still be being copied in. With ``site``, every batch must be that
    site's: the directory is its own drop.
    """
    with exclusive("sync import"):
        return _import_directory(directory, receipts_dir, settle, site)


def _import_directory(directory, receipts_dir, settle, site) -> ImportSummary:
    started = time.monotonic()
    directory = Path(directory or settings.SYNC_INBOX_DIR).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    summary = ImportSummary()
    recent = time.time() - settle
    files = sorted(
        path
        for path in directory.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix in (BATCH_SUFFIX, RECEIPT_SUFFIX)
        and (not settle or path.stat().st_mtime < recent)
    )
    # A watcher polls an empty inbox often: say so only when there is work.
    level = logging.INFO if files else logging.DEBUG
    log.log(level, "importing %d files from %s", len(files), directory)
    _forget_vanished(directory)
    found: dict[str, dict[int, BatchFile]] = {}
    for path in files:
        if path.suffix == RECEIPT_SUFFIX:
            summary.receipts += _import_receipt_or_quarantine(path)
            continue
        try:
            batch = read_batch(path, functools.partial(_site_node, drop=site))
            _sort_in(batch, found, summary)
        except BatchRefused as exc:
            quarantine(path, exc)
            summary.quarantined += 1
    for site in sorted(found):
        _import_chain(site, found[site], summary)
    # Also after a repeated batch: the site may have lost the last receipt.
    for site in sorted(summary.receipted):
        write_receipt(site, receipts_dir)
    summary.seconds = time.monotonic() - started
    log.log(level, "import from %s done: %s", directory, summary)
    return summary


def import_forever(
    directory: str | Path | None = None,
    receipts_dir: str | Path | None = None,
    interval: float | None = None,
    loops: int | None = None,
    sites: bool = False,
) -> None:
    """Import whatever arrives in ``directory``, polling every ``interval`` s.

    Polling, not file-system events: inotify misses files written through
    network mounts and USB drives mounted later, which is how batches come.
    With ``sites``, ``directory`` holds one drop per site (import_sites).
    After each pass the heartbeat file (SYNC_IMPORT_HEARTBEAT_FILE) is
    touched; a pass that fails is logged and tried again, and the heartbeat
    goes stale, which turns the container's health check red.
    """
    interval = settings.SYNC_IMPORT_INTERVAL if interval is None else interval
    heartbeat = settings.SYNC_IMPORT_HEARTBEAT_FILE
    settle = settings.SYNC_IMPORT_SETTLE_SECONDS
    watched = directory or (
        settings.SYNC_SITES_DIR if sites else settings.SYNC_INBOX_DIR
    )
    log.info("watching %s every %.1f s", watched, interval)
    for loop in itertools.count(1):
        try:
            if sites:
                import_sites(directory, settle)
            else:
                import_directory(directory, receipts_dir, settle)
        except Exception:
            log.exception(
                "import pass %d failed; trying again in %.1f s", loop, interval
            )
            db.close_old_connections()
        else:
            if heartbeat:
                Path(heartbeat).touch()
        if loops is not None and loop >= loops:
            return
        gc.collect()  # rare while busy (config.gc_tuning): now is the time
        time.sleep(interval)


def _site_node(site: str, drop: str | None = None) -> Node:
    if drop is not None and site != drop:
        security_log.warning("batch of %s found in the drop of %s", site, drop)
        raise BatchRefused(
            f"a batch of {site} in the drop of {drop}: a site may deliver only "
            "its own batches through its drop",
            "wrong_drop",
        )
    node = Node.objects.filter(node_id=site, is_active=True).first()
    if node is None:
        raise BatchRefused(
            f"site {site} is not an active node here; register it with: manage.py "
            "sync node add <site> --role community --relay --public-key ..., then "
            "move the file back into the inbox",
            "unknown_site",
        )
    if node.role != Node.Role.COMMUNITY:
        raise BatchRefused(
            f"{site} is registered as {node.role}; only community (site) servers "
            "send batch files",
            "not_a_site",
        )
    return node


def _sort_in(batch: BatchFile, found: dict, summary: ImportSummary) -> None:
    """File a checked batch under its site, or finish it if already imported."""
    mine = settings.SYNC_SCHEMA_VERSION
    theirs = batch.manifest["schema_version"]
    if abs(theirs - mine) > settings.SYNC_SCHEMA_SPAN:
        raise BatchRefused(
            f"{batch.path.name} has schema version {theirs}; this node runs {mine} "
            f"and reads versions within {settings.SYNC_SCHEMA_SPAN} of it: update "
            "the older node, then move the file back into the inbox",
            "schema_mismatch",
        )
    record = ImportedBatch.objects.filter(site=batch.site, number=batch.number).first()
    held = found.setdefault(batch.site, {}).get(batch.number)
    known = record.manifest_digest if record else held.digest if held else None
    if known is not None and known != batch.digest:
        raise BatchRefused(
            f"{batch.path.name}: {batch.site} already sent a different batch "
            f"{batch.number}; the site's chain forked (was it restored from a "
            "backup?)",
            "batch_conflict",
        )
    if held or (record and record.status == ImportedBatch.Status.IMPORTED):
        log.info("%s was already imported; nothing to do", batch.path.name)
        _set_aside(batch.path)
        summary.repeated += 1
        summary.receipted.add(batch.site)
        return
    found[batch.site][batch.number] = batch


def _import_chain(site: str, batches: dict[int, BatchFile], summary) -> None:
    """Import the site's batches that fit the chain; record the rest as waiting."""
    while True:
        last = (
            ImportedBatch.objects.filter(
                site=site, status=ImportedBatch.Status.IMPORTED
            )
            .order_by("number")
            .last()
        )
        ready = None
        for number in sorted(batches):
            try:
                fits = _fits(batches[number], last)
            except BatchRefused as exc:
                quarantine(batches.pop(number).path, exc)
                summary.quarantined += 1
                break  # look again from the start: the set changed
            if fits:
                ready = number
                break
        else:
            break  # every remaining batch waits for one that has not come
        if ready is not None:
            _import_batch(batches.pop(ready), summary)
    for batch in batches.values():
        _wait(batch, last)
        summary.waiting += 1


def _fits(batch: BatchFile, last: ImportedBatch | None) -> bool:
    """Say whether ``batch`` may be imported now; raise if it breaks the chain."""
    last_number = last.number if last else 0
    if batch.number <= last_number:
        # A later batch that re-sent everything central had not acknowledged
        # was imported first; importing this one only finds duplicates.
        return True
    previous, digest = batch.previous
    if previous > last_number:
        return False
    if previous:
        link = ImportedBatch.objects.filter(
            site=batch.site, number=previous, status=ImportedBatch.Status.IMPORTED
        ).first()
        if link is None:
            return False
        if link.manifest_digest != digest:
            raise BatchRefused(
                f"{batch.path.name} says it follows batch {previous} of "
                f"{batch.site} with digest {digest[:12]}..., but the batch "
                f"{previous} imported here has {link.manifest_digest[:12]}...",
                "chain_broken",
            )
    if previous < last_number and not batch.resync:
        raise BatchRefused(
            f"{batch.path.name} follows batch {previous} of {batch.site}, but "
            f"batch {last_number} was imported after that one",
            "chain_broken",
        )
    return True


def _forget_vanished(directory: Path) -> None:
    """Drop the waiting mark of batches no longer in ``directory``."""
    waiting = ImportedBatch.objects.filter(
        status=ImportedBatch.Status.WAITING, location=str(directory)
    )
    for row in waiting:
        if not (directory / row.file_name).exists():
            log.warning(
                "%s no longer waits in %s: it was removed", row.file_name, directory
            )
            row.delete()


def _record(batch: BatchFile, status: str, **outcome) -> None:
    """Record what became of ``batch`` on this node."""
    ImportedBatch.objects.update_or_create(
        site=batch.site,
        number=batch.number,
        defaults={
            "manifest_digest": batch.digest,
            "file_name": batch.path.name,
            "status": status,
            "envelope_count": batch.count,
            "producers": batch.producers,
            **outcome,
        },
    )


def _wait(batch: BatchFile, last: ImportedBatch | None) -> None:
    missing = (last.number if last else 0) + 1
    detail = f"waiting for batch {missing} of {batch.site}"
    _record(
        batch,
        ImportedBatch.Status.WAITING,
        location=str(batch.path.parent),
        detail=detail,
    )
    log.warning("%s waits in the inbox: %s", batch.path.name, detail)


def _import_batch(batch: BatchFile, summary: ImportSummary) -> None:
    """Store and apply one batch's envelopes, then record it as imported."""
    started = time.monotonic()
    stored = duplicates = rejected = 0
    for chunk in batch.chunks(settings.SYNC_CHUNK_SIZE):
        receipt = receive(chunk, delivered_by=batch.site)
        stored += receipt.stored
        duplicates += receipt.duplicates
        rejected += len(receipt.rejected)
    report = apply_pending()
    # Recorded only once every envelope is stored: a crash before this line
    # makes the next run import the batch again, which finds duplicates.
    _record(
        batch,
        ImportedBatch.Status.IMPORTED,
        location="",
        stored=stored,
        duplicates=duplicates,
        rejected=rejected,
        detail="",
        imported_at=timezone.now(),
    )
    _set_aside(batch.path)
    summary.imported += 1
    summary.receipted.add(batch.site)
    summary.stored += stored
    summary.duplicates += duplicates
    summary.rejected += rejected
    level = logging.WARNING if rejected else logging.INFO
    log.log(
        level,
        "imported %s: %d of %d envelopes stored, %d duplicates, %d rejected; "
        "applied: %s in %.1f s",
        batch.path.name,
        stored,
        batch.count,
        duplicates,
        rejected,
        report,
        time.monotonic() - started,
    )


def _set_aside(path: Path) -> None:
    """Move a finished file into the ``imported`` folder beside it."""
    done = path.parent / DONE
    done.mkdir(exist_ok=True)
    os.replace(path, _free_name(done / path.name))


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%f")
    return path.with_name(f"{path.name}.{stamp}")


def quarantine(path: Path, exc: BatchRefused) -> Path:
    """Move a refused file to the quarantine folder, with its reason beside it."""
    directory = Path(settings.SYNC_QUARANTINE_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    target = _free_name(directory / path.name)
    shutil.move(path, target)
    target.with_name(target.name + ".reason").write_text(f"{exc.code}: {exc.reason}\n")
    site, number = _guess_origin(path.name)
    # A batch that waited for its turn and then failed no longer waits.
    ImportedBatch.objects.filter(
        site=site,
        number=number,
        status=ImportedBatch.Status.WAITING,
        location=str(path.parent),
    ).delete()
    QuarantinedFile.objects.create(
        file_name=path.name,
        moved_to=str(target),
        code=exc.code,
        detail=exc.reason,
        site=site,
        number=number,
    )
    security_log.warning("quarantined %s [%s]: %s", path.name, exc.code, exc.reason)
    return target


def _guess_origin(name: str) -> tuple[str, int | None]:
    stem = name.removesuffix(BATCH_SUFFIX)
    site, _, number = stem.rpartition("-")
    if name.endswith(BATCH_SUFFIX) and number.isdigit():
        return site[:64], int(number)
    return "", None


# -- receipts -------------------------------------------------------------------


def write_receipt(site: str, directory: str | Path | None = None) -> Path:
    """Write central's signed receipt for ``site`` into ``directory``/<site>/.

    It says how far central holds, gap-free, each producer the site has sent
    (its own sequence and those it relays), and the last batch of the site
    imported. Receipts are cumulative, so older ones of the site are removed.
    """
    me = settings.SYNC_NODE_ID
    directory = Path(directory or settings.SYNC_RECEIPTS_DIR) / site
    directory.mkdir(parents=True, exist_ok=True)
    imported = ImportedBatch.objects.filter(
        site=site, status=ImportedBatch.Status.IMPORTED
    )
    producers = set()
    for spans in imported.values_list("producers", flat=True):
        producers.update(spans)
    now = timezone.now()
    body = {
        "format": FORMAT,
        "kind": "receipt",
        "central": me,
        "site": site,
        "created": now.isoformat(),
        "held": dict(
            ProducerState.objects.filter(producer__in=producers, contiguous__gt=0)
            .order_by("producer")
            .values_list("producer", "contiguous")
        ),
        "batches": {site: imported.aggregate(last=Max("number"))["last"] or 0},
    }
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
    signature = base64.b64encode(keys.signing_key().sign(payload.encode())).decode()
    path = directory / f"{me}-{site}-{now:%Y%m%dT%H%M%S%f}{RECEIPT_SUFFIX}"
    write_atomically(
        path, json.dumps({"receipt": payload, "signature": signature}).encode()
    )
    for older in directory.glob(f"{me}-{site}-*{RECEIPT_SUFFIX}"):
        if older.name < path.name:
            older.unlink(missing_ok=True)
    log.info(
        "wrote receipt %s: %d producers, last batch %s",
        path.name,
        len(body["held"]),
        body["batches"].get(site, 0),
    )
    return path


@dataclass
class ReceiptSummary:
    imported: int = 0
    quarantined: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)
    pruned: int = 0

    def __str__(self) -> str:
        held = ", ".join(f"{p} #{n}" for p, n in sorted(self.acknowledged.items()))
        return (
            f"imported {self.imported} receipts, quarantined {self.quarantined}, "
            f"removed {self.pruned} receipted batch files; central holds: "
            f"{held or 'nothing yet'}"
        )


def import_receipts(directory: str | Path | None = None) -> ReceiptSummary:
    """Import central's receipts in ``directory``: acknowledgements, pruning."""
    directory = Path(directory or settings.SYNC_RECEIPTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    summary = ReceiptSummary()
    paths = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix == RECEIPT_SUFFIX and not p.name.startswith(".")
    )
    log.info("importing %d receipts from %s", len(paths), directory)
    for path in paths:
        try:
            body = import_receipt(path)
        except BatchRefused as exc:
            quarantine(path, exc)
            summary.quarantined += 1
            continue
        summary.imported += 1
        summary.acknowledged.update(body["held"])
    summary.pruned = prune_outbox()
    log.info("receipts from %s: %s", directory, summary)
    return summary


def _import_receipt_or_quarantine(path: Path) -> int:
    try:
        import_receipt(path)
        return 1
    except BatchRefused as exc:
        quarantine(path, exc)
        return 0


def import_receipt(path: Path) -> dict:
    """Verify one receipt and record central's acknowledgements; return it."""
    me = settings.SYNC_NODE_ID
    try:
        if path.stat().st_size > MAX_RECEIPT_BYTES:
            raise ValueError("too large")
        wrapper = json.loads(path.read_bytes())
        payload = wrapper["receipt"].encode()
        signature = base64.b64decode(wrapper["signature"], validate=True)
        body = json.loads(payload)
        central = body["central"]
        held = body["held"]
        batches = body["batches"]
        ok = (
            body.get("kind") == "receipt"
            and body.get("format") == FORMAT
            and isinstance(central, str)
            and isinstance(held, dict)
            and isinstance(batches, dict)
            and all(_is_count(n) for n in [*held.values(), *batches.values()])
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise BatchRefused(f"{path.name} is not a receipt or is damaged", "bad_receipt")
    node = Node.objects.filter(
        node_id=central, role=Node.Role.CENTRAL, is_active=True
    ).first()
    if node is None:
        raise BatchRefused(
            f"{path.name} claims to come from {central}, which is not registered "
            "here as the central node (sync node add ... --role central)",
            "unknown_central",
        )
    try:
        keys.public_key_from_text(node.public_key).verify(signature, payload)
    except InvalidSignature:
        raise BatchRefused(
            f"{path.name}: signature does not match the key of {central}",
            "bad_signature",
        ) from None
    if body.get("site") != me:
        raise BatchRefused(
            f"{path.name} is addressed to {body.get('site')}, not to {me}",
            "not_for_this_site",
        )
    with transaction.atomic():
        # Central's own word, so taken as it is even when lower: a central
        # restored from a backup holds less, and export --from-acknowledged
        # must send that again. Receipts are imported oldest first (their
        # names sort by time); a stale one only causes duplicates.
        for producer, through in held.items():
            record_acknowledgement(central, producer, through, exact=True)
        ExportedBatch.objects.filter(
            number__lte=batches.get(me, 0), receipted_at=None
        ).update(receipted_at=timezone.now())
    _set_aside(path)
    log.info(
        "receipt %s from %s: %d producers acknowledged, batches through %s",
        path.name,
        central,
        len(held),
        batches.get(me, 0),
    )
    return body


def prune_outbox(directory: str | Path | None = None) -> int:
    """Delete outbox batch files central has receipted; return how many."""
    directory = Path(directory or settings.SYNC_EXPORT_DIR)
    removed = 0
    for record in ExportedBatch.objects.exclude(receipted_at=None):
        path = directory / record.file_name
        if path.exists():
            path.unlink()
            removed += 1
    return removed


# -- moving files ---------------------------------------------------------------


class Drop(Protocol):
    """Where batches are left for central and receipts picked up.

    A drop has two areas: ``inbox`` for batches and ``receipts/<site>`` for
    receipts. Files are written under a temporary name and renamed, so the
    other side never sees half a file.
    """

    def put(self, local: Path, area: str) -> bool: ...
    def names(self, area: str) -> list[str]: ...
    def get(self, area: str, name: str, local: Path) -> None: ...
    def remove(self, area: str, name: str) -> None: ...
    def close(self) -> None: ...


class FolderDrop:
    """A directory as drop: a mounted USB drive, or a folder rsync mirrors."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise TransferFailed(
                f"{self.root} is not a directory; is the drive mounted?"
            )

    def __str__(self) -> str:
        return str(self.root)

    def put(self, local: Path, area: str) -> bool:
        target = self.root / area / local.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and target.stat().st_size == local.stat().st_size:
            return False
        temporary = target.with_name(f".{target.name}.part")
        with open(local, "rb") as source, open(temporary, "wb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
        fsync_directory(target.parent)
        return True

    def names(self, area: str) -> list[str]:
        folder = self.root / area
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def get(self, area: str, name: str, local: Path) -> None:
        """Copy ``name`` to ``local``; raise FileNotFoundError if it is gone."""
        temporary = local.with_name(f".{local.name}.part")
        with (
            open(self.root / area / name, "rb") as source,
            open(temporary, "wb") as out,
        ):
            shutil.copyfileobj(source, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, local)
        fsync_directory(local.parent)

    def remove(self, area: str, name: str) -> None:
        (self.root / area / name).unlink(missing_ok=True)

    def close(self) -> None:
        pass


@dataclass
class SendSummary:
    sent: list[str] = field(default_factory=list)
    already_there: int = 0
    sent_before: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"sent {len(self.sent)} batch files ({', '.join(self.sent) or '-'}), "
            f"{self.already_there} already there, {self.sent_before} sent before "
            f"and not receipted yet, in {self.seconds:.1f} s"
        )


def send(drop: Drop, resend: bool = False) -> SendSummary:
    """Copy the outbox's batch files to the drop's inbox.

    A batch sent before is skipped unless ``resend``: central may have
    imported it already and moved it out of its inbox. Batch files leave the
    outbox when central's receipt covers them.
    """
    started = time.monotonic()
    outbox = Path(settings.SYNC_EXPORT_DIR)
    paths = sorted(outbox.glob(f"*{BATCH_SUFFIX}")) if outbox.is_dir() else []
    summary = SendSummary()
    if not resend:
        sent = set(
            ExportedBatch.objects.exclude(sent_at=None).values_list(
                "file_name", flat=True
            )
        )
        summary.sent_before = sum(path.name in sent for path in paths)
        paths = [path for path in paths if path.name not in sent]
    log.info("sending %d batch files to %s", len(paths), drop)
    for path in paths:
        if drop.put(path, INBOX):
            summary.sent.append(path.name)
            ExportedBatch.objects.filter(file_name=path.name).update(
                sent_at=timezone.now()
            )
        else:
            summary.already_there += 1
    summary.seconds = time.monotonic() - started
    log.info("sent to %s: %s", drop, summary)
    return summary


def fetch_receipts(drop: Drop) -> ReceiptSummary:
    """Fetch this site's receipts from the drop, then import them."""
    area = f"{RECEIPTS}/{settings.SYNC_NODE_ID}"
    directory = Path(settings.SYNC_RECEIPTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    names = [n for n in drop.names(area) if n.endswith(RECEIPT_SUFFIX)]
    log.info("fetching %d receipts from %s", len(names), drop)
    for name in names:
        try:
            drop.get(area, name, directory / name)
        except FileNotFoundError:
            continue  # central replaced it with a newer one meanwhile
        # The local copy is on disk: the drop's copy is no longer needed.
        drop.remove(area, name)
    return import_receipts(directory)

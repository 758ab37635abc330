"""Provides push: send this node's outbox upstream in acknowledged chunks.

The push starts after the highest sequence upstream says it holds, so an
interrupted push resumes where the last acknowledged chunk ended and a chunk
whose answer was lost is sent again harmlessly. Network errors and 5xx answers
are retried with backoff; a 4xx answer stops the push with the server's
message, and the data stays in the outbox.
"""

import gc
import gzip
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import requests
import tenacity
import zstandard
from django.conf import settings
from tqdm import tqdm

from ..acknowledgements import record_acknowledgement
from ..apply import apply_pending
from ..envelope import COLUMNS, Envelope
from ..errors import SyncError
from ..models import (
    Acknowledgement,
    IncomingTransaction,
    OutgoingTransaction,
    ProducerState,
    next_in_sequence,
)
from ..receive import receive

log = logging.getLogger(__name__)

API = "/api/sync/v1"
# Chunks a push has on the wire at once.
IN_FLIGHT = 2
RELAY_ROLES = ("middleman", "community")


class PushFailed(SyncError):
    """The push or pull stopped; the message says why and what to do."""


class _Transient(Exception):
    """A failure worth retrying: the network, or the server's own trouble."""


@dataclass
class PushSummary:
    sent: int = 0
    acknowledged_through: int = 0
    applied: int = 0
    parked: int = 0
    conflicts: int = 0
    failed: int = 0
    seconds: float = 0.0
    # On a relay: how far upstream holds each other producer's transactions.
    relayed: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        line = (
            f"sent {self.sent}, acknowledged through #{self.acknowledged_through}, "
            f"applied {self.applied}, parked {self.parked}, "
            f"conflicts {self.conflicts}, failed {self.failed} "
            f"in {self.seconds:.1f} s"
        )
        if self.relayed:
            line += "; relayed " + ", ".join(
                f"{producer} through #{through}"
                for producer, through in sorted(self.relayed.items())
            )
        return line


class Upstream:
    """An HTTP session to the upstream node, authenticated as this node."""

    def __init__(self, url: str | None = None, token: str | None = None):
        self.url = (url or settings.SYNC_UPSTREAM_URL).rstrip("/")
        if not self.url:
            raise PushFailed("No upstream is set: set UPSTREAM_URL for this node.")
        token = token or settings.SYNC_UPSTREAM_TOKEN
        if not token:
            raise PushFailed(
                f"No credential for {self.url}: set UPSTREAM_TOKEN (PULL_TOKEN on "
                "a middleman pulling from laptops), or the *_FILE variant, to the "
                "token printed when this node was registered there."
            )
        self.authorization = f"Node {settings.SYNC_NODE_ID}:{token}"
        self._local = threading.local()
        # The deployment's CA, and only it, vouches for the upstream: requests
        # would otherwise let REQUESTS_CA_BUNDLE in the environment win.
        self.verify = settings.SYNC_UPSTREAM_CA_FILE or True
        self.timeout = settings.SYNC_HTTP_TIMEOUT
        self.retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient),
            wait=tenacity.wait_exponential(multiplier=0.5, max=30),
            stop=tenacity.stop_after_delay(settings.SYNC_RETRY_SECONDS),
            before_sleep=self._log_retry,
            reraise=True,
        )

    @property
    def session(self) -> requests.Session:
        """Return this thread's session: a push sends from two threads."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = self.authorization
        return session

    def call(self, method: str, path: str, **kwargs) -> dict:
        """Make one API call, retrying transient failures; return its JSON."""
        try:
            return self.retrying(self._call_once, method, path, **kwargs)
        except _Transient as exc:
            raise PushFailed(
                f"{self.url} did not answer usefully for "
                f"{settings.SYNC_RETRY_SECONDS:.0f} s ({exc}); nothing is lost, "
                "push again when the network is back."
            ) from exc

    def _call_once(self, method, path, **kwargs) -> dict:
        try:
            response = self.session.request(
                method,
                f"{self.url}{API}{path}",
                timeout=self.timeout,
                verify=self.verify,
                **kwargs,
            )
        except requests.exceptions.SSLError as exc:
            # Waiting will not make a certificate trusted.
            raise PushFailed(
                f"{self.url} presented a certificate this node does not trust "
                f"({exc}); set UPSTREAM_CA_FILE to the deployment's CA "
                "certificate (ca.crt)."
            ) from exc
        except requests.RequestException as exc:
            raise _Transient(str(exc)) from exc
        if response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise PushFailed(_explain(response))
        return response.json()

    @staticmethod
    def _log_retry(state: tenacity.RetryCallState) -> None:
        log.warning(
            "upstream call failed (%s); retry %d in %.1f s",
            state.outcome.exception(),
            state.attempt_number,
            state.next_action.sleep,
        )


def push(
    chunk_size: int | None = None, progress: bool = False, upstream=None
) -> PushSummary:
    """Send upstream every transaction it does not hold yet; return a summary.

    That is this node's own outbox and, on a relay such as a middleman, the
    envelopes it holds from other producers, forwarded unchanged.
    """
    started = time.monotonic()
    upstream = upstream or Upstream()
    size = chunk_size or settings.SYNC_CHUNK_SIZE
    summary = PushSummary()
    for producer, source in _sources():
        _push_producer(upstream, producer, source, size, progress, summary)
    summary.seconds = time.monotonic() - started
    log.info("pushed %d transactions to %s: %s", summary.sent, upstream.url, summary)
    return summary


def _sources():
    """Yield each producer this node holds, with the rows of its envelopes."""
    me = settings.SYNC_NODE_ID
    yield me, OutgoingTransaction.objects.filter(producer=me)
    if settings.SYNC_ROLE not in RELAY_ROLES:
        # A laptop handed another's envelopes keeps them; that laptop pushes
        # its own, and only middlemen and site servers carry others'.
        return
    relayed = ProducerState.objects.exclude(producer=me).filter(contiguous__gt=0)
    for state in relayed.order_by("producer"):
        yield (
            state.producer,
            IncomingTransaction.objects.filter(
                producer=state.producer, sequence__lte=state.contiguous
            ),
        )


def _push_producer(upstream, producer, source, size, progress, summary) -> None:
    held = upstream.call("GET", "/held/", params={"producer": producer})
    holder, through = held["node"], held["held_through"]
    encode = _encoder(held.get("content_encodings", []))
    record_acknowledgement(holder, producer, through, exact=True)
    _record_hearsay(held.get("acknowledgements", []), producer)
    pending = source.filter(sequence__gt=through).order_by("sequence")
    total = pending.count()
    _note_acknowledged(summary, producer, through)
    if not total:
        return
    log.info("pushing %d of %s's transactions to %s", total, producer, holder)
    label = f"{producer} to {holder}"
    # Two chunks are on the wire at once: upstream stores one while it
    # applies the other, and the next is read and encoded here meanwhile.
    # Only HTTP calls leave this thread, so the database is used from one
    # thread. Answers are taken in order; chunks sent after a failed one are
    # harmless (upstream holds them, and a push resends what it does not
    # acknowledge).
    with (
        tqdm(total=total, unit="tx", disable=not progress, desc=label) as bar,
        ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="push") as wire,
    ):
        on_the_wire = deque()
        after = through
        while True:
            while len(on_the_wire) < IN_FLIGHT:
                # The first chunk is small, so that upstream starts applying
                # while the next is on its way rather than after it.
                limit = max(size // 4, 1) if after == through else size
                chunk, body = _prepare(source, after, limit, encode)
                if not chunk:
                    break
                on_the_wire.append(
                    (chunk, wire.submit(_send, upstream, body, encode.encoding))
                )
                after = chunk[-1].sequence
            if not on_the_wire:
                break
            chunk, sending = on_the_wire.popleft()
            answer = sending.result()
            # A later chunk stored first is acknowledged by the earlier one's
            # answer, which can then come with a higher mark than its own.
            through = max(through, answer["acknowledged"].get(producer, through))
            record_acknowledgement(answer["node"], producer, through, exact=True)
            _record_hearsay(answer.get("acknowledgements", []), producer)
            summary.sent += len(chunk)
            for key in ("applied", "parked", "conflicts", "failed"):
                setattr(summary, key, getattr(summary, key) + answer["applied"][key])
            bar.update(len(chunk))
            if through < chunk[-1].sequence:
                reasons = "; ".join(
                    f"#{r['sequence']}: {r['detail']}" for r in answer["rejected"]
                )
                raise PushFailed(
                    f"{holder} acknowledged {producer}'s transactions only through "
                    f"#{through} of a chunk ending at #{chunk[-1].sequence}: "
                    f"{reasons or 'it holds a gap before them'}"
                )
            _note_acknowledged(summary, producer, through)


def _prepare(source, after: int, size: int, encode) -> tuple[list[Envelope], bytes]:
    """Read the next ``size`` envelopes after ``after``; return them and their body.

    The body is empty when nothing is left to send.
    """
    chunk = [
        Envelope.from_columns(values)
        for values in next_in_sequence(source.values_list(*COLUMNS), after, size)
    ]
    return chunk, encode(chunk) if chunk else b""


def _note_acknowledged(summary: PushSummary, producer: str, through: int) -> None:
    if producer == settings.SYNC_NODE_ID:
        summary.acknowledged_through = through
    else:
        summary.relayed[producer] = through


def _record_hearsay(acknowledgements: list[dict], producer: str) -> None:
    """Record what upstream says nodes further up hold of ``producer``."""
    for ack in acknowledgements:
        if ack["producer"] == producer and ack["holder"] != settings.SYNC_NODE_ID:
            record_acknowledgement(ack["holder"], ack["producer"], ack["through"])


def push_forever(interval: float, chunk_size: int | None = None) -> None:
    """Push whenever upstream answers, every ``interval`` seconds."""
    while True:
        try:
            summary = push(chunk_size=chunk_size)
            if summary.sent:
                log.info("background push: %s", summary)
        except PushFailed as exc:
            log.warning("background push stopped: %s", exc)
        gc.collect()  # rare while busy (config.gc_tuning): now is the time
        time.sleep(interval)


@dataclass
class PullSummary:
    node: str = ""
    received: int = 0
    stored: int = 0
    applied: int = 0
    parked: int = 0
    conflicts: int = 0
    failed: int = 0
    held_through: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"pulled {self.received} from {self.node} ({self.stored} new), now "
            f"holding through #{self.held_through}; applied {self.applied}, "
            f"parked {self.parked}, conflicts {self.conflicts}, "
            f"failed {self.failed} in {self.seconds:.1f} s"
        )


def pull(
    url: str, token: str | None = None, chunk_size: int | None = None,
    progress: bool = False,
) -> PullSummary:  # fmt: skip
    """Pull a field laptop's pending envelopes, store and apply them.

    Each request says how far this node holds the laptop's sequence, so an
    interrupted pull resumes after the last chunk stored.
    """
    started = time.monotonic()
    field = Upstream(url, token or settings.SYNC_PULL_TOKEN)
    laptop = field.call("GET", "/identity/")["node"]
    summary = PullSummary(node=laptop)
    size = chunk_size or settings.SYNC_CHUNK_SIZE
    with tqdm(unit="tx", disable=not progress, desc=f"pull from {laptop}") as bar:
        while True:
            state = ProducerState.objects.filter(producer=laptop).first()
            after = state.contiguous if state else 0
            answer = field.call(
                "POST",
                "/pull/",
                json={
                    "schema_version": settings.SYNC_SCHEMA_VERSION,
                    "after": after,
                    "limit": size,
                    "acknowledgements": [
                        {
                            "holder": a.holder,
                            "producer": a.producer,
                            "through": a.through_sequence,
                        }  # fmt: skip
                        for a in Acknowledgement.objects.filter(producer=laptop)
                    ],
                },
            )
            envelopes = [Envelope.from_wire(item) for item in answer["envelopes"]]
            foreign = {e.producer for e in envelopes} - {laptop}
            if foreign:
                raise PushFailed(
                    f"{laptop} handed over envelopes of {', '.join(sorted(foreign))};"
                    " a field laptop may only give its own. Nothing was stored."
                )
            receipt = receive(envelopes, delivered_by=laptop)
            report = apply_pending()
            summary.received += len(envelopes)
            summary.stored += receipt.stored
            for key in ("applied", "parked", "conflicts", "failed"):
                setattr(summary, key, getattr(summary, key) + getattr(report, key))
            summary.held_through = receipt.acknowledged.get(laptop, after)
            bar.update(len(envelopes))
            if receipt.rejected:
                raise PushFailed(
                    f"{len(receipt.rejected)} envelopes from {laptop} were refused: "
                    + "; ".join(r["detail"] for r in receipt.rejected[:3])
                )
            if not answer["more"] or not envelopes:
                break
    # Tell the laptop how far we now hold it, so it can show "picked up".
    field.call(
        "POST",
        "/pull/",
        json={
            "schema_version": settings.SYNC_SCHEMA_VERSION,
            "after": summary.held_through,
            "limit": 0,
            "acknowledgements": [],
        },
    )
    summary.seconds = time.monotonic() - started
    log.info("%s", summary)
    return summary


class _Encoder:
    """Writes a chunk as the body that pushes it, compressed as upstream takes."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        if encoding == "zstd":
            # A quarter of a megabyte of envelopes in about a millisecond;
            # gzip took ten times as long to pack them a little less tightly.
            self.compress = zstandard.ZstdCompressor(level=3).compress
        else:
            self.compress = partial(gzip.compress, compresslevel=5)

    def __call__(self, chunk: list[Envelope]) -> bytes:
        body = {
            "schema_version": settings.SYNC_SCHEMA_VERSION,
            "envelopes": [item.to_wire() for item in chunk],
        }
        return self.compress(json.dumps(body, separators=(",", ":")).encode())


def _encoder(taken: list[str]) -> _Encoder:
    """Return the encoder for what upstream says it takes (gzip if it does not say)."""
    return _Encoder("zstd" if "zstd" in taken else "gzip")


def _send(upstream: Upstream, data: bytes, encoding: str) -> dict:
    return upstream.call(
        "POST",
        "/push/",
        data=data,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )


def _explain(response: requests.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail", body)
    except ValueError:
        detail = response.text[:300]
    return f"upstream refused (HTTP {response.status_code}): {detail}"

"""Provides push: send this node's outbox upstream in acknowledged chunks.

The push starts after the highest sequence upstream says it holds, so an
interrupted push resumes where the last acknowledged chunk ended and a chunk
whose answer was lost is sent again harmlessly. Network errors and 5xx answers
are retried with backoff; a 4xx answer stops the push with the server's
message, and the data stays in the outbox.
"""

import gzip
import json
import logging
import time
from dataclasses import dataclass

import requests
import tenacity
from django.conf import settings
from django.utils import timezone
from tqdm import tqdm

from ..envelope import Envelope
from ..errors import SyncError
from ..models import Acknowledgement, OutgoingTransaction

log = logging.getLogger(__name__)

API = "/api/sync/v1"


class PushFailed(SyncError):
    """The push stopped; the message says why and what to do."""


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

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, acknowledged through #{self.acknowledged_through}, "
            f"applied {self.applied}, parked {self.parked}, "
            f"conflicts {self.conflicts}, failed {self.failed} "
            f"in {self.seconds:.1f} s"
        )


class Upstream:
    """An HTTP session to the upstream node, authenticated as this node."""

    def __init__(self, url: str | None = None, token: str | None = None):
        self.url = (url or settings.SYNC_UPSTREAM_URL).rstrip("/")
        if not self.url:
            raise PushFailed("No upstream is set: set UPSTREAM_URL for this node.")
        token = token or settings.SYNC_UPSTREAM_TOKEN
        if not token:
            raise PushFailed(
                "No credential for upstream: set UPSTREAM_TOKEN (or "
                "UPSTREAM_TOKEN_FILE) to the token printed when this node was "
                "registered upstream."
            )
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Node {settings.SYNC_NODE_ID}:{token}"
        if settings.SYNC_UPSTREAM_CA_FILE:
            self.session.verify = settings.SYNC_UPSTREAM_CA_FILE
        self.timeout = settings.SYNC_HTTP_TIMEOUT
        self.retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient),
            wait=tenacity.wait_exponential(multiplier=0.5, max=30),
            stop=tenacity.stop_after_delay(settings.SYNC_RETRY_SECONDS),
            before_sleep=self._log_retry,
            reraise=True,
        )

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
                method, f"{self.url}{API}{path}", timeout=self.timeout, **kwargs
            )
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
    """Send every transaction upstream does not hold yet; return a summary."""
    started = time.monotonic()
    upstream = upstream or Upstream()
    size = chunk_size or settings.SYNC_CHUNK_SIZE
    me = settings.SYNC_NODE_ID
    held = upstream.call("GET", "/held/", params={"producer": me})
    holder = held["node"]
    through = held["held_through"]
    _record_ack(holder, me, through)
    outbox = OutgoingTransaction.objects.filter(producer=me).order_by("sequence")
    total = outbox.filter(sequence__gt=through).count()
    summary = PushSummary(acknowledged_through=through)
    log.info("pushing %d transactions to %s from #%d", total, holder, through + 1)
    bar = tqdm(total=total, unit="tx", disable=not progress, desc=f"push to {holder}")
    with bar:
        while True:
            chunk = list(outbox.filter(sequence__gt=through)[:size])
            if not chunk:
                break
            answer = _send(upstream, chunk)
            acknowledged = answer["acknowledged"].get(me, through)
            _record_ack(answer["node"], me, acknowledged)
            summary.sent += len(chunk)
            for key in ("applied", "parked", "conflicts", "failed"):
                setattr(summary, key, getattr(summary, key) + answer["applied"][key])
            bar.update(len(chunk))
            if acknowledged < chunk[-1].sequence:
                reasons = (
                    "; ".join(
                        f"#{r['sequence']}: {r['detail']}" for r in answer["rejected"]
                    )
                    or "the server holds a gap before it"
                )
                raise PushFailed(
                    f"{holder} acknowledged only through #{acknowledged} of this "
                    f"chunk ending at #{chunk[-1].sequence}: {reasons}"
                )
            through = acknowledged
            summary.acknowledged_through = through
    summary.seconds = time.monotonic() - started
    log.info(
        "pushed %d of %d transactions to %s: %s", summary.sent, total, holder, summary
    )
    return summary


def push_forever(interval: float, chunk_size: int | None = None) -> None:
    """Push whenever upstream answers, every ``interval`` seconds."""
    while True:
        try:
            summary = push(chunk_size=chunk_size)
            if summary.sent:
                log.info("background push: %s", summary)
        except PushFailed as exc:
            log.warning("background push stopped: %s", exc)
        time.sleep(interval)


def _send(upstream: Upstream, chunk: list[OutgoingTransaction]) -> dict:
    body = {
        "schema_version": settings.SYNC_SCHEMA_VERSION,
        "envelopes": [Envelope.from_row(row).to_wire() for row in chunk],
    }
    data = gzip.compress(json.dumps(body, separators=(",", ":")).encode(), 5)
    return upstream.call(
        "POST",
        "/push/",
        data=data,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )


def _record_ack(holder: str, producer: str, through: int) -> None:
    Acknowledgement.objects.update_or_create(
        holder=holder,
        producer=producer,
        defaults={"through_sequence": through, "updated": timezone.now()},
    )


def _explain(response: requests.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail", body)
    except ValueError:
        detail = response.text[:300]
    return f"upstream refused (HTTP {response.status_code}): {detail}"

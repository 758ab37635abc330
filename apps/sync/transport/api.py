"""Provides the sync HTTP API (version 1): node authentication, push, held.

Every error leaves as JSON with a status, a stable ``code`` and a ``detail``
that says what to do; nothing is stored unless the whole delivery is valid.
"""

import gzip
import hmac
import json
import logging
import zlib

import zstandard
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.parsers import BaseParser
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from ..acknowledgements import record_acknowledgement
from ..apply import apply_delivered
from ..envelope import Envelope, is_whole_number
from ..errors import EnvelopeInvalid
from ..models import (
    Acknowledgement,
    Node,
    OutgoingTransaction,
    ProducerState,
    next_in_sequence,
)
from ..receive import receive
from ..tokens import hash_token
from . import schema  # noqa: F401  (node authentication, to the OpenAPI schema)

log = logging.getLogger(__name__)
security_log = logging.getLogger("sync.security")


class SchemaMismatch(exceptions.APIException):
    status_code = status.HTTP_426_UPGRADE_REQUIRED
    default_code = "schema_mismatch"


# How a push body may be compressed, the fastest first. A client learns it
# from /held/; an older server, that does not say, takes gzip.
ENCODINGS = ("zstd", "gzip")


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def exception_handler(exc, context):
    """Answer every API error as {"code": ..., "detail": ...}."""
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge("The body is too large; send smaller chunks.")
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        detail = exc.detail if isinstance(exc.detail, str) else response.data
        response.data = {"code": _code(exc), "detail": detail}
    return response


def _code(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


class NodeAuthentication(BaseAuthentication):
    """``Authorization: Node <node id>:<token>``, checked against the register."""

    keyword = "Node"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        keyword, _, credential = header.partition(" ")
        if keyword != self.keyword:
            return None
        node_id, _, token = credential.partition(":")
        node = Node.objects.filter(node_id=node_id).first()
        if (
            node is None
            or not node.token_hash
            or not hmac.compare_digest(node.token_hash, hash_token(token))
        ):
            security_log.warning(
                "refused credentials for node %r from %s", node_id, _client(request)
            )
            raise exceptions.AuthenticationFailed(
                "Unknown node or wrong token. Check NODE_ID and UPSTREAM_TOKEN, "
                "and that this node is registered upstream (sync node add)."
            )
        if not node.is_active:
            security_log.warning(
                "revoked node %s tried to connect from %s", node_id, _client(request)
            )
            raise exceptions.PermissionDenied(
                f"Node {node_id} is revoked on this server; ask its administrator."
            )
        return (node, None)

    def authenticate_header(self, request):
        return self.keyword


class IsNode(BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.user, Node)


class EnvelopeBatchParser(BaseParser):
    """JSON, optionally gzip-compressed, with a cap on the inflated size."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        request = parser_context["request"]
        limit = settings.SYNC_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(
                f"The body is larger than {limit} bytes; send smaller chunks."
            )
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "identity")
        if encoding != "identity":
            body = _inflate(body, encoding, limit)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise exceptions.ParseError(f"The body is not valid JSON: {exc}") from None
        except RecursionError:
            raise exceptions.ParseError(
                "The body nests JSON arrays or objects too deeply; send envelopes "
                "as the API schema describes."
            ) from None


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Return ``body`` decompressed; refuse one that would inflate past ``limit``."""
    too_large = PayloadTooLarge(
        f"The body inflates past {limit} bytes; send smaller chunks."
    )
    if encoding == "zstd":
        try:
            size = zstandard.frame_content_size(body)
            if size > limit:
                raise too_large
            if size >= 0:
                body = zstandard.ZstdDecompressor().decompress(body)
            else:
                # A frame that does not say how large it inflates (this
                # node's client says) is inflated no further than the limit.
                body = zstandard.ZstdDecompressor().stream_reader(body).read(limit + 1)
        except zstandard.ZstdError as exc:
            raise exceptions.ParseError(f"The body is not valid zstd: {exc}") from None
        if len(body) > limit:
            raise too_large
        return body
    if encoding == "gzip":
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = inflater.decompress(body, limit + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise exceptions.ParseError(f"The body is not valid gzip: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise too_large
        return body
    raise exceptions.UnsupportedMediaType(
        encoding,
        f"Content-Encoding {encoding!r} is not taken here; send the body as "
        f"{' or '.join(ENCODINGS)}, or uncompressed.",
    )


class NodeAPIView(APIView):
    authentication_classes = [NodeAuthentication]
    permission_classes = [IsNode]
    parser_classes = [EnvelopeBatchParser]


_push_request = inline_serializer(
    "PushRequest",
    {
        "schema_version": serializers.IntegerField(),
        "envelopes": serializers.ListField(child=serializers.DictField()),
    },
)
_push_response = inline_serializer(
    "PushResponse",
    {
        "node": serializers.CharField(),
        "acknowledged": serializers.DictField(child=serializers.IntegerField()),
        "stored": serializers.IntegerField(),
        "duplicates": serializers.IntegerField(),
        "rejected": serializers.ListField(child=serializers.DictField()),
        "applied": serializers.DictField(child=serializers.IntegerField()),
        "acknowledgements": serializers.ListField(child=serializers.DictField()),
    },
)


class PushView(NodeAPIView):
    """Store a chunk of envelopes, acknowledge it, and apply it."""

    @extend_schema(
        request=_push_request,
        responses={
            200: _push_response,
            400: OpenApiResponse(description="malformed body or envelope"),
            401: OpenApiResponse(description="unknown node or wrong token"),
            403: OpenApiResponse(description="revoked node or foreign producer"),
            413: OpenApiResponse(description="body too large"),
            426: OpenApiResponse(description="schema versions too far apart"),
        },
    )
    def post(self, request):
        node: Node = request.user
        data = request.data
        if not isinstance(data, dict):
            raise exceptions.ParseError("The body must be a JSON object.")
        check_schema_version(data.get("schema_version"), node.node_id)
        raw = data.get("envelopes")
        if not isinstance(raw, list):
            raise exceptions.ParseError("'envelopes' must be a list.")
        if len(raw) > settings.SYNC_MAX_CHUNK:
            raise PayloadTooLarge(
                f"{len(raw)} envelopes in one chunk; send at most "
                f"{settings.SYNC_MAX_CHUNK}."
            )
        envelopes = []
        for index, item in enumerate(raw):
            try:
                envelopes.append(Envelope.from_wire(item))
            except EnvelopeInvalid as exc:
                raise exceptions.ParseError(
                    f"envelopes[{index}]: {exc.reason}"
                ) from None
        foreign = sorted({e.producer for e in envelopes} - {node.node_id})
        if foreign and not node.can_relay:
            security_log.warning(
                "node %s tried to deliver envelopes of %s; refused",
                node.node_id,
                ", ".join(foreign),
            )
            raise exceptions.PermissionDenied(
                f"Node {node.node_id} may deliver only its own transactions, not "
                f"those of {', '.join(foreign)}; register it as a relay to carry them."
            )
        receipt = receive(envelopes, delivered_by=node.node_id, and_apply=True)
        report = receipt.applied
        try:
            report += apply_delivered(receipt.acknowledged)
        except Exception:
            # Stored is stored: the chunk is acknowledged and the apply
            # worker (sync apply) takes it up again.
            log.exception("apply after push from %s failed", node.node_id)
        log.info(
            "push from %s: %d stored, %d duplicates, %d rejected",
            node.node_id,
            receipt.stored,
            receipt.duplicates,
            len(receipt.rejected),
        )
        return Response(
            {
                "node": settings.SYNC_NODE_ID,
                "acknowledged": receipt.acknowledged,
                "stored": receipt.stored,
                "duplicates": receipt.duplicates,
                "rejected": receipt.rejected,
                "applied": vars(report),
                "acknowledgements": known_acknowledgements(receipt.acknowledged),
            }
        )


class HeldView(NodeAPIView):
    """Say how far this server holds the caller's sequence, to resume from."""

    @extend_schema(
        responses=inline_serializer(
            "Held",
            {
                "node": serializers.CharField(),
                "producer": serializers.CharField(),
                "held_through": serializers.IntegerField(),
                "schema_version": serializers.IntegerField(),
                "acknowledgements": serializers.ListField(
                    child=serializers.DictField()
                ),
                "content_encodings": serializers.ListField(
                    child=serializers.CharField(),
                    help_text="How a push body may be compressed, best first.",
                ),
            },
        )
    )
    def get(self, request):
        node: Node = request.user
        producer = request.query_params.get("producer", node.node_id)
        if producer != node.node_id and not node.can_relay:
            security_log.warning(
                "node %s asked how far %s is held but may not relay; refused",
                node.node_id,
                producer,
            )
            raise exceptions.PermissionDenied(
                f"Node {node.node_id} may not relay {producer}'s transactions "
                "here; register it as a relay (sync node add --relay) to carry "
                "them."
            )
        state = ProducerState.objects.filter(producer=producer).first()
        return Response(
            {
                "node": settings.SYNC_NODE_ID,
                "producer": producer,
                "held_through": state.contiguous if state else 0,
                "schema_version": settings.SYNC_SCHEMA_VERSION,
                # So a caller with nothing new still learns who further up
                # holds its changes (central's receipts, for instance).
                "acknowledgements": known_acknowledgements([producer]),
                "content_encodings": list(ENCODINGS),
            }
        )


class IdentityView(NodeAPIView):
    """Say which node this is, so a caller knows whom it talks to."""

    @extend_schema(
        responses=inline_serializer(
            "Identity",
            {
                "node": serializers.CharField(),
                "role": serializers.CharField(),
                "schema_version": serializers.IntegerField(),
            },
        )
    )
    def get(self, request):
        return Response(
            {
                "node": settings.SYNC_NODE_ID,
                "role": settings.SYNC_ROLE,
                "schema_version": settings.SYNC_SCHEMA_VERSION,
            }
        )


class PullView(NodeAPIView):
    """Hand this node's own envelopes to a registered middleman, in chunks.

    The middleman says how far it holds this node's sequence (``after``) and
    what it knows of the nodes further up; both are recorded, so the field
    laptop can tell how far each change got.
    """

    @extend_schema(
        request=inline_serializer(
            "PullRequest",
            {
                "schema_version": serializers.IntegerField(),
                "after": serializers.IntegerField(),
                "limit": serializers.IntegerField(),
                "acknowledgements": serializers.ListField(
                    child=serializers.DictField()
                ),
            },
        ),
        responses={
            200: inline_serializer(
                "PullResponse",
                {
                    "node": serializers.CharField(),
                    "envelopes": serializers.ListField(child=serializers.DictField()),
                    "more": serializers.BooleanField(),
                },
            ),
            403: OpenApiResponse(description="the caller is not a middleman"),
        },
    )
    def post(self, request):
        node: Node = request.user
        if node.role != Node.Role.MIDDLEMAN:
            security_log.warning("non-middleman %s tried to pull", node.node_id)
            raise exceptions.PermissionDenied(
                f"Only nodes registered as middlemen may pull; {node.node_id} "
                f"is registered as {node.role}."
            )
        data = request.data
        if not isinstance(data, dict):
            raise exceptions.ParseError("The body must be a JSON object.")
        check_schema_version(data.get("schema_version"), node.node_id)
        after, limit = data.get("after"), data.get("limit", settings.SYNC_CHUNK_SIZE)
        for name, value in (("after", after), ("limit", limit)):
            if not is_whole_number(value):
                raise exceptions.ParseError(
                    f"'{name}' must be a whole number below 2**63."
                )
        hearsay = _acknowledgements(data.get("acknowledgements", []))
        me = settings.SYNC_NODE_ID
        # Checked before anything is recorded: a malformed body changes nothing.
        record_acknowledgement(node.node_id, me, after)
        for ack in hearsay:
            # What the caller holds is ``after``; its word on others is hearsay.
            if ack["producer"] == me and ack["holder"] not in (me, node.node_id):
                record_acknowledgement(ack["holder"], me, ack["through"])
        limit = min(limit, settings.SYNC_MAX_CHUNK)
        rows = next_in_sequence(
            OutgoingTransaction.objects.filter(producer=me), after, limit + 1
        )
        handed = rows[:limit]
        log.info(
            "%s pulled %d transactions after #%d", node.node_id, len(handed), after
        )
        return Response(
            {
                "node": me,
                "envelopes": [Envelope.from_row(r).to_wire() for r in handed],
                "more": len(rows) > limit,
            }
        )


def known_acknowledgements(producers) -> list[dict]:
    """Return what this node knows of nodes further up holding ``producers``."""
    rows = Acknowledgement.objects.filter(producer__in=list(producers))
    return [
        {"holder": a.holder, "producer": a.producer, "through": a.through_sequence}
        for a in rows.exclude(holder=settings.SYNC_NODE_ID)
    ]


def _acknowledgements(raw) -> list[dict]:
    if not isinstance(raw, list):
        raise exceptions.ParseError("'acknowledgements' must be a list.")
    for item in raw:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("holder"), str)
            and isinstance(item.get("producer"), str)
            and is_whole_number(item.get("through"))
        ):
            raise exceptions.ParseError(
                "each acknowledgement needs 'holder', 'producer' and 'through' "
                "(a whole number below 2**63)."
            )
    return raw


def check_schema_version(version, caller: str = "the caller") -> None:
    """Refuse a node whose data schema is too far from this one's."""
    mine = settings.SYNC_SCHEMA_VERSION
    span = settings.SYNC_SCHEMA_SPAN
    if not isinstance(version, int) or isinstance(version, bool):
        raise exceptions.ParseError("'schema_version' must be an integer.")
    if abs(version - mine) > span:
        raise SchemaMismatch(
            f"This server runs schema version {mine} and talks to versions "
            f"{mine - span} to {mine + span}; {caller} runs {version}. Update "
            "the older node; its data stays safe in its outbox until then."
        )


def _client(request) -> str:
    return request.META.get("REMOTE_ADDR", "?")

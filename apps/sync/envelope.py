"""Provides the envelope: one change, encrypted and signed by its producer.

The header says who produced the change, where it sits in the producer's
sequence and what it changes; the payload (the record, natural keys for its
relations) is sealed with the deployment's data key, bound to the header; the
producer's Ed25519 signature covers header and ciphertext, so a relay can
carry an envelope but cannot alter or forge one.

Each header also carries the digest of the producer's previous envelope, which
chains a producer's envelopes together. A valid signature on the last envelope
of a linked run vouches for every envelope before it, so a receiver checks one
signature per run instead of one per envelope (an Ed25519 check costs about
as much as applying the change). A run whose last signature fails is checked
envelope by envelope, so a tampered one is named precisely.
"""

import base64
import datetime
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, fields
from functools import cached_property

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.serializers.json import DjangoJSONEncoder

from . import keys
from .errors import EnvelopeInvalid

FORMAT = 1
ACTIONS = ("insert", "update", "delete")
NONCE_BYTES = 12
# Sequences and clocks are stored as 64-bit signed integers (BigIntegerField).
MAX_INTEGER = 2**63 - 1
# The longest text each header field may have: its column's length.
LONGEST = {"producer": 64, "model": 100, "schema_version": 20, "key_id": 32}


@dataclass(frozen=True)
class Envelope:
    id: uuid.UUID
    producer: str
    sequence: int
    model: str
    record_id: uuid.UUID
    action: str
    hlc: int
    base_version: uuid.UUID | None
    schema_version: str
    key_id: str
    nonce: bytes
    ciphertext: bytes
    signature: bytes = b""
    prev_digest: bytes = b""

    def header_bytes(self) -> bytes:
        """Return the canonical bytes of everything but the payload."""
        return self._header

    @cached_property
    def _header(self) -> bytes:
        # Made once: checking an envelope's signature and opening it both
        # need it, for every envelope a server takes in.
        return header_bytes(self)

    def signed_bytes(self) -> bytes:
        return self.header_bytes() + self.nonce + self.ciphertext

    def digest(self) -> bytes:
        """Return the SHA-256 of the signed content and its signature.

        The signature is part of the digest so that the next envelope's link
        vouches for it too: a relay cannot swap it for garbage unnoticed.
        """
        return hashlib.sha256(self.signed_bytes() + self.signature).digest()

    def to_wire(self) -> dict:
        """Return the JSON-ready form that travels over HTTP and in files."""
        return {
            "id": str(self.id),
            "producer": self.producer,
            "sequence": self.sequence,
            "model": self.model,
            "record_id": str(self.record_id),
            "action": self.action,
            "hlc": self.hlc,
            "base_version": str(self.base_version) if self.base_version else None,
            "schema_version": self.schema_version,
            "key_id": self.key_id,
            "nonce": _b64(self.nonce),
            "ciphertext": _b64(self.ciphertext),
            "signature": _b64(self.signature),
            "prev_digest": _b64(self.prev_digest),
        }

    @classmethod
    def from_wire(cls, data) -> "Envelope":
        """Parse the wire form; raise EnvelopeInvalid naming the bad field."""
        if not isinstance(data, dict):
            raise EnvelopeInvalid("an envelope must be a JSON object", "bad_shape")
        try:
            return cls(
                id=uuid.UUID(_typed(data, "id", str)),
                producer=_text(data, "producer"),
                sequence=_positive(data, "sequence"),
                model=_text(data, "model"),
                record_id=uuid.UUID(_typed(data, "record_id", str)),
                action=_choice(data, "action", ACTIONS),
                hlc=_positive(data, "hlc"),
                base_version=(
                    uuid.UUID(data["base_version"])
                    if data.get("base_version") is not None
                    else None
                ),
                schema_version=_text(data, "schema_version"),
                key_id=_text(data, "key_id"),
                nonce=base64.b64decode(_typed(data, "nonce", str), validate=True),
                ciphertext=base64.b64decode(
                    _typed(data, "ciphertext", str), validate=True
                ),
                signature=base64.b64decode(
                    _typed(data, "signature", str), validate=True
                ),
                prev_digest=base64.b64decode(
                    data.get("prev_digest", ""), validate=True
                ),
            )
        except EnvelopeInvalid:
            raise
        except (ValueError, TypeError, AttributeError) as exc:
            raise EnvelopeInvalid(f"malformed envelope: {exc}", "bad_shape") from exc

    @classmethod
    def from_row(cls, row) -> "Envelope":
        """Build an envelope from a stored transaction row."""
        return cls(*(_as_bytes(getattr(row, name)) for name in COLUMNS))

    @classmethod
    def from_columns(cls, values) -> "Envelope":
        """Build an envelope from its stored columns, given in COLUMNS order."""
        return cls(*map(_as_bytes, values))


# The envelope's fields in order: the columns that store one.
COLUMNS = tuple(f.name for f in fields(Envelope))


def header_bytes(item) -> bytes:
    """Return the canonical bytes of the header of ``item``.

    ``item`` is an envelope, or anything with its fields (a stored row of
    one). The bytes are the header as JSON with sorted keys, no spaces and
    ASCII escapes, as ``json.dumps(header, sort_keys=True, separators=(",",
    ":"))`` writes it. It is spelled out here because it is made for every
    envelope checked, sealed or opened, and building the dict for
    ``json.dumps`` took as long as decrypting the payload.
    """
    base_version = f'"{item.base_version}"' if item.base_version else "null"
    return (
        f'{{"action":{_json_text(item.action)},"base_version":{base_version},'
        f'"hlc":{int(item.hlc)},"id":"{item.id}",'
        f'"key_id":{_json_text(item.key_id)},"model":{_json_text(item.model)},'
        f'"prev":"{item.prev_digest.hex()}",'
        f'"producer":{_json_text(item.producer)},'
        f'"record_id":"{item.record_id}",'
        f'"schema_version":{_json_text(item.schema_version)},'
        f'"sequence":{int(item.sequence)},"v":{FORMAT}}}'
    ).encode()


class PayloadEncoder(DjangoJSONEncoder):
    """JSON for payloads: like Django's, but times keep their microseconds."""

    def default(self, o):
        if isinstance(o, datetime.datetime | datetime.time):
            return o.isoformat()
        return super().default(o)


def seal(
    *,
    producer: str,
    sequence: int,
    model: str,
    record_id: uuid.UUID,
    action: str,
    hlc: int,
    base_version: uuid.UUID | None,
    schema_version: str,
    payload: dict,
    tx_id: uuid.UUID | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    prev_digest: bytes = b"",
) -> Envelope:
    """Encrypt ``payload`` under the active data key and sign the result.

    The signature is this node's unless ``signing_key`` is given (a test that
    plays another node signs with that node's key).
    """
    keyring = keys.data_keyring()
    unsigned = Envelope(
        id=tx_id or uuid.uuid4(),
        producer=producer,
        sequence=sequence,
        model=model,
        record_id=record_id,
        action=action,
        hlc=hlc,
        base_version=base_version,
        schema_version=schema_version,
        key_id=keyring.active_id,
        nonce=os.urandom(NONCE_BYTES),
        ciphertext=b"",
        prev_digest=prev_digest,
    )
    plaintext = json.dumps(payload, cls=PayloadEncoder, separators=(",", ":"))
    ciphertext = keyring.cipher(keyring.active_id).encrypt(
        unsigned.nonce, plaintext.encode(), unsigned.header_bytes()
    )
    sealed = _replace(unsigned, ciphertext=ciphertext)
    signer = signing_key or keys.signing_key()
    return _replace(sealed, signature=signer.sign(sealed.signed_bytes()))


def verify(envelope: Envelope, public_key_text: str) -> None:
    """Raise EnvelopeInvalid unless the producer's key signed ``envelope``."""
    try:
        keys.public_key_from_text(public_key_text).verify(
            envelope.signature, envelope.signed_bytes()
        )
    except InvalidSignature:
        raise EnvelopeInvalid(
            f"signature of {envelope.producer}#{envelope.sequence} does not "
            "match the producer's registered key",
            "bad_signature",
        ) from None


def verify_runs(
    envelopes: list[Envelope], public_keys: dict[str, str]
) -> tuple[list[Envelope], list[tuple[Envelope, EnvelopeInvalid]]]:
    """Check signatures, one per linked run; return the valid and the refused.

    ``public_keys`` maps producer to its registered key; an envelope whose
    producer is missing there must be refused before this is called.
    """
    valid, refused = [], []
    ordered = sorted(envelopes, key=lambda e: (e.producer, e.sequence))
    run: list[Envelope] = []
    for item in ordered + [None]:
        linked = (
            item is not None
            and run
            and item.producer == run[-1].producer
            and item.sequence == run[-1].sequence + 1
            and item.prev_digest == run[-1].digest()
        )
        if run and not linked:
            _check_run(run, public_keys[run[-1].producer], valid, refused)
            run = []
        if item is not None:
            run.append(item)
    return valid, refused


def _check_run(run, public_key, valid, refused) -> None:
    try:
        verify(run[-1], public_key)
        valid.extend(run)
        return
    except EnvelopeInvalid:
        pass
    for item in run:  # find which envelope broke the run
        try:
            verify(item, public_key)
            valid.append(item)
        except EnvelopeInvalid as exc:
            refused.append((item, exc))


def open_payload(envelope: Envelope) -> dict:
    """Decrypt and return the payload; raise EnvelopeInvalid if it won't open.

    ``envelope`` may also be a stored row of one.
    """
    cipher = keys.data_keyring().cipher(envelope.key_id)
    if cipher is None:
        raise EnvelopeInvalid(
            f"data key {envelope.key_id} is not on this node; copy the "
            "deployment's data keys folder here",
            "unknown_key",
        )
    try:
        header = (
            envelope.header_bytes()
            if isinstance(envelope, Envelope)
            else header_bytes(envelope)
        )
        plaintext = cipher.decrypt(envelope.nonce, envelope.ciphertext, header)
    except InvalidTag:
        raise EnvelopeInvalid(
            f"payload of {envelope.producer}#{envelope.sequence} fails "
            "authentication: it was altered or sealed under another key",
            "bad_ciphertext",
        ) from None
    try:
        return json.loads(plaintext.decode())
    except ValueError as exc:  # not UTF-8, or not JSON
        raise EnvelopeInvalid(
            f"payload of {envelope.producer}#{envelope.sequence} opens but is "
            f"not JSON ({exc}); the producer's software is at fault",
            "bad_payload",
        ) from None


def _replace(envelope: Envelope, **changes) -> Envelope:
    values = {f.name: getattr(envelope, f.name) for f in fields(Envelope)}
    values.update(changes)
    return Envelope(**values)


# A JSON string, quoted and escaped to ASCII as json.dumps writes it.
_json_text = json.encoder.encode_basestring_ascii


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _as_bytes(value):
    return bytes(value) if isinstance(value, memoryview) else value


def _typed(data: dict, name: str, kind: type):
    value = data.get(name)
    if not isinstance(value, kind):
        raise EnvelopeInvalid(
            f"field '{name}' must be {kind.__name__}, got {type(value).__name__}",
            "bad_shape",
        )
    return value


def _text(data: dict, name: str) -> str:
    value = _typed(data, name, str)
    if not 0 < len(value) <= LONGEST[name]:
        raise EnvelopeInvalid(
            f"field '{name}' must have 1 to {LONGEST[name]} characters", "bad_shape"
        )
    return value


def _positive(data: dict, name: str) -> int:
    value = data.get(name)
    if not is_whole_number(value) or value < 1:
        raise EnvelopeInvalid(
            f"field '{name}' must be a positive integer below 2**63", "bad_shape"
        )
    return value


def is_whole_number(value) -> bool:
    """Tell whether ``value`` is an int from 0 to MAX_INTEGER (not a bool)."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_INTEGER
    )


def _choice(data: dict, name: str, choices: tuple[str, ...]) -> str:
    value = data.get(name)
    if value not in choices:
        raise EnvelopeInvalid(
            f"field '{name}' must be one of {', '.join(choices)}", "bad_shape"
        )
    return value

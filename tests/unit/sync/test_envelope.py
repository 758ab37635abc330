"""The envelope's canonical header: the bytes every signature and seal covers."""

import json
import uuid

import pytest
from sync.envelope import FORMAT, Envelope


def reference_header(envelope: Envelope) -> bytes:
    """The header as the format defines it: json.dumps with sorted keys."""
    header = {
        "v": FORMAT,
        "id": str(envelope.id),
        "producer": envelope.producer,
        "sequence": envelope.sequence,
        "model": envelope.model,
        "record_id": str(envelope.record_id),
        "action": envelope.action,
        "hlc": envelope.hlc,
        "base_version": str(envelope.base_version) if envelope.base_version else None,
        "schema_version": envelope.schema_version,
        "key_id": envelope.key_id,
        "prev": envelope.prev_digest.hex(),
    }
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "text",
    [
        "laptop-01",
        'quote " and \\ backslash',
        "tab\tnew\nline\x01",
        "Mosadi wa Lentswe é ü 中文 😀",
        "</script>",
    ],
)
@pytest.mark.parametrize("base_version", [None, uuid.uuid4()])
def test_header_bytes_are_the_sorted_json_of_the_header(text, base_version):
    envelope = Envelope(
        id=uuid.uuid4(),
        producer=text,
        sequence=2**63 - 1,
        model=f"study.{text}",
        record_id=uuid.uuid4(),
        action="update",
        hlc=1_733_000_000_000_123,
        base_version=base_version,
        schema_version=text,
        key_id=text[:32],
        nonce=b"\x00" * 12,
        ciphertext=b"sealed",
        prev_digest=bytes(range(32)) if base_version else b"",  # a first envelope
    )

    assert envelope.header_bytes() == reference_header(envelope)
    assert envelope.header_bytes().isascii()

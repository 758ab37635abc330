"""A push body is compressed the fastest way upstream takes, gzip if it does not say."""

import gzip
import json
import uuid

import pytest
import zstandard
from sync.envelope import Envelope
from sync.transport.client import _encoder


def _chunk(count: int) -> list[Envelope]:
    return [
        Envelope(
            id=uuid.uuid4(),
            producer="laptop-01",
            sequence=number,
            model="study.household",
            record_id=uuid.uuid4(),
            action="insert",
            hlc=1_000 + number,
            base_version=None,
            schema_version="1",
            key_id="k1",
            nonce=bytes(12),
            ciphertext=b"sealed",
            signature=bytes(64),
        )
        for number in range(1, count + 1)
    ]


@pytest.mark.parametrize(
    ("upstream_takes", "encoding", "inflate"),
    [
        (["zstd", "gzip"], "zstd", zstandard.ZstdDecompressor().decompress),
        (["gzip"], "gzip", gzip.decompress),
        ([], "gzip", gzip.decompress),  # an upstream too old to say
    ],
)
def test_a_chunk_is_compressed_as_upstream_takes_it(upstream_takes, encoding, inflate):
    chunk = _chunk(3)
    encode = _encoder(upstream_takes)

    body = json.loads(inflate(encode(chunk)))

    assert encode.encoding == encoding
    assert body["envelopes"] == [item.to_wire() for item in chunk]

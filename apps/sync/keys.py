"""Provides this node's signing key and the deployment's data keyring.

The signing key (Ed25519) is the node's own: it proves which node produced an
envelope. Data keys (ChaCha20-Poly1305) are shared by every node of a
deployment and named by a key id, so a new key can be made active while
envelopes sealed under an older one still open.

On disk: ``SYNC_SIGNING_KEY_FILE`` holds a PEM private key; the directory
``SYNC_DATA_KEYS_DIR`` holds ``<key id>.key`` files (32 random bytes, base64)
and a file ``active`` naming the key new envelopes are sealed with.
"""

import base64
import functools
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from django.conf import settings

from .errors import KeyMissing


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def create_signing_key(path: str | Path) -> bool:
    """Write a new Ed25519 key to ``path`` unless one is there; True if made."""
    path = Path(path)
    if path.exists():
        return False
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)
    return True


def create_data_key(directory: str | Path, activate: bool = True) -> str:
    """Write a new data key into ``directory`` and return its key id."""
    directory = Path(directory)
    key_id = secrets.token_hex(4)
    _write_private(directory / f"{key_id}.key", base64.b64encode(os.urandom(32)))
    if activate:
        (directory / "active").write_text(key_id + "\n")
    return key_id


@functools.cache
def signing_key() -> Ed25519PrivateKey:
    path = Path(settings.SYNC_SIGNING_KEY_FILE)
    if not path.exists():
        raise KeyMissing(
            f"No signing key at {path}. Create one with: manage.py sync keygen"
        )
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def public_key_text(key: Ed25519PrivateKey | None = None) -> str:
    """Return this node's public key as base64 text, for a node register."""
    raw = (
        (key or signing_key())
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return base64.b64encode(raw).decode()


@functools.cache
def public_key_from_text(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text))


class DataKeyring:
    """The deployment's data keys, by key id, and the one in use."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        active = directory / "active"
        if not active.exists():
            raise KeyMissing(
                f"No data keys in {directory}. Create the deployment's first "
                "with: manage.py sync keygen --data-key (then copy the folder "
                "to every node of the deployment)."
            )
        self.active_id = active.read_text().strip()
        self._ciphers = {
            path.stem: ChaCha20Poly1305(base64.b64decode(path.read_bytes()))
            for path in directory.glob("*.key")
        }
        if self.active_id not in self._ciphers:
            raise KeyMissing(f"The active data key {self.active_id} is missing.")

    def cipher(self, key_id: str) -> ChaCha20Poly1305 | None:
        return self._ciphers.get(key_id)


@functools.cache
def data_keyring() -> DataKeyring:
    return DataKeyring(settings.SYNC_DATA_KEYS_DIR)


def forget_cached_keys() -> None:
    """Drop keys read from disk, after they were made or rotated."""
    signing_key.cache_clear()
    data_keyring.cache_clear()

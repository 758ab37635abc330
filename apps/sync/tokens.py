"""Provides node credentials: random tokens, stored only as hashes."""

import hashlib
import secrets


def new_token() -> str:
    # Hex, so a token never starts with "-" and reads as an option on a
    # command line (sync node add --token ...).
    return secrets.token_hex(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

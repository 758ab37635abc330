"""Provides the flag that tells capture and history a write is a sync apply."""

import contextlib
import contextvars

_applying = contextvars.ContextVar("sync_applying", default=False)


def applying() -> bool:
    """Return True while the engine writes changes that came from elsewhere."""
    return _applying.get()


@contextlib.contextmanager
def applying_incoming():
    """Mark writes in this block as applied, not made here: nothing is captured."""
    token = _applying.set(True)
    try:
        yield
    finally:
        _applying.reset(token)

"""Provides the sync engine's exceptions, rooted at SyncError."""


class SyncError(Exception):
    """Root of every error the sync engine raises on purpose."""


class RegistryError(SyncError):
    """A model was registered twice, or looked up without being registered."""


class CaptureRefused(SyncError):
    """An ORM path that would bypass the outbox was used on a synced model."""


class KeyMissing(SyncError):
    """A signing or data key this node needs is not on disk."""


class EnvelopeInvalid(SyncError):
    """An envelope failed its signature, decryption or shape check."""

    def __init__(self, reason: str, code: str = "envelope_invalid"):
        super().__init__(reason)
        self.reason = reason
        self.code = code

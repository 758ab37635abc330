"""The sync engine: capture local changes, carry them as envelopes, apply them."""

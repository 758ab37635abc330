"""Provides the hybrid logical clock that orders changes across nodes.

A timestamp is one integer: milliseconds since the epoch in the high bits and
a logical counter in the low 16 bits. A node's next timestamp is greater than
both its own previous one and every timestamp it has received, so an edit made
after seeing another edit always sorts after it, whatever the device clock says.
"""

import os
import time

LOGICAL_BITS = 16

# A device whose clock is wrong, simulated: tests of clock skew set this in a
# node's environment (milliseconds, may be negative). Real nodes leave it unset.
SKEW_MS = int(float(os.environ.get("SYNC_CLOCK_SKEW_SECONDS", "0")) * 1000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000 + SKEW_MS


def tick(last: int, physical_ms: int | None = None) -> int:
    """Return the next local timestamp after ``last``."""
    physical = (now_ms() if physical_ms is None else physical_ms) << LOGICAL_BITS
    return max(physical, last + 1)


def merge(last: int, received: int) -> int:
    """Return the clock after receiving ``received``: never behind it."""
    return max(last, received)


def physical_part(stamp: int) -> int:
    """Return the milliseconds part of a timestamp."""
    return stamp >> LOGICAL_BITS

"""Provides the hybrid logical clock that orders changes across nodes.

A timestamp is one integer: milliseconds since the epoch in the high bits and
a logical counter in the low 16 bits. A node's next timestamp is greater than
both its own previous one and every timestamp it has received, so an edit made
after seeing another edit always sorts after it, whatever the device clock says.
"""

import time

LOGICAL_BITS = 16


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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

"""Tunes Python's cycle collector for the bulk work a node does.

A push or a pull handles a thousand records at a time, each making dozens of
small objects (dicts, keys, times). With Python's default thresholds the
cycle collector runs after every 700 new objects, and its older generations
walk everything Django and the apps made at start-up as well: on the push
benchmark that was about a seventh of the time. Here it runs rarely while
work is done, and fully in the pauses between (after each request a server
answers, before a long-running command sleeps), where it takes about a
millisecond once start-up's objects are frozen. Reference counting frees
nearly everything anyway; the collector is only needed for cycles, and
collected in the pauses, memory stays flat however much is pushed.
"""

import gc

# New objects between collections of the youngest generation, then how many
# of those before the middle one, and of those before the oldest.
THRESHOLDS = (50_000, 20, 100)


def tune(freeze: bool = False) -> None:
    """Collect rarely; with ``freeze``, stop walking what exists now.

    Freeze once start-up is done, in a process that then serves for long
    (a gunicorn master before it forks: its workers share those pages too).
    """
    gc.set_threshold(*THRESHOLDS)
    if freeze:
        gc.freeze()


def collect_after_each_request() -> None:
    """Collect fully once each request is answered (the caller has its answer)."""
    from django.core.signals import request_finished

    request_finished.connect(_collect, weak=False)


def _collect(**kwargs) -> None:
    gc.collect()


def before_exit() -> None:
    """Let the interpreter end without walking every object one last time.

    Its teardown runs a last full collection: after a push, about 70 ms of
    a command that took a second. Frozen, what is left goes back to the
    operating system with the process. Database connections are closed
    first, as a collection might have closed them.
    """
    from django.db import connections

    connections.close_all()
    gc.freeze()

"""A laptop's large backlog streams to the server in bounded chunks.

The size is ``E2E_BACKLOG`` transactions (default below, chosen so the whole
suite fits its time budget on a two-core machine; see the README of this
folder for the measurements).
"""

import os
import time

from tests.e2e.harness import entered
from tests.e2e.proof import prove_delivered, snapshot

BACKLOG = int(os.environ.get("E2E_BACKLOG", "100000"))
MB = 1024 * 1024


def test_large_backlog_completes_with_server_memory_flat(deployment):
    community, (laptop,) = deployment.start("laptop-01")
    started = time.monotonic()
    seed = laptop.manage("seed", "--transactions", str(BACKLOG))
    seeded = time.monotonic()
    total = entered(seed)

    watch = community.watch_memory()
    push = laptop.start_job("sync", "push")
    out = push.wait(timeout=1200)
    pushed = time.monotonic()
    samples = watch.stop()
    assert f"acknowledged through #{total}" in out, out

    # Digests of the values, not the values: the same proof, a smaller answer.
    received, produced = snapshot(community, full=False), snapshot(laptop, full=False)
    proven = prove_delivered(received, [produced])
    assert proven["transactions"] == total

    # Flat: what the server holds while the last third streams in is no more
    # than it held in the first third, give or take allocator noise.
    third = max(1, len(samples) // 3)
    early, late = max(samples[:third]), max(samples[-third:])
    print(
        f"backlog {total} tx: seed {seeded - started:.0f} s, push "
        f"{pushed - seeded:.0f} s ({total / (pushed - seeded):.0f} tx/s), proof "
        f"{time.monotonic() - pushed:.0f} s; server memory {min(samples) / MB:.0f}"
        f"-{max(samples) / MB:.0f} MB, first third peak {early / MB:.0f} MB, "
        f"last third peak {late / MB:.0f} MB over {len(samples)} samples"
    )
    assert len(samples) >= 6, "too few memory samples to judge"
    assert late - early < 40 * MB
    assert max(samples) < 600 * MB

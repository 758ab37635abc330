"""Faults in the field: a cut link, a killed server, a laptop that loses power."""

from concurrent.futures import ThreadPoolExecutor

from sync.transport.client import IN_FLIGHT

from tests.e2e.harness import entered, wait_for
from tests.e2e.proof import prove_delivered, prove_outbox_matches_records, snapshot

BACKLOG = "5000"
CHUNK = "200"
# A request in flight when the link goes down waits this long for its answer.
QUICK = {"SYNC_HTTP_TIMEOUT": "8"}


def test_network_cut_mid_push_resumes_and_completes(deployment):
    community, (laptop,) = deployment.start("laptop-01", laptop_env=QUICK)
    seed = laptop.manage("seed", "--transactions", BACKLOG)
    total = entered(seed)

    push = laptop.start_job("sync", "push", "--chunk-size", CHUNK)
    wait_for(lambda: community.held(laptop) >= 1000, "the first chunks to arrive")
    deployment.disconnect(laptop)
    cut_at = community.held(laptop)
    assert cut_at < total, "the push ended before the link was cut"
    wait_for(
        lambda: "upstream call failed" in push.output(),
        "the laptop to notice the cut and retry",
        timeout=60,
    )
    assert push.running
    deployment.reconnect(laptop)
    out = push.wait(timeout=180)

    assert f"acknowledged through #{total}" in out, out
    proven = prove_delivered(snapshot(community), [snapshot(laptop)])
    assert proven["transactions"] == total
    # Resumed, not started over: each transaction stored once, and at most
    # the chunks in flight when the link went down were sent again.
    pushes = community.push_lines(laptop.node_id)
    assert sum(stored for stored, _ in pushes) == total
    assert sum(again for _, again in pushes) <= IN_FLIGHT * int(CHUNK)


def test_server_killed_mid_push_loses_nothing_and_applies_once(deployment):
    community, (laptop,) = deployment.start("laptop-01", laptop_env=QUICK)
    seed = laptop.manage("seed", "--transactions", BACKLOG)
    total = entered(seed)

    push = laptop.start_job("sync", "push", "--chunk-size", CHUNK)
    wait_for(lambda: community.held(laptop) >= 1000, "the first chunks to arrive")
    community.kill()
    wait_for(
        lambda: "upstream call failed" in push.output(),
        "the laptop to notice the server is gone",
    )
    community.restart_after_kill()
    out = push.wait(timeout=180)
    assert f"acknowledged through #{total}" in out, out

    # Chunks stored but not applied when the server died wait for the next
    # push or for ``sync apply``; no worker in the image runs it on its own.
    waiting = community.counts()["incoming_by_status"].get("laptop-01:received", 0)
    print(f"after the push, {waiting} stored transactions were not applied yet")
    community.manage("sync", "apply")
    proven = prove_delivered(snapshot(community), [snapshot(laptop)])
    assert proven["transactions"] == total
    assert "failed 0" in community.status()


def test_server_killed_while_applying_applies_everything_once_after(deployment):
    # One apply chunk as large as the backlog: the apply after the last
    # delivery is one long transaction, and the kill lands inside it.
    community, (laptop,) = deployment.start(
        "laptop-01", laptop_env=QUICK, SYNC_CHUNK_SIZE=BACKLOG
    )
    total = entered(laptop.manage("seed", "--transactions", BACKLOG))
    envelopes = laptop.probe("outbox", "--limit", str(total))
    half = total // 2
    held_back = community.post_push(envelopes[half:], laptop).json()
    assert held_back["acknowledged"] == {laptop.node_id: 0}

    # The first half makes the whole backlog contiguous; the server stores
    # it, acknowledges, and starts applying all of it. Kill it then.
    pool = ThreadPoolExecutor(max_workers=1)
    delivery = pool.submit(community.post_push, envelopes[:half], laptop)
    wait_for(
        lambda: community.held(laptop) == total, "the backlog to be held", interval=0.05
    )
    community.kill()
    pool.shutdown(wait=True)
    assert delivery.exception() is not None, "the apply ended before the kill"
    community.restart_after_kill()

    # The apply's transaction rolled back whole, and the apply worker that
    # runs beside gunicorn takes the stored backlog up again by itself.
    applied = f"{laptop.node_id}:applied"
    wait_for(
        lambda: community.counts()["incoming_by_status"].get(applied) == total,
        "the apply worker to apply the stored backlog",
        timeout=300,
        interval=1,
    )
    out = laptop.manage("sync", "push").stdout
    assert f"sent 0, acknowledged through #{total}" in out, out
    proven = prove_delivered(snapshot(community), [snapshot(laptop)])
    assert proven["transactions"] == total


def test_laptop_killed_while_writing_keeps_records_and_outbox_together(deployment):
    community, (laptop,) = deployment.start("laptop-01")
    seed = laptop.start_job("seed", "--households", "400", "--seed", "7")
    wait_for(
        lambda: laptop.counts()["outgoing"] >= 300,
        "the field day to be under way",
        timeout=120,
        interval=0.5,
    )
    assert seed.running, "the field day ended before the power cut"
    laptop.kill()
    laptop.restart_after_kill()

    # No record without its outgoing transaction, and none the other way.
    before = snapshot(laptop)
    kept = prove_outbox_matches_records(before)
    assert kept["outgoing"] >= 300

    # What survived the cut travels like anything else.
    out = laptop.manage("sync", "push").stdout
    assert f"acknowledged through #{kept['outgoing']}" in out, out
    prove_delivered(snapshot(community), [before])

"""Deliveries that arrive twice, out of order, or before what they depend on."""

from tests.e2e.proof import prove_delivered, snapshot


def test_duplicate_and_out_of_order_chunks_are_stored_once_in_order(deployment):
    community, (laptop,) = deployment.start("laptop-01")
    laptop.manage("seed", "--households", "8", "--seed", "3")
    envelopes = laptop.probe("outbox", "--limit", "5000")
    total = len(envelopes)
    first, second = envelopes[: total // 2], envelopes[total // 2 :]

    # The second chunk overtakes the first: held, not acknowledged, not applied.
    answer = community.post_push(second, laptop).json()
    assert answer["stored"] == len(second)
    assert answer["acknowledged"] == {laptop.node_id: 0}
    assert answer["applied"]["applied"] == 0
    status = community.status()
    assert f"held #0 (highest #{total}, {len(first)} missing)" in status, status

    answer = community.post_push(first, laptop).json()
    assert answer["stored"] == len(first)
    assert answer["acknowledged"] == {laptop.node_id: total}

    # Both chunks again, as after a timeout: acknowledged, nothing stored.
    for chunk in (first, second):
        answer = community.post_push(chunk, laptop).json()
        assert (answer["stored"], answer["duplicates"]) == (0, len(chunk))
        assert answer["acknowledged"] == {laptop.node_id: total}

    out = laptop.manage("sync", "push").stdout
    assert f"sent 0, acknowledged through #{total}" in out, out
    community.manage("sync", "apply")
    proven = prove_delivered(snapshot(community), [snapshot(laptop)])
    assert proven["transactions"] == total


ADD_MEMBER = """
from study.models import Household, HouseholdMember
HouseholdMember.objects.create(
    household=Household.objects.get(pk="{household}"), first_name="Naledi",
    initials="NK", gender="F", age_in_years=34, relation="other", eligible=True,
)
"""


def test_child_waits_for_parent_from_a_laptop_that_syncs_later(deployment):
    community, (laptop1, laptop2) = deployment.start("laptop-01", "laptop-02")
    laptop2.manage("seed", "--households", "3", "--seed", "4")

    # laptop-02 hands its households to laptop-01 over the local network
    # (laptop-01 is its upstream for a moment); an assistant on laptop-01
    # then lists a new member in one of them.
    deployment.register(laptop1, laptop2)
    peer = {"UPSTREAM_URL": f"http://{laptop1.node_id}:8000"}
    laptop2.manage("sync", "push", env=peer)
    household = next(iter(snapshot(laptop2).records["study.household"]))
    laptop1.manage("shell", "-c", ADD_MEMBER.format(household=household))

    # laptop-01 syncs first: the member arrives before its household. It
    # keeps laptop-02's envelopes (a laptop is no relay) and pushes cleanly.
    own = laptop1.manage("sync", "push")
    mine = len(snapshot(laptop1).outgoing(laptop1.node_id))
    assert community.held(laptop1) == mine, own.stdout + own.stderr
    waiting = community.problems()
    assert f"waiting for record:study.household:{household}" in waiting, waiting
    counts = community.counts()["incoming_by_status"]
    assert counts.get(f"{laptop1.node_id}:parked") == 1, counts

    # laptop-02 syncs later: the household arrives and the member follows.
    laptop2.manage("sync", "push")
    assert "parked" not in community.problems()
    received = snapshot(community)
    prove_delivered(received, [snapshot(laptop1), snapshot(laptop2)])

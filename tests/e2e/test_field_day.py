"""A field day on two laptops reaches the community server as their union."""

from tests.e2e.harness import parallel
from tests.e2e.proof import prove_delivered, snapshot


def test_two_laptops_field_day_arrives_as_their_union(deployment):
    community, (laptop1, laptop2) = deployment.start("laptop-01", "laptop-02")
    parallel(
        lambda: laptop1.manage("seed", "--households", "12", "--seed", "1"),
        lambda: laptop2.manage("seed", "--households", "12", "--seed", "2"),
    )
    pushed = parallel(
        *(lambda n=n: n.manage("sync", "push") for n in (laptop1, laptop2))
    )
    for out in pushed:
        assert "failed 0" in out.stdout, out.stdout

    received, *producers = parallel(
        *(lambda n=n: snapshot(n) for n in (community, laptop1, laptop2))
    )
    proven = prove_delivered(received, producers)
    print(proven)
    assert proven["transactions"] == sum(len(p.outgoing(p.node)) for p in producers)
    # Nothing on the server that no laptop made: the union, no more.
    for label, rows in received.records.items():
        made = set().union(*(p.records.get(label, {}) for p in producers))
        assert set(rows) == made, label
    assert "parked 0 failed 0 conflicts 0" in community.status()

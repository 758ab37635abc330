"""A field day on two laptops reaches the community server as their union."""

from tests.e2e.proof import prove_delivered, snapshot


def test_two_laptops_field_day_arrives_as_their_union(deployment):
    community, (laptop1, laptop2) = deployment.start("laptop-01", "laptop-02")
    laptop1.manage("seed", "--households", "12", "--seed", "1")
    laptop2.manage("seed", "--households", "12", "--seed", "2")

    for laptop in (laptop1, laptop2):
        out = laptop.manage("sync", "push").stdout
        assert "failed 0" in out, out

    received = snapshot(community)
    producers = [snapshot(laptop1), snapshot(laptop2)]
    proven = prove_delivered(received, producers)
    print(proven)
    assert proven["transactions"] == sum(len(p.outgoing(p.node)) for p in producers)
    # Nothing on the server that no laptop made: the union, no more.
    for label, rows in received.records.items():
        made = set().union(*(p.records.get(label, {}) for p in producers))
        assert set(rows) == made, label
    assert "parked 0 failed 0 conflicts 0" in community.status()

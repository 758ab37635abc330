"""Later hops: a middleman collects from a laptop and relays to the community."""

import secrets

from tests.e2e.proof import prove_delivered, snapshot


def test_middleman_pulls_from_laptop_and_relays_to_community(deployment):
    pull_token, relay_token = secrets.token_hex(24), secrets.token_hex(24)
    community = deployment.community()
    laptop = deployment.laptop("laptop-01", upstream=None)
    middleman = deployment.server(
        "middleman-1",
        "middleman",
        PULL_TOKEN=pull_token,
        UPSTREAM_URL=f"http://{community.node_id}:8000",
        UPSTREAM_TOKEN=relay_token,
    )
    # Who may do what: the middleman pulls from the laptop and relays to the
    # community; both know the laptop's key to check its signatures.
    deployment.register(laptop, middleman, token=pull_token)
    deployment.register(community, middleman, "--relay", token=relay_token)
    for server in (middleman, community):
        deployment.register(server, laptop, "--no-token")

    laptop.manage("seed", "--households", "8", "--seed", "12")
    pulled = middleman.manage("sync", "pull", f"http://{laptop.node_id}:8000")
    assert "failed 0" in pulled.stdout, pulled.stdout
    pushed = middleman.manage("sync", "push")
    assert "failed 0" in pushed.stdout, pushed.stdout

    produced = snapshot(laptop)
    prove_delivered(snapshot(middleman), [produced])
    proven = prove_delivered(snapshot(community), [produced])
    assert proven["transactions"] == len(produced.outgoing(laptop.node_id))
    # The laptop learnt how far its changes got, through the middleman.
    status = laptop.status()
    assert f"middleman-1 holds laptop-01 through #{proven['transactions']}" in status

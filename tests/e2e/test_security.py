"""Deliveries a server must refuse: no credential, revoked, forged, tampered."""

import base64
import copy

import requests

from tests.e2e.proof import prove_delivered, snapshot

PUSH = "/api/sync/v1/push/"


def _nothing_stored(community) -> None:
    counts = community.counts()
    assert counts["incoming"] == 0, counts


def test_push_without_or_with_wrong_credentials_is_refused_and_logged(deployment):
    community, (laptop,) = deployment.start("laptop-01")
    laptop.manage("seed", "--households", "2", "--seed", "8")
    envelopes = laptop.probe("outbox")

    bare = requests.post(f"{community.url}{PUSH}", json={}, timeout=10)
    assert bare.status_code in (401, 403), bare.text
    wrong = community.post_push(envelopes, laptop, token="not-the-token")
    assert wrong.status_code == 401, wrong.text
    assert wrong.json()["code"] == "authentication_failed"

    _nothing_stored(community)
    logs = community.logs()
    assert "refused credentials for node 'laptop-01'" in logs
    assert f"Unauthorized: {PUSH}" in logs or f"Forbidden: {PUSH}" in logs


def test_revoked_node_is_refused_and_its_data_stays_in_its_outbox(deployment):
    community, (laptop,) = deployment.start("laptop-01")
    laptop.manage("seed", "--households", "2", "--seed", "9")
    community.manage("sync", "node", "revoke", laptop.node_id)

    push = laptop.manage("sync", "push", check=False)
    assert push.code != 0
    assert "revoked" in push.stderr, push.stderr
    _nothing_stored(community)
    assert f"revoked node {laptop.node_id} tried to connect" in community.logs()
    assert laptop.counts()["outgoing"] > 0


def test_forged_producer_and_tampered_payload_are_refused(deployment):
    community, (laptop1, laptop2) = deployment.start("laptop-01", "laptop-02")
    laptop1.manage("seed", "--households", "3", "--seed", "10")
    envelopes = laptop1.probe("outbox")

    # laptop-02 hands in laptop-01's envelopes as if they were its own to carry.
    forged = community.post_push(envelopes, laptop2)
    assert forged.status_code == 403, forged.text
    assert f"node {laptop2.node_id} tried to deliver envelopes of" in community.logs()

    # An impostor with laptop-01's stolen token but not its key.
    impostor = deployment.laptop("laptop-01", upstream=None)
    impostor.manage("seed", "--households", "1", "--seed", "11")
    stolen = community.post_push(impostor.probe("outbox"), laptop1)
    assert stolen.status_code == 200
    assert stolen.json()["stored"] == 0
    assert {r["code"] for r in stolen.json()["rejected"]} == {"bad_signature"}

    # One envelope altered on the way: refused alone, logged, and the genuine
    # copy fills its place when the laptop pushes.
    tampered = copy.deepcopy(envelopes)
    victim = tampered[len(tampered) // 2]
    sealed = bytearray(base64.b64decode(victim["ciphertext"]))
    sealed[len(sealed) // 2] ^= 0x01
    victim["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    answer = community.post_push(tampered, laptop1).json()
    assert [r["sequence"] for r in answer["rejected"]] == [victim["sequence"]]
    assert answer["acknowledged"] == {laptop1.node_id: victim["sequence"] - 1}
    assert f"rejected laptop-01#{victim['sequence']} delivered by laptop-01" in (
        community.logs()
    )
    out = laptop1.manage("sync", "push").stdout
    assert f"acknowledged through #{len(envelopes)}" in out, out

    received = snapshot(community)
    codes = sorted({r["code"] for r in received.rejected})
    assert codes == ["bad_signature"], received.rejected
    # Only laptop-01's own envelopes are held: none of the impostor's, none
    # carried by laptop-02, not the altered one.
    prove_delivered(received, [snapshot(laptop1)])
    assert received.incoming() == received.incoming(laptop1.node_id)

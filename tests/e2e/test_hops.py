"""Later hops: a middleman collects from a laptop and relays to the community."""

import json
import re
import secrets

from tests.e2e.admin import AdminSession
from tests.e2e.harness import entered, parallel, wait_for
from tests.e2e.proof import prove_delivered, snapshot

PULL_BACKLOG = "5000"
PULL_CHUNK = "200"


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


# -- helpers -------------------------------------------------------------------

SHELL_DRAWN = (
    "import json; from django.utils import timezone; "
    "from study.models import SubjectRequisition as R; "
    "print(json.dumps(sorted([r.specimen_identifier, "
    "timezone.localdate(r.drawn_datetime).isoformat()] "
    "for r in R.objects.filter(is_drawn=True))))"
)
SHELL_LINES = (
    "import json; from reconcile.models import Reconciliation as R; "
    "print(json.dumps([[r.node, r.producer, r.username, r.notes, sorted("
    "[l.outcome, l.specimen_identifier] for l in r.lines.all())] "
    "for r in R.objects.all()]))"
)


def field_hop(deployment, relay=True, direct=False, **middleman_env):
    """Start a community server, a laptop and a middleman between them.

    The community knows the laptop's key, and with ``direct`` its token too,
    so that it may push straight there; the middleman pulls from it and
    relays upstream, registered as a relay or not.
    """
    pull_token, relay_token = secrets.token_hex(24), secrets.token_hex(24)
    assert deployment.field_network.id  # made once, before the threads join it
    community, laptop, middleman = parallel(
        deployment.community,
        lambda: deployment.laptop("laptop-01", upstream=None),
        lambda: deployment.server(
            "middleman-1",
            "middleman",
            PULL_TOKEN=pull_token,
            UPSTREAM_URL="http://community-1:8000",
            UPSTREAM_TOKEN=relay_token,
            **middleman_env,
        ),
    )
    deployment.register(laptop, middleman, token=pull_token)
    extra = ["--relay"] if relay else []
    deployment.register(community, middleman, *extra, token=relay_token)
    deployment.register(middleman, laptop, "--no-token")
    if direct:
        deployment.register(community, laptop)
    else:
        deployment.register(community, laptop, "--no-token")
    return community, laptop, middleman


def shell_json(node, code: str):
    """Run ``code`` in the node's Django shell; return the JSON it printed last."""
    out = node.manage("shell", "-v", "0", "-c", code).stdout
    return json.loads(out.strip().splitlines()[-1])


def relay(middleman, laptop):
    """Pull the laptop's pending transactions and push them upstream."""
    pulled = middleman.manage("sync", "pull", f"http://{laptop.node_id}:8000")
    assert "failed 0" in pulled.stdout, pulled.stdout
    pushed = middleman.manage("sync", "push")
    assert "failed 0" in pushed.stdout, pushed.stdout
    return pushed.stdout


def push_direct(laptop, community):
    """Push from the laptop straight to the community, as one on its network."""
    url = f"http://{community.node_id}:8000"
    env = {"UPSTREAM_URL": url, "UPSTREAM_TOKEN": laptop.token}
    pushed = laptop.manage("sync", "push", env=env)
    assert "failed 0" in pushed.stdout, pushed.stdout
    return pushed.stdout


# -- scenarios -----------------------------------------------------------------


def test_same_data_through_middleman_and_direct_is_applied_once(deployment):
    community, laptop, middleman = field_hop(deployment, direct=True)

    # First the middleman relays a field day, then the laptop pushes it too.
    laptop.manage("seed", "--households", "6", "--seed", "21")
    relay(middleman, laptop)
    push_direct(laptop, community)
    produced = snapshot(laptop)
    first = prove_delivered(snapshot(community), [produced])
    assert first["transactions"] == len(produced.outgoing(laptop.node_id))

    # Then the other way round: the laptop pushes first, the middleman after.
    laptop.manage("seed", "--households", "6", "--seed", "22")
    push_direct(laptop, community)
    relay(middleman, laptop)
    produced = snapshot(laptop)
    total = len(produced.outgoing(laptop.node_id))
    assert total > first["transactions"]
    prove_delivered(snapshot(middleman), [produced])
    proven = prove_delivered(snapshot(community), [produced])
    assert proven["transactions"] == total
    applied = community.counts()["incoming_by_status"]
    assert applied == {f"{laptop.node_id}:applied": total}, applied


def test_pull_cut_mid_way_resumes_and_completes(deployment):
    community, laptop, middleman = field_hop(
        deployment, SYNC_HTTP_TIMEOUT="8", SYNC_RETRY_SECONDS="60"
    )
    total = entered(laptop.manage("seed", "--transactions", PULL_BACKLOG))

    def held() -> int:
        return middleman.counts()["held"].get(laptop.node_id, [0])[0]

    pull = middleman.start_job(
        "sync", "pull", f"http://{laptop.node_id}:8000", "--chunk-size", PULL_CHUNK
    )
    # The laptop logs each chunk it hands over; its log is quicker to read
    # than the middleman's database, so the cut lands early in the pull.
    handed = re.compile(rf"{middleman.node_id} pulled \d+ transactions after #(\d+)")

    def handed_over() -> int:
        return max((int(n) for n in handed.findall(laptop.logs())), default=0)

    wait_for(
        lambda: handed_over() >= 400, "the first chunks to be pulled", interval=0.05
    )
    deployment.disconnect(middleman)
    cut_at = held()
    assert cut_at < total, "the pull ended before the link was cut"
    print(f"the link was cut with #{cut_at} of {total} held")
    wait_for(
        lambda: "upstream call failed" in pull.output(),
        "the middleman to notice the cut and retry",
        timeout=60,
    )
    assert pull.running
    deployment.reconnect(middleman)
    out = pull.wait(timeout=180)

    assert f"now holding through #{total}" in out, out
    assert "failed 0" in out, out
    stored = re.search(r"pulled (\d+) from \S+ \((\d+) new\)", out)
    assert stored, out
    # Resumed, not started over: each transaction stored once, and at most
    # the chunk in flight when the link went down was handed over again.
    assert int(stored.group(2)) == total, out
    assert int(stored.group(1)) <= total + int(PULL_CHUNK), out
    proven = prove_delivered(snapshot(middleman), [snapshot(laptop)])
    assert proven["transactions"] == total
    assert middleman.counts()["incoming_by_status"] == {
        f"{laptop.node_id}:applied": total
    }


def test_middleman_not_registered_as_relay_is_refused(deployment):
    community, laptop, middleman = field_hop(deployment, relay=False)
    laptop.manage("seed", "--households", "4", "--seed", "31")
    pulled = middleman.manage("sync", "pull", f"http://{laptop.node_id}:8000")
    assert "failed 0" in pulled.stdout, pulled.stdout

    pushed = middleman.manage("sync", "push", check=False)

    assert pushed.code != 0, pushed.stdout
    assert "403" in pushed.stderr, pushed.stderr
    assert (
        f"{middleman.node_id} may not relay {laptop.node_id}'s transactions"
        in pushed.stderr
    ), pushed.stderr
    assert "--relay" in pushed.stderr, pushed.stderr
    assert "Traceback" not in pushed.stderr, pushed.stderr
    counts = community.counts()
    assert counts["incoming"] == 0, counts
    assert laptop.node_id not in counts["held"], counts
    stored = snapshot(community)
    assert not stored.incoming(laptop.node_id)
    assert not [v for v in stored.versions.values() if v["producer"] == laptop.node_id]


def test_reconciliation_at_the_middleman_travels_upstream(deployment):
    community, laptop, middleman = field_hop(deployment)
    laptop.manage("seed", "--households", "8", "--seed", "41")
    relay(middleman, laptop)

    # The specimens drawn on one shift (the day the first was drawn).
    found = shell_json(middleman, SHELL_DRAWN)
    assert found, "the field day drew no blood"
    shift = found[0][1]
    drawn = [identifier for identifier, day in found if day == shift]
    assert len(drawn) > 3, found
    missing = drawn[:2]
    unexpected = _valid_label("SPC-LAPTOP02-00007")
    scans = [*drawn[2:], unexpected, "SPC-TYPO"]

    driver = AdminSession.for_new_superuser(middleman, "driver")
    form = driver.page("/reconcile/")
    assert laptop.node_id in form
    saved = driver.session.post(
        f"{middleman.url}/reconcile/",
        data={
            "csrfmiddlewaretoken": driver.session.cookies["csrftoken"],
            "producer": laptop.node_id,
            "shift_date": shift,
            "scans": "\n".join(scans),
            "notes": "cool box 3",
            "save": "Save",
        },
        timeout=30,
    )
    assert saved.status_code == 200, saved.text
    assert re.search(r"/reconcile/REC-MIDDLEMAN1-[^/]+/$", saved.url), saved.url
    assert "goes upstream with the next sync" in saved.text
    for identifier in [*missing, unexpected]:
        assert identifier in saved.text

    out = middleman.manage("sync", "push").stdout
    assert "failed 0" in out, out

    # The middleman's own transactions (the reconciliation) arrived whole and
    # once, beside the laptop's it relayed.
    at_middleman = snapshot(middleman)
    assert at_middleman.outgoing(middleman.node_id)
    at_community = snapshot(community)
    prove_delivered(at_community, [at_middleman, snapshot(laptop)])
    expected = sorted(
        [["matched", i] for i in drawn[2:]]
        + [["missing", i] for i in missing]
        + [["unexpected", unexpected], ["invalid_label", "SPC-TYPO"]]
    )
    there = shell_json(community, SHELL_LINES)
    assert there == [
        [middleman.node_id, laptop.node_id, "driver", "cool box 3", expected]
    ], there


def _valid_label(body: str) -> str:
    """Return ``body`` followed by its right check character."""
    alphabet = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # study.identifiers
    total = sum((i + 1) * alphabet.find(c) for i, c in enumerate(body) if c in alphabet)
    return f"{body}-{alphabet[total % len(alphabet)]}"

"""Push from a laptop to a community server, as live processes on loopback.

The community node runs under gunicorn; the laptop is driven by ``manage.py``
the way a research assistant's laptop is. Each has its own PostgreSQL
database, and what a user would notice is read from those databases.
"""

import base64
import gzip
import html
import json
import re
import signal
import time

import pytest
import requests
import zstandard
from sync.transport.client import IN_FLIGHT

from tests.integration.conftest import (
    COMMUNITY,
    LAPTOP,
    OTHER_LAPTOP,
    PASSWORD,
    USERNAME,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

SUMMARY = re.compile(
    r"sent (?P<sent>\d+), acknowledged through #(?P<through>\d+), "
    r"applied (?P<applied>\d+), parked (?P<parked>\d+), "
    r"conflicts (?P<conflicts>\d+), failed (?P<failed>\d+)"
)


def summary_of(output: str) -> dict[str, int]:
    found = SUMMARY.search(output)
    assert found, f"no push summary in {output!r}"
    return {name: int(value) for name, value in found.groupdict().items()}


def assert_refused(response, status: int, code: str | None = None) -> dict:
    """Check an API refusal: the status, and JSON with a code and a detail."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("code"), str) and body["code"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if code:
        assert body["code"] == code, body
    return body


def assert_nothing_stored(community) -> None:
    assert community.count("sync_incomingtransaction") == 0
    assert community.count("sync_rejectedenvelope") == 0
    assert community.count("study_household") == 0


def table_counts(node) -> dict[str, int]:
    return {table: node.count(table) for table in node.study_tables()}


def outbox(node) -> list[tuple]:
    return node.rows(
        "SELECT id, sequence, signature FROM sync_outgoingtransaction ORDER BY sequence"
    )


def test_pushed_field_day_arrives_exactly_once(community, laptop):
    total = laptop.count("sync_outgoingtransaction")
    assert total > 100, "the field day should make a few hundred transactions"

    pushed = laptop.manage("sync", "push")

    summary = summary_of(pushed.stdout)
    assert summary == {
        "sent": total,
        "through": total,
        "applied": total,
        "parked": 0,
        "conflicts": 0,
        "failed": 0,
    }
    status = laptop.manage("sync", "status").stdout
    assert f"outgoing {total} made here, 0 not yet acknowledged upstream" in status
    assert f"community-1 holds {LAPTOP} through #{total}" in status

    # Every transaction is held once and applied once.
    incoming = community.rows(
        "SELECT id, sequence, status FROM sync_incomingtransaction ORDER BY sequence"
    )
    sent = laptop.rows("SELECT id, sequence FROM sync_outgoingtransaction ORDER BY 2")
    assert [(id_, seq) for id_, seq, _ in incoming] == sent
    assert {status for _, _, status in incoming} == {"applied"}
    assert community.rows(
        "SELECT producer, contiguous, highest, processed_through "
        "FROM sync_producerstate"
    ) == [(LAPTOP, total, total, total)]
    assert community.count("sync_rejectedenvelope") == 0

    # The community holds exactly the laptop's records and their audit trail.
    assert table_counts(community) == table_counts(laptop)
    for table, order in [
        ("study_household", "id"),
        ("study_historicalhousehold", "history_id"),
        ("study_householdmember", "id"),
        ("study_historicalsubjectrequisition", "history_id"),
    ]:
        sql = f"SELECT * FROM {table} ORDER BY {order}"
        assert community.records(sql) == laptop.records(sql), table


def test_interrupted_push_resumes_after_last_acknowledged_chunk(community, laptop):
    total = laptop.count("sync_outgoingtransaction")
    chunk = 10
    held = "SELECT contiguous FROM sync_producerstate WHERE producer = %s"

    push = laptop.start_manage("sync", "push", SYNC_CHUNK_SIZE=chunk)
    deadline = time.monotonic() + 60
    try:
        while not (community.value(held, (LAPTOP,)) or 0):
            assert push.poll() is None, f"push ended early: {push.communicate()}"
            assert time.monotonic() < deadline, "no chunk acknowledged in 60 s"
            time.sleep(0.01)
    finally:
        push.send_signal(signal.SIGKILL)
        push.communicate(timeout=30)
    assert push.returncode == -signal.SIGKILL
    interrupted_at = community.value(held, (LAPTOP,))
    assert 0 < interrupted_at < total, "the push finished before it was interrupted"

    resumed = laptop.manage("sync", "push", SYNC_CHUNK_SIZE=chunk)

    summary = summary_of(resumed.stdout)
    assert summary["through"] == total
    assert summary["sent"] <= total - interrupted_at
    deliveries = community.push_lines(LAPTOP)
    assert sum(stored for stored, _ in deliveries) == total
    assert sum(duplicates for _, duplicates in deliveries) <= IN_FLIGHT * chunk
    assert (
        community.value("SELECT count(DISTINCT sequence) FROM sync_incomingtransaction")
        == community.count("sync_incomingtransaction")
        == total
    )
    assert community.rows(
        "SELECT status, count(*) FROM sync_incomingtransaction GROUP BY status"
    ) == [("applied", total)]
    assert table_counts(community) == table_counts(laptop)


def test_duplicate_chunk_is_acknowledged_not_stored_again(
    community, laptop, deployment
):
    body = {"schema_version": 1, "envelopes": laptop.wire_envelopes(limit=20)}
    credential = deployment.credential(LAPTOP)

    first = community.post(body, credential, encoding="zstd")
    assert first.status_code == 200, first.text
    assert first.json()["stored"] == 20
    before = table_counts(community)

    # Sent again, compressed the older way.
    second = community.post(body, credential, encoding="gzip")

    assert second.status_code == 200, second.text
    answer = second.json()
    assert answer["stored"] == 0
    assert answer["duplicates"] == 20
    assert answer["rejected"] == []
    assert answer["acknowledged"] == {LAPTOP: 20}
    assert community.count("sync_incomingtransaction") == 20
    assert table_counts(community) == before


def test_chunk_that_overtakes_the_one_before_is_applied_with_it(
    start_community, deployment
):
    # A push keeps two chunks on the wire, so the later can be stored first.
    community = start_community(SYNC_CHUNK_SIZE="20")
    envelopes = deployment.laptop().wire_envelopes(limit=40)
    credential = deployment.credential(LAPTOP)

    ahead = community.post(
        {"schema_version": 1, "envelopes": envelopes[20:]}, credential
    ).json()
    behind = community.post(
        {"schema_version": 1, "envelopes": envelopes[:20]}, credential
    ).json()

    assert (ahead["stored"], ahead["acknowledged"]) == (20, {LAPTOP: 0})
    assert sum(ahead["applied"].values()) == 0
    assert (behind["stored"], behind["acknowledged"]) == (20, {LAPTOP: 40})
    assert behind["applied"]["applied"] == 40
    assert community.rows(
        "SELECT status, count(*) FROM sync_incomingtransaction GROUP BY status"
    ) == [("applied", 40)]


@pytest.fixture(scope="module")
def guarded_community(deployment):
    """Return a server taking bodies of at most 32 KiB, and five of laptop-01's
    envelopes; tests using it must leave it empty."""
    server = deployment.server(SYNC_MAX_BODY_BYTES="32768")
    envelopes = deployment.laptop().wire_envelopes(limit=5)
    yield server, envelopes
    deployment.stop(server)


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param(f"{LAPTOP}:not-the-token", id="wrong-token"),
        pytest.param("laptop-99:some-token", id="unknown-node"),
        pytest.param(f"{LAPTOP}", id="no-token"),
        pytest.param(None, id="no-credential"),
    ],
)
def test_bad_credentials_are_refused_with_401(guarded_community, credential):
    server, envelopes = guarded_community

    response = server.post({"schema_version": 1, "envelopes": envelopes}, credential)

    assert_refused(response, 401)
    assert_nothing_stored(server)


def test_wrong_token_is_logged_as_a_security_event(guarded_community):
    server, envelopes = guarded_community
    seen = len(server.log_text())

    server.post({"schema_version": 1, "envelopes": envelopes}, f"{LAPTOP}:wrong")

    assert re.search(
        rf"WARNING sync\.security: refused credentials for node '{LAPTOP}'",
        server.log_text()[seen:],
    )


def test_laptop_cannot_deliver_another_laptops_envelopes(guarded_community, deployment):
    server, envelopes = guarded_community
    seen = len(server.log_text())

    response = server.post(
        {"schema_version": 1, "envelopes": envelopes},
        deployment.credential(OTHER_LAPTOP),
    )

    detail = assert_refused(response, 403, "permission_denied")["detail"]
    assert LAPTOP in detail and "relay" in detail
    assert_nothing_stored(server)
    assert re.search(
        rf"WARNING sync\.security: node {OTHER_LAPTOP} tried to deliver "
        rf"envelopes of {LAPTOP}; refused",
        server.log_text()[seen:],
    )


def _with(envelope: dict, **changes) -> dict:
    return {"schema_version": 1, "envelopes": [dict(envelope, **changes)]}


# case: (body made from one good envelope, compressed how, expected status)
MALFORMED = {
    "invalid-json": (lambda e: b'{"schema_version": 1, "envel', None, 400),
    "not-utf8": (lambda e: b'{"schema_version": 1, "\\xff": []}', None, 400),
    "truncated-gzip": (lambda e: gzip.compress(b'{"a": 1}')[:-12], None, 400),
    "not-an-object": (lambda e: [1, 2, 3], None, 400),
    "no-schema-version": (lambda e: {"envelopes": [e]}, None, 400),
    "schema-version-as-string": (
        lambda e: {"schema_version": "1", "envelopes": [e]},
        None,
        400,
    ),
    "envelopes-not-a-list": (
        lambda e: {"schema_version": 1, "envelopes": {"a": e}},
        None,
        400,
    ),
    "envelope-not-an-object": (
        lambda e: {"schema_version": 1, "envelopes": ["x"]},
        None,
        400,
    ),
    "sequence-as-string": (lambda e: _with(e, sequence="1"), None, 400),
    "sequence-zero": (lambda e: _with(e, sequence=0), None, 400),
    "sequence-past-64-bits": (lambda e: _with(e, sequence=2**63), None, 400),
    "clock-past-64-bits": (lambda e: _with(e, hlc=2**70), None, 400),
    "nested-too-deeply": (
        lambda e: b'{"schema_version": 1, "envelopes": [], "x": ' + b"[" * 10_000,
        None,
        400,
    ),
    "record-id-not-a-uuid": (lambda e: _with(e, record_id="nope"), None, 400),
    "unknown-action": (lambda e: _with(e, action="upsert"), None, 400),
    "model-too-long": (lambda e: _with(e, model="study." + "x" * 200), None, 400),
    "empty-key-id": (lambda e: _with(e, key_id=""), None, 400),
    "signature-not-base64": (lambda e: _with(e, signature="%%%"), None, 400),
    "oversized": (lambda e: _with(e, pad="x" * 40000), None, 413),
    "oversized-once-gunzipped": (lambda e: _with(e, pad="x" * 40000), "gzip", 413),
    "oversized-once-unzstd": (lambda e: _with(e, pad="x" * 40000), "zstd", 413),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_body_is_refused_with_a_message(guarded_community, deployment, case):
    server, envelopes = guarded_community
    make_body, encoding, status = MALFORMED[case]

    response = server.post(
        make_body(envelopes[0]), deployment.credential(LAPTOP), encoding=encoding
    )

    assert_refused(response, status)
    assert_nothing_stored(server)


def _zstd(data: bytes, with_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=with_size).compress(data)


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


# case: (body made from one good envelope, its Content-Encoding, expected status)
NOT_AS_LABELLED = {
    "not-gzip": (lambda e: b"this is not gzip", "gzip", 400),
    "not-zstd": (lambda e: b"this is not zstd", "zstd", 400),
    "truncated-zstd": (lambda e: _zstd(_json(_with(e)))[:-6], "zstd", 400),
    "zstd-of-unknown-size-past-the-limit": (
        lambda e: _zstd(_json(_with(e, pad="x" * 40000)), with_size=False),
        "zstd",
        413,
    ),
    "unknown-encoding": (lambda e: _json(_with(e)), "br", 415),
}


@pytest.mark.parametrize("case", NOT_AS_LABELLED)
def test_body_that_is_not_as_its_encoding_says_is_refused(
    guarded_community, deployment, case
):
    server, envelopes = guarded_community
    make_body, encoding, status = NOT_AS_LABELLED[case]

    response = server.post(
        make_body(envelopes[0]),
        deployment.credential(LAPTOP),
        headers={"Content-Encoding": encoding},
    )

    detail = assert_refused(response, status)["detail"]
    if status == 415:
        assert "send the body as zstd or gzip" in detail
    assert_nothing_stored(server)


def test_a_zstd_body_that_does_not_say_its_size_is_taken(community, laptop, deployment):
    body = {"schema_version": 1, "envelopes": laptop.wire_envelopes(limit=3)}

    response = community.post(
        _zstd(_json(body), with_size=False),
        deployment.credential(LAPTOP),
        headers={"Content-Encoding": "zstd"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["acknowledged"] == {LAPTOP: 3}


def test_revoked_laptop_cannot_push(community, laptop, deployment):
    community.manage("sync", "node", "revoke", LAPTOP)
    body = {"schema_version": 1, "envelopes": laptop.wire_envelopes(limit=5)}

    pushed = laptop.manage("sync", "push", check=False)
    response = community.post(body, deployment.credential(LAPTOP))

    assert pushed.returncode != 0
    assert "HTTP 403" in pushed.stderr
    assert f"Node {LAPTOP} is revoked" in pushed.stderr
    assert re.search(
        rf"WARNING sync\.security: revoked node {LAPTOP} tried to connect",
        community.log_text(),
    )
    assert "Traceback" not in pushed.stderr
    assert "revoked" in assert_refused(response, 403, "permission_denied")["detail"]
    assert_nothing_stored(community)
    assert "not yet acknowledged upstream" in laptop.manage("sync", "status").stdout


def test_schema_too_new_is_refused_and_outbox_kept(community, make_laptop):
    laptop = make_laptop(SYNC_SCHEMA_VERSION=3)
    before = outbox(laptop)

    pushed = laptop.manage("sync", "push", check=False)

    assert pushed.returncode != 0
    assert "HTTP 426" in pushed.stderr
    assert "schema version 1 and talks to versions 0 to 2" in pushed.stderr
    assert f"; {LAPTOP} runs 3" in pushed.stderr
    assert "Traceback" not in pushed.stderr
    assert outbox(laptop) == before
    assert_nothing_stored(community)
    status = laptop.manage("sync", "status").stdout
    assert f"{len(before)} not yet acknowledged upstream" in status


def _cells(page: str) -> dict[str, str]:
    """Return the status page's headed rows: {"Made here": "266", ...}."""
    return {
        html.unescape(head): html.unescape(cell)
        for head, cell in re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", page)
    }


def test_status_page_shows_pending_last_push_and_incoming(
    community, serving_laptop, deployment
):
    laptop = serving_laptop
    total = laptop.count("sync_outgoingtransaction")

    anonymous = requests.get(f"{laptop.url}/sync/", timeout=30, allow_redirects=False)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"].startswith("/admin/login/")
    assert "Sync status" not in anonymous.text

    session = laptop.login(USERNAME, PASSWORD)
    before = _cells(session.get(f"{laptop.url}/sync/", timeout=30).text)
    assert before["Made here"] == str(total)
    assert before["Not yet acknowledged upstream"] == str(total)
    assert before["Last successful push"] == "never"

    pushed = laptop.manage("sync", "push")
    assert summary_of(pushed.stdout)["through"] == total

    after = _cells(session.get(f"{laptop.url}/sync/", timeout=30).text)
    assert after["Not yet acknowledged upstream"] == "0"
    assert after["Last successful push"] != "never"
    status = laptop.manage("sync", "status").stdout
    assert re.search(r"last successful push \d{4}-\d\d-\d\d \d\d:\d\d", status)

    lab = community.login(USERNAME, PASSWORD)
    page = lab.get(f"{community.url}/sync/", timeout=30).text
    assert f"Sync status of {COMMUNITY} (community)" in page
    incoming = (
        f"<tr><td>{LAPTOP}</td><td>#{total}</td><td>#{total}</td><td>0</td>"
        f"<td>{total}</td><td>0</td><td>0</td><td>0</td></tr>"
    )
    assert incoming in page
    assert re.search(
        rf"{LAPTOP} +held #{total} \(highest #{total}, 0 missing\) "
        rf"applied {total} parked 0 failed 0 conflicts 0",
        community.manage("sync", "status").stdout,
    )


def test_openapi_schema_describes_push_held_pull_and_identity(guarded_community):
    from drf_spectacular.validation import validate_schema

    server, _ = guarded_community

    response = requests.get(
        f"{server.url}/api/sync/v1/schema/", params={"format": "json"}, timeout=30
    )

    assert response.status_code == 200, response.text
    schema = response.json()
    validate_schema(schema)
    paths = schema["paths"]
    assert set(paths) >= {
        "/api/sync/v1/push/",
        "/api/sync/v1/held/",
        "/api/sync/v1/pull/",
        "/api/sync/v1/identity/",
    }
    push = paths["/api/sync/v1/push/"]["post"]
    assert {"200", "400", "401", "403", "413", "426"} <= set(push["responses"])
    assert "get" in paths["/api/sync/v1/held/"]
    assert "post" in paths["/api/sync/v1/pull/"]
    assert "get" in paths["/api/sync/v1/identity/"]


def test_tampered_envelope_is_rejected_and_the_real_push_fills_the_gap(
    community, laptop, deployment
):
    envelopes = laptop.wire_envelopes(limit=5)
    ciphertext = bytearray(base64.b64decode(envelopes[2]["ciphertext"]))
    ciphertext[0] ^= 0xFF
    envelopes[2]["ciphertext"] = base64.b64encode(ciphertext).decode()
    seen = len(community.log_text())

    answer = community.post(
        {"schema_version": 1, "envelopes": envelopes}, deployment.credential(LAPTOP)
    )

    assert answer.status_code == 200, answer.text
    receipt = answer.json()
    assert [(r["sequence"], r["code"]) for r in receipt["rejected"]] == [
        (3, "bad_signature")
    ]
    assert receipt["acknowledged"] == {LAPTOP: 2}
    assert community.rows(
        "SELECT producer, sequence, delivered_by FROM sync_rejectedenvelope"
    ) == [(LAPTOP, 3, LAPTOP)]
    assert re.search(
        rf"WARNING sync\.security: rejected {LAPTOP}#3 delivered by {LAPTOP}",
        community.log_text()[seen:],
    )
    # Nothing after the gap is applied until the real #3 arrives.
    assert community.rows(
        "SELECT sequence, status FROM sync_incomingtransaction ORDER BY sequence"
    ) == [(1, "applied"), (2, "applied"), (4, "received"), (5, "received")]

    pushed = summary_of(laptop.manage("sync", "push").stdout)

    total = laptop.count("sync_outgoingtransaction")
    assert pushed["sent"] == total - 2
    assert pushed["through"] == total
    assert community.rows(
        "SELECT status, count(*) FROM sync_incomingtransaction GROUP BY status"
    ) == [("applied", total)]
    assert table_counts(community) == table_counts(laptop)

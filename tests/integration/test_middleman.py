"""A driver's middleman laptop carries a field laptop's data to the community.

Three live processes on loopback, each node with its own PostgreSQL database:
laptop-01 serves the pull API under gunicorn, middleman-1 is driven by
``manage.py sync pull`` and ``sync push``, and the community server runs
under gunicorn. What a user would notice is read from the databases and from
the pages each node serves.
"""

import datetime
import html
import json
import re
import signal
import threading
import time

import pytest

from tests.integration.conftest import (
    COMMUNITY,
    LAPTOP,
    MIDDLEMAN,
    NON_RELAY,
    OTHER_LAPTOP,
    PASSWORD,
    USERNAME,
)
from tests.integration.nodes import Server

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

PULLED = re.compile(
    r"pulled (?P<received>\d+) from (?P<node>\S+) \((?P<stored>\d+) new\), now "
    r"holding through #(?P<through>\d+); applied (?P<applied>\d+), "
    r"parked (?P<parked>\d+), conflicts (?P<conflicts>\d+), failed (?P<failed>\d+)"
)
PUSHED = re.compile(
    r"sent (?P<sent>\d+), acknowledged through #(?P<through>\d+), "
    r"applied (?P<applied>\d+), parked (?P<parked>\d+), "
    r"conflicts (?P<conflicts>\d+), failed (?P<failed>\d+)"
)
HELD = "SELECT contiguous FROM sync_producerstate WHERE producer = %s"


def parsed(pattern: re.Pattern, output: str) -> dict:
    found = pattern.search(output)
    assert found, f"no summary matching {pattern.pattern!r} in {output!r}"
    return {
        name: value if name == "node" else int(value)
        for name, value in found.groupdict().items()
    }


def pull(middleman, laptop, *args: str) -> dict:
    return parsed(PULLED, middleman.manage("sync", "pull", laptop.url, *args).stdout)


def push(node, **env: str) -> dict:
    return parsed(PUSHED, node.manage("sync", "push", **env).stdout)


def reach(session, server) -> list[tuple[str, int, str]]:
    """Return the rows of "How far the changes made here got" on /sync/."""
    page = session.get(f"{server.url}/sync/", timeout=30)
    assert page.status_code == 200, page.text
    rows = re.findall(
        r'<tr class="reach"><td>(#\d+–#\d+)</td><td>(\d+)</td><td>([^<]*)</td></tr>',
        page.text,
    )
    return [(span, int(count), html.unescape(label)) for span, count, label in rows]


def outbox_reached(session, server, sequence: int) -> str:
    """Return the "reached" cell of one change in the admin's outbox list."""
    record_id = server.value(
        "SELECT record_id FROM sync_outgoingtransaction WHERE sequence = %s",
        (sequence,),
    )
    page = session.get(
        f"{server.url}/admin/sync/outgoingtransaction/",
        params={"q": str(record_id)},
        timeout=30,
    )
    assert page.status_code == 200, page.text
    for row in re.findall(r"<tr>.*?</tr>", page.text, re.S):
        if re.search(rf'class="field-sequence">(<a [^>]*>)?{sequence}<', row):
            found = re.search(r'class="field-reached">([^<]*)<', row)
            return html.unescape(found.group(1))
    raise AssertionError(f"#{sequence} is not listed:\n{page.text}")


def assert_applied_once(community, laptop) -> None:
    total = laptop.count("sync_outgoingtransaction")
    assert community.rows(
        "SELECT producer, status, count(*), count(DISTINCT sequence) "
        "FROM sync_incomingtransaction GROUP BY producer, status"
    ) == [(LAPTOP, "applied", total, total)]
    assert community.rows(
        "SELECT contiguous, processed_through FROM sync_producerstate "
        "WHERE producer = %s",
        (LAPTOP,),
    ) == [(total, total)]
    assert community.table_counts() == laptop.table_counts()
    assert community.count("sync_conflict") == 0


@pytest.fixture
def laptop(serving_laptop):
    return serving_laptop


@pytest.fixture(scope="module")
def guarded_laptop(deployment):
    """Return laptop-01 serving the pull API, shared by the tests of refusals;
    they must leave it as they found it."""
    server = deployment.serve(deployment.laptop(kind=Server))
    yield server
    deployment.stop(server)


def test_relayed_field_day_arrives_and_the_laptop_sees_how_far_each_change_got(
    community, laptop, middleman
):
    session = laptop.login(USERNAME, PASSWORD)
    first_day = laptop.count("sync_outgoingtransaction")
    assert reach(session, laptop) == [
        (f"#1–#{first_day}", first_day, "only on this node")
    ]

    picked_up = pull(middleman, laptop)

    assert picked_up == {
        "received": first_day,
        "node": LAPTOP,
        "stored": first_day,
        "through": first_day,
        "applied": first_day,
        "parked": 0,
        "conflicts": 0,
        "failed": 0,
    }
    assert middleman.table_counts() == laptop.table_counts()
    assert reach(session, laptop) == [
        (f"#1–#{first_day}", first_day, f"picked up by {MIDDLEMAN}")
    ]

    pushed = middleman.manage("sync", "push").stdout
    relayed = parsed(PUSHED, pushed)

    assert relayed["sent"] == relayed["applied"] == first_day
    assert f"relayed {LAPTOP} through #{first_day}" in pushed
    assert_applied_once(community, laptop)
    assert community.rows(
        "SELECT DISTINCT delivered_by FROM sync_incomingtransaction"
    ) == [(MIDDLEMAN,)]
    # The laptop hears of the community only through the middleman's next pull.
    assert reach(session, laptop) == [
        (f"#1–#{first_day}", first_day, f"picked up by {MIDDLEMAN}")
    ]

    # A second field day; the middleman picks it up and brings news back.
    laptop.manage("seed", "--households", "2", "--seed", "8")
    second_day = laptop.count("sync_outgoingtransaction")
    assert pull(middleman, laptop)["received"] == second_day - first_day
    # A third day, not picked up yet.
    laptop.manage("seed", "--households", "1", "--seed", "9")
    third_day = laptop.count("sync_outgoingtransaction")

    assert reach(session, laptop) == [
        (
            f"#1–#{first_day}",
            first_day,
            f"acknowledged by {COMMUNITY}; picked up by {MIDDLEMAN}",
        ),
        (f"#{first_day + 1}–#{second_day}", second_day - first_day,
         f"picked up by {MIDDLEMAN}"),
        (f"#{second_day + 1}–#{third_day}", third_day - second_day,
         "only on this node"),
    ]  # fmt: skip
    # Each change's own row in the outbox says how far it got.
    for sequence, reached in [
        (1, f"{COMMUNITY}, {MIDDLEMAN}"),
        (second_day, MIDDLEMAN),
        (third_day, "only on this node"),
    ]:
        assert outbox_reached(session, laptop, sequence) == reached
    status = laptop.manage("sync", "status").stdout
    assert f"{COMMUNITY} holds {LAPTOP} through #{first_day}" in status
    assert f"{MIDDLEMAN} holds {LAPTOP} through #{second_day}" in status


def _post_first(community, laptop, deployment, count: int) -> None:
    """Deliver the laptop's first ``count`` changes straight to the community."""
    body = {"schema_version": 1, "envelopes": laptop.wire_envelopes(limit=count)}
    answer = community.post(body, deployment.credential(LAPTOP), encoding="gzip")
    assert answer.status_code == 200, answer.text


def _at_once(*jobs):
    """Run ``jobs`` in threads at the same moment; return their results."""
    results = [None] * len(jobs)
    errors = []

    def run(index, job):
        try:
            results[index] = job()
        except BaseException as exc:  # noqa: BLE001 (re-raised below)
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(index, job))
        for index, job in enumerate(jobs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize(
    "order", ["middleman-first", "laptop-partly-first", "together"]
)
def test_data_pushed_directly_and_relayed_is_applied_once(
    community, laptop, middleman, deployment, order
):
    total = laptop.count("sync_outgoingtransaction")
    pull(middleman, laptop)

    if order == "middleman-first":
        assert push(middleman)["sent"] == total
        assert push(laptop) == {
            "sent": 0,
            "through": total,
            "applied": 0,
            "parked": 0,
            "conflicts": 0,
            "failed": 0,
        }
        delivered = {MIDDLEMAN: total}
    elif order == "laptop-partly-first":
        # As if the laptop's own push had been cut off after 40 changes.
        _post_first(community, laptop, deployment, 40)
        assert push(middleman)["sent"] == total - 40
        assert push(laptop)["sent"] == 0
        delivered = {LAPTOP: 40, MIDDLEMAN: total - 40}
    else:
        by_laptop, by_middleman = _at_once(
            lambda: push(laptop, SYNC_CHUNK_SIZE="25"),
            lambda: push(middleman, SYNC_CHUNK_SIZE="25"),
        )
        assert by_laptop["through"] == total
        assert by_laptop["sent"] + by_middleman["sent"] >= total
        delivered = None

    assert_applied_once(community, laptop)
    if delivered is not None:
        assert (
            dict(
                community.rows(
                    "SELECT delivered_by, count(*) FROM sync_incomingtransaction "
                    "GROUP BY delivered_by"
                )
            )
            == delivered
        )
    assert (
        f"{COMMUNITY} holds {LAPTOP} through #{total}"
        in laptop.manage("sync", "status").stdout
    )


def test_interrupted_pull_resumes_after_what_the_middleman_holds(laptop, middleman):
    total = laptop.count("sync_outgoingtransaction")
    chunk = 10

    pulling = middleman.start_manage(
        "sync", "pull", laptop.url, "--chunk-size", str(chunk)
    )
    deadline = time.monotonic() + 60
    try:
        while not (middleman.value(HELD, (LAPTOP,)) or 0):
            assert pulling.poll() is None, f"pull ended early: {pulling.communicate()}"
            assert time.monotonic() < deadline, "no chunk stored in 60 s"
            time.sleep(0.01)
    finally:
        pulling.send_signal(signal.SIGKILL)
        pulling.communicate(timeout=30)
    interrupted_at = middleman.value(HELD, (LAPTOP,))
    assert 0 < interrupted_at < total, "the pull finished before it was interrupted"

    resumed = pull(middleman, laptop, "--chunk-size", str(chunk))

    assert resumed["through"] == total
    assert resumed["received"] == resumed["stored"] == total - interrupted_at
    # The laptop handed out each change once, but for the chunk in flight
    # when the pull was cut off.
    pulls = laptop.pull_lines(MIDDLEMAN)
    assert sum(count for count, _ in pulls) <= total + chunk
    assert middleman.rows(
        "SELECT status, count(*) FROM sync_incomingtransaction GROUP BY status"
    ) == [("applied", total)]
    assert middleman.table_counts() == laptop.table_counts()
    assert (
        laptop.value(
            "SELECT through_sequence FROM sync_acknowledgement "
            "WHERE holder = %s AND producer = %s",
            (MIDDLEMAN, LAPTOP),
        )
        == total
    )


def test_middleman_not_registered_as_relay_is_refused_by_community(
    community, laptop, deployment
):
    outsider = deployment.middleman(NON_RELAY, UPSTREAM_URL=community.url)
    total = laptop.count("sync_outgoingtransaction")
    assert pull(outsider, laptop)["stored"] == total
    seen = len(community.log_text())

    pushed = outsider.manage("sync", "push", check=False)

    assert pushed.returncode != 0
    assert "HTTP 403" in pushed.stderr
    assert f"{NON_RELAY} may not relay {LAPTOP}'s transactions" in pushed.stderr
    assert "--relay" in pushed.stderr
    assert "Traceback" not in pushed.stderr
    assert community.count("sync_incomingtransaction") == 0
    assert community.count("study_household") == 0
    assert re.search(
        rf"WARNING sync\.security: node {NON_RELAY} asked how far {LAPTOP} is held",
        community.log_text()[seen:],
    )
    # The laptop is not told anything the community does not hold.
    assert laptop.rows(
        "SELECT holder, through_sequence FROM sync_acknowledgement ORDER BY holder"
    ) == [(NON_RELAY, total)]


@pytest.mark.parametrize(
    "who, status",
    [
        pytest.param(OTHER_LAPTOP, 403, id="a-registered-client"),
        pytest.param(f"{MIDDLEMAN}:not-the-token", 401, id="wrong-token"),
        pytest.param("middleman-9:some-token", 401, id="unknown-node"),
        pytest.param(None, 401, id="no-credential"),
    ],
)
def test_laptop_hands_its_data_only_to_registered_middlemen(
    guarded_laptop, deployment, who, status
):
    laptop = guarded_laptop
    credential = deployment.credential(who) if who in deployment.tokens else who
    body = {"schema_version": 1, "after": 0, "limit": 10, "acknowledgements": []}

    response = laptop.api("POST", "pull/", credential, json=body)

    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["code"] and answer["detail"]
    assert "envelopes" not in answer
    assert laptop.count("sync_acknowledgement") == 0


def test_middleman_with_a_wrong_pull_token_is_told_why(laptop, deployment):
    middleman = deployment.middleman(PULL_TOKEN="not-the-token")

    pulled = middleman.manage("sync", "pull", laptop.url, check=False)

    assert pulled.returncode != 0
    assert "HTTP 401" in pulled.stderr
    assert "Traceback" not in pulled.stderr
    assert middleman.count("sync_incomingtransaction") == 0


def test_reconciliation_at_the_middleman_travels_upstream(
    community, laptop, deployment
):
    middleman = deployment.serve(
        deployment.middleman(kind=Server, UPSTREAM_URL=community.url)
    )
    try:
        pull(middleman, laptop)
        drawn = [
            identifier
            for (identifier,) in middleman.rows(
                "SELECT specimen_identifier FROM study_subjectrequisition "
                "WHERE is_drawn ORDER BY specimen_identifier"
            )
        ]
        assert len(drawn) > 5
        missing = drawn[:2]
        unexpected = _valid_label("SPC-LAPTOP02-00007")
        scans = drawn[2:] + [unexpected, "SPC-TYPO"]
        driver = middleman.login(USERNAME, PASSWORD)
        form = driver.get(f"{middleman.url}/reconcile/", timeout=30)
        assert LAPTOP in form.text

        saved = driver.post(
            f"{middleman.url}/reconcile/",
            data={
                "csrfmiddlewaretoken": driver.cookies["csrftoken"],
                "producer": LAPTOP,
                "shift_date": datetime.datetime.now(datetime.UTC).date().isoformat(),
                "scans": "\n".join(scans),
                "notes": "cool box 3",
                "save": "Save",
            },
            timeout=30,
        )

        assert saved.status_code == 200, saved.text
        assert re.search(r"/reconcile/REC-MIDDLEMAN1-\d+-\w/$", saved.url), saved.url
        assert "goes upstream with the next sync" in saved.text
        for identifier in missing + [unexpected]:
            assert identifier in saved.text

        relayed = push(middleman)

        assert relayed["failed"] == relayed["conflicts"] == 0
        assert community.rows(
            "SELECT node, producer, username, notes FROM reconcile_reconciliation"
        ) == [(MIDDLEMAN, LAPTOP, USERNAME, "cool box 3")]
        lines = community.rows(
            "SELECT l.specimen_identifier, l.outcome, r.specimen_identifier "
            "FROM reconcile_reconciliationline l "
            "LEFT JOIN study_subjectrequisition r ON r.id = l.requisition_id "
            "ORDER BY l.outcome, l.specimen_identifier"
        )
        by_outcome = {}
        for identifier, outcome, requisition in lines:
            by_outcome.setdefault(outcome, []).append(identifier)
            if outcome in ("matched", "missing"):
                assert requisition == identifier
        assert by_outcome == {
            "matched": drawn[2:],
            "missing": missing,
            "unexpected": [unexpected],
            "invalid_label": ["SPC-TYPO"],
        }
        assert community.rows(
            "SELECT DISTINCT status FROM sync_incomingtransaction"
        ) == [("applied",)]
        # The lab sees the same outcome on the community server.
        lab = community.login(USERNAME, PASSWORD)
        page = lab.get(saved.url.replace(middleman.url, community.url), timeout=30)
        assert page.status_code == 200
        for identifier in missing + [unexpected]:
            assert identifier in page.text
    finally:
        deployment.stop(middleman)


def _valid_label(body: str) -> str:
    """Return ``body`` with its check character replaced by the right one."""
    from study.identifiers import check_character

    body = body.rpartition("-")[0] if body.count("-") > 2 else body
    return f"{body}-{check_character(body)}"


def test_pickup_by_the_middleman_is_not_reported_as_a_push(laptop, middleman):
    total = laptop.count("sync_outgoingtransaction")

    pull(middleman, laptop)

    status = laptop.manage("sync", "status").stdout
    assert f"{MIDDLEMAN} holds {LAPTOP} through #{total}" in status
    # The laptop never pushed and the community holds none of it.
    assert f"{total} not yet acknowledged upstream" in status
    assert "last successful push" not in status


def test_laptop_refuses_a_revoked_middleman(laptop, middleman):
    laptop.manage("sync", "node", "revoke", MIDDLEMAN)

    pulled = middleman.manage("sync", "pull", laptop.url, check=False)

    assert pulled.returncode != 0
    assert "HTTP 403" in pulled.stderr
    assert f"Node {MIDDLEMAN} is revoked" in pulled.stderr
    assert "Traceback" not in pulled.stderr
    assert middleman.count("sync_incomingtransaction") == 0
    assert re.search(
        rf"WARNING sync\.security: revoked node {MIDDLEMAN} tried to connect",
        laptop.log_text(),
    )


def test_pull_across_schema_versions_too_far_apart_is_refused(laptop, deployment):
    middleman = deployment.middleman(SYNC_SCHEMA_VERSION="3")

    pulled = middleman.manage("sync", "pull", laptop.url, check=False)

    assert pulled.returncode != 0
    assert "HTTP 426" in pulled.stderr
    assert f"talks to versions 0 to 2; {MIDDLEMAN} runs 3" in pulled.stderr
    assert "Traceback" not in pulled.stderr
    assert middleman.count("sync_incomingtransaction") == 0
    assert laptop.count("sync_acknowledgement") == 0


PULL = {"schema_version": 1, "after": 0, "limit": 10, "acknowledgements": []}
MALFORMED_PULLS = {
    "invalid-json": b'{"schema_version": 1, "aft',
    "not-an-object": [PULL],
    "no-schema-version": {**PULL, "schema_version": None},
    "after-negative": {**PULL, "after": -1},
    "after-as-string": {**PULL, "after": "0"},
    "limit-as-bool": {**PULL, "limit": True},
    "after-past-64-bits": {**PULL, "after": 2**63},
    "nested-too-deeply": b'{"schema_version": 1, "after": ' + b"[" * 10_000,
    "acknowledgement-past-64-bits": {
        **PULL,
        "after": 5,
        "acknowledgements": [{"holder": "x", "producer": LAPTOP, "through": 2**64}],
    },
    "acknowledgements-not-a-list": {**PULL, "after": 5, "acknowledgements": "x"},
    "acknowledgement-without-holder": {
        **PULL,
        "after": 5,
        "acknowledgements": [{"producer": LAPTOP, "through": 5}],
    },
}


@pytest.mark.parametrize("case", MALFORMED_PULLS)
def test_malformed_pull_is_refused_and_records_nothing(
    guarded_laptop, deployment, case
):
    laptop = guarded_laptop
    body = MALFORMED_PULLS[case]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    response = laptop.api(
        "POST",
        "pull/",
        deployment.credential(MIDDLEMAN),
        data=data,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400, response.text
    assert response.json()["code"] and response.json()["detail"]
    assert laptop.count("sync_acknowledgement") == 0


def test_middleman_cannot_vouch_for_itself_or_the_laptop(laptop, deployment):
    body = {
        **PULL,
        "after": 3,
        "acknowledgements": [
            {"holder": MIDDLEMAN, "producer": LAPTOP, "through": 999},
            {"holder": LAPTOP, "producer": LAPTOP, "through": 999},
            {"holder": COMMUNITY, "producer": LAPTOP, "through": 2},
        ],
    }

    response = laptop.api("POST", "pull/", deployment.credential(MIDDLEMAN), json=body)

    assert response.status_code == 200, response.text
    assert [e["sequence"] for e in response.json()["envelopes"]] == list(range(4, 14))
    assert laptop.rows(
        "SELECT holder, through_sequence FROM sync_acknowledgement ORDER BY holder"
    ) == [(COMMUNITY, 2), (MIDDLEMAN, 3)]

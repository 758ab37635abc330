"""The same record changed in two places, and laptops whose clocks are wrong."""

from tests.e2e.admin import AdminSession
from tests.e2e.harness import parallel
from tests.e2e.proof import prove_delivered, snapshot

EDIT = """
from study.models import Household
household = Household.objects.get(pk="{pk}")
household.comment = "{comment}"
household.save()
"""
DAYS = 24 * 3600


def _edit_on_laptop(laptop, pk: str, comment: str) -> None:
    laptop.manage("shell", "-c", EDIT.format(pk=pk, comment=comment))


def _version(node_snapshot, pk):
    return node_snapshot.versions[("study.household", pk)]


def test_record_edited_on_community_and_laptop_keeps_the_conflict(deployment):
    community, (laptop,) = deployment.start("laptop-01")
    laptop.manage("seed", "--households", "3", "--seed", "5")
    laptop.manage("sync", "push")
    pk = next(iter(snapshot(laptop).records["study.household"]))

    # A data manager corrects the household at the office; meanwhile the
    # assistant corrects it in the field, without having seen that change.
    admin = AdminSession.for_new_superuser(community)
    admin.change("study/household", pk, comment="office: GPS checked")
    _edit_on_laptop(laptop, pk, "field: gate moved")
    laptop.manage("sync", "push")

    received, produced = snapshot(community), snapshot(laptop)
    office = next(
        row for row in received.outgoing(community.node_id)
        if row["record_id"] == pk and row["action"] == "update"
    )  # fmt: skip
    field = [
        row for row in produced.outgoing(laptop.node_id)
        if row["record_id"] == pk and row["action"] == "update"
    ][-1]  # fmt: skip
    winner, loser = sorted(
        [office, field], key=lambda tx: (tx["hlc"], tx["producer"]), reverse=True
    )

    # Exactly one conflict, the newer by (clock, node) won, the loser is kept.
    conflicts = [c for c in received.conflicts if c["record_id"] == pk]
    assert len(conflicts) == 1, conflicts
    conflict = conflicts[0]
    assert (conflict["winner_tx"], conflict["loser_tx"]) == (winner["id"], loser["id"])
    comments = {office["id"]: "office: GPS checked", field["id"]: "field: gate moved"}
    assert conflict["loser_payload"]["fields"]["comment"] == comments[loser["id"]]
    current = received.records["study.household"][pk]["comment"]
    assert current == comments[winner["id"]]
    assert _version(received, pk)["tx"] == winner["id"]

    # Visible to a person: the problems list and the admin's conflict page.
    assert conflict_id(community, pk)
    assert pk in admin.page("/admin/sync/conflict/")
    # Everything else from the laptop arrived whole and once.
    losers = {field["id"]} if loser is field else set()
    superseded = {("study.household", pk)} if winner is office else set()
    prove_delivered(received, [produced], superseded=superseded, losers=losers)


def conflict_id(node, pk: str) -> str:
    for line in node.problems().splitlines():
        if line.startswith("conflict ") and pk in line:
            return line.split()[1]
    raise AssertionError(f"no conflict on {pk} in sync problems")


def test_clock_skew_neither_hides_nor_reorders_changes(deployment):
    community, (behind, ahead) = deployment.start(
        "laptop-01",
        "laptop-02",
        each={
            "laptop-01": {"SYNC_CLOCK_SKEW_SECONDS": str(-3 * DAYS)},
            "laptop-02": {"SYNC_CLOCK_SKEW_SECONDS": str(3 * DAYS)},
        },
    )

    def field_day(laptop):
        laptop.manage("seed", "--households", "3", "--seed", "6")
        laptop.manage("sync", "push")
        return snapshot(laptop)

    produced = dict(
        zip(
            ("laptop-01", "laptop-02"),
            parallel(lambda: field_day(behind), lambda: field_day(ahead)),
            strict=True,
        )
    )
    stamps = {k: [r["hlc"] >> 16 for r in s.outgoing(k)] for k, s in produced.items()}
    assert max(stamps["laptop-01"]) < min(stamps["laptop-02"]) - 5 * DAYS * 1000, (
        "the skew hook SYNC_CLOCK_SKEW_SECONDS did not take effect"
    )

    # Both laptops' data arrives whole, whatever their clocks say.
    prove_delivered(snapshot(community), list(produced.values()))

    # An office edit made after the future-dated record arrived sorts after
    # it: the server's clock moved past what it received.
    admin = AdminSession.for_new_superuser(community)
    from_ahead = next(iter(produced["laptop-02"].records["study.household"]))
    admin.change("study/household", from_ahead, comment="office: after the future")
    received = snapshot(community)
    assert _version(received, from_ahead)["producer"] == community.node_id
    assert _version(received, from_ahead)["hlc"] > max(
        r["hlc"] for r in produced["laptop-02"].outgoing("laptop-02")
    )

    # The laptop days behind edits a record the office changed too: its
    # change loses to the office's by clock, and is kept, not hidden.
    from_behind = next(iter(produced["laptop-01"].records["study.household"]))
    admin.change("study/household", from_behind, comment="office: checked")
    _edit_on_laptop(behind, from_behind, "field: late but real")
    behind.manage("sync", "push")
    received = snapshot(community)
    lost = [c for c in received.conflicts if c["record_id"] == from_behind]
    assert len(lost) == 1 and lost[0]["loser_producer"] == "laptop-01", lost
    assert lost[0]["loser_payload"]["fields"]["comment"] == "field: late but real"

    # A person can make the late change win; it then travels as a new change.
    community.manage("sync", "reapply-conflict", conflict_id(community, from_behind))
    received = snapshot(community)
    assert received.records["study.household"][from_behind]["comment"] == (
        "field: late but real"
    )

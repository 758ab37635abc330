"""Provides the proof that what field nodes produced arrived whole, and once.

``prove_delivered(receiver, producers)`` checks, for every producer:

* the receiver's transaction log holds each of the producer's outgoing
  transactions exactly once (same id, same sequence, nothing else from it),
  applied (or kept as a conflict where the scenario expects one);
* every record whose current version on the producer was made there has
  exactly one current version on the receiver, made by the same
  transaction, with equal field values;
* every history row written on the producer is on the receiver, equal.

Snapshots come from ``probe.py snapshot`` (canonical values, or their digests).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

APPLIED = "applied"
CONFLICT = "conflict"


@dataclass
class Snapshot:
    node: str
    data: dict

    @property
    def records(self) -> dict[str, dict[str, str]]:
        return self.data["records"]

    @property
    def append_only(self) -> set[str]:
        return set(self.data["append_only"])

    @property
    def versions(self) -> dict[tuple[str, str], dict]:
        return {
            (model, record): {"tx": tx, "hlc": hlc, "producer": by, "deleted": gone}
            for model, record, tx, hlc, by, gone in self.data["versions"]
        }

    def outgoing(self, producer: str | None = None) -> list[dict]:
        keys = ("id", "producer", "sequence", "model", "record_id", "action", "hlc")
        rows = [dict(zip(keys, row, strict=True)) for row in self.data["outgoing"]]
        return [r for r in rows if producer is None or r["producer"] == producer]

    def incoming(self, producer: str | None = None) -> list[dict]:
        keys = (
            "id", "producer", "sequence", "model", "record_id", "action", "hlc",
            "status", "delivered_by", "applied_at",
        )  # fmt: skip
        rows = [dict(zip(keys, row, strict=True)) for row in self.data["incoming"]]
        return [r for r in rows if producer is None or r["producer"] == producer]

    @property
    def conflicts(self) -> list[dict]:
        return self.data["conflicts"]

    @property
    def rejected(self) -> list[dict]:
        return self.data["rejected"]


def snapshot(node, full: bool = True) -> Snapshot:
    """Return what ``node`` holds; field values in full, or digests (cheaper)."""
    return Snapshot(node.node_id, node.snapshot(full=full))


def prove_delivered(
    receiver: Snapshot,
    producers: list[Snapshot],
    superseded: set[tuple[str, str]] = frozenset(),
    losers: set[str] = frozenset(),
) -> dict:
    """Assert each producer's data is on ``receiver`` whole and once.

    ``superseded`` names records (model, id) whose current version on the
    receiver is legitimately another node's (a conflict it won); ``losers``
    names transaction ids expected to be kept as conflicts, not applied.
    Return counts of what was proven, for the scenario's report.
    """
    problems: list[str] = []
    proven = Counter()
    receiver_versions = receiver.versions
    for producer in producers:
        me = producer.node
        out = producer.outgoing(me)
        got = receiver.incoming(me)

        # The transaction log: each outgoing transaction exactly once.
        sequences = [row["sequence"] for row in got]
        duplicates = [s for s, n in Counter(sequences).items() if n > 1]
        if duplicates:
            problems.append(f"{me}: sequences held twice: {duplicates[:10]}")
        sent = {row["id"]: row for row in out}
        held = {row["id"]: row for row in got}
        missing = sorted(sent.keys() - held.keys(), key=lambda i: sent[i]["sequence"])
        if missing:
            first = [sent[i]["sequence"] for i in missing[:10]]
            problems.append(
                f"{me}: {len(missing)} of {len(sent)} transactions never reached "
                f"{receiver.node} (sequences {first}...)"
            )
        foreign = held.keys() - sent.keys()
        if foreign:
            problems.append(
                f"{receiver.node} holds {len(foreign)} transactions of {me} that "
                "it never made"
            )
        for tx_id, row in held.items():
            if tx_id not in sent:
                continue
            if row["sequence"] != sent[tx_id]["sequence"]:
                problems.append(f"{me}: tx {tx_id} moved to #{row['sequence']}")
            expected = CONFLICT if tx_id in losers else APPLIED
            if row["status"] != expected:
                problems.append(
                    f"{me}#{row['sequence']} ({row['model']}) is {row['status']} on "
                    f"{receiver.node}, expected {expected}"
                )
            elif expected == APPLIED and not row["applied_at"]:
                problems.append(f"{me}#{row['sequence']} applied without a time")
        proven["transactions"] += len(sent)

        # Current versions: one per record, the producer's, with equal values.
        for (model, record), version in producer.versions.items():
            if version["producer"] != me or (model, record) in superseded:
                continue
            theirs = receiver_versions.get((model, record))
            if theirs is None:
                problems.append(f"{model} {record} of {me}: no version on receiver")
                continue
            if theirs["tx"] != version["tx"]:
                problems.append(
                    f"{model} {record}: {me} holds version {version['tx']}, "
                    f"{receiver.node} holds {theirs['tx']} of {theirs['producer']}"
                )
                continue
            mine = producer.records.get(model, {}).get(record)
            there = receiver.records.get(model, {}).get(record)
            if version["deleted"]:
                if there is not None:
                    problems.append(f"{model} {record}: deleted on {me}, not there")
            elif mine != there:
                problems.append(
                    f"{model} {record}: values differ ({me} {mine}, "
                    f"{receiver.node} {there})"
                )
            proven["records"] += 1

        # History: every row written on the producer, equal, once (by key).
        made_here = {row["record_id"] for row in out}
        for label in producer.append_only:
            rows = producer.records.get(label, {})
            there = receiver.records.get(label, {})
            for pk, digest in rows.items():
                if pk not in made_here:
                    continue  # a history row that came from elsewhere
                if there.get(pk) != digest:
                    problems.append(
                        f"{label} {pk} of {me}: "
                        f"{'missing' if pk not in there else 'differs'} on "
                        f"{receiver.node}"
                    )
                proven["history rows"] += 1

    assert not problems, (
        f"{len(problems)} problems proving delivery to {receiver.node}:\n  "
        + "\n  ".join(problems[:40])
    )
    return dict(proven)


def prove_outbox_matches_records(laptop: Snapshot) -> dict:
    """Assert no record without an outgoing transaction, and none the other way.

    Every record on the node has a current version made by a transaction in
    its outbox (or received), and every outgoing insert or update names a
    record that exists unless a later transaction deleted it.
    """
    problems = []
    out = laptop.outgoing(laptop.node)
    out_ids = {row["id"] for row in out}
    versions = laptop.versions
    known = out_ids | {row["id"] for row in laptop.incoming()}
    for label, rows in laptop.records.items():
        for pk in rows:
            if label in laptop.append_only:
                if pk not in {row["record_id"] for row in out if row["model"] == label}:
                    problems.append(f"history {label} {pk} has no outgoing insert")
                continue
            version = versions.get((label, pk))
            if version is None:
                problems.append(f"{label} {pk} exists with no version")
            elif version["tx"] not in known:
                problems.append(f"{label} {pk}: version {version['tx']} is in no log")
    last = {}
    for row in out:
        last[(row["model"], row["record_id"])] = row
    for (label, pk), row in last.items():
        present = pk in laptop.records.get(label, {})
        if row["action"] == "delete" and present:
            problems.append(f"{label} {pk} deleted in the outbox, still present")
        if row["action"] != "delete" and not present:
            problems.append(f"{label} {pk} in the outbox (#{row['sequence']}), absent")
    sequences = [row["sequence"] for row in out]
    if sequences != list(range(1, len(sequences) + 1)):
        problems.append("the outbox's sequence has gaps or repeats")
    heading = f"{laptop.node}: outbox and records disagree"
    assert not problems, "\n  ".join([heading, *problems[:40]])
    records = sum(len(rows) for rows in laptop.records.values())
    return {"records": records, "outgoing": len(out)}

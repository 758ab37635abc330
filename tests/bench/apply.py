"""Benchmark: what a server spends on receiving and applying, without HTTP.

A field laptop (a real ``seed`` run on its own database) makes N outgoing
transactions; this process then plays the community server on another
database and feeds them through ``receive`` and ``apply_pending`` one chunk
at a time, as the push endpoint does. Wall and CPU time are printed for
each phase, so a change to the engine can be judged on a busy machine by
its CPU seconds.

    python -m tests.bench.apply 10000 [--chunk 1000] [--profile out.prof]
"""

import argparse
import cProfile
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
from psycopg.rows import dict_row

from tests.integration.nodes import ROOT, Node
from tests.pgcluster import start_cluster

COLUMNS = (
    "id producer sequence model record_id action hlc base_version schema_version "
    "key_id nonce ciphertext signature prev_digest"
).split()


class Phases:
    """Wall and CPU seconds spent per named phase."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def timed(self, name, call, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = call(*args, **kwargs)
        self.wall[name] = self.wall.get(name, 0) + time.perf_counter() - wall
        self.cpu[name] = self.cpu.get(name, 0) + time.process_time() - cpu
        return result


def produce(directory: Path, cluster, transactions: int) -> tuple[Node, list]:
    """Seed a laptop; return it and its outgoing rows in sequence order."""
    data_keys = directory / "data-keys"
    laptop = Node(
        "laptop-01", "client", cluster.url("laptop"), directory / "laptop",
        directory / "laptop" / "signing.pem", data_keys,
    )  # fmt: skip
    laptop.manage("sync", "keygen", "--data-key")
    laptop.manage("migrate", "-v0", timeout=300)
    laptop.manage("seed", "--transactions", str(transactions), timeout=3600)
    with psycopg.connect(cluster.url("laptop"), row_factory=dict_row) as db:
        rows = db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM sync_outgoingtransaction "
            "ORDER BY sequence"
        ).fetchall()
    return laptop, [SimpleNamespace(**row) for row in rows]


def serve_in_process(directory: Path, cluster, laptop: Node) -> None:
    """Make this process the community server, with the laptop registered."""
    community = Node(
        "community-1", "community", cluster.url("community"),
        directory / "community", directory / "community" / "signing.pem",
        laptop.data_keys,
        {"DEBUG": "0", "SECRET_KEY": "bench-only-secret-key-not-for-use"},
    )  # fmt: skip
    community.keygen()
    community.manage("migrate", "-v0", timeout=300)
    community.manage(
        "sync", "node", "add", laptop.node_id, "--role", "client",
        "--public-key", laptop.keygen(), "--token", "bench-token",
    )  # fmt: skip
    os.environ.update(community.environment())
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT / "apps"))
    import django

    django.setup()


def run(transactions: int, chunk: int, profile: str | None) -> None:
    directory = Path(tempfile.mkdtemp(prefix="collect-bench-"))
    cluster = start_cluster(["laptop", "community"], durable=True)
    try:
        laptop, rows = produce(directory, cluster, transactions)
        serve_in_process(directory, cluster, laptop)
        from sync.apply import apply_pending
        from sync.envelope import Envelope
        from sync.receive import receive

        phases = Phases()
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        for start in range(0, len(rows), chunk):
            batch = [Envelope.from_row(row) for row in rows[start : start + chunk]]
            receipt = phases.timed("receive", receive, batch, laptop.node_id)
            assert not receipt.rejected, receipt.rejected[:3]
            phases.timed("apply", apply_pending, max_chunks=1)
        phases.timed("apply", apply_pending)
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        from sync.models import IncomingTransaction

        applied = IncomingTransaction.objects.filter(status="applied").count()
        total_wall = sum(phases.wall.values())
        print(f"{len(rows)} transactions, {applied} applied, chunk {chunk}")
        for name in phases.wall:
            print(
                f"  {name:8} {phases.wall[name]:7.2f} s wall "
                f"{phases.cpu[name]:7.2f} s cpu "
                f"{len(rows) / phases.cpu[name]:8.0f} tx per cpu-second"
            )
        print(f"  total    {total_wall:7.2f} s wall {len(rows) / total_wall:8.0f} tx/s")
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transactions", type=int, nargs="?", default=10_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--profile", help="write cProfile stats to this file")
    options = parser.parse_args(argv)
    run(options.transactions, options.chunk, options.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())

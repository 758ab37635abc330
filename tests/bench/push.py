"""Benchmark: a field laptop pushes N transactions to a community server.

Both nodes run as real processes on PostgreSQL (a throwaway local cluster,
durable, with the deployed database's settings from compose/postgres.yml):
the laptop's ``sync push`` against gunicorn with two workers on 127.0.0.1.
Seeding is not timed, and the laptop's database is settled after it (see
``settle``). Prints transactions applied per second end to end, the peak
resident memory of the pushing process and of each server process, and how
busy the machine's cores were meanwhile (well under 100% means the push
waits on one step at a time rather than on the processor).

    python -m tests.bench.push 10000 100000
"""

import argparse
import compileall
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg

from tests.integration.nodes import ROOT, Node, Server
from tests.pgcluster import start_cluster

TOKEN = "bench-token"
# As deployed: DEBUG off (Django then keeps no log of every query).
PRODUCTION = {"DEBUG": "0", "SECRET_KEY": "bench-only-secret-key-not-for-use"}


def cpu_times() -> tuple[float, float]:
    """Return the machine's (busy, total) CPU seconds since boot, all cores."""
    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - getattr(times, "iowait", 0), total


def settle(database_url: str) -> None:
    """Bring a freshly seeded database to where days of use would leave it.

    A laptop's backlog builds up over days, and autovacuum has analysed and
    tidied its tables long before the push. The seed writes it in seconds:
    unsettled, the push would share the machine with that catching up.
    """
    with psycopg.connect(database_url, autocommit=True) as database:
        database.execute("VACUUM ANALYZE")
        database.execute("CHECKPOINT")


class PeakMemory(threading.Thread):
    """Sample the resident memory of some processes until stopped."""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.processes = {pid: psutil.Process(pid) for pid in pids}
        self.peak = dict.fromkeys(pids, 0)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            for pid, process in self.processes.items():
                try:
                    self.peak[pid] = max(self.peak[pid], process.memory_info().rss)
                except psutil.Error:
                    pass


def compile_code() -> None:
    """Compile the apps to bytecode, as the images do when they are built.

    The Makefile keeps Python from writing bytecode as it runs, so without
    this every process would compile the apps again as it starts.
    """
    compileall.compile_dir(ROOT / "apps", quiet=1)


def run(transactions: int, chunk: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="collect-bench-"))
    cluster = start_cluster(["laptop", "community"], durable=True)
    community = None
    try:
        data_keys = directory / "data-keys"
        laptop = Node(
            "laptop-01", "client", cluster.url("laptop"), directory / "laptop",
            directory / "laptop" / "signing.pem", data_keys, dict(PRODUCTION),
        )  # fmt: skip
        community = Server(
            "community-1", "community", cluster.url("community"),
            directory / "community", directory / "community" / "signing.pem",
            data_keys, dict(PRODUCTION),
        )  # fmt: skip
        laptop.manage("sync", "keygen", "--data-key")
        public_key = laptop.keygen()
        community.keygen()
        for node in (laptop, community):
            node.manage("migrate", "-v0", timeout=300)
        community.manage(
            "sync", "node", "add", "laptop-01", "--role", "client",
            "--public-key", public_key, "--token", TOKEN,
        )  # fmt: skip
        started = time.monotonic()
        laptop.manage("seed", "--transactions", str(transactions), timeout=3600)
        made = laptop.count("sync_outgoingtransaction")
        settle(laptop.database_url)
        seeded = time.monotonic() - started

        community.start()
        workers = [p.pid for p in psutil.Process(community.process.pid).children()]
        began, cpu_began = time.monotonic(), cpu_times()
        push = laptop.start_manage(
            "sync", "push", UPSTREAM_URL=community.url, UPSTREAM_TOKEN=TOKEN,
            SYNC_CHUNK_SIZE=str(chunk),
        )  # fmt: skip
        sampler = PeakMemory([push.pid, community.process.pid, *workers])
        sampler.start()
        out, err = push.communicate(timeout=3600)
        if push.returncode != 0:
            raise SystemExit(f"push failed:\n{out}\n{err}")
        applied = community.value(
            "SELECT count(*) FROM sync_incomingtransaction WHERE status = 'applied'"
        )
        elapsed = time.monotonic() - began
        busy, total = (
            end - start for end, start in zip(cpu_times(), cpu_began, strict=True)
        )
        sampler.halt.set()
        sampler.join()
        if applied != made:
            raise SystemExit(f"only {applied} of {made} applied:\n{out}\n{err}")
        mib = {pid: peak / 2**20 for pid, peak in sampler.peak.items()}
        return {
            "transactions": made,
            "seed_seconds": seeded,
            "seconds": elapsed,
            "per_second": made / elapsed,
            "push_mib": mib[push.pid],
            "server_mib": max(mib[pid] for pid in workers),
            "busy_percent": 100 * busy / total,
        }
    finally:
        if community is not None:
            community.stop()
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--chunk", type=int, default=1000)
    options = parser.parse_args(argv)
    print(
        f"{'N':>9} {'seconds':>8} {'tx/s':>8} {'push MiB':>9} {'server MiB':>11} "
        f"{'cores busy':>10}   (seeding excluded)"
    )
    compile_code()
    for size in options.sizes:
        result = run(size, options.chunk)
        print(
            f"{result['transactions']:>9} {result['seconds']:>8.1f} "
            f"{result['per_second']:>8.0f} {result['push_mib']:>9.0f} "
            f"{result['server_mib']:>11.0f} {result['busy_percent']:>9.0f}%",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a field day in containers and account for every record it produced.

Central, a community server, a middleman and three field laptops run as
Compose stacks of their own (projects ``collect-offline-demo-*``, ports
8451-8453, 8551, 8651, 8751 and SFTP 8722, networks ``collect-offline-demo-*``),
so the demo never touches the stacks of ``make up`` or ``make smoke``. Laptops
1 and 2 push to the community server over HTTPS; laptop 2 is out of coverage
for part of the day. Laptop 3 never reaches a server: the middleman pulls from
it and pushes on. At the end of the day the community server exports what it
holds as batch files, sends them over SFTP to central's drop, central's
importer applies them, and the community server fetches central's receipt.

Each run starts from empty volumes. The nodes are driven only through their
real interfaces: management commands run by compose/bin/stack (``docker
compose``), ``docker network`` for coverage, and HTTPS for the status pages.

Run it with ``make demo`` or ``.venv/bin/python compose/demo.py``. It exits 1
when any record made on a laptop is not accounted for on the community
server or on central, or central's receipt does not acknowledge it.
"""

import os
import re
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
STACK = str(REPO / "compose" / "bin" / "stack")
PROVISION = str(REPO / "compose" / "bin" / "provision")
DEPLOYMENT = REPO / "var" / "deployment"
CA_FILE = DEPLOYMENT / "ca" / "ca.crt"
PREFIX = "collect-offline-demo"
FIELD_NETWORK = f"{PREFIX}-field"
STARTED = time.monotonic()


@dataclass(frozen=True)
class Node:
    node_id: str
    role: str
    port: int
    upstream: str = ""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def in_network_url(self) -> str:
        return f"https://{self.node_id}:8000"


CENTRAL = Node("demo-central-1", "central", 8751)
COMMUNITY = Node("demo-community-1", "community", 8651, CENTRAL.node_id)
MIDDLEMAN = Node("demo-middleman-1", "middleman", 8551, COMMUNITY.node_id)
LAPTOP_1 = Node("demo-laptop-1", "client", 8451, COMMUNITY.node_id)
LAPTOP_2 = Node("demo-laptop-2", "client", 8452, COMMUNITY.node_id)
LAPTOP_3 = Node("demo-laptop-3", "client", 8453, MIDDLEMAN.node_id)
NODES = (CENTRAL, COMMUNITY, MIDDLEMAN, LAPTOP_1, LAPTOP_2, LAPTOP_3)
LAPTOPS = (LAPTOP_1, LAPTOP_2, LAPTOP_3)
BY_ID = {node.node_id: node for node in NODES}
SFTP_PUBLISH = "127.0.0.1:8722"
# Central's importer looks at the drops every 2 s, and takes a file 1 s after
# it last changed (SFTP uploads are renamed into place, so none is half there).
CENTRAL_ENV = {"SYNC_IMPORT_INTERVAL": "2", "SYNC_IMPORT_SETTLE_SECONDS": "1"}
IMPORT_TIMEOUT = 120


class DemoFailed(Exception):
    """A step of the demo failed; the message says which."""


def step(message: str) -> None:
    print(f"[demo {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def run(*args: str, env: dict | None = None, check: bool = True):
    """Run a command; return the result, or raise DemoFailed with its output."""
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise DemoFailed(
            f"{' '.join(args[:8])} ... exited {result.returncode}:\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result


def stack(node: Node, *args: str, check: bool = True) -> str:
    env = CENTRAL_ENV if node is CENTRAL else None
    return run(STACK, node.node_id, *args, env=env, check=check).stdout


def manage(node: Node, *args: str, env: dict | None = None, check: bool = True):
    """Run ``manage.py`` in the node's running app container."""
    flags = [arg for item in (env or {}).items() for arg in ("-e", "=".join(item))]
    return run(
        STACK, node.node_id, "exec", "-T", *flags, "app", "python", "manage.py",
        *args, check=check,
    )  # fmt: skip


def in_parallel(function, items) -> list:
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(function, items))


# -- setting up ---------------------------------------------------------------


def project(node: Node) -> str:
    return f"{PREFIX}-{node.node_id.removeprefix('demo-')}"


def remove_project(name: str) -> None:
    """Remove a Compose project's containers, volumes and own networks.

    By the project's label, not its files: a run from another checkout (or one
    whose var/ was deleted) must not meet volumes made with other keys.
    """
    label = f"label=com.docker.compose.project={name}"
    for kind, remove in (
        ("container", ("rm", "-f", "-v")),
        ("volume", ("volume", "rm", "-f")),
        ("network", ("network", "rm")),
    ):
        listing = ("ps", "-aq") if kind == "container" else (kind, "ls", "-q")
        ids = run("docker", *listing, "--filter", label).stdout.split()
        if ids:
            run("docker", *remove, *ids)


def reset_and_start() -> None:
    step("resetting the demo stacks (their containers and volumes only)")
    in_parallel(remove_project, [project(node) for node in NODES])
    for node in NODES:
        run(
            PROVISION, "node", node.role, node.node_id,
            env={
                "HTTPS_PORT": str(node.port),
                "UPSTREAM": node.upstream,
                "NETWORK_PREFIX": PREFIX,
                "PROJECT": project(node),
                "SFTP_PUBLISH": SFTP_PUBLISH,
            },
        )  # fmt: skip
    step(
        "starting central (with its SFTP drop and importer), a community server, "
        "a middleman and three laptops; waiting until every container is healthy"
    )
    in_parallel(lambda node: stack(node, "up", "-d", "--wait"), NODES)
    # Upstream first: a node is registered along its way to the top.
    for node in (COMMUNITY, MIDDLEMAN, *LAPTOPS):
        run(PROVISION, "register", node.node_id)
    step(
        "registered: the community server on central (and its SSH key on the "
        "SFTP drop), laptops 1 and 2 and the middleman on the community server, "
        "the middleman on laptop 3, every laptop's key on central"
    )


# -- the field day --------------------------------------------------------------


def seed(node: Node, households: int, seed_: int) -> None:
    out = manage(node, "seed", "--households", str(households), "--seed", str(seed_))
    step(f"{node.node_id}: {out.stdout.strip()}")


def push(node: Node) -> None:
    result = manage(node, "sync", "push")
    step(f"{node.node_id}: pushed: {result.stdout.strip()}")


def push_offline(node: Node) -> None:
    # Out of coverage: give up after a few seconds instead of minutes.
    result = manage(node, "sync", "push", env={"SYNC_RETRY_SECONDS": "3"}, check=False)
    if result.returncode == 0:
        raise DemoFailed(f"{node.node_id} pushed although it was out of coverage")
    last = (result.stderr.strip().splitlines() or ["?"])[-1]
    reason = last.removeprefix("CommandError: ").split(" (", 1)[0]
    step(f"{node.node_id}: push failed out of coverage, as it should: {reason}")


def pull(middleman: Node, laptop: Node) -> None:
    result = manage(middleman, "sync", "pull", laptop.in_network_url)
    step(f"{middleman.node_id}: {result.stdout.strip()}")


def field_day() -> None:
    step("a field day on all three laptops")
    in_parallel(
        lambda args: seed(*args),
        [(LAPTOP_1, 30, 101), (LAPTOP_2, 20, 201), (LAPTOP_3, 15, 301)],
    )
    push(LAPTOP_1)

    step(f"{LAPTOP_2.node_id} leaves network coverage")
    laptop_2 = stack(LAPTOP_2, "ps", "-q", "app").strip()
    run("docker", "network", "disconnect", FIELD_NETWORK, laptop_2)
    try:
        seed(LAPTOP_2, 15, 202)
        push_offline(LAPTOP_2)
        seed(LAPTOP_1, 10, 102)
        push(LAPTOP_1)
    finally:
        step(f"{LAPTOP_2.node_id} is back in coverage")
        run(
            "docker", "network", "connect", "--alias", LAPTOP_2.node_id,
            FIELD_NETWORK, laptop_2,
        )  # fmt: skip
    push(LAPTOP_2)

    step(f"{MIDDLEMAN.node_id} collects from {LAPTOP_3.node_id} and carries it on")
    pull(MIDDLEMAN, LAPTOP_3)
    seed(LAPTOP_3, 5, 302)
    pull(MIDDLEMAN, LAPTOP_3)
    push(MIDDLEMAN)
    # Once more: the laptop learns how far the community server holds its data.
    pull(MIDDLEMAN, LAPTOP_3)


# -- to central by batch file ----------------------------------------------------

EXPORTED = re.compile(r"^batch files: exported through #(\d+)")
QUARANTINED = re.compile(r"^batch files: .* quarantined (\d+)$", re.M)


def site_batches(text: str, site: str) -> int:
    """Return the last batch of ``site`` that ``sync status`` says is imported."""
    match = re.search(
        rf"^\s+{re.escape(site)}: batches imported through #(\d+)", text, re.M
    )
    return int(match.group(1)) if match else 0


def to_central() -> None:
    """Export, send over SFTP, wait for central's importer, fetch the receipt."""
    step(f"{COMMUNITY.node_id} exports what it holds as batch files")
    result = manage(COMMUNITY, "sync", "export")
    step(f"{COMMUNITY.node_id}: {result.stdout.strip()}")
    text = status_text(COMMUNITY)
    match = next(filter(None, map(EXPORTED.match, text.splitlines())), None)
    if match is None:
        raise DemoFailed(f"{COMMUNITY.node_id}: no batch files line:\n{text}")
    last = int(match.group(1))

    result = manage(COMMUNITY, "sync", "send", "--sftp")
    sent = result.stdout.strip()
    step(f"{COMMUNITY.node_id}: over SFTP to {CENTRAL.node_id}-sftp: {sent}")

    step(f"waiting for {CENTRAL.node_id}'s importer to apply batch #{last}")
    waited = time.monotonic()
    while True:
        text = status_text(CENTRAL)
        imported = site_batches(text, COMMUNITY.node_id)
        if imported >= last:
            break
        quarantined = QUARANTINED.search(text)
        timed_out = time.monotonic() - waited > IMPORT_TIMEOUT
        if timed_out or (quarantined and quarantined[1] != "0"):
            problems = manage(CENTRAL, "sync", "problems").stdout.strip()
            raise DemoFailed(
                f"{CENTRAL.node_id} imported {COMMUNITY.node_id}'s batches only "
                f"through #{imported} of #{last} in "
                f"{time.monotonic() - waited:.0f} s (at most {IMPORT_TIMEOUT}); "
                f"its problems:\n{problems}\nsee: compose/bin/stack "
                f"{CENTRAL.node_id} logs importer"
            )
        time.sleep(1)
    step(f"{CENTRAL.node_id} imported {COMMUNITY.node_id}'s batches through #{last}")

    result = manage(COMMUNITY, "sync", "fetch-receipts", "--sftp")
    step(f"{COMMUNITY.node_id}: receipts: {result.stdout.strip()}")


def learn_from_central() -> str:
    """Push one more household from laptop 1; say what it learned of central."""
    before = status(LAPTOP_1).produced
    manage(LAPTOP_1, "seed", "--households", "1", "--seed", "103")
    push(LAPTOP_1)
    through = status(LAPTOP_1).acknowledged.get((CENTRAL.node_id, LAPTOP_1.node_id))
    if through is not None and through >= before:
        return (
            f"{LAPTOP_1.node_id} learned on its next push that {CENTRAL.node_id} "
            f"holds its records through #{through} (of {before} before that push)."
        )
    return (
        f"{LAPTOP_1.node_id}'s next push did not tell it that {CENTRAL.node_id} "
        f"holds its records (it knows: {'#' + str(through) if through else 'nothing'})."
    )


# -- accounting -------------------------------------------------------------------

OUTGOING = re.compile(r"^outgoing (\d+) made here, (\d+) not yet acknowledged")
HOLDS = re.compile(r"^\s+(\S+) holds (\S+) through #(\d+)")
PRODUCER = re.compile(
    r"^\s+(\S+)\s+held #(\d+) \(highest #(\d+), (\d+) missing\) applied (\d+) "
    r"parked (\d+) failed (\d+) conflicts (\d+)"
)


@dataclass
class Status:
    """What ``manage.py sync status`` says, as numbers."""

    produced: int = 0
    pending: int = 0
    acknowledged: dict[tuple[str, str], int] = field(default_factory=dict)
    producers: dict[str, dict[str, int]] = field(default_factory=dict)


def status_text(node: Node) -> str:
    return manage(node, "sync", "status").stdout


def status(node: Node) -> Status:
    text = status_text(node)
    result, seen = Status(), False
    for line in text.splitlines():
        if match := OUTGOING.match(line):
            result.produced, result.pending = map(int, match.groups())
            seen = True
        elif match := HOLDS.match(line):
            holder, producer, through = match.groups()
            result.acknowledged[holder, producer] = int(through)
        elif match := PRODUCER.match(line):
            producer, *numbers = match.groups()
            names = ("contiguous", "highest", "missing", "applied", "parked")
            names += ("failed", "conflicts")
            row = dict(zip(names, map(int, numbers), strict=True))
            row["held"] = row["highest"] - row["missing"]
            row["waiting"] = row["held"] - sum(
                row[key] for key in ("applied", "parked", "failed", "conflicts")
            )
            result.producers[producer] = row
    if not seen:
        raise DemoFailed(f"{node.node_id}: cannot read `sync status`:\n{text}")
    return result


def account() -> bool:
    """Print where every record went; return True if all are accounted for."""
    statuses = dict(zip(NODES, in_parallel(status, NODES), strict=True))
    complete = account_at(COMMUNITY, statuses)
    relay = statuses[MIDDLEMAN].producers.get(LAPTOP_3.node_id, {})
    print(
        f"  {MIDDLEMAN.node_id} holds {relay.get('held', 0)} of "
        f"{LAPTOP_3.node_id}'s {statuses[LAPTOP_3].produced} and relayed them on."
    )
    complete &= account_at(CENTRAL, statuses)
    print(
        "  produced: transactions in the laptop's outbox; acked: those its "
        "upstream acknowledged\n  (at central: those central's receipt "
        f"acknowledged to {COMMUNITY.node_id});\n  delivered: held on the "
        "server, once each, applied, parked (waiting for a record),\n  lost a "
        "conflict (kept for review), failed, or waiting to be applied;\n  "
        "missing: produced, not held."
    )
    return complete


def account_at(server: Node, statuses: dict[Node, Status]) -> bool:
    """Print the laptops' records as ``server`` holds them; True if all are."""
    held_here = dict(statuses[server].producers)
    columns = ("produced", "acked", "delivered", "applied", "parked")
    columns += ("conflicts", "failed", "waiting", "missing")
    print(f"\nRecords per laptop, as {server.node_id} holds them:")
    print(f"  {'laptop':10} {'route':10}" + "".join(f"{c:>10}" for c in columns))
    complete = True
    for laptop in LAPTOPS:
        mine = statuses[laptop]
        row = held_here.pop(laptop.node_id, {})
        held = row.get("held", 0)
        missing = mine.produced - held
        if server is CENTRAL:
            # What central's receipt told the community server it holds.
            receipt = statuses[COMMUNITY].acknowledged
            acked = receipt.get((CENTRAL.node_id, laptop.node_id), 0)
            complete &= acked == mine.produced
        else:
            acked = mine.produced - mine.pending
        complete &= missing == 0 and row.get("contiguous", 0) == held
        route = "direct" if laptop.upstream == COMMUNITY.node_id else "middleman"
        cells = (mine.produced, acked, held) + tuple(
            row.get(key, 0)
            for key in ("applied", "parked", "conflicts", "failed", "waiting")
        )
        cells += (missing,)
        name = laptop.node_id.removeprefix("demo-")
        print(f"  {name:10} {route:10}" + "".join(f"{c:>10}" for c in cells))
    for producer in held_here:
        print(f"  unexpected producer on {server.node_id}: {producer}")
        complete = False
    return complete


def show_problems() -> None:
    for node in (COMMUNITY, CENTRAL):
        text = manage(node, "sync", "problems").stdout.strip()
        if text != "no problems":
            print(f"\nNeeds attention on {node.node_id}:\n{text}")


# -- status pages -------------------------------------------------------------------


def open_status_page(node: Node) -> str:
    """Make an admin on ``node``, log in over HTTPS; return the password."""
    password = secrets.token_urlsafe(12)
    manage(
        node, "createsuperuser", "--noinput", "--username", "admin",
        "--email", "admin@example.org",
        env={"DJANGO_SUPERUSER_PASSWORD": password},
    )  # fmt: skip
    # verify= on each call: a REQUESTS_CA_BUNDLE in the environment would
    # override Session.verify (requests issue 3829).
    verify = str(CA_FILE)
    with requests.Session() as session:
        login = f"{node.url}/admin/login/"
        session.get(login, timeout=10, verify=verify).raise_for_status()
        page = session.post(
            login,
            data={
                "username": "admin",
                "password": password,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
                "next": "/sync/",
            },
            headers={"Referer": login},
            timeout=30,
            verify=verify,
        )
    if page.status_code != 200 or f"Sync status of {node.node_id}" not in page.text:
        raise DemoFailed(
            f"{node.url}/sync/ did not show {node.node_id}'s status page "
            f"(HTTP {page.status_code} at {page.url})"
        )
    return password


def print_logs() -> None:
    for node in NODES:
        if not (DEPLOYMENT / "nodes" / node.node_id / "compose.env").exists():
            continue
        print(f"\n===== logs of {node.node_id} =====", file=sys.stderr)
        print(stack(node, "ps", "-a", check=False), file=sys.stderr)
        logs = stack(node, "logs", "--no-color", "--tail=60", check=False)
        print(logs, file=sys.stderr)


def main() -> int:
    try:
        reset_and_start()
        field_day()
        to_central()
        complete = account()
        show_problems()
        step("does a laptop learn that central holds its records?")
        learned = learn_from_central()
        step("status pages: logging in to each over HTTPS, verified with the CA")
        passwords = in_parallel(open_status_page, NODES)
    except (DemoFailed, requests.RequestException) as exc:
        print(f"\n[demo] FAILED: {exc}", file=sys.stderr)
        print_logs()
        return 1
    print(
        f"\nStatus pages (user admin; verify TLS with {CA_FILE.relative_to(REPO)}, "
        "or accept the browser's warning):"
    )
    for node, password in zip(NODES, passwords, strict=True):
        print(f"  {node.node_id:18} {node.url}/sync/   admin / {password}")
    print(f"\n{learned}")
    print(
        "Stop a node with: compose/bin/stack NODE_ID down  "
        f"(e.g. {COMMUNITY.node_id}); `make demo` again starts afresh."
    )
    elapsed = time.monotonic() - STARTED
    if not complete:
        print(f"\n[demo] FAILED in {elapsed:.0f} s: records are unaccounted for")
        return 1
    print(f"\n[demo] every record is accounted for ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

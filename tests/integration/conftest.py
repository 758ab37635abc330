"""Provides a live deployment for integration tests: laptops, middlemen, community.

One throwaway PostgreSQL cluster serves the whole run. Template databases are
made once, the way an operator would set the nodes up (``sync node add``):

- ``community_template``: laptop-01 and laptop-02 registered as clients,
  middleman-1 as a relay, middleman-2 as a middleman that may not relay;
- ``laptop_template``: laptop-01 after a field day (``seed``), with both
  middlemen registered to pull from it and laptop-02 registered as a client;
- ``middleman_template``: middleman-1 and middleman-2 know laptop-01's key.

Each test gets fresh copies (``CREATE DATABASE ... TEMPLATE``), so tests share
no rows. Every node has a user ``ra`` (password ``PASSWORD``) for its pages.
Keys live in a temporary directory: one data-keys folder for the deployment,
one signing key per node.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from tests.integration.nodes import Node, Server
from tests.pgcluster import Cluster, start_cluster

log = logging.getLogger(__name__)

COMMUNITY = "community-1"
LAPTOP = "laptop-01"
OTHER_LAPTOP = "laptop-02"
MIDDLEMAN = "middleman-1"
NON_RELAY = "middleman-2"
FIELD_DAY_HOUSEHOLDS = 10
USERNAME = "ra"
PASSWORD = "field-day-password"

# Servers running now; a failing test's report carries each one's log.
_running: list[Server] = []


class Deployment:
    """The run's cluster, keys folder, template databases and tokens."""

    def __init__(self, cluster: Cluster, directory: Path):
        self.cluster = cluster
        self.directory = directory
        self.data_keys = directory / "data-keys"
        self.tokens: dict[str, str] = {}
        self._numbers = itertools.count(1)
        # Databases made for the running test, dropped in the background once
        # it ends: deleting files is slow on this disk, so it overlaps the
        # next test instead of piling up when the cluster stops.
        self._made: list[str] | None = None
        self._dropper = ThreadPoolExecutor(1)

    def create_database(self, name: str, template: str) -> str:
        """Create database ``name`` as a copy of ``template``; return its URL."""
        with psycopg.connect(self.cluster.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        if self._made is not None:
            self._made.append(name)
        return self.cluster.url(name)

    def begin_test(self) -> None:
        self._made = []

    def end_test(self) -> None:
        """Drop the databases the test made, once its servers are stopped."""
        made, self._made = self._made or [], None
        if made:
            self._dropper.submit(self._drop, made)

    def _drop(self, names: list[str]) -> None:
        with psycopg.connect(self.cluster.url("postgres"), autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self._dropper.shutdown(wait=True, cancel_futures=True)
        started = time.monotonic()
        self.cluster.stop()
        log.info("stopped the cluster in %.1f s", time.monotonic() - started)

    def node(
        self,
        node_id: str,
        role: str,
        template: str = "node_template",
        kind: type[Node] = Node,
        database: str | None = None,
        **settings: str,
    ) -> Node:
        """Return a node on a copy of ``template``, with its own key path."""
        if database is None:
            database = f"{node_id.replace('-', '_')}_{next(self._numbers)}"
            self.create_database(database, template)
        return kind(
            node_id=node_id,
            role=role,
            database_url=self.cluster.url(database),
            directory=self.directory / database,
            signing_key=self.directory / "keys" / f"{node_id}.pem",
            data_keys=self.data_keys,
            settings={name: str(value) for name, value in settings.items()},
        )

    def serve(self, node: Server) -> Server:
        """Start ``node`` under gunicorn; it is stopped by ``stop``."""
        node.start()
        _running.append(node)
        return node

    def server(self, **settings: str) -> Server:
        """Start a community server on a copy of the registered community."""
        server = self.node(
            COMMUNITY, "community", template="community_template", kind=Server,
            **settings,
        )  # fmt: skip
        return self.serve(server)

    def stop(self, server: Server) -> None:
        try:
            server.stop()
        finally:
            if server in _running:
                _running.remove(server)

    def laptop(self, kind: type[Node] = Node, **settings: str) -> Node:
        """Return a copy of laptop-01 after its field day (settings as keywords)."""
        defaults = {
            "UPSTREAM_TOKEN": self.tokens[LAPTOP],
            "SYNC_RETRY_SECONDS": "5",
            "SYNC_HTTP_TIMEOUT": "30",
        }
        return self.node(
            LAPTOP,
            "client",
            template="laptop_template",
            kind=kind,
            **{**defaults, **settings},
        )

    def middleman(
        self, node_id: str = MIDDLEMAN, kind: type[Node] = Node, **settings: str
    ) -> Node:
        """Return a middleman knowing laptop-01; one token upstream and to pull."""
        defaults = {
            "UPSTREAM_TOKEN": self.tokens[node_id],
            "PULL_TOKEN": self.tokens[node_id],
            "SYNC_RETRY_SECONDS": "5",
            "SYNC_HTTP_TIMEOUT": "30",
        }
        return self.node(
            node_id,
            "middleman",
            template="middleman_template",
            kind=kind,
            **{**defaults, **settings},
        )

    def credential(self, node_id: str) -> str:
        """Return the ``node:token`` a registered node authenticates with."""
        return f"{node_id}:{self.tokens[node_id]}"

    def token(self, node_id: str) -> str:
        """Return ``node_id``'s token, the same on every node it is registered on."""
        return self.tokens.setdefault(node_id, secrets.token_hex(24))

    def add_nodes(self, on: Node, nodes: list[tuple[str, str, str]]) -> None:
        """Register ``(node id, role, flags)`` on ``on``, as an operator would.

        ``flags`` is "relay", "no-token" or "". The commands run one after
        another in one process, since they write the same database.
        """
        commands = []
        for node_id, role, flags in nodes:
            args = ["sync", "node", "add", node_id, "--role", role]
            args += ["--public-key", self.public_key(node_id)]
            if "no-token" in flags:
                args.append("--no-token")
            else:
                args += ["--token", self.token(node_id)]
            if "relay" in flags:
                args.append("--relay")
            commands.append(args)
        on.manage_each(*commands)

    def public_key(self, node_id: str) -> str:
        """Return ``node_id``'s public key, making its signing key if needed."""
        return self.node(node_id, "client", database="node_template").public_key()


def _run_together(jobs: list[Callable[[], object]]) -> None:
    """Run ``jobs``, each on its own database, at once; raise the first failure."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    """Start the cluster; make the node, community, laptop and middleman templates."""
    cluster = start_cluster(["node_template"])
    deployment = Deployment(cluster, tmp_path_factory.mktemp("deployment"))
    try:
        template = deployment.node(COMMUNITY, "community", database="node_template")
        template.manage("migrate", "--no-input", "-v0")
        template.manage_each(
            ["sync", "keygen", "--data-key"],
            ["createsuperuser", "--no-input", "--username", USERNAME,
             "--email", "ra@example.org"],
            DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        )  # fmt: skip

        for name in ("laptop_template", "community_template", "middleman_template"):
            deployment.create_database(name, "node_template")
        community = deployment.node(
            COMMUNITY, "community", database="community_template"
        )
        laptop = deployment.node(LAPTOP, "client", database="laptop_template")
        middleman = deployment.node(
            MIDDLEMAN, "middleman", database="middleman_template"
        )
        for node_id in (LAPTOP, OTHER_LAPTOP, MIDDLEMAN, NON_RELAY):
            deployment.public_key(node_id)  # before the threads share the folder
        _run_together(
            [
                lambda: deployment.add_nodes(
                    community,
                    [
                        (LAPTOP, "client", ""),
                        (OTHER_LAPTOP, "client", ""),
                        (MIDDLEMAN, "middleman", "relay"),
                        (NON_RELAY, "middleman", ""),
                    ],
                ),
                lambda: (
                    deployment.add_nodes(
                        laptop,
                        [
                            (MIDDLEMAN, "middleman", ""),
                            (NON_RELAY, "middleman", ""),
                            (OTHER_LAPTOP, "client", ""),
                        ],
                    ),
                    laptop.manage(
                        "seed",
                        "--households",
                        str(FIELD_DAY_HOUSEHOLDS),
                        "--seed",
                        "7",
                    ),  # fmt: skip
                ),
                lambda: deployment.add_nodes(
                    middleman, [(LAPTOP, "client", "no-token")]
                ),
            ]
        )
        yield deployment
    finally:
        deployment.close()


@pytest.fixture
def start_community(deployment) -> Iterator[Callable[..., Server]]:
    """Return a starter of community servers (settings as keywords); stop them after.

    Every test with a community server starts here: the databases it makes
    are dropped when it ends, after the fixtures that use this one.
    """
    deployment.begin_test()
    started = []

    def start(**settings: str) -> Server:
        server = deployment.server(**settings)
        started.append(server)
        return server

    yield start
    for server in started:
        deployment.stop(server)
    deployment.end_test()


@pytest.fixture
def community(start_community) -> Server:
    """Return a community server on which laptop-01 and laptop-02 are registered."""
    return start_community()


@pytest.fixture
def make_laptop(deployment, community) -> Callable[..., Node]:
    """Return a maker of laptop-01 copies (settings as keywords) for ``community``."""

    def make(**settings: str) -> Node:
        return deployment.laptop(UPSTREAM_URL=community.url, **settings)

    return make


@pytest.fixture
def laptop(make_laptop) -> Node:
    """Return laptop-01 after a field day, pointed at the community server."""
    return make_laptop()


@pytest.fixture
def serving_laptop(deployment, community) -> Iterator[Server]:
    """Return laptop-01 after a field day, serving its pages and the pull API."""
    server = deployment.laptop(kind=Server, UPSTREAM_URL=community.url)
    deployment.serve(server)
    yield server
    deployment.stop(server)


@pytest.fixture
def middleman(deployment, community) -> Node:
    """Return middleman-1, a relay registered on the community server."""
    return deployment.middleman(UPSTREAM_URL=community.url)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for server in _running:
            report.sections.append(
                (f"server log of {server.node_id} at {server.url}", server.log_text())
            )
    return report

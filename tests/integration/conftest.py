"""Provides a live deployment for integration tests: a community server, laptops.

One throwaway PostgreSQL cluster serves the whole run. Three template
databases are made once: a migrated node, a community node on which laptop-01
and laptop-02 are registered (``sync node add``), and laptop-01 after a field
day (``seed``). Each test gets fresh copies (``CREATE DATABASE ... TEMPLATE``),
so tests share no rows. Keys live in a temporary directory: one data-keys
folder for the deployment, one signing key per node.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.nodes import Node, Server
from tests.pgcluster import Cluster, start_cluster

COMMUNITY = "community-1"
LAPTOP = "laptop-01"
OTHER_LAPTOP = "laptop-02"
FIELD_DAY_HOUSEHOLDS = 10

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

    def create_database(self, name: str, template: str) -> str:
        """Create database ``name`` as a copy of ``template``; return its URL."""
        with psycopg.connect(self.cluster.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.cluster.url(name)

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

    def server(self, **settings: str) -> Server:
        """Start a community server on a copy of the registered community."""
        server = self.node(
            COMMUNITY, "community", template="community_template", kind=Server,
            **settings,
        )  # fmt: skip
        server.start()
        _running.append(server)
        return server

    def stop(self, server: Server) -> None:
        try:
            server.stop()
        finally:
            _running.remove(server)

    def laptop(self, **settings: str) -> Node:
        """Return a copy of laptop-01 after its field day (settings as keywords)."""
        return self.node(
            LAPTOP,
            "client",
            template="laptop_template",
            UPSTREAM_TOKEN=self.tokens[LAPTOP],
            SYNC_RETRY_SECONDS="5",
            SYNC_HTTP_TIMEOUT="30",
            **settings,
        )

    def credential(self, node_id: str) -> str:
        """Return the ``node:token`` a registered laptop authenticates with."""
        return f"{node_id}:{self.tokens[node_id]}"

    def register(self, server: Node, node: Node) -> None:
        """Register ``node`` on ``server`` with a new token, as an operator would."""
        token = secrets.token_urlsafe(24)
        server.manage(
            "sync", "node", "add", node.node_id, "--role", node.role,
            "--public-key", node.keygen(), "--token", token,
        )  # fmt: skip
        self.tokens[node.node_id] = token


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    """Start the cluster; make the node, community and laptop templates."""
    cluster = start_cluster(["node_template"])
    try:
        deployment = Deployment(cluster, tmp_path_factory.mktemp("deployment"))
        template = deployment.node(COMMUNITY, "community", database="node_template")
        template.manage("migrate", "--no-input", "-v0")
        template.manage("sync", "keygen", "--data-key")

        deployment.create_database("laptop_template", "node_template")
        deployment.create_database("community_template", "node_template")
        community = deployment.node(
            COMMUNITY, "community", database="community_template"
        )
        laptop = deployment.node(LAPTOP, "client", database="laptop_template")
        deployment.register(community, laptop)
        deployment.register(community, deployment.node(OTHER_LAPTOP, "client"))
        laptop.manage("seed", "--households", str(FIELD_DAY_HOUSEHOLDS), "--seed", "7")
        yield deployment
    finally:
        cluster.stop()


@pytest.fixture
def start_community(deployment) -> Iterator[Callable[..., Server]]:
    """Return a starter of community servers (settings as keywords); stop them after."""
    started = []

    def start(**settings: str) -> Server:
        server = deployment.server(**settings)
        started.append(server)
        return server

    yield start
    for server in started:
        deployment.stop(server)


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for server in _running:
            report.sections.append(
                (f"server log of {server.node_id} at {server.url}", server.log_text())
            )
    return report

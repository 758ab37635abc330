"""Provides throwaway PostgreSQL clusters for tests, from the host's server binaries.

A cluster lives in a temporary directory, listens on a free port of 127.0.0.1
(its unix socket stays in the same directory) and trusts local connections.
When the tests run as root, the server runs as the ``postgres`` user, since
PostgreSQL refuses to run as root.

    cluster = start_cluster(["node_a", "node_b"])
    cluster.url("node_a")  # postgres://collect@127.0.0.1:54012/node_a
    cluster.stop()
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

ROLE_NAME = "collect"
SERVER_USER = "postgres"


class ClusterError(RuntimeError):
    """A throwaway cluster could not be made, started or stopped."""


@dataclass
class Cluster:
    """A running throwaway cluster and the databases made in it."""

    directory: Path
    port: int
    bin_dir: Path
    databases: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def url(self, database: str) -> str:
        return f"postgres://{ROLE_NAME}@127.0.0.1:{self.port}/{database}"

    def urls(self) -> dict[str, str]:
        return {name: self.url(name) for name in self.databases}

    def create_database(self, name: str) -> str:
        """Create database ``name``, owned by the test role; return its URL."""
        _admin_sql(self, f'CREATE DATABASE "{name}" OWNER {ROLE_NAME}')
        self.databases.append(name)
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        try:
            _run(
                self,
                [
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "immediate",
                    "-w",
                ],
                "stop the server",
            )
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def find_bin_dir() -> Path:
    """Return the directory of the PostgreSQL server binaries on this host."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(str(Path(which).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise ClusterError(
        "No PostgreSQL server binaries found (looked for initdb in PG_BIN, "
        "/usr/lib/postgresql/*/bin and PATH). Install postgresql, or set "
        "TEST_DATABASE_URL to a server the tests may create databases on."
    )


def server_settings() -> list[str]:
    """Return the ``-c name=value`` options the deployed database runs with."""
    stack = yaml.safe_load((ROOT / "compose" / "postgres.yml").read_text())
    options = stack["services"]["db"]["command"][1:]
    return [
        f"{flag} {value}"
        for flag, value in zip(options[::2], options[1::2], strict=True)
    ]


def start_cluster(databases: list[str] | int = 1, durable: bool = False) -> Cluster:
    """Start a cluster and create ``databases`` (names, or how many).

    A ``durable`` cluster keeps every commit, as a deployed server does, and
    runs with the deployed database's settings; otherwise durability is
    traded for speed. A cluster that fails to start is stopped and removed
    before the error is raised; the error carries the server's log.
    """
    if isinstance(databases, int):
        databases = [f"collect_{n}" for n in range(1, databases + 1)]
    directory = Path(tempfile.mkdtemp(prefix="collect-pg-"))
    cluster = Cluster(directory=directory, port=_free_port(), bin_dir=find_bin_dir())
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(directory, user.pw_uid, user.pw_gid)
        _run(
            cluster,
            [
                str(cluster.bin_dir / "initdb"),
                "-D",
                str(cluster.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            "initialise the cluster",
        )
        options = (
            f"-p {cluster.port} -k {directory} -c listen_addresses=127.0.0.1 "
            + (
                " ".join(server_settings()) + " "
                if durable
                else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            )
            + "-c max_connections=100"
        )
        _run(
            cluster,
            [
                str(cluster.bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(cluster.data_dir),
                "-l",
                str(cluster.log_file),
                "-o",
                options,
                "-w",
                "-t",
                "60",
            ],
            f"start the server on port {cluster.port} (waited up to 60 s)",
        )
        _admin_sql(cluster, f"CREATE ROLE {ROLE_NAME} LOGIN SUPERUSER")
        for name in databases:
            cluster.create_database(name)
    except BaseException:
        cluster.stop()
        raise
    log.info("started PostgreSQL on port %d in %s", cluster.port, directory)
    return cluster


def _run(cluster: Cluster, command: list[str], purpose: str) -> None:
    if os.geteuid() == 0:
        command = ["runuser", "-u", SERVER_USER, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        server_log = ""
        if cluster.log_file.exists():
            server_log = cluster.log_file.read_text()[-4000:]
        raise ClusterError(
            f"Could not {purpose}: {' '.join(command)} exited {done.returncode}.\n"
            f"{done.stdout}{done.stderr}\n{server_log}"
        )


def _admin_sql(cluster: Cluster, sql: str) -> None:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1",
        port=cluster.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as connection:
        connection.execute(sql)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

"""Provides live nodes for integration tests: a database, keys, commands, a server.

Each node is what an operator would run: ``manage.py`` subprocesses with the
node's environment and, for a server, gunicorn on a free port of 127.0.0.1.
Results are read straight from the node's PostgreSQL database with psycopg,
so the test process never needs the node's settings.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests
import zstandard

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
PUSH_URL = "/api/sync/v1/push/"

# What the test run's own node reads; a live node gets only its own values.
_NODE_VARIABLES = {
    "ALLOWED_HOSTS",
    "COLLECT_TEST_ENVIRONMENT",
    "DATA_UPLOAD_MAX_MEMORY_SIZE",
    "DATABASE_URL",
    "DEBUG",
    "DJANGO_SETTINGS_MODULE",
    "LOG_LEVEL",
    "NODE_DIR",
    "NODE_ID",
    "PEER_DATABASE_URL",
    "ROLE",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "TEST_DATABASE_URL",
    "TEST_DB",
}


class NodeFailed(AssertionError):
    """A node's command or server did not do what the test needed."""


def clean_environment() -> dict[str, str]:
    """Return this process's environment without any node's settings in it."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in _NODE_VARIABLES
        and not name.startswith(("SYNC_", "UPSTREAM_", "PG"))
    }


@dataclass
class Node:
    """One node of the deployment: its id, role, database and keys."""

    node_id: str
    role: str
    database_url: str
    directory: Path
    signing_key: Path
    data_keys: Path
    settings: dict[str, str] = field(default_factory=dict)

    def environment(self, **overrides: str) -> dict[str, str]:
        env = clean_environment()
        env.update(
            ROLE=self.role,
            NODE_ID=self.node_id,
            DEBUG="1",
            DATABASE_URL=self.database_url,
            NODE_DIR=str(self.directory),
            SYNC_SIGNING_KEY_FILE=str(self.signing_key),
            SYNC_DATA_KEYS_DIR=str(self.data_keys),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.settings)
        env.update({name: str(value) for name, value in overrides.items()})
        return env

    def manage(
        self, *args: str, check: bool = True, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess:
        """Run ``manage.py args`` as this node; fail with its output if asked."""
        command = [PYTHON, "manage.py", *args]
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=self.environment(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise NodeFailed(
                f"{self.node_id}: manage.py {' '.join(args)} exited "
                f"{done.returncode}\n--- stdout\n{done.stdout}\n"
                f"--- stderr\n{done.stderr}"
            )
        return done

    def manage_each(self, *commands: list[str], **env: str) -> str:
        """Run several management commands in one process; return their output.

        The same commands an operator types, without paying Django's start-up
        for each: for setting up template databases.
        """
        script = (
            "import json, sys\n"
            "from django.core.management import call_command\n"
            f"for args in json.loads({json.dumps(json.dumps(commands))}):\n"
            "    call_command(*args)\n"
        )
        return self.manage("shell", "--no-imports", "-c", script, **env).stdout

    def start_manage(self, *args: str, **env: str) -> subprocess.Popen:
        """Start ``manage.py args`` as this node without waiting for it."""
        return subprocess.Popen(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env=self.environment(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def keygen(self) -> str:
        """Make this node's signing key unless it has one; return the public key."""
        identity = self.manage("sync", "keygen").stdout
        match = re.search(r"public-key (\S+)", identity)
        if not match:
            raise NodeFailed(f"{self.node_id}: no public key in {identity!r}")
        return match.group(1)

    def public_key(self) -> str:
        """Return this node's public key, making its signing key if needed.

        The same as ``keygen`` without starting Django: the key file is made
        with the product's own function.
        """
        from cryptography.hazmat.primitives import serialization
        from sync import keys

        keys.create_signing_key(self.signing_key)
        key = serialization.load_pem_private_key(
            self.signing_key.read_bytes(), password=None
        )
        return keys.public_key_text(key)

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()

    def records(self, sql: str, params: tuple = ()) -> list[dict]:
        with psycopg.connect(
            self.database_url, autocommit=True, row_factory=psycopg.rows.dict_row
        ) as connection:
            return connection.execute(sql, params).fetchall()

    def value(self, sql: str, params: tuple = ()):
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def count(self, table: str) -> int:
        return self.value(f'SELECT count(*) FROM "{table}"')

    def table_counts(self) -> dict[str, int]:
        """Return the number of rows in each of the study's travelling tables."""
        return {table: self.count(table) for table in self.study_tables()}

    def study_tables(self) -> list[str]:
        """Return the tables of the study's data that travel (not local ones)."""
        return [
            name
            for (name,) in self.rows(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_name LIKE 'study\\_%%' "
                "ORDER BY table_name"
            )
            if name != "study_identifiercounter"
        ]

    def wire_envelopes(self, limit: int | None = None) -> list[dict]:
        """Return this node's outbox in the wire form, oldest first."""
        from sync.envelope import Envelope

        sql = "SELECT * FROM sync_outgoingtransaction ORDER BY sequence"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [
            Envelope.from_row(types.SimpleNamespace(**row)).to_wire()
            for row in self.records(sql)
        ]


@dataclass
class Server(Node):
    """A node served by gunicorn, with its log kept in a file."""

    process: subprocess.Popen | None = None
    url: str = ""

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def log_text(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def start(self, wait: float = 30) -> None:
        """Start gunicorn on a free port and wait until /health/ answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    GUNICORN,
                    "--chdir",
                    "apps",
                    "--bind",
                    "127.0.0.1:0",
                    "--workers",
                    "2",
                    "--preload",
                    "--no-control-socket",
                    "--graceful-timeout",
                    "5",
                    "--access-logfile",
                    "-",
                    "config.wsgi:application",
                ],
                cwd=ROOT,
                env=self.environment(),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NodeFailed(
                    f"gunicorn for {self.node_id} exited {self.process.returncode} "
                    f"while starting.\n--- server log\n{self.log_text()}"
                )
            if not self.url:
                found = re.search(
                    r"Listening at: (http://127\.0\.0\.1:\d+)", self.log_text()
                )
                self.url = found.group(1) if found else ""
            if self.url and self._healthy():
                log.info("%s serves on %s", self.node_id, self.url)
                return
            time.sleep(0.1)
        self.stop()
        raise NodeFailed(
            f"gunicorn for {self.node_id} did not answer {self.url or '?'}/health/ "
            f"within {wait:.0f} s; is the database reachable?\n"
            f"--- server log\n{self.log_text()}"
        )

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """Stop gunicorn and its workers at once; safe twice.

        A test has no request worth finishing, and a graceful shutdown costs
        seconds per server.
        """
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def post(
        self,
        body: bytes | dict | list,
        credential: str | None,
        encoding: str | None = None,
        headers: dict | None = None,
    ) -> requests.Response:
        """POST ``body`` to the push endpoint as ``credential`` ("node:token").

        ``encoding`` compresses it so ("gzip" or "zstd") and says so.
        """
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"}
        if encoding:
            compress = {
                "gzip": gzip.compress,
                "zstd": zstandard.ZstdCompressor().compress,
            }[encoding]
            data = compress(data)
            sent["Content-Encoding"] = encoding
        if credential is not None:
            sent["Authorization"] = f"Node {credential}"
        sent.update(headers or {})
        return requests.post(
            f"{self.url}{PUSH_URL}", data=data, headers=sent, timeout=60
        )

    def login(self, username: str, password: str) -> requests.Session:
        """Return a browser-like session logged in through the admin login page."""
        session = requests.Session()
        session.get(f"{self.url}/admin/login/", timeout=30).raise_for_status()
        done = session.post(
            f"{self.url}/admin/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
                "next": "/sync/",
            },
            timeout=30,
        )
        if "sessionid" not in session.cookies:
            raise NodeFailed(f"could not log in to {self.node_id}: {done.text[:500]}")
        return session

    def api(
        self, method: str, path: str, credential: str | None, **kwargs
    ) -> requests.Response:
        """Call ``/api/sync/v1/<path>`` as ``credential`` ("node:token")."""
        headers = kwargs.pop("headers", {})
        if credential is not None:
            headers["Authorization"] = f"Node {credential}"
        return requests.request(
            method,
            f"{self.url}/api/sync/v1/{path}",
            headers=headers,
            timeout=60,
            **kwargs,
        )

    def pull_lines(self, puller: str) -> list[tuple[int, int]]:
        """Return (count, after) of each pull by ``puller`` in the log."""
        pattern = rf"{re.escape(puller)} pulled (\d+) transactions after #(\d+)"
        return [
            (int(count), int(after))
            for count, after in re.findall(pattern, self.log_text())
        ]

    def push_lines(self, producer: str) -> list[tuple[int, int]]:
        """Return (stored, duplicates) of each push from ``producer`` in the log."""
        pattern = rf"push from {re.escape(producer)}: (\d+) stored, (\d+) duplicates"
        return [
            (int(stored), int(duplicates))
            for stored, duplicates in re.findall(pattern, self.log_text())
        ]

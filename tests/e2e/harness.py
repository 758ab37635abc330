"""Provides a deployment of collect-offline in containers, for end-to-end tests.

A ``Deployment`` is one scenario's tiers: a community server (the app image on
a fresh PostgreSQL database) and field laptops (the app image on SQLite), each
a container on Docker networks, one network per tier. Nodes are driven only
through what an operator has: HTTP, ``manage.py`` through ``docker exec``,
the admin. Every wait polls a health check or a condition with a deadline.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import os
import re
import secrets
import shlex
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import docker
import psycopg
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

log = logging.getLogger(__name__)

APP_IMAGE = "collect-offline/app:latest"
POSTGRES_IMAGE = "collect-offline/postgres:15"
PROBE = Path(__file__).with_name("probe.py")
DATA_KEYS = "/keys/data-keys"
PG_PASSWORD = "e2e"
PG_ALIAS = "postgres"
TEMPLATE_DB = "node_template"
LABEL = {"org.collect-offline.e2e": "1"}


APP_UID = 10001  # the image's ``app`` user


class NodeContainer(DockerContainer):
    """A container that can be given files owned by the app user before start."""

    def with_owned_files(self, files: dict[str, tuple[bytes, int]]) -> NodeContainer:
        """Add ``{path: (content, mode)}``, owned by the app user, with parents."""
        self._transferable_specs.append((_owned_tar(files), None, 0))
        return self

    def _transfer_into_container(self, transferable, destination, mode) -> None:
        if destination is not None:
            return super()._transfer_into_container(transferable, destination, mode)
        if not self._container.put_archive(path="/", data=transferable):
            raise OSError("could not copy the node's files into its container")


def _owned_tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    directories = set()
    for path in files:
        parent = PurePosixPath(path).parent
        while str(parent) not in ("/", "/app", "/app/var"):
            directories.add(str(parent))
            parent = parent.parent
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in sorted(directories, key=len):
            info = tarfile.TarInfo(directory.lstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.uid = info.gid = APP_UID
            tar.addfile(info)
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(content)
            info.mode = mode
            info.uid = info.gid = APP_UID
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def signing_key_pair() -> tuple[bytes, str]:
    """Return a new Ed25519 key as PEM, and its public key as a register wants."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return pem, base64.b64encode(raw).decode()


class Timeout(AssertionError):
    """A wait ran out; the message says what was awaited and what was seen."""


class CommandFailed(AssertionError):
    """A command run in a node's container exited non-zero."""


def wait_for(
    condition: Callable[[], object],
    what: str,
    timeout: float = 60,
    interval: float = 0.25,
    hint: str = "",
):
    """Poll ``condition`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - a failing probe is "not yet"
            last_error = exc
        if time.monotonic() > deadline:
            message = f"waited {timeout:.0f} s for {what}"
            if last_error is not None:
                message += f"; last error: {last_error!r}"
            if hint:
                message += f". {hint}"
            raise Timeout(message)
        time.sleep(interval)


def parallel(*calls: Callable[[], object]) -> list:
    """Run independent calls (commands on different nodes) side by side."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def entered(seed: Result) -> int:
    """Return how many transactions ``manage.py seed --transactions`` made."""
    found = re.search(r"entered (\d+) transactions", seed.stdout)
    if not found:
        raise CommandFailed(f"seed said nothing of transactions: {seed.stdout!r}")
    return int(found.group(1))


def make_data_keys() -> tuple[str, dict[str, bytes]]:
    """Return a deployment data key as files: ``{name: content}``."""
    key_id = secrets.token_hex(4)
    return key_id, {
        f"{key_id}.key": base64.b64encode(os.urandom(32)),
        "active": f"{key_id}\n".encode(),
    }


@dataclass
class Job:
    """A command running in a container in the background, logged to a file."""

    node: AppNode
    command: str
    log_path: str
    exec_id: str

    def inspect(self) -> dict:
        return self.node.docker.api.exec_inspect(self.exec_id)

    @property
    def running(self) -> bool:
        return bool(self.inspect()["Running"])

    @property
    def exit_code(self) -> int | None:
        info = self.inspect()
        return None if info["Running"] else info["ExitCode"]

    def output(self) -> str:
        return self.node.sh(f"cat {self.log_path} 2>/dev/null || true").stdout

    def wait(self, timeout: float = 300) -> str:
        """Wait for the command to end; return its output, fail if it failed."""
        wait_for(
            lambda: not self.running,
            f"'{self.command}' on {self.node.node_id} to finish",
            timeout=timeout,
            interval=0.5,
        )
        code = self.exit_code
        text = self.output()
        if code != 0:
            raise CommandFailed(
                f"{self.node.node_id}: '{self.command}' exited {code}\n{text}"
            )
        return text


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@dataclass
class AppNode:
    """One node of the deployment, running the app image in a container."""

    node_id: str
    role: str
    container: DockerContainer
    docker: docker.DockerClient
    token: str = ""
    public_key: str = ""

    @property
    def wrapped(self):
        return self.container.get_wrapped_container()

    @property
    def url(self) -> str:
        """The node's HTTP address as seen from the test process."""
        host = self.container.get_container_host_ip()
        return f"http://{host}:{self.container.get_exposed_port(8000)}"

    def is_running(self) -> bool:
        self.wrapped.reload()
        return self.wrapped.status == "running"

    def healthy(self) -> bool:
        try:
            answer = requests.get(f"{self.url}/health/", timeout=2)
            return answer.status_code == 200
        except (requests.RequestException, ValueError, docker.errors.APIError):
            return False

    def wait_healthy(self, timeout: float = 120) -> None:
        def ready():
            if not self.is_running():
                raise CommandFailed(
                    f"{self.node_id} exited while starting:\n{self.logs()}"
                )
            return self.healthy()

        try:
            wait_for(
                ready,
                f"{self.node_id} to answer /health/",
                timeout=timeout,
                hint="Is its database reachable? Its log is printed below.",
            )
        except CommandFailed:
            raise
        except Timeout as exc:
            raise Timeout(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        try:
            return self.wrapped.logs().decode(errors="replace")
        except docker.errors.APIError as exc:
            return f"(no logs: {exc})"

    # -- commands ----------------------------------------------------------------

    def exec(self, *args: str, check: bool = True, env: dict | None = None) -> Result:
        """Run a command in the container; fail with its output if asked."""
        done = self.wrapped.exec_run(list(args), demux=True, environment=env or {})
        stdout, stderr = (
            part.decode(errors="replace") if part else "" for part in done.output
        )
        result = Result(done.exit_code, stdout, stderr)
        if check and done.exit_code != 0:
            raise CommandFailed(
                f"{self.node_id}: {' '.join(args)} exited {done.exit_code}\n"
                f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
            )
        return result

    def sh(self, script: str, check: bool = True) -> Result:
        return self.exec("sh", "-c", script, check=check)

    def manage(self, *args: str, check: bool = True, env: dict | None = None) -> Result:
        return self.exec("python", "manage.py", *args, check=check, env=env)

    def start_job(self, *args: str, env: dict | None = None) -> Job:
        """Start ``manage.py args`` in the background; its output goes to a file."""
        log_path = f"/tmp/job-{uuid.uuid4().hex[:8]}.log"
        command = "python manage.py " + " ".join(shlex.quote(a) for a in args)
        created = self.docker.api.exec_create(
            self.wrapped.id,
            ["sh", "-c", f"exec {command} > {log_path} 2>&1"],
            environment=env or {},
        )
        self.docker.api.exec_start(created["Id"], detach=True)
        return Job(self, command, log_path, created["Id"])

    def probe(self, *args: str):
        """Return what ``probe.py args`` prints, parsed."""
        return json.loads(self.exec("python", "/e2e/probe.py", *args).stdout)

    def counts(self) -> dict:
        return self.probe("counts")

    def snapshot(self, full: bool = False) -> dict:
        return self.probe("snapshot", *(["--full"] if full else []))

    def keygen(self) -> str:
        out = self.manage("sync", "keygen").stdout
        found = re.search(r"public-key (\S+)", out)
        if not found:
            raise CommandFailed(f"{self.node_id}: no public key in {out!r}")
        self.public_key = found.group(1)
        return self.public_key

    def status(self) -> str:
        return self.manage("sync", "status").stdout

    def problems(self) -> str:
        return self.manage("sync", "problems").stdout

    # -- faults ------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the container's processes, as a power cut would."""
        self.wrapped.kill(signal="SIGKILL")
        wait_for(lambda: not self.is_running(), f"{self.node_id} to stop")

    def restart_after_kill(self) -> None:
        self.wrapped.start()
        self.wait_healthy()

    def held(self, laptop: AppNode) -> int:
        """Return how far this server holds ``laptop``'s sequence (its API)."""
        answer = requests.get(
            f"{self.url}/api/sync/v1/held/",
            params={"producer": laptop.node_id},
            headers={"Authorization": f"Node {laptop.node_id}:{laptop.token}"},
            timeout=5,
        )
        answer.raise_for_status()
        return answer.json()["held_through"]

    def post_push(
        self, envelopes: list[dict], sender: AppNode, token: str | None = None
    ) -> requests.Response:
        """POST envelopes to the push API as ``sender``, as a client would."""
        body = gzip.compress(
            json.dumps({"schema_version": 1, "envelopes": envelopes}).encode()
        )
        return requests.post(
            f"{self.url}/api/sync/v1/push/",
            data=body,
            headers={
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "Authorization": f"Node {sender.node_id}:{token or sender.token}",
            },
            timeout=60,
        )

    def push_lines(self, producer: str) -> list[tuple[int, int]]:
        """Return (stored, duplicates) of every push from ``producer`` logged."""
        pattern = rf"push from {re.escape(producer)}: (\d+) stored, (\d+) duplicates"
        return [(int(a), int(b)) for a, b in re.findall(pattern, self.logs())]

    def watch_memory(self) -> MemoryWatch:
        """Start sampling the container's memory (docker stats), about 1/s."""
        watch = MemoryWatch(self.wrapped)
        watch.start()
        return watch


class MemoryWatch(threading.Thread):
    """Samples of a container's memory use, without the page cache, in bytes."""

    def __init__(self, container):
        super().__init__(daemon=True)
        self.container = container
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        for stats in self.container.stats(stream=True, decode=True):
            memory = stats.get("memory_stats", {})
            detail = memory.get("stats", {})
            cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
            if memory.get("usage"):
                self.samples.append((time.monotonic(), memory["usage"] - cache))
            if self.halt.is_set():
                return

    def stop(self) -> list[int]:
        self.halt.set()
        self.join(timeout=10)
        return [value for _, value in self.samples]


@dataclass
class Deployment:
    """One scenario's networks and containers; ``close()`` removes them all."""

    postgres: PostgresServer
    data_keys: dict[str, bytes]
    docker: docker.DockerClient
    name: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:6]}")
    nodes: list[AppNode] = field(default_factory=list)
    containers: list[DockerContainer] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    _field_network: Network | None = None

    @property
    def field_network(self) -> Network:
        """The field tier: laptops and the community server they push to."""
        if self._field_network is None:
            self._field_network = Network(docker_network_kw={"labels": LABEL}).create()
            self.networks.append(self._field_network)
        return self._field_network

    def _app(
        self, node_id: str, role: str, env: dict, files: dict | None = None
    ) -> AppNode:
        """Prepare (not start) a node's container: keys, probe, environment."""
        pem, public_key = signing_key_pair()
        node_dir = f"/app/var/{node_id}"
        container = (
            NodeContainer(APP_IMAGE)
            .with_exposed_ports(8000)
            .with_envs(
                ROLE=role,
                NODE_ID=node_id,
                ALLOWED_HOSTS="*",
                SYNC_DATA_KEYS_DIR=DATA_KEYS,
                GUNICORN_WORKERS="2",
                LOG_LEVEL="INFO",
                # Migrated from a template already (see Templates).
                MIGRATE="0",
                **{k: str(v) for k, v in env.items()},
            )
            .with_kwargs(labels={**LABEL, "org.collect-offline.node": node_id})
            .with_owned_files(
                {
                    f"{node_dir}/keys/signing.pem": (pem, 0o600),
                    **{
                        f"{node_dir}/{name}": item
                        for name, item in (files or {}).items()
                    },
                }
            )
        )
        for name, content in self.data_keys.items():
            container.with_copy_into_container(content, f"{DATA_KEYS}/{name}")
        container.with_copy_into_container(PROBE.read_bytes(), "/e2e/probe.py")
        node = AppNode(node_id, role, container, self.docker, public_key=public_key)
        self.containers.append(container)
        self.nodes.append(node)
        return node

    def community(self, node_id: str = "community-1", **env) -> AppNode:
        """Start a community server on a fresh database; return it, healthy."""
        return self.server(node_id, "community", **env)

    def server(self, node_id: str, role: str, **env) -> AppNode:
        """Start a node of ``role`` on a fresh PostgreSQL database, healthy."""
        database = self.postgres.create_database(f"{self.name}_{node_id}")
        self.databases.append(database)
        node = self._app(
            node_id,
            role,
            {
                "DATABASE_URL": self.postgres.url_in_network(database),
                "SECRET_KEY": secrets.token_urlsafe(40),
                **env,
            },
        )
        node.container.with_network(self.postgres.network).with_network_aliases(
            f"{self.name}-{node_id}"
        )
        node.container.start()
        self.field_network.connect(node.wrapped.id, network_aliases=[node_id])
        node.wait_healthy()
        return node

    def laptop(
        self, node_id: str, upstream: AppNode | str | None = "community-1", **env
    ) -> AppNode:
        """Start a field laptop on SQLite that pushes to ``upstream``.

        Its token is made here; ``register`` enters it on the server.
        """
        token = secrets.token_urlsafe(24)
        settings = {"SYNC_RETRY_SECONDS": "60", "SYNC_HTTP_TIMEOUT": "20", **env}
        if upstream is not None:
            name = upstream if isinstance(upstream, str) else upstream.node_id
            settings["UPSTREAM_URL"] = f"http://{name}:8000"
            settings["UPSTREAM_TOKEN"] = token
        database = (self.postgres.laptop_database, 0o644)
        node = self._app(node_id, "client", settings, {"db.sqlite3": database})
        node.token = token
        node.container.with_network(self.field_network).with_network_aliases(node_id)
        node.container.start()
        node.wait_healthy()
        if isinstance(upstream, AppNode):
            self.register(upstream, node)
        return node

    def register(
        self, server: AppNode, node: AppNode, *extra: str, token: str | None = None
    ) -> None:
        """Register ``node`` on ``server`` with a token, as an operator would.

        ``--no-token`` in ``extra`` registers only its key (a producer whose
        envelopes arrive through a relay).
        """
        credential = [] if "--no-token" in extra else [f"--token={token or node.token}"]
        server.manage(
            "sync", "node", "add", node.node_id, "--role", node.role,
            "--public-key", node.public_key, *credential, *extra,
        )  # fmt: skip

    def start(
        self,
        *laptops: str,
        laptop_env: dict | None = None,
        each: dict[str, dict] | None = None,
        **community_env,
    ) -> tuple[AppNode, list[AppNode]]:
        """Start a community server and laptops side by side, registered.

        ``laptop_env`` goes to every laptop, ``each[name]`` to one.
        """
        assert self.field_network.id  # made once, before the threads join it
        with ThreadPoolExecutor(max_workers=1 + len(laptops)) as pool:
            server = pool.submit(self.community, **community_env)
            started = [
                pool.submit(
                    self.laptop,
                    name,
                    **{**(laptop_env or {}), **(each or {}).get(name, {})},
                )
                for name in laptops
            ]
            community = server.result()
            nodes = [future.result() for future in started]
        for node in nodes:
            self.register(community, node)
        return community, nodes

    def disconnect(self, node: AppNode) -> None:
        """Cut ``node`` off the field network, as a lost link would."""
        network = self.docker.networks.get(self.field_network.id)
        network.disconnect(node.wrapped.id, force=True)

    def reconnect(self, node: AppNode) -> None:
        network = self.docker.networks.get(self.field_network.id)
        network.connect(node.wrapped.id, aliases=[node.node_id])

    def all_logs(self) -> str:
        parts = []
        for node in self.nodes:
            parts.append(f"===== {node.node_id} ({node.role}) =====\n{node.logs()}")
        parts.append(f"===== postgres =====\n{self.postgres.logs()}")
        return "\n".join(parts)

    def close(self) -> None:
        """Remove every container and network made, whatever state they are in."""
        for container in self.containers:
            try:
                container.stop()
            except Exception as exc:  # noqa: BLE001 - keep removing the rest
                log.warning("could not remove a container: %s", exc)
        for network in self.networks:
            try:
                network.remove()
            except Exception as exc:  # noqa: BLE001
                log.warning("could not remove network %s: %s", network.name, exc)
        for database in self.databases:
            try:
                self.postgres.drop_database(database)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not drop %s: %s", database, exc)


class PostgresServer:
    """The run's PostgreSQL container; each scenario gets fresh databases.

    Databases are copies of a template migrated once per run, so a server
    starts without running every migration again.
    """

    def __init__(self, docker_client: docker.DockerClient):
        self.docker = docker_client
        self.network = Network(docker_network_kw={"labels": LABEL})
        self.container = (
            DockerContainer(POSTGRES_IMAGE)
            .with_envs(POSTGRES_PASSWORD=PG_PASSWORD)
            .with_exposed_ports(5432)
            .with_tmpfs_mount("/var/lib/postgresql/data")
            .with_kwargs(labels=LABEL)
        )
        self._lock = threading.Lock()
        self.laptop_database = b""

    def start(self) -> None:
        self.network.create()
        self.container.with_network(self.network).with_network_aliases(PG_ALIAS)
        self.container.start()
        wait_for(self._ready, "PostgreSQL to accept connections", timeout=90)

    def _ready(self) -> bool:
        with psycopg.connect(self.admin_url(), connect_timeout=2) as connection:
            connection.execute("SELECT 1")
        return True

    def admin_url(self, database: str = "postgres") -> str:
        host = self.container.get_container_host_ip()
        port = self.container.get_exposed_port(5432)
        return f"postgresql://postgres:{PG_PASSWORD}@{host}:{port}/{database}"

    def url_in_network(self, database: str) -> str:
        return f"postgres://postgres:{PG_PASSWORD}@{PG_ALIAS}:5432/{database}"

    def make_templates(self) -> None:
        """Migrate a server database and a laptop's SQLite file, once per run."""
        with psycopg.connect(self.admin_url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        with ThreadPoolExecutor(max_workers=2) as pool:
            server = pool.submit(
                self._migrate,
                "community",
                DATABASE_URL=self.url_in_network(TEMPLATE_DB),
            )
            laptop = pool.submit(self._migrate, "client", NODE_DIR="/tmp/template")
            server.result()
            self.laptop_database = laptop.result()

    def _migrate(self, role: str, **env: str) -> bytes:
        container = (
            DockerContainer(APP_IMAGE)
            .with_envs(ROLE=role, NODE_ID="template", DEBUG="1", **env)
            .with_command("python manage.py migrate --noinput -v0")
            .with_network(self.network)
            .with_kwargs(labels=LABEL)
        )
        try:
            container.start()
            wrapped = container.get_wrapped_container()
            code = wrapped.wait(timeout=180)["StatusCode"]
            if code != 0:
                out, err = container.get_logs()
                raise CommandFailed(
                    f"migrating a {role} template exited {code}:\n"
                    f"{out.decode()}{err.decode()}"
                )
            if role != "client":
                return b""
            stream, _ = wrapped.get_archive("/tmp/template/db.sqlite3")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                return tar.extractfile(tar.getmembers()[0]).read()
        finally:
            container.stop()

    def create_database(self, name: str) -> str:
        name = name.replace("-", "_")
        with self._lock, psycopg.connect(self.admin_url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def logs(self) -> str:
        try:
            out, err = self.container.get_logs()
            return (out + err).decode(errors="replace")[-5000:]
        except Exception as exc:  # noqa: BLE001
            return f"(no logs: {exc})"

    def stop(self) -> None:
        try:
            self.container.stop()
        finally:
            try:
                self.network.remove()
            except Exception as exc:  # noqa: BLE001
                log.warning("could not remove network %s: %s", self.network.name, exc)

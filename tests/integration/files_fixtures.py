"""Provides a site server, central and an OpenSSH server for the batch-file tests.

The site is community-1 after a field day of its own and a push from
laptop-01, so it holds envelopes of two producers; central is a fresh node on
which both are registered. Both live on the run's PostgreSQL cluster: their
templates are made once (one gunicorn start, one push) and each test gets
fresh copies. ``sshd`` runs a real OpenSSH server on 127.0.0.1, chrooted the
way the central stack's SFTP container is.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import COMMUNITY, LAPTOP, Deployment
from tests.integration.nodes import Node, NodeFailed, Server

SITE = COMMUNITY
CENTRAL = "central-1"
SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin") or "/usr/sbin/sshd"
SITE_HOUSEHOLDS = 3


@dataclass
class FileNode(Node):
    """A node whose batch-file folders live under its NODE_DIR."""

    @property
    def outbox(self) -> Path:
        return self.directory / "outbox"

    @property
    def quarantine(self) -> Path:
        return self.directory / "quarantine"

    def held(self) -> int:
        """Return how many envelopes this node would export: its own and relayed."""
        return self.count("sync_outgoingtransaction") + self.count(
            "sync_incomingtransaction"
        )

    def own_through(self) -> int:
        return self.value("SELECT max(sequence) FROM sync_outgoingtransaction") or 0

    def held_through(self, producer: str) -> int:
        return self.value(
            "SELECT contiguous FROM sync_producerstate WHERE producer = %s",
            (producer,),
        )

    def execute(self, sql: str, params: tuple = ()) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            connection.execute(sql, params)

    def study_counts(self) -> dict[str, int]:
        return {table: self.count(table) for table in self.study_tables()}

    def acknowledgements(self, holder: str) -> dict[str, int]:
        return dict(
            self.rows(
                "SELECT producer, through_sequence FROM sync_acknowledgement "
                "WHERE holder = %s",
                (holder,),
            )
        )


@dataclass
class FileServer(FileNode, Server):
    """The site served by gunicorn, so a laptop can push to it."""


@dataclass
class FileTemplates:
    deployment: Deployment
    central_key: str

    def site(self, **settings: str) -> FileNode:
        return self.deployment.node(
            SITE, "community", template="files_site", kind=FileNode, **settings
        )

    def site_server(self) -> FileServer:
        """Start the site under gunicorn; the caller stops it."""
        server = self.deployment.node(
            SITE, "community", template="files_site", kind=FileServer
        )
        server.start()
        return server

    def central(self) -> FileNode:
        return self.deployment.node(
            CENTRAL, "central", template="files_central", kind=FileNode
        )

    def laptop(self, upstream: str) -> Node:
        """Return laptop-01 as it was after pushing to the site."""
        return self.deployment.node(
            LAPTOP,
            "client",
            template="files_laptop",
            UPSTREAM_URL=upstream,
            UPSTREAM_TOKEN=self.deployment.tokens[LAPTOP],
            SYNC_RETRY_SECONDS="5",
        )


@pytest.fixture(scope="session", name="file_templates")
def file_templates_fixture(deployment: Deployment) -> FileTemplates:
    """Make the site (own field day, laptop-01's pushed), central, and the laptop."""
    d = deployment
    d.create_database("files_site", "community_template")
    d.create_database("files_laptop", "laptop_template")
    d.create_database("files_central", "node_template")
    site = d.node(SITE, "community", database="files_site", kind=Server)
    laptop = d.node(LAPTOP, "client", database="files_laptop")
    central = d.node(CENTRAL, "central", database="files_central")

    site.start()
    try:
        laptop.manage(
            "sync", "push", UPSTREAM_URL=site.url, UPSTREAM_TOKEN=d.tokens[LAPTOP]
        )
    finally:
        site.stop()
    site.manage("seed", "--households", str(SITE_HOUSEHOLDS), "--seed", "3")

    central_key = central.keygen()
    site.manage(
        "sync", "node", "add", CENTRAL, "--role", "central",
        "--public-key", central_key, "--no-token",
    )  # fmt: skip
    central.manage(
        "sync", "node", "add", SITE, "--role", "community", "--relay",
        "--public-key", site.keygen(), "--no-token",
    )  # fmt: skip
    central.manage(
        "sync", "node", "add", LAPTOP, "--role", "client",
        "--public-key", laptop.keygen(), "--no-token",
    )  # fmt: skip
    return FileTemplates(d, central_key)


@pytest.fixture(name="site")
def site_fixture(file_templates) -> FileNode:
    """Return the site server holding its own field day and laptop-01's."""
    return file_templates.site()


@pytest.fixture(name="central")
def central_fixture(file_templates) -> FileNode:
    """Return central, empty, with the site (a relay) and laptop-01 registered."""
    return file_templates.central()


# -- changing batch files the way a bad drive or a forger would -----------------


def members_of(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def write_members(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def flip_envelope_byte(path: Path) -> None:
    """Flip one byte inside the compressed envelopes, leaving the tar intact."""
    with tarfile.open(path) as tar:
        member = tar.getmember("envelopes.jsonl.gz")
        offset = member.offset_data + member.size // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


# -- a real OpenSSH server ------------------------------------------------------


@dataclass
class SshServer:
    port: int
    root: Path
    client_key: Path
    known_hosts: Path
    process: subprocess.Popen
    log: Path

    def settings(self, **overrides: str) -> dict[str, str]:
        """Return the site's SYNC_SFTP_* settings for this server."""
        values = {
            "SYNC_SFTP_HOST": "127.0.0.1",
            "SYNC_SFTP_PORT": str(self.port),
            "SYNC_SFTP_USER": "root",
            "SYNC_SFTP_KEY_FILE": str(self.client_key),
            "SYNC_SFTP_KNOWN_HOSTS": str(self.known_hosts),
            "SYNC_SFTP_ROOT": "",
        }
        values.update(overrides)
        return values


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(name="sshd")
def sshd_fixture(tmp_path_factory) -> Iterator[SshServer]:
    """Run OpenSSH's sshd on 127.0.0.1: key login only, SFTP only, chrooted.

    As in the central stack, the chroot is root-owned and holds ``inbox`` and
    ``receipts``; the test runs as root, so the SFTP user is root here.
    """
    if not os.path.exists(SSHD) or os.geteuid() != 0:
        pytest.fail("needs root and openssh-server (apt-get install openssh-server)")
    # sshd refuses a chroot any of whose parents is writable by others, which
    # pytest's temporary folders under /tmp are: use a root-only folder.
    directory = Path(tmp_path_factory.mktemp("sshd"))
    directory.chmod(0o700)
    chroot = Path("/run/collect-sftp-tests") / directory.name
    chroot.mkdir(parents=True, mode=0o755)
    Path("/run/collect-sftp-tests").chmod(0o755)
    (chroot / "inbox").mkdir()
    (chroot / "receipts").mkdir()
    _keygen(directory / "host_key")
    client_key = directory / "client_key"
    (directory / "authorized_keys").write_text(_keygen(client_key) + "\n")
    host_public = (directory / "host_key.pub").read_text().split()
    port = _free_port()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\n"
        f"HostKey {directory / 'host_key'}\nPidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "AllowUsers root\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nUsePAM no\nStrictModes no\n"
        "AllowTcpForwarding no\nX11Forwarding no\nAllowAgentForwarding no\n"
        "PermitTunnel no\nSubsystem sftp internal-sftp\n"
        f"ChrootDirectory {chroot}\nForceCommand internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation dir
    log = directory / "sshd.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=output, stderr=output
        )
    server = SshServer(port, chroot, client_key, known_hosts, process, log)
    try:
        _wait_for_banner(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(chroot, ignore_errors=True)


def _wait_for_banner(server: SshServer, wait: float = 15) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise NodeFailed(f"sshd exited:\n{server.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), 1) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.1)
    raise NodeFailed(f"sshd did not answer on {server.port}:\n{server.log.read_text()}")


# -- central's SFTP container (infra/sftp) --------------------------------------

SFTP_IMAGE = "collect-offline/sftp:latest"


@dataclass
class SftpContainer(SshServer):
    """The container; ``root`` holds one drop per site, as the importer sees it."""

    name: str = ""
    other_key: Path = Path()  # the key of community-2, the other registered site

    def drop(self, site: str = SITE) -> Path:
        return self.root / site

    def logs(self) -> str:
        done = subprocess.run(
            ["docker", "logs", self.name], capture_output=True, text=True, timeout=30
        )
        return done.stdout + done.stderr


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(name="sftp_container")
def sftp_container_fixture(tmp_path) -> Iterator[SftpContainer]:
    """Run central's SFTP image on loopback, with community-1 and -2 registered."""
    if shutil.which("docker") is None or _docker("info", timeout=30).returncode:
        pytest.fail("needs a running Docker engine (make engine)")
    if _docker("image", "inspect", SFTP_IMAGE, timeout=30).returncode:
        built = _docker(
            "build", "-t", SFTP_IMAGE, str(Path(__file__).parents[2] / "infra/sftp")
        )
        if built.returncode:
            pytest.fail(f"cannot build {SFTP_IMAGE}:\n{built.stderr[-2000:]}")
    directory = tmp_path / "sftp"
    (directory / "host-keys").mkdir(parents=True)
    drop = directory / "drops"
    drop.mkdir()
    (directory / "quarantine").mkdir()
    host_key = directory / "host-keys" / "ssh_host_ed25519_key"
    _keygen(host_key)
    client_key, other_key = directory / "site_key", directory / "other_key"
    registered = directory / "authorized_keys"
    registered.write_text(
        f"{_keygen(client_key)} {SITE}\n{_keygen(other_key)} community-2\n"
    )
    port = _free_port()
    host_public = host_key.with_suffix(".pub").read_text().split()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    name = f"collect-sftp-test-{port}"
    started = _docker(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:22",
        "-v", f"{registered}:/run/secrets/sftp_authorized_keys:ro",
        "-v", f"{directory / 'host-keys'}:/etc/ssh/keys",
        "-v", f"{drop}:/srv/sftp",
        "-v", f"{directory / 'quarantine'}:/srv/quarantine",
        SFTP_IMAGE,
    )  # fmt: skip
    if started.returncode:
        raise NodeFailed(f"docker run {SFTP_IMAGE} failed:\n{started.stderr}")
    server = SftpContainer(
        port=port,
        root=drop,
        client_key=client_key,
        known_hosts=known_hosts,
        process=None,
        log=directory / "unused.log",
        name=name,
        other_key=other_key,
    )
    try:
        _wait_for_container(server)
        yield server
    finally:
        _docker("rm", "-f", name, timeout=60)


def _wait_for_container(server: SftpContainer, wait: float = 30) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        state = _docker("inspect", "-f", "{{.State.Health.Status}}", server.name)
        if state.stdout.strip() == "healthy":
            return
        if (
            state.returncode
            or "exited"
            in _docker("inspect", "-f", "{{.State.Status}}", server.name).stdout
        ):
            break
        time.sleep(0.5)
    raise NodeFailed(
        f"{SFTP_IMAGE} did not become healthy within {wait:.0f} s; is "
        f"sftp_authorized_keys mounted?\n--- container log\n{server.logs()}"
    )

"""Provides central's SFTP drop and importer in containers, for end-to-end tests.

As in ``compose/central.yml``: the SFTP container (``infra/sftp``) and
central's importer (the app image running ``sync import --sites --watch`` on
central's database) share the drops volume, one folder per site. A site
reaches the drop as ``<central>-sftp:22`` on the deployment's field network
and logs in as its node id with an SSH key, checking the host key against
the known-hosts file it was given, as ``compose/bin/provision register``
wires it. ``close()`` removes the containers and the volume.
"""

from __future__ import annotations

import io
import logging
import secrets
import tarfile

import docker
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testcontainers.core.container import DockerContainer

from tests.e2e.harness import (
    APP_IMAGE,
    APP_UID,
    DATA_KEYS,
    LABEL,
    AppNode,
    CommandFailed,
    Deployment,
    NodeContainer,
    wait_for,
)

log = logging.getLogger(__name__)

SFTP_IMAGE = "collect-offline/sftp:latest"
DROPS = "/srv/sftp"
# Where the site's SFTP key and central's host key go on the site (the
# defaults of SYNC_SFTP_KEY_FILE and SYNC_SFTP_KNOWN_HOSTS, under NODE_DIR).
SITE_KEY = "keys/sftp"
SITE_KNOWN_HOSTS = "keys/known_hosts"


def ssh_key_pair(comment: str) -> tuple[bytes, str]:
    """Return an Ed25519 SSH key (OpenSSH PEM) and its public line."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return pem, f"{public.decode()} {comment}"


def sftp_settings(central: str = "central-1") -> dict[str, str]:
    """Return a site's SYNC_SFTP_* settings for ``central``'s drop."""
    return {"SYNC_SFTP_HOST": f"{central}-sftp", "SYNC_SFTP_PORT": "22"}


def put_owned(node: AppNode, files: dict[str, tuple[bytes, int]]) -> None:
    """Write ``{path: (content, mode)}`` into a running node, owned by app."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(content)
            info.mode = mode
            info.uid = info.gid = APP_UID
            tar.addfile(info, io.BytesIO(content))
    if not node.wrapped.put_archive(path="/", data=buffer.getvalue()):
        raise OSError(f"could not copy files into {node.node_id}")


class CentralDrop:
    """Central's SFTP container and importer beside a central ``AppNode``."""

    def __init__(self, deployment: Deployment, central_id: str = "central-1"):
        self.deployment = deployment
        self.docker: docker.DockerClient = deployment.docker
        self.central_id = central_id
        self.volume = self.docker.volumes.create(
            name=f"{deployment.name}-drops-{secrets.token_hex(3)}", labels=LABEL
        )
        self.sftp: DockerContainer | None = None
        self.importer: DockerContainer | None = None
        self.site_keys: dict[str, bytes] = {}

    # -- the SFTP drop -------------------------------------------------------------

    def start_sftp(self, *sites: str) -> None:
        """Start the drop with an SSH key made for each of ``sites``."""
        register = []
        for site in sites:
            pem, public = ssh_key_pair(site)
            self.site_keys[site] = pem
            register.append(public)
        self.sftp = (
            DockerContainer(SFTP_IMAGE)
            .with_volume_mapping(self.volume.name, DROPS, "rw")
            .with_network(self.deployment.field_network)
            .with_network_aliases(f"{self.central_id}-sftp")
            .with_kwargs(labels={**LABEL, "org.collect-offline.node": "sftp"})
            .with_copy_into_container(
                ("\n".join(register) + "\n").encode(),
                "/run/secrets/sftp_authorized_keys",
            )
        )
        self.sftp.start()
        wait_for(
            self._sftp_healthy,
            f"{self.central_id}'s SFTP container to be healthy",
            timeout=60,
            interval=0.5,
        )

    def _sftp_healthy(self) -> bool:
        container = self.sftp.get_wrapped_container()
        container.reload()
        if container.status == "exited":
            raise CommandFailed(f"the SFTP container exited:\n{self.sftp_logs()}")
        return container.attrs["State"].get("Health", {}).get("Status") == "healthy"

    def host_key(self) -> str:
        """Return the drop's host public key ("ssh-ed25519 AAAA..."), as made."""
        done = self.sftp.get_wrapped_container().exec_run(
            ["cat", "/etc/ssh/keys/ssh_host_ed25519_key.pub"]
        )
        if done.exit_code != 0:
            raise CommandFailed(f"no host key in the SFTP container: {done.output!r}")
        return " ".join(done.output.decode().split()[:2])

    def give_site_access(self, site: AppNode) -> None:
        """Hand ``site`` its SSH key and the drop's host key, in place."""
        node_dir = f"/app/var/{site.node_id}"
        known = f"{self.central_id}-sftp {self.host_key()}\n".encode()
        put_owned(
            site,
            {
                f"{node_dir}/{SITE_KEY}": (self.site_keys[site.node_id], 0o600),
                f"{node_dir}/{SITE_KNOWN_HOSTS}": (known, 0o644),
            },
        )

    def drop_files(self, site: str, area: str) -> list[str]:
        """List the files in ``site``'s drop under ``area`` (inbox, receipts/..)."""
        done = self.sftp.get_wrapped_container().exec_run(
            ["ls", "-1", f"{DROPS}/{site}/{area}"]
        )
        if done.exit_code != 0:
            return []
        return done.output.decode().split()

    # -- the importer --------------------------------------------------------------

    def start_importer(self, central: AppNode, **env: str) -> None:
        """Run ``sync import --sites --watch`` as central, on central's database.

        The settings are central's own (its container's), plus the drops'
        folder as compose/central.yml sets it (quarantine stays in its node
        folder); the signing key is central's, so the receipts are signed by it.
        """
        node_env = dict(
            item.split("=", 1) for item in central.wrapped.attrs["Config"]["Env"]
        )
        kept = (
            "ROLE", "NODE_ID", "DATABASE_URL", "SECRET_KEY", "SYNC_DATA_KEYS_DIR",
            "LOG_LEVEL",
        )  # fmt: skip
        node_dir = f"/app/var/{central.node_id}"
        pem = central.exec("cat", f"{node_dir}/keys/signing.pem").stdout.encode()
        self.importer = (
            NodeContainer(APP_IMAGE)
            .with_command("python manage.py sync import --sites --watch")
            .with_envs(
                **{name: node_env[name] for name in kept},
                SYNC_SITES_DIR=DROPS,
                SYNC_IMPORT_HEARTBEAT_FILE="/tmp/importer-alive",
                **env,
            )
            .with_volume_mapping(self.volume.name, DROPS, "rw")
            .with_network(self.deployment.postgres.network)
            .with_kwargs(labels={**LABEL, "org.collect-offline.node": "importer"})
            .with_owned_files({f"{node_dir}/keys/signing.pem": (pem, 0o600)})
        )
        for name, content in self.deployment.data_keys.items():
            self.importer.with_copy_into_container(content, f"{DATA_KEYS}/{name}")
        self.importer.start()
        wait_for(
            self._importer_passed,
            f"{central.node_id}'s importer to finish a pass over the drops",
            timeout=90,
            interval=0.5,
        )

    def _importer_passed(self) -> bool:
        container = self.importer.get_wrapped_container()
        container.reload()
        if container.status == "exited":
            raise CommandFailed(f"the importer exited:\n{self.importer_logs()}")
        return container.exec_run(["test", "-e", "/tmp/importer-alive"]).exit_code == 0

    # -- logs and removal ----------------------------------------------------------

    def sftp_logs(self) -> str:
        return _logs(self.sftp)

    def importer_logs(self) -> str:
        return _logs(self.importer)

    def all_logs(self) -> str:
        return (
            f"===== {self.central_id}-sftp =====\n{self.sftp_logs()}\n"
            f"===== {self.central_id} importer =====\n{self.importer_logs()}"
        )

    def close(self) -> None:
        """Remove the containers, then the drops volume, whatever their state."""
        for container in (self.importer, self.sftp):
            if container is None:
                continue
            try:
                container.stop()
            except Exception as exc:  # noqa: BLE001 - keep removing the rest
                log.warning("could not remove a container: %s", exc)
        try:
            self.volume.remove(force=True)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not remove volume %s: %s", self.volume.name, exc)


def _logs(container: DockerContainer | None) -> str:
    if container is None:
        return "(not started)"
    try:
        return container.get_wrapped_container().logs().decode(errors="replace")
    except Exception as exc:  # noqa: BLE001
        return f"(no logs: {exc})"

"""Provides the SFTP drop: batches to central's inbox, receipts back, over SSH.

Authentication is by key only, and central's host key must already be in the
known-hosts file: an unknown or changed host key stops the transfer, so a
batch never goes to a machine that only claims to be central. Uploads go to
a temporary name and are renamed, so central's importer never sees half a
file.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import paramiko
from django.conf import settings

from .files import TransferFailed, fsync_directory

log = logging.getLogger(__name__)
security_log = logging.getLogger("sync.security")


class SftpDrop:
    """Central's SFTP account as drop: ``inbox/`` and ``receipts/<site>/``."""

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        key_file: str | None = None,
        known_hosts: str | None = None,
        root: str | None = None,
    ):
        self.host = host or settings.SYNC_SFTP_HOST
        self.port = port or settings.SYNC_SFTP_PORT
        self.user = user or settings.SYNC_SFTP_USER
        self.root = (settings.SYNC_SFTP_ROOT if root is None else root).rstrip("/")
        key_file = key_file or settings.SYNC_SFTP_KEY_FILE
        known_hosts = known_hosts or settings.SYNC_SFTP_KNOWN_HOSTS
        if not self.host:
            raise TransferFailed("No SFTP host is set: set SYNC_SFTP_HOST.")
        if not Path(known_hosts).is_file():
            raise TransferFailed(
                f"No known-hosts file at {known_hosts}: add central's host key "
                "there (ssh-keyscan, checked against central's console) and set "
                "SYNC_SFTP_KNOWN_HOSTS."
            )
        self.client = paramiko.SSHClient()
        self.client.load_host_keys(known_hosts)
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self.client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=key_file,
                look_for_keys=False,
                allow_agent=False,
                timeout=settings.SYNC_SFTP_TIMEOUT,
                banner_timeout=settings.SYNC_SFTP_TIMEOUT,
                auth_timeout=settings.SYNC_SFTP_TIMEOUT,
            )
            self.sftp = self.client.open_sftp()
        except paramiko.BadHostKeyException as exc:
            security_log.error("host key of %s changed: %s", self, exc)
            self.client.close()
            raise TransferFailed(
                f"The host key of {self} does not match the known-hosts file: "
                "refusing to connect (a different machine, or central was "
                "reinstalled; check before updating the file)."
            ) from exc
        except paramiko.SSHException as exc:
            self.client.close()
            if "not found in known_hosts" in str(exc):
                security_log.error("unknown host key for %s", self)
                raise TransferFailed(
                    f"{self} is not in the known-hosts file; refusing to connect."
                ) from exc
            raise TransferFailed(f"SFTP to {self} failed: {exc}") from exc
        except OSError as exc:
            self.client.close()
            raise TransferFailed(f"cannot reach {self}: {exc}") from exc
        log.info("connected to %s", self)

    def __str__(self) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}/{self.root}"

    def _path(self, area: str, name: str = "") -> str:
        parts = [self.root, area, name] if self.root else [area, name]
        return "/".join(part for part in parts if part)

    def put(self, local: Path, area: str) -> bool:
        target = self._path(area, local.name)
        try:
            if self.sftp.stat(target).st_size == local.stat().st_size:
                return False
        except FileNotFoundError:
            pass
        temporary = self._path(area, f".{local.name}.part")
        try:
            self.sftp.put(str(local), temporary, confirm=True)
            self.sftp.posix_rename(temporary, target)
        except OSError as exc:
            raise TransferFailed(
                f"upload of {local.name} to {self} failed: {exc}"
            ) from exc
        log.debug("uploaded %s to %s", local.name, target)
        return True

    def names(self, area: str) -> list[str]:
        try:
            entries = self.sftp.listdir_attr(self._path(area))
        except FileNotFoundError:
            return []
        return sorted(
            entry.filename
            for entry in entries
            if stat.S_ISREG(entry.st_mode or 0) and not entry.filename.startswith(".")
        )

    def get(self, area: str, name: str, local: Path) -> None:
        temporary = local.with_name(f".{local.name}.part")
        try:
            self.sftp.get(self._path(area, name), str(temporary))
        except FileNotFoundError:
            temporary.unlink(missing_ok=True)
            raise
        except OSError as exc:
            raise TransferFailed(
                f"download of {name} from {self} failed: {exc}"
            ) from exc
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, local)
        fsync_directory(local.parent)

    def remove(self, area: str, name: str) -> None:
        try:
            self.sftp.remove(self._path(area, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Harmless: the copy is fetched, and importing it again is a no-op.
            log.warning("could not remove %s from %s: %s", name, self, exc)

    def close(self) -> None:
        self.client.close()

"""Provides stand-in hosts for the Ansible roles: Debian containers with an engine.

Each host is a container of ``collect-offline/ansible-host:test`` (built from
tests/ansible/host/Dockerfile on the air-gapped Debian image), reached by
Ansible through ``community.docker.docker``. It runs a Docker engine of its
own on the vfs storage driver; ``--privileged`` does not work on these
machines, so the host gets the capabilities an inner engine needs: SYS_ADMIN
and NET_ADMIN to start containers, SYS_PTRACE for ``docker exec`` and health
checks (without it runc fails "error executing setns process").
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
HOST_IMAGE = "collect-offline/ansible-host:test"
HOST_DOCKERFILE_DIR = REPO / "tests" / "ansible" / "host"
BASE_IMAGE = "collect-offline/debian:bookworm"
CA_FILE = "/opt/collect-offline/node/ca.crt"
# Where app_stack keeps `docker save` archives on the controller.
IMAGE_CACHE = REPO / "build" / "ansible-images"
# Images the roles load, and the inventory variable naming each.
IMAGES = {
    "collect-offline/app:latest": "collect_app_image",
    "collect-offline/postgres:15": "collect_postgres_image",
    "collect-offline/sftp:latest": "collect_sftp_image",
}
ENGINE_FLAGS = (
    "--cap-add", "SYS_ADMIN",
    "--cap-add", "NET_ADMIN",
    "--cap-add", "SYS_PTRACE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
)  # fmt: skip
RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def run(*args: str, check: bool = True, timeout: float = 600) -> str:
    """Run a command; return its stdout, or raise with its output."""
    result = subprocess.run(
        args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:8])} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def build_host_image() -> None:
    """Build the stand-in host image unless it exists (docker caches the rest)."""
    inspect = ["docker", "image", "inspect", HOST_IMAGE]
    if subprocess.run(inspect, capture_output=True).returncode == 0:
        return
    run("docker", "image", "inspect", BASE_IMAGE)
    log.info("building %s", HOST_IMAGE)
    run("docker", "build", "-t", HOST_IMAGE, str(HOST_DOCKERFILE_DIR), timeout=1200)


@dataclass
class Host:
    """One stand-in machine: inventory name, group, container and address."""

    name: str
    group: str
    container: str
    address: str = ""
    upstream: str = ""

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> str:
        """Run a shell script on the host."""
        return run(
            "docker", "exec", self.container, "sh", "-c", script,
            check=check, timeout=timeout,
        )  # fmt: skip

    def manage(self, *args: str, check: bool = True) -> str:
        """Run ``manage.py`` in the app container of the host's own engine."""
        app = self.sh(
            "docker ps -q --filter label=com.docker.compose.service=app"
        ).strip()
        assert app, f"no app container runs on {self.name}"
        return run(
            "docker", "exec", self.container, "docker", "exec", app,
            "python", "manage.py", *args, check=check,
        )  # fmt: skip

    def health(self, port: int) -> dict:
        """GET /health/ on the host's loopback, verified with the deployment CA."""
        script = (
            "import ssl, urllib.request as u; "
            f"c = ssl.create_default_context(cafile='{CA_FILE}'); "
            f"r = u.urlopen('https://127.0.0.1:{port}/health/', context=c, timeout=9); "
            "print(r.read().decode())"
        )
        answer = run("docker", "exec", self.container, "python3", "-c", script)
        return json.loads(answer)

    def logs(self) -> str:
        """The inner engine's containers and their last log lines."""
        return self.sh(
            "docker ps -a; for c in $(docker ps -aq); do "
            'echo "=== $c"; docker logs --tail 60 $c 2>&1; done; '
            "echo '=== dockerd'; tail -n 40 /var/log/dockerd.log",
            check=False,
        )


class Deployment:
    """Stand-in hosts on a network of their own, and the inventory naming them."""

    def __init__(self, hosts: list[Host], workdir: Path):
        self.run_id = uuid.uuid4().hex[:8]
        self.network = f"co-ansible-{self.run_id}"
        self.hosts = hosts
        self.workdir = workdir
        self.inventory = workdir / "hosts.yml"
        self.runs = 0
        self.images: dict[str, str] = {}
        for host in hosts:
            host.container = f"co-ansible-{self.run_id}-{host.name}"

    def start(self) -> None:
        build_host_image()
        # Pinned tags: `make images` elsewhere on this machine must not change
        # the images between the runs of one test.
        for image, variable in IMAGES.items():
            pinned = f"{image.split(':')[0]}:ansible-test-{self.run_id}"
            run("docker", "tag", image, pinned)
            self.images[variable] = pinned
        run("docker", "network", "create", self.network)
        for host in self.hosts:
            run(
                "docker", "run", "-d", "--init", "--name", host.container,
                "--hostname", host.name, "--network", self.network,
                "--label", "org.collect-offline.test=ansible",
                *ENGINE_FLAGS, HOST_IMAGE,
            )  # fmt: skip
            host.address = run(
                "docker", "inspect", "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                host.container,
            ).strip()  # fmt: skip
        self.write_inventory()

    def write_inventory(self) -> None:
        groups: dict[str, dict] = {}
        for host in self.hosts:
            variables = {
                "ansible_host": host.container,
                "collect_address": host.address,
                # Host vars: inventory group vars lose to ansible/group_vars/.
                **self.images,
            }
            if host.upstream:
                variables["collect_upstream"] = host.upstream
            groups.setdefault(host.group, {"hosts": {}})["hosts"][host.name] = variables
        inventory = {
            "all": {
                "vars": {
                    "ansible_connection": "community.docker.docker",
                    "ansible_become": False,
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "docker_engine_storage_driver": "vfs",
                },
                "children": groups,
            }
        }
        self.inventory.write_text(yaml.safe_dump(inventory, sort_keys=False))

    def playbook(self, *extra: str) -> tuple[str, dict[str, dict[str, int]]]:
        """Run ansible/site.yml; return its output and the recap per host."""
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
        }
        result = subprocess.run(
            [str(REPO / ".venv" / "bin" / "ansible-playbook"),
             "-i", str(self.inventory), str(REPO / "ansible" / "site.yml"), *extra],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=1500,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        output = result.stdout + result.stderr
        self.runs += 1
        (self.workdir / f"playbook-{self.runs}.log").write_text(output)
        if result.returncode != 0:
            raise AssertionError(
                f"ansible-playbook {' '.join(extra)} failed:\n{output[-8000:]}"
            )
        recap = {
            m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
            for m in RECAP.finditer(output)
        }
        return output, recap

    def logs(self) -> str:
        return "\n".join(f"##### {h.name}\n{h.logs()}" for h in self.hosts)

    def stop(self) -> None:
        # One command: the engine removes the hosts side by side.
        containers = [host.container for host in self.hosts]
        run("docker", "rm", "-f", "-v", *containers, check=False)
        run("docker", "network", "rm", self.network, check=False)
        for pinned in self.images.values():
            run("docker", "rmi", pinned, check=False)
        for archive in IMAGE_CACHE.glob(f"*ansible-test-{self.run_id}-*.tar"):
            archive.unlink()

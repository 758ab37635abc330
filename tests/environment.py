"""Provides the environment a test run's node is made from, before settings load.

``TEST_DB`` picks the database: ``sqlite`` (default) or ``postgres``. For
PostgreSQL, ``TEST_DATABASE_URL`` names a server the tests may create
databases on; without it a throwaway cluster is started here and stopped
when the run ends. Keys are made fresh in a temporary directory.

Every node in a test run has two databases: ``default`` (this node) and
``peer`` (another node of the deployment, for round trips between nodes).
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

NODE_ID = "test-node"
MARKER = "COLLECT_TEST_ENVIRONMENT"

_cluster = None


def prepare() -> None:
    """Set the environment the settings module reads; once per process."""
    global _cluster
    if os.environ.get(MARKER):
        return
    from sync import keys

    backend = os.environ.get("TEST_DB", "sqlite").strip().lower()
    if backend not in ("sqlite", "postgres"):
        raise RuntimeError(f"TEST_DB={backend!r}: use sqlite or postgres.")
    directory = Path(tempfile.mkdtemp(prefix="collect-tests-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    keys.create_signing_key(directory / "keys" / "signing.pem")
    keys.create_data_key(directory / "data-keys")

    os.environ["ROLE"] = "community"
    os.environ["NODE_ID"] = NODE_ID
    os.environ["DEBUG"] = "1"
    os.environ["NODE_DIR"] = str(directory / "node")
    os.environ["SYNC_SIGNING_KEY_FILE"] = str(directory / "keys" / "signing.pem")
    os.environ["SYNC_DATA_KEYS_DIR"] = str(directory / "data-keys")
    os.environ.pop("UPSTREAM_URL", None)

    if backend == "sqlite":
        os.environ["DATABASE_URL"] = f"sqlite:///{directory / 'node.sqlite3'}"
        os.environ["PEER_DATABASE_URL"] = f"sqlite:///{directory / 'peer.sqlite3'}"
    elif os.environ.get("TEST_DATABASE_URL"):
        url = os.environ["TEST_DATABASE_URL"].rstrip("/")
        os.environ["DATABASE_URL"] = url
        os.environ["PEER_DATABASE_URL"] = url + "_peer"
    else:
        from tests.pgcluster import start_cluster

        _cluster = start_cluster(["collect", "collect_peer"])
        atexit.register(teardown)
        os.environ["DATABASE_URL"] = _cluster.url("collect")
        os.environ["PEER_DATABASE_URL"] = _cluster.url("collect_peer")
    os.environ[MARKER] = backend


def teardown() -> None:
    """Stop the throwaway cluster, if this run started one."""
    if _cluster is not None:
        _cluster.stop()

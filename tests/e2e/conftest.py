"""Provides the end-to-end fixtures: the run's PostgreSQL, a fresh deployment.

The images come from ``make images`` (``make test-e2e`` builds them first);
a missing image stops the run with what to do. Every scenario gets its own
networks, containers and databases; they are removed when it ends, even when
starting them failed, and a failing scenario prints every container's log.
"""

import os

# The reaper image cannot be pulled here (no registry); the fixtures below
# remove what they start instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker  # noqa: E402
import pytest  # noqa: E402

from tests.e2e.harness import (  # noqa: E402
    APP_IMAGE,
    POSTGRES_IMAGE,
    Deployment,
    PostgresServer,
    make_data_keys,
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.exit(f"No Docker engine answers ({exc}); start one: make engine", 2)
    missing = []
    for image in (APP_IMAGE, POSTGRES_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        pytest.exit(
            f"Image(s) {', '.join(missing)} not found. Build them first: "
            "make images (or run the suite with: make test-e2e).",
            2,
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres(docker_client):
    """Start the run's PostgreSQL and migrate the template database once."""
    server = PostgresServer(docker_client)
    try:
        try:
            server.start()
            server.make_templates()
        except Exception:
            print(f"===== postgres =====\n{server.logs()}")
            raise
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def data_keys():
    return make_data_keys()[1]


@pytest.fixture
def deployment(request, postgres, data_keys, docker_client):
    """Return an empty deployment; print its logs if the scenario fails."""
    deployment = Deployment(postgres, data_keys, docker_client)
    try:
        yield deployment
    finally:
        failed = any(
            getattr(getattr(request.node, f"report_{when}", None), "failed", False)
            for when in ("setup", "call")
        )
        if failed:
            print(deployment.all_logs())
        deployment.close()

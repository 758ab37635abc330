"""Provides the test node's environment checks and fixtures shared by all tests."""

import os

import pytest

from tests import environment


def pytest_configure(config):
    if not os.environ.get(environment.MARKER):
        raise pytest.UsageError(
            "The tests must run with DJANGO_SETTINGS_MODULE=tests.settings, which "
            "makes a throwaway node (TEST_DB=sqlite|postgres) before settings load; "
            "they would otherwise use this machine's node, keys and database."
        )


def pytest_collection_modifyitems(config, items):
    if os.environ.get(environment.MARKER) == "postgres":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: run with TEST_DB=postgres")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def pytest_unconfigure(config):
    environment.teardown()


@pytest.fixture
def remote(db):
    """Return a factory of other nodes, each entered in this node's register."""
    from tests.factories import RemoteProducer

    def make(node_id: str, using: str = "default") -> RemoteProducer:
        producer = RemoteProducer(node_id)
        producer.register(using)
        return producer

    return make


@pytest.fixture
def peer(db):
    """Make the ``peer`` database a node that accepts this node's envelopes.

    The peer gets the reference data in reverse order, so its symptom ids
    differ from this node's and only natural keys match. (The study's data
    migration writes to the default database whichever one it migrates, so
    the peer starts without symptoms.) Tests using it need
    ``@pytest.mark.django_db(databases=["default", "peer"])``.
    """
    from django.conf import settings
    from study.models import Symptom
    from sync import keys
    from sync.models import Node

    Node.objects.using("peer").create(
        node_id=settings.SYNC_NODE_ID,
        role=Node.Role.COMMUNITY,
        public_key=keys.public_key_text(),
    )
    for symptom in Symptom.objects.order_by("-short_name"):
        Symptom.objects.using("peer").get_or_create(
            short_name=symptom.short_name, defaults={"name": symptom.name}
        )

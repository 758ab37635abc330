"""Provides a community server and a field laptop provisioned by ansible/site.yml."""

import pytest

from tests.ansible.hosts import Deployment, Host


@pytest.fixture(scope="module")
def deployment(request, tmp_path_factory):
    """Two stand-in hosts, provisioned once; removed after the module, pass or fail."""
    hosts = [
        Host("community-t1", "community_servers", ""),
        Host("laptop-t1", "field_laptops", "", upstream="community-t1"),
    ]
    deployment = Deployment(hosts, tmp_path_factory.mktemp("ansible"))
    failed_before = request.session.testsfailed
    try:
        deployment.start()
        deployment.first_run = deployment.playbook()
        yield deployment
    except BaseException:
        print(deployment.logs())
        raise
    else:
        if request.session.testsfailed > failed_before:
            print(deployment.logs())
    finally:
        deployment.stop()

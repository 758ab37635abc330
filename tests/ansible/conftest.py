"""Provides one stand-in host per tier, provisioned by ansible/site.yml.

KEEP_ANSIBLE_HOSTS=1 leaves the stand-in hosts running after the tests, to
look into them (`docker ps --filter label=org.collect-offline.test=ansible`).
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.ansible.hosts import Deployment, Host


@pytest.fixture(scope="module")
def deployment(request):
    """Four stand-in hosts, provisioned once; removed after the module, pass or fail.

    The inventory, the deployment's secrets and the playbook logs are in a
    folder of their own (pytest's basetemp is pruned by concurrent runs),
    removed after a passing module and kept, with its path printed, otherwise.
    """
    hosts = [
        Host("central-t1", "central", ""),
        Host("community-t1", "community_servers", "", upstream="central-t1"),
        Host("middleman-t1", "middlemen", "", upstream="community-t1"),
        Host("laptop-t1", "field_laptops", "", upstream="community-t1"),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="co-ansible-"))
    deployment = Deployment(hosts, workdir)
    failed_before = request.session.testsfailed
    try:
        deployment.start()
        deployment.first_run = deployment.playbook()
        yield deployment
    except BaseException:
        failed_before = -1
        raise
    finally:
        if request.session.testsfailed > failed_before:
            print(deployment.logs())
            print(f"playbook logs, inventory and secrets: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if not os.environ.get("KEEP_ANSIBLE_HOSTS"):
            deployment.stop()

# collect-offline: one codebase, four roles. `make help` lists the targets.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
ROLE ?= client
NODE_ID ?= $(ROLE)-1
PORT_client := 8000
PORT_middleman := 8100
PORT_community := 8200
PORT_central := 8300
PORT ?= $(PORT_$(ROLE))
export PYTHONDONTWRITEBYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help install host-packages lint test test-fast test-e2e run seed bench lock

help:
	@echo "make demo              the field-to-server flow in containers, with a report"
	@echo "make test              the whole suite: lint, unit, integration, e2e, smoke, Ansible"
	@echo "make test-fast         everything that needs no Docker"
	@echo "make run ROLE=client   one node natively (SQLite unless DATABASE_URL is set)"
	@echo "make seed              a realistic field day on the node of ROLE/NODE_ID"
	@echo "make bench [N=...]     push N transactions over HTTP on PostgreSQL, measured"
	@echo "make images            build the images (air-gapped by default)"
	@echo "make ca                the deployment CA (var/deployment/ca/ca.crt)"
	@echo "make up ROLE=...       a role's Compose stack over https, waiting until healthy"
	@echo "                       (ROLE: client, middleman, community, central; NODE_ID=<role>-1)"
	@echo "make down ROLE=...     stop that stack; its data volumes are kept"
	@echo "make logs ROLE=...     follow that stack's logs"
	@echo "make register NODE_ID=...  register a node on its upstream's stack (and above)"
	@echo "make smoke             every role up side by side, /health/ over https, down"
	@echo "make provision TIER=... INVENTORY=...  provision hosts with Ansible (ansible/)"
	@echo "make lint | test-e2e | test-ansible    parts of make test"
	@echo "make install           the virtualenv (.venv) from the lock files"

# The virtualenv is rebuilt whenever a lock file changes. The host's own
# packages (PostgreSQL server binaries, sshd, venv) are installed when missing.
install: host-packages $(VENV)/.installed
host-packages:
	@bash infra/host-packages.sh
$(VENV)/.installed: | host-packages
$(VENV)/.installed: requirements/dev.lock requirements/base.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements/dev.lock
	touch $@

lock:
	$(VENV)/bin/pip-compile -q --no-strip-extras -o requirements/base.lock pyproject.toml
	$(VENV)/bin/pip-compile -q --no-strip-extras --extra dev -c requirements/base.lock \
		-o requirements/dev.lock pyproject.toml

lint: install
	$(VENV)/bin/ruff check apps tests
	$(VENV)/bin/ruff format --check apps tests
	ROLE=client NODE_ID=lint DEBUG=1 DATABASE_URL=sqlite:///:memory: \
		$(PY) manage.py makemigrations --check --dry-run
	ROLE=client NODE_ID=lint DEBUG=1 DATABASE_URL=sqlite:///:memory: \
		$(PY) manage.py check
	ROLE=community NODE_ID=lint DEBUG=1 DATABASE_URL=sqlite:///:memory: \
		$(PY) manage.py spectacular --validate --fail-on-warn > /dev/null

# One engine contract, run against SQLite and against PostgreSQL.
test-fast: lint
	TEST_DB=sqlite $(PYTEST) tests/unit -m "not postgres"
	TEST_DB=postgres $(PYTEST) tests/unit tests/integration -m "not docker"

test-e2e: install images
	TEST_DB=postgres $(PYTEST) tests/integration -m docker
	$(PYTEST) tests/e2e

# Containers last: each tier's stack starts (smoke), then provisioning by Ansible.
test: test-fast test-e2e smoke test-ansible

run: install
	@test -n "$(PORT)" || { echo "ROLE must be client, middleman, community or central"; exit 2; }
	ROLE=$(ROLE) NODE_ID=$(NODE_ID) DEBUG=$${DEBUG:-1} $(PY) manage.py migrate
	ROLE=$(ROLE) NODE_ID=$(NODE_ID) DEBUG=$${DEBUG:-1} $(PY) manage.py sync keygen \
		$$(test -f var/deployment/data-keys/active || echo --data-key)
	ROLE=$(ROLE) NODE_ID=$(NODE_ID) DEBUG=$${DEBUG:-1} $(VENV)/bin/gunicorn \
		--chdir apps config.wsgi:application --bind 127.0.0.1:$(PORT) --workers 2 \
		--no-control-socket

seed: install
	ROLE=$(ROLE) NODE_ID=$(NODE_ID) DEBUG=$${DEBUG:-1} $(PY) manage.py migrate -v0
	ROLE=$(ROLE) NODE_ID=$(NODE_ID) DEBUG=$${DEBUG:-1} $(PY) manage.py sync keygen \
		$$(test -f var/deployment/data-keys/active || echo --data-key) > /dev/null
	ROLE=$(ROLE) NODE_ID=$(NODE_ID) DEBUG=$${DEBUG:-1} $(PY) manage.py seed \
		--households $${HOUSEHOLDS:-30}

N ?= 10000 100000
bench: install
	$(PY) -m tests.bench.push $(N)

include infra/images.mk
include compose/compose.mk
include ansible/ansible.mk

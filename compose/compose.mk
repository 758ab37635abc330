# compose/compose.mk — one Compose stack per role; `include compose/compose.mk`
# from the top Makefile (after infra/images.mk, which provides `images`).
#
#   make ca                        the deployment CA in var/deployment/ca/
#   make up ROLE=... [NODE_ID=...]  keys, certificates, then the role's stack,
#                                  waiting until every container is healthy
#   make down ROLE=...             stop the stack; its volumes (data) are kept
#   make logs ROLE=...             follow the stack's logs
#   make register NODE_ID=...      register a node on its upstream's running stack
#                                  (writes its upstream token) and its key above
#                                  that; a middleman upstream may then pull from it;
#                                  a community server also gets SFTP to central
#   make demo                      central, a community server, a middleman and
#                                  three laptops in containers, with a report
#   make smoke                     every role up, /health/ over https, down
#
# NODE_ID defaults to <role>-1; HTTPS_PORT, UPSTREAM, PROJECT, PROFILES,
# SFTP_PUBLISH and NETWORK_PREFIX pass through to compose/bin/provision (see its header). Node
# files live in var/deployment/nodes/<NODE_ID>/. A second laptop beside
# client-1, collected by the middleman:
#   make up ROLE=client NODE_ID=client-2 HTTPS_PORT=8444 UPSTREAM=middleman-1
#   make register NODE_ID=client-2

VENV ?= .venv
PY ?= $(VENV)/bin/python
ROLE ?= client
NODE_ID ?= $(ROLE)-1
COMPOSE ?= $(abspath $(VENV))/bin/docker-compose
export COMPOSE

STACK := compose/bin/stack
PROVISION := compose/bin/provision
COMPOSE_ROLES := client middleman community central

.PHONY: ca up down logs register demo smoke

ca:
	bash infra/certs/make-ca.sh
	@echo "CA certificate: var/deployment/ca/ca.crt"

# A role outside the four would only fail later with a less useful message.
define check-role
	@case " $(COMPOSE_ROLES) " in *" $(ROLE) "*) ;; \
		*) echo "ROLE must be one of: $(COMPOSE_ROLES)"; exit 2 ;; esac
endef

# SKIP_IMAGES=1: the caller built the images already (smoke, demo).
# The role is checked before the images are built, not after.
.PHONY: role-ok
role-ok:
	$(check-role)

up: role-ok $(if $(SKIP_IMAGES),,images)
	$(PROVISION) node $(ROLE) $(NODE_ID)
	$(STACK) $(NODE_ID) up -d --wait
	@port=$$(sed -n 's/^HTTPS_PORT=//p' var/deployment/nodes/$(NODE_ID)/compose.env); \
		echo "$(ROLE) $(NODE_ID) is up: https://127.0.0.1:$$port/sync/" \
		"(CA: var/deployment/ca/ca.crt)"

down:
	$(check-role)
	$(STACK) $(NODE_ID) down

logs:
	$(check-role)
	$(STACK) $(NODE_ID) logs -f --tail=200

register:
	$(PROVISION) register $(NODE_ID)

demo: install images
	$(PY) compose/demo.py

smoke: images
	SKIP_IMAGES=1 bash infra/ci/smoke-up.sh

# ansible/ansible.mk — provision machines of every tier with Ansible;
# `include ansible/ansible.mk` from the top Makefile.
#
#   make provision INVENTORY=path [TIER=group] [ANSIBLE_ARGS=...]
#       run ansible/site.yml against an inventory; TIER limits it to one group
#       (field_laptops, middlemen, community_servers, central). Upstream
#       servers must be in the inventory: laptops register on them.
#   make provision-check ...   the same in --check --diff mode (changes nothing)
#   make ansible-lint          ansible-lint on ansible/
#   make test-ansible          ansible-lint, then tests/ansible: stand-in hosts
#                              in containers provisioned twice and pushed across
#
# The controller needs the images (`make images`): they are `docker save`d and
# loaded on hosts that have no registry.

VENV ?= .venv
INVENTORY ?= ansible/inventories/example/hosts.yml
TIER ?= all
ANSIBLE_ARGS ?=
ANSIBLE_ENV := ANSIBLE_CONFIG=$(CURDIR)/ansible/ansible.cfg ANSIBLE_ROLES_PATH=$(CURDIR)/ansible/roles
ANSIBLE_TIERS := all field_laptops middlemen community_servers central

.PHONY: provision provision-check ansible-lint test-ansible

define check-tier
	@case " $(ANSIBLE_TIERS) " in *" $(TIER) "*) ;; \
		*) echo "TIER must be one of: $(ANSIBLE_TIERS)"; exit 2 ;; esac
endef

provision: install images
	$(check-tier)
	$(ANSIBLE_ENV) $(VENV)/bin/ansible-playbook -i $(INVENTORY) ansible/site.yml \
		--limit $(TIER) $(ANSIBLE_ARGS)

provision-check: install
	$(check-tier)
	$(ANSIBLE_ENV) $(VENV)/bin/ansible-playbook -i $(INVENTORY) ansible/site.yml \
		--limit $(TIER) --check --diff $(ANSIBLE_ARGS)

ansible-lint: install
	cd ansible && PATH=$(abspath $(VENV))/bin:$$PATH ansible-lint

test-ansible: ansible-lint images
	$(VENV)/bin/pytest tests/ansible

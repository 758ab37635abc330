# infra/images.mk — container images; `include infra/images.mk` from the top Makefile.
#
#   make engine       start a Docker engine if none answers (installs docker.io if needed)
#   make wheels       build/wheels from requirements/base.lock (host pip; the image
#                     installs only from these, so its build needs no network)
#   make base-images  air-gapped bases: collect-offline/{debian:bookworm,python:3.11-slim,postgres:15}
#   make images       all of the above + the app image $(APP_IMAGE) and central's
#                     SFTP drop $(SFTP_IMAGE) (infra/sftp)
#
# AIRGAP=1 (default here: no container registry is reachable) builds on the local
# collect-offline/python:3.11-slim; AIRGAP=0 uses upstream python:3.11-slim-bookworm.
# Everything skips work already done (existing image tags, unchanged lock, docker cache).

VENV ?= .venv
PY ?= $(VENV)/bin/python
AIRGAP ?= 1
APP_IMAGE ?= collect-offline/app:latest
SFTP_IMAGE ?= collect-offline/sftp:latest
WHEELS_DIR ?= build/wheels
WHEELS_STAMP := build/.wheels.stamp

ifeq ($(AIRGAP),1)
PYTHON_IMAGE ?= collect-offline/python:3.11-slim
DEBIAN_IMAGE ?= collect-offline/debian:bookworm
IMAGES_BASE := base-images
else
PYTHON_IMAGE ?= python:3.11-slim-bookworm
DEBIAN_IMAGE ?= debian:bookworm
IMAGES_BASE :=
endif

.PHONY: engine wheels base-images images app-image sftp-image

engine:
	bash infra/docker/ensure-engine.sh

wheels: $(WHEELS_STAMP)

# Rebuilt only when the lock changes; built aside and swapped in so a failed
# run never leaves a half-filled wheel dir behind.
$(WHEELS_STAMP): requirements/base.lock | install
	@echo "[images.mk] building wheels into $(WHEELS_DIR)"
	rm -rf $(WHEELS_DIR).tmp
	$(VENV)/bin/pip wheel --no-deps -q -r requirements/base.lock -w $(WHEELS_DIR).tmp
	rm -rf $(WHEELS_DIR) && mv $(WHEELS_DIR).tmp $(WHEELS_DIR)
	@touch $@

base-images: engine
	bash infra/images/build-base-images.sh

app-image: engine wheels $(IMAGES_BASE)
	@echo "[images.mk] docker build $(APP_IMAGE) on $(PYTHON_IMAGE)"
	docker build -f infra/Dockerfile --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(APP_IMAGE) .

# OpenSSH from Debian's packages; the docker cache makes a rerun a no-op.
sftp-image: engine $(IMAGES_BASE)
	@echo "[images.mk] docker build $(SFTP_IMAGE) on $(DEBIAN_IMAGE)"
	docker build --build-arg BASE_IMAGE=$(DEBIAN_IMAGE) -t $(SFTP_IMAGE) infra/sftp

images: engine wheels $(IMAGES_BASE) app-image sftp-image

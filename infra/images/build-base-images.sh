#!/usr/bin/env bash
# build-base-images.sh — air-gapped base images, built from Debian's apt alone.
#
# No container registry is reachable here, so `FROM python:...`/`FROM postgres:...`
# cannot be pulled. Instead:
#   1. debootstrap a bookworm minbase rootfs (tarball cached under build/base/),
#   2. `docker import` it as  collect-offline/debian:bookworm,
#   3. build  collect-offline/python:3.11-slim  (infra/images/python/Dockerfile)
#      and    collect-offline/postgres:15       (infra/images/postgres/Dockerfile)
#      FROM that image; their RUN steps only reach http://deb.debian.org.
#
# Reruns are cheap: an image tag that already exists is skipped (FORCE=1 rebuilds
# all three), and the rootfs tarball is reused while it exists.
# Needs root (debootstrap) and a running engine (infra/docker/ensure-engine.sh).
#
# Env: DEBIAN_MIRROR (http://deb.debian.org/debian), SUITE (bookworm),
#      BUILD_DIR (<repo>/build/base), FORCE (0).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGES_DIR="$REPO_ROOT/infra/images"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${SUITE:-bookworm}"
BUILD_DIR="${BUILD_DIR:-$REPO_ROOT/build/base}"
FORCE="${FORCE:-0}"
TARBALL="$BUILD_DIR/debian-$SUITE-minbase.tar.gz"

DEBIAN_TAG="collect-offline/debian:$SUITE"
PYTHON_TAG="collect-offline/python:3.11-slim"
POSTGRES_TAG="collect-offline/postgres:15"

export DEBIAN_FRONTEND=noninteractive
log() { echo "[base-images] $*" >&2; }

have_image() { [ "$FORCE" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

# --- 1. rootfs tarball --------------------------------------------------------
make_rootfs_tarball() {
    if [ -s "$TARBALL" ] && [ "$FORCE" != 1 ]; then
        log "reusing cached rootfs $TARBALL"
        return
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    mkdir -p "$BUILD_DIR"
    local rootfs="$BUILD_DIR/rootfs"
    rm -rf "$rootfs"
    log "debootstrap --variant=minbase $SUITE from $DEBIAN_MIRROR (takes a few minutes)"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$BUILD_DIR/debootstrap.log" 2>&1 \
        || { tail -n 30 "$BUILD_DIR/debootstrap.log" >&2; log "ERROR: debootstrap failed"; exit 1; }

    # Image hygiene, mirroring what the official debian image does:
    # plain-HTTP sources (no CA bundle needed), no recommends, no apt caches/docs.
    cat >"$rootfs/etc/apt/sources.list" <<SRC
deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SRC
    cat >"$rootfs/etc/apt/apt.conf.d/90docker" <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
CONF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90docker-nodoc" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CONF
    # Services must not start inside image builds.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod +x "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
           "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    : >"$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"

    log "packing rootfs into $TARBALL"
    tar --numeric-owner --xattrs -C "$rootfs" -czf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$rootfs"
}

# --- 2. import ----------------------------------------------------------------
if have_image "$DEBIAN_TAG"; then
    log "$DEBIAN_TAG exists, skipping debootstrap/import"
else
    make_rootfs_tarball
    log "docker import -> $DEBIAN_TAG"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        "$TARBALL" "$DEBIAN_TAG" >/dev/null
fi

# --- 3. derived images ----------------------------------------------------------
build_image() {
    local tag="$1" dir="$2"
    if have_image "$tag"; then
        log "$tag exists, skipping"
        return
    fi
    log "docker build -> $tag ($dir)"
    docker build \
        --build-arg BASE_IMAGE="$DEBIAN_TAG" -t "$tag" "$dir"
}

build_image "$PYTHON_TAG" "$IMAGES_DIR/python"
build_image "$POSTGRES_TAG" "$IMAGES_DIR/postgres"

log "done: $DEBIAN_TAG $PYTHON_TAG $POSTGRES_TAG"

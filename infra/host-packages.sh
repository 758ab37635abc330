#!/usr/bin/env bash
# host-packages.sh — install the Debian packages the test suite runs on the host.
#
# Idempotent: installs only what is missing, and does nothing (fast) when all
# is there. The tests start throwaway PostgreSQL clusters from the server
# binaries and a real OpenSSH server on loopback for the SFTP transport; the
# virtualenv needs Python's venv module. Without root, a missing package is an
# error that names it, never a skipped test.
set -euo pipefail

log() { echo "[host-packages] $*" >&2; }

missing=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null ||
    missing+=(postgresql)
test -x /usr/sbin/sshd || missing+=(openssh-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    log "ERROR: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
    exit 1
fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

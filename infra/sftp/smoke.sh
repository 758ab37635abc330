#!/usr/bin/env bash
# smoke.sh — bring up a throwaway central stack (which always runs its SFTP
# drop and importer) and check they work together: a site key logs in, an
# upload lands in the importer's inbox, and a damaged batch is quarantined
# with its reason in `sync status`. Everything is removed afterwards.
#
#   infra/sftp/smoke.sh        (as root; needs the sftp image and an app
#                               image of this checkout: APP_IMAGE, default
#                               collect-offline/app:latest from `make images`)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export DEPLOYMENT_DIR="$(mktemp -d /tmp/sftp-smoke.XXXXXX)"
# provision leaves the CA to make-ca.sh, whose default is the real deployment.
export CA_DIR="$DEPLOYMENT_DIR/ca"
export NETWORK_PREFIX="sftp-smoke-$$" PROJECT="sftp-smoke-$$" HTTPS_PORT=18743
export SYNC_IMPORT_INTERVAL=2
port=$((20000 + $$ % 10000))
export SFTP_PUBLISH="127.0.0.1:$port"
node=central-smoke
stack() { "$REPO_ROOT/compose/bin/stack" "$node" "$@"; }
log() { echo "[sftp-smoke] $*" >&2; }

cleanup() {
    status=$?
    if [ "$status" != 0 ]; then
        stack logs --no-color sftp importer 2>&1 | tail -n 60 >&2 || true
    fi
    stack down -v --remove-orphans >/dev/null 2>&1 || true
    docker network rm "$NETWORK_PREFIX-field" "$NETWORK_PREFIX-upstream" >/dev/null 2>&1 || true
    rm -rf "$DEPLOYMENT_DIR"
    exit "$status"
}
trap cleanup EXIT

"$REPO_ROOT/compose/bin/provision" node central "$node" >/dev/null
node_dir="$DEPLOYMENT_DIR/nodes/$node"
ssh-keygen -q -t ed25519 -N "" -f "$DEPLOYMENT_DIR/site_key"
echo "$(cat "$DEPLOYMENT_DIR/site_key.pub") site-smoke" >"$node_dir/sftp-authorized-keys"

log "starting central with its SFTP drop and importer"
stack up -d --wait --wait-timeout 180 >/dev/null
host_key="$(stack exec -T sftp cat /etc/ssh/keys/ssh_host_ed25519_key.pub | cut -d' ' -f1,2)"
echo "[127.0.0.1]:$port $host_key" >"$DEPLOYMENT_DIR/known_hosts"

log "uploading a damaged batch as the registered site"
printf 'not a batch' >"$DEPLOYMENT_DIR/site-smoke-000001.batch"
sftp -q -b - -i "$DEPLOYMENT_DIR/site_key" -P "$port" \
    -o UserKnownHostsFile="$DEPLOYMENT_DIR/known_hosts" -o StrictHostKeyChecking=yes \
    site-smoke@127.0.0.1 <<SFTP
put $DEPLOYMENT_DIR/site-smoke-000001.batch inbox/.site-smoke-000001.batch.part
rename inbox/.site-smoke-000001.batch.part inbox/site-smoke-000001.batch
SFTP

deadline=$((SECONDS + 90))
until stack exec -T importer python manage.py sync status | grep -q 'quarantined 1'; do
    [ "$SECONDS" -lt "$deadline" ] || { log "the importer did not quarantine the file"; exit 1; }
    sleep 2
done
stack exec -T importer python manage.py sync problems | grep 'site-smoke-000001.batch \[truncated\]'
stack exec -T importer ls /srv/quarantine | grep -q 'site-smoke-000001.batch.reason'

log "a key that is not registered is refused"
ssh-keygen -q -t ed25519 -N "" -f "$DEPLOYMENT_DIR/stranger"
if echo ls | sftp -q -b - -i "$DEPLOYMENT_DIR/stranger" -P "$port" \
    -o UserKnownHostsFile="$DEPLOYMENT_DIR/known_hosts" site-smoke@127.0.0.1 2>/dev/null; then
    log "a stranger's key was accepted"; exit 1
fi
log "ok: upload imported by the importer, damage quarantined, stranger refused"

#!/usr/bin/env bash
# smoke-up.sh — every role's Compose stack starts, side by side, and answers
# /health/ over HTTPS through its published port, verified with the deployment CA.
#
#   bash infra/ci/smoke-up.sh [ROLE ...]     (default: all four roles)
#
# For each role: `make up ROLE=...` as node smoke-<role>, then
# GET https://127.0.0.1:PORT/health/ must name that role and node, and the app
# container must sit on its tier's networks only and hold no secret in its
# environment. A laptop and a community server each keep a seeded field day
# through `make down` and `make up`. Finally `make down` for each, and the
# smoke stacks' volumes and tier networks are removed. On failure it prints
# every started stack's logs, takes the stacks down and exits 1.
#
# Central runs with its SFTP drop and importer, which `make up` waits for too.
#
# The smoke nodes have their own node ids, projects, ports (9443, 9543, 9643,
# 9743, SFTP 9722) and networks (collect-offline-smoke-*), so a developer's own `make up`
# stacks and the demo are left alone.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
roles=("${@:-client middleman community central}")
read -ra roles <<<"${roles[*]}"
CA_FILE=var/deployment/ca/ca.crt
PREFIX=collect-offline-smoke
started=()
SECONDS=0

declare -A PORT=([client]=9443 [middleman]=9543 [community]=9643 [central]=9743)
# The networks each role's app container joins (db: its own PostgreSQL).
declare -A NETWORKS=(
    [client]="$PREFIX-field"
    [middleman]="$PREFIX-field $PREFIX-middleman_db"
    [community]="$PREFIX-community_db $PREFIX-field $PREFIX-upstream"
    [central]="$PREFIX-central_db $PREFIX-upstream"
)

log() { echo "[smoke ${SECONDS}s] $*" >&2; }

make_role() {
    local action="$1" role="$2"
    make --no-print-directory "$action" ROLE="$role" NODE_ID="smoke-$role" \
        HTTPS_PORT="${PORT[$role]}" UPSTREAM= PROJECT="$PREFIX-$role" \
        NETWORK_PREFIX="$PREFIX" SFTP_PUBLISH=127.0.0.1:9722
}

down_all() {
    local role
    for role in "${started[@]}"; do
        make_role down "$role" >/dev/null 2>&1 || log "make down ROLE=$role failed"
        compose/bin/stack "smoke-$role" down --volumes >/dev/null 2>&1 || true
    done
    # The tier networks belong to no stack (compose/bin/provision makes them).
    docker network rm "$PREFIX-field" "$PREFIX-upstream" >/dev/null 2>&1 || true
}

fail() {
    local role
    log "FAILED: $*"
    for role in "${started[@]}"; do
        echo "===== logs of smoke-$role =====" >&2
        compose/bin/stack "smoke-$role" ps -a >&2 || true
        compose/bin/stack "smoke-$role" logs --no-color --tail=100 >&2 || true
    done
    down_all
    exit 1
}
trap 'fail "interrupted"' INT TERM

for role in "${roles[@]}"; do
    [ -n "${PORT[$role]:-}" ] || { log "not a role: $role"; exit 2; }
    log "make up ROLE=$role"
    started+=("$role")
    make_role up "$role" >&2 || fail "make up ROLE=$role"
done

for role in "${roles[@]}"; do
    port="${PORT[$role]}"
    body="$(curl -sS --fail --max-time 10 --cacert "$CA_FILE" \
        "https://127.0.0.1:$port/health/")" || fail "$role: no healthy answer on $port"
    [[ "$body" == *"\"role\": \"$role\""*"\"node\": \"smoke-$role\""* ]] \
        || fail "$role: unexpected answer: $body"
    log "$role on https://127.0.0.1:$port/health/: $body"

    app="$(compose/bin/stack "smoke-$role" ps -q app)"
    have="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$app" \
        | tr ' ' '\n' | sed '/^$/d' | sort | xargs)"
    want="$(tr ' ' '\n' <<<"${NETWORKS[$role]}" | sort | xargs)"
    [ "$have" = "$want" ] || fail "$role: app is on networks '$have', expected '$want'"
    env="$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$app")"
    if grep -iE '^[A-Z_]*(PASSWORD|TOKEN|SECRET_KEY)=' <<<"$env"; then
        fail "$role: a secret is in the app's environment (use a *_FILE secret)"
    fi
    log "$role: networks $have; secrets only as files"
done

# Data survives `make down` and `make up`: a laptop's records, on SQLite in
# its volume, and a server's, in PostgreSQL.
outgoing() {
    compose/bin/stack "smoke-$1" exec -T app python manage.py sync status \
        | sed -n 's/^outgoing \([0-9]*\) made here.*/\1/p'
}
for role in client community; do
    [[ " ${roles[*]} " == *" $role "* ]] || continue
    compose/bin/stack "smoke-$role" exec -T app python manage.py seed --households 1 \
        >/dev/null || fail "$role: seed failed"
    before="$(outgoing "$role")"
    [ "${before:-0}" -gt 0 ] || fail "$role: seeding made no outgoing records"
    make_role down "$role" >&2 || fail "make down ROLE=$role"
    make_role up "$role" >&2 || fail "make up ROLE=$role (again)"
    after="$(outgoing "$role")"
    [ "$after" = "$before" ] || fail "$role: $before records before down, $after after up"
    log "$role: $after records survived make down and make up"
done

for role in "${roles[@]}"; do
    log "make down ROLE=$role"
    make_role down "$role" >&2 || fail "make down ROLE=$role"
done
down_all
log "all ${#roles[@]} roles passed"

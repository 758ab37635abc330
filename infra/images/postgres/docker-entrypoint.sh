#!/usr/bin/env bash
# Entrypoint for collect-offline/postgres:15 — a compact port of the official
# postgres image's docker-entrypoint.sh contract onto Debian's postgresql-15.
#
#   POSTGRES_PASSWORD / POSTGRES_PASSWORD_FILE  superuser password (required on
#                                 first init unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER (postgres)      superuser name
#   POSTGRES_DB   (=USER)         database created on first init
#   POSTGRES_INITDB_ARGS          extra initdb args
#   POSTGRES_HOST_AUTH_METHOD     pg_hba method for remote hosts (scram-sha-256)
#   PGDATA (/var/lib/postgresql/data)
# Every POSTGRES_* above also accepts a *_FILE variant.
# initdb runs only when $PGDATA has no PG_VERSION; then
# /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz run against a socket-only
# temporary server. The server itself always runs as user postgres.
set -Eeuo pipefail

log() { echo "[postgres-entrypoint] $*" >&2; }

# file_env VAR [default]: VAR or VAR_FILE (not both) -> exported VAR.
file_env() {
    local var="$1" fileVar="${1}_FILE" def="${2:-}" val
    if [ -n "${!var:-}" ] && [ -n "${!fileVar:-}" ]; then
        log "ERROR: both $var and $fileVar are set (but are exclusive)"; exit 1
    fi
    val="$def"
    if [ -n "${!var:-}" ]; then
        val="${!var}"
    elif [ -n "${!fileVar:-}" ]; then
        val="$(<"${!fileVar}")"
    fi
    export "$var"="$val"
    unset "$fileVar"
}

# `docker run IMAGE -c foo=bar` -> postgres -c foo=bar
if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

# Anything other than the server (psql, bash, pg_dump ...) runs as given.
if [ "$1" != 'postgres' ]; then
    exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# As root: fix ownership of the (possibly fresh named-volume) data dir, then
# re-exec this script as postgres.
if [ "$(id -u)" = '0' ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 2777 /var/run/postgresql
    exec gosu postgres "$BASH_SOURCE" "$@"
fi

file_env POSTGRES_USER postgres
file_env POSTGRES_PASSWORD
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        log "ERROR: database is uninitialized and superuser password is not specified."
        log "       Set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (or POSTGRES_HOST_AUTH_METHOD=trust)."
        exit 1
    fi
    # initdb refuses a non-empty dir; a fresh volume may hold lost+found.
    if [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
        log "ERROR: $PGDATA is not empty but has no PG_VERSION: refusing to initdb"
        ls -A "$PGDATA" >&2
        exit 1
    fi
    chmod 700 "$PGDATA" 2>/dev/null || true

    log "initdb in $PGDATA (superuser $POSTGRES_USER)"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # Local socket: trust (as upstream, so `docker exec ... psql` works);
    # TCP: scram. Word-splitting of POSTGRES_INITDB_ARGS is intended.
    # shellcheck disable=SC2086
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
        $POSTGRES_INITDB_ARGS >/dev/null
    rm -f "$pwfile"
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

    # Temporary server on the unix socket only: nobody outside can connect
    # (and health checks over TCP stay red) until init is finished.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >/dev/null
    export PGHOST=/var/run/postgresql PGPORT=5432 PGUSER="$POSTGRES_USER"
    psql_cmd=(psql -v ON_ERROR_STOP=1 --no-psqlrc --dbname postgres)

    if [ "$POSTGRES_DB" != postgres ]; then
        log "creating database $POSTGRES_DB"
        "${psql_cmd[@]}" --set db="$POSTGRES_DB" -q <<<'CREATE DATABASE :"db";'
    fi

    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
            *.sh)     log "running $f"; . "$f" ;;
            *.sql)    log "running $f"; "${psql_cmd[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql_cmd[@]}" --dbname "$POSTGRES_DB" ;;
            *)        log "ignoring $f" ;;
        esac
    done

    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    unset PGHOST PGPORT PGUSER
    log "init complete; ready for start up"
else
    log "existing cluster in $PGDATA; skipping initialization"
fi

unset POSTGRES_PASSWORD
exec "$@"

#!/usr/bin/env bash
# Entrypoint of the collect-offline app image (infra/Dockerfile).
#
#   serve [gunicorn args...]  (default) wait for the database, migrate, then
#                             exec gunicorn config.wsgi:application on :8000.
#   anything else             exec'd as given, e.g. `python manage.py sync push`.
#
# Env: ROLE, NODE_ID, DATABASE_URL, SECRET_KEY_FILE, UPSTREAM_URL (read by
# config.settings); SYNC_KEYS_DIR (mounted keys dir: defaults
# SYNC_SIGNING_KEY_FILE=$SYNC_KEYS_DIR/signing.pem and
# SYNC_DATA_KEYS_DIR=$SYNC_KEYS_DIR/data-keys unless those are set);
# GUNICORN_WORKERS (2); MIGRATE=0 skips migrate; DB_WAIT_SECS (60);
# APPLY_WORKER=0 runs no apply worker beside gunicorn (servers run one).
# GUNICORN_CMD_ARGS is honoured by gunicorn itself.
set -euo pipefail

log() { echo "[entrypoint] $*" >&2; }

# As PID 1, hand signal forwarding and zombie reaping to tini when the base
# image has it (the air-gapped base does; python:3.11-slim does not).
if [ "$$" = 1 ] && command -v tini >/dev/null 2>&1; then
    exec tini -s -- "$0" "$@"
fi

cd /app

if [ -n "${SYNC_KEYS_DIR:-}" ]; then
    export SYNC_SIGNING_KEY_FILE="${SYNC_SIGNING_KEY_FILE:-$SYNC_KEYS_DIR/signing.pem}"
    export SYNC_DATA_KEYS_DIR="${SYNC_DATA_KEYS_DIR:-$SYNC_KEYS_DIR/data-keys}"
fi

if [ "$#" -eq 0 ]; then
    set -- serve
fi

if [ "$1" != serve ]; then
    exec "$@"
fi
shift

log "role=${ROLE:-?} node=${NODE_ID:-?}"

# Postgres may still be starting (compose without health gating, restarts):
# wait for a connection rather than failing migrate at once.
python - <<'PY'
import os, sys, time
import django
django.setup()
from django.db import connection
deadline = time.monotonic() + float(os.environ.get("DB_WAIT_SECS", "60"))
while True:
    try:
        connection.ensure_connection()
        break
    except Exception as exc:  # OperationalError and friends
        connection.close()
        if time.monotonic() > deadline:
            sys.exit(f"[entrypoint] database not reachable: {exc}")
        print(f"[entrypoint] waiting for database: {exc}".strip(), file=sys.stderr)
        time.sleep(2)
PY

if [ "${MIGRATE:-1}" != 0 ]; then
    log "python manage.py migrate --noinput"
    python manage.py migrate --noinput
fi

# Servers receive: an apply worker takes up whatever a delivery stored but did
# not apply (a restart after a crash, a failed apply), whoever sends next.
if [ "${ROLE:-}" != client ] && [ "${APPLY_WORKER:-1}" != 0 ]; then
    log "starting the apply worker (python manage.py sync apply --watch)"
    python manage.py sync apply --watch &
fi

log "starting gunicorn (${GUNICORN_WORKERS:-2} workers)"
exec gunicorn config.wsgi:application \
    --bind 0.0.0.0:8000 \
    --workers "${GUNICORN_WORKERS:-2}" \
    --timeout 120 \
    "$@"

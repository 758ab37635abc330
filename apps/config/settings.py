"""Settings for every role of a collect-offline node, read from the environment.

One module serves all four roles. ``ROLE`` decides which URLs and background
jobs are on; the same code paths exist everywhere.
"""

from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent
ROLES = ("client", "middleman", "community", "central")

env = environ.Env()


def _required(name: str) -> str:
    value = env.str(name, default="").strip()
    if not value:
        raise ImproperlyConfigured(
            f"{name} is not set. Set it in the environment, e.g. "
            f"ROLE=client NODE_ID=laptop-01 (roles: {', '.join(ROLES)})."
        )
    return value


def _secret(name: str, default: str = "") -> str:
    """Return a secret from NAME, or from the file named by NAME_FILE."""
    path = env.str(f"{name}_FILE", default="")
    if path:
        return Path(path).read_text().strip()
    return env.str(name, default=default)


ROLE = _required("ROLE")
if ROLE not in ROLES:
    raise ImproperlyConfigured(
        f"ROLE={ROLE!r} is not a role. Use one of: {', '.join(ROLES)}."
    )
NODE_ID = _required("NODE_ID")
if len(NODE_ID) > 64 or not NODE_ID.replace("-", "").replace("_", "").isalnum():
    raise ImproperlyConfigured(
        f"NODE_ID={NODE_ID!r} must be up to 64 letters, digits, '-' or '_'."
    )

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = _secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and ROLE != "client":
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) is required on servers; generate "
            "one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = f"insecure-local-{NODE_ID}"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

NODE_DIR = Path(env.str("NODE_DIR", default=str(BASE_DIR / "var" / NODE_ID)))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "simple_history",
    "sync",
    "study",
    "reconcile",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# A laptop runs with nothing else installed: SQLite unless a URL is given.
# IMMEDIATE transactions take SQLite's write lock up front, so two writers
# queue instead of failing with "database is locked" half way.
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{NODE_DIR / 'db.sqlite3'}")
}
# A server keeps its database connection between requests (checked before
# reuse): a new connection per push chunk is a new PostgreSQL backend, whose
# start-up and cold caches cost about as much as storing the chunk.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", 300))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 30}
    )
    if DATABASES["default"]["NAME"] != ":memory:":
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LOGIN_URL = "admin:login"

DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", 16 * 1024 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "sync.transport.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "collect-offline sync API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- sync -------------------------------------------------------------------
SYNC_ROLE = ROLE
SYNC_NODE_ID = NODE_ID
SYNC_CAPTURE = env.bool("SYNC_CAPTURE", default=True)
SYNC_SIGNING_KEY_FILE = env.str(
    "SYNC_SIGNING_KEY_FILE", default=str(NODE_DIR / "keys" / "signing.pem")
)
SYNC_DATA_KEYS_DIR = env.str(
    "SYNC_DATA_KEYS_DIR", default=str(BASE_DIR / "var" / "deployment" / "data-keys")
)
SYNC_UPSTREAM_URL = env.str("UPSTREAM_URL", default="")
_upstream = urlsplit(SYNC_UPSTREAM_URL)
if SYNC_UPSTREAM_URL and (
    _upstream.scheme not in ("http", "https")
    or not _upstream.hostname
    or _upstream.path.strip("/")
):
    raise ImproperlyConfigured(
        f"UPSTREAM_URL={SYNC_UPSTREAM_URL!r} is not a server's address. Give "
        "its scheme, host and port only, e.g. https://community-1:8643 (the "
        "API path is added by the client)."
    )
SYNC_UPSTREAM_TOKEN = _secret("UPSTREAM_TOKEN")
SYNC_UPSTREAM_CA_FILE = env.str("UPSTREAM_CA_FILE", default="")
# A middleman's credential on the field laptops it pulls from.
SYNC_PULL_TOKEN = _secret("PULL_TOKEN")
SYNC_CHUNK_SIZE = env.int("SYNC_CHUNK_SIZE", default=1000)
SYNC_PUSH_INTERVAL = env.float("SYNC_PUSH_INTERVAL", default=30.0)
SYNC_MAX_BODY_BYTES = env.int("SYNC_MAX_BODY_BYTES", default=64 * 1024 * 1024)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
    },
}

# The data's schema version, raised with every migration that changes what
# travels. Nodes talk when their versions are at most SYNC_SCHEMA_SPAN apart.
SYNC_SCHEMA_VERSION = env.int("SYNC_SCHEMA_VERSION", default=1)
SYNC_SCHEMA_SPAN = env.int("SYNC_SCHEMA_SPAN", default=1)
SYNC_MAX_CHUNK = env.int("SYNC_MAX_CHUNK", default=5000)
SYNC_HTTP_TIMEOUT = env.float("SYNC_HTTP_TIMEOUT", default=60.0)
SYNC_RETRY_SECONDS = env.float("SYNC_RETRY_SECONDS", default=120.0)

# Batch files between a site server and central (USB drive, folder or SFTP).
SYNC_EXPORT_DIR = Path(env.str("SYNC_EXPORT_DIR", default=str(NODE_DIR / "outbox")))
SYNC_INBOX_DIR = Path(env.str("SYNC_INBOX_DIR", default=str(NODE_DIR / "inbox")))
SYNC_QUARANTINE_DIR = Path(
    env.str("SYNC_QUARANTINE_DIR", default=str(NODE_DIR / "quarantine"))
)
SYNC_RECEIPTS_DIR = Path(
    env.str("SYNC_RECEIPTS_DIR", default=str(NODE_DIR / "receipts"))
)
# Central's SFTP drops, one folder per site: <site>/inbox, <site>/receipts.
SYNC_SITES_DIR = Path(env.str("SYNC_SITES_DIR", default=str(NODE_DIR / "sites")))
SYNC_BATCH_MAX_ENVELOPES = env.int("SYNC_BATCH_MAX_ENVELOPES", default=50000)
SYNC_IMPORT_INTERVAL = env.float("SYNC_IMPORT_INTERVAL", default=30.0)
# `sync import --watch` leaves files changed more recently than this for the
# next pass: a batch copied in by hand may be incomplete until then.
SYNC_IMPORT_SETTLE_SECONDS = env.float("SYNC_IMPORT_SETTLE_SECONDS", default=10.0)
# Touched after each pass of `sync import --watch`, for a health check.
SYNC_IMPORT_HEARTBEAT_FILE = env.str("SYNC_IMPORT_HEARTBEAT_FILE", default="")
# SFTP to central: key authentication, and central's host key must be listed
# in SYNC_SFTP_KNOWN_HOSTS (an unknown host key is refused).
SYNC_SFTP_HOST = env.str("SYNC_SFTP_HOST", default="")
SYNC_SFTP_PORT = env.int("SYNC_SFTP_PORT", default=22)
# Central's SFTP container has one account per site, named by its node id.
SYNC_SFTP_USER = env.str("SYNC_SFTP_USER", default=NODE_ID)
SYNC_SFTP_KEY_FILE = env.str(
    "SYNC_SFTP_KEY_FILE", default=str(NODE_DIR / "keys" / "sftp")
)
SYNC_SFTP_KNOWN_HOSTS = env.str(
    "SYNC_SFTP_KNOWN_HOSTS", default=str(NODE_DIR / "keys" / "known_hosts")
)
SYNC_SFTP_ROOT = env.str("SYNC_SFTP_ROOT", default="")
SYNC_SFTP_TIMEOUT = env.float("SYNC_SFTP_TIMEOUT", default=30.0)

"""Provides the settings tests run with: a throwaway node, on SQLite or PostgreSQL.

Point pytest at it (``DJANGO_SETTINGS_MODULE=tests.settings``): the node's
environment must be set before ``config.settings`` reads it, which is before
any conftest is imported.
"""

from tests import environment

environment.prepare()

from config.settings import *  # noqa: E402, F403
from config.settings import DATABASES, env  # noqa: E402

DATABASES["peer"] = env.db("PEER_DATABASE_URL")
if DATABASES["peer"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["peer"]["OPTIONS"] = dict(DATABASES["default"].get("OPTIONS", {}))

# Keys and counters are per test; hashing passwords slowly buys nothing here.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

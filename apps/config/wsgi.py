"""WSGI entry point for gunicorn."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

from config import gc_tuning

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()
# Import every view now, not on the first request each worker serves: that
# request would wait a tenth of a second while a push's next chunk queues.
# With gunicorn's --preload this happens once, before the workers fork.
get_resolver().url_patterns  # noqa: B018
gc_tuning.tune(freeze=True)
gc_tuning.collect_after_each_request()

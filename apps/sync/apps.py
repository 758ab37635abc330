"""Provides the sync engine's app config: registry discovery and capture."""

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class SyncConfig(AppConfig):
    name = "sync"
    verbose_name = "Synchronisation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import capture, checks  # noqa: F401

        autodiscover_modules("offline")
        capture.connect()

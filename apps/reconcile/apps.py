"""Provides specimen reconciliation against requisitions (middleman and lab)."""

from django.apps import AppConfig


class ReconcileConfig(AppConfig):
    name = "reconcile"
    verbose_name = "Specimen reconciliation"
    default_auto_field = "django.db.models.BigAutoField"

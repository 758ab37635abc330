"""Declares which reconciliation models travel between nodes."""

from sync.registry import site_models

from .models import Reconciliation, ReconciliationLine

site_models.register(Reconciliation, ReconciliationLine)

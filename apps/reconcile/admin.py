"""Provides reconciliations in the admin: read them, correct only the notes."""

from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from . import models


class LineInline(admin.TabularInline):
    model = models.ReconciliationLine
    fields = ["specimen_identifier", "outcome", "requisition", "note"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(models.Reconciliation)
class ReconciliationAdmin(SimpleHistoryAdmin):
    list_display = [
        "reconciliation_identifier",
        "producer",
        "shift_date",
        "username",
        "node",
        "closed_datetime",
    ]
    list_filter = ["producer", "shift_date", "node"]
    search_fields = ["reconciliation_identifier", "lines__specimen_identifier"]
    readonly_fields = [
        "reconciliation_identifier",
        "username",
        "node",
        "producer",
        "shift_date",
        "created_datetime",
        "closed_datetime",
    ]
    inlines = [LineInline]

    def has_add_permission(self, request) -> bool:
        # Made on the reconcile page, which matches the scans as it saves.
        return False


@admin.register(models.ReconciliationLine)
class ReconciliationLineAdmin(SimpleHistoryAdmin):
    list_display = ["specimen_identifier", "outcome", "reconciliation", "requisition"]
    list_filter = ["outcome"]
    search_fields = ["specimen_identifier", "reconciliation__reconciliation_identifier"]
    list_select_related = ["reconciliation", "requisition"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

"""Provides the admin pages where operators see and fix what sync could not do."""

from django.contrib import admin, messages
from django.utils import timezone

from .acknowledgements import progress
from .apply import retry
from .models import (
    Acknowledgement,
    Conflict,
    IncomingStatus,
    IncomingTransaction,
    Node,
    OutgoingTransaction,
    RejectedEnvelope,
)
from .resolve import reapply_loser

ENVELOPE_FIELDS = [
    "id", "producer", "sequence", "model", "record_id", "action", "hlc",
    "base_version", "schema_version", "key_id",
]  # fmt: skip


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the engine: shown, never edited by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(OutgoingTransaction)
class OutgoingTransactionAdmin(ReadOnlyAdmin):
    list_display = ["sequence", "action", "model", "record_id", "created", "reached"]
    list_filter = ["action", "model"]
    search_fields = ["record_id"]
    fields = ENVELOPE_FIELDS + ["created"]

    @admin.display(description="reached")
    def reached(self, obj):
        holders = progress(obj.producer, obj.sequence)
        return ", ".join(holders) if holders else "only on this node"


@admin.register(IncomingTransaction)
class IncomingTransactionAdmin(ReadOnlyAdmin):
    list_display = [
        "producer", "sequence", "action", "model", "status", "waiting_for",
        "detail", "delivered_by", "received_at",
    ]  # fmt: skip
    list_filter = ["status", "producer", "model"]
    search_fields = ["record_id", "producer"]
    fields = ENVELOPE_FIELDS + [
        "status", "waiting_for", "detail", "delivered_by", "received_at",
        "applied_at",
    ]  # fmt: skip
    actions = ["retry_selected"]

    @admin.action(description="Apply the selected failed or parked transactions again")
    def retry_selected(self, request, queryset):
        rows = list(
            queryset.filter(status__in=[IncomingStatus.FAILED, IncomingStatus.PARKED])
        )
        report = retry(rows) if rows else None
        self.message_user(request, f"Retried {len(rows)}: {report or 'nothing to do'}")


@admin.register(Conflict)
class ConflictAdmin(ReadOnlyAdmin):
    list_display = [
        "model", "record_id", "kind", "winner_producer", "loser_producer",
        "created", "resolved_at", "resolution",
    ]  # fmt: skip
    list_filter = ["kind", "model", "resolved_at"]
    search_fields = ["record_id"]
    fields = [
        "model", "record_id", "kind", "winner_tx", "winner_producer", "winner_hlc",
        "loser_tx", "loser_producer", "loser_hlc", "loser_action", "loser_payload",
        "created", "resolved_at", "resolution",
    ]  # fmt: skip
    actions = ["reapply_losing_version", "dismiss"]

    @admin.action(description="Make the losing version current (it then travels)")
    def reapply_losing_version(self, request, queryset):
        done = 0
        for conflict in queryset.filter(resolved_at=None):
            reapply_loser(conflict, by=request.user.get_username())
            done += 1
        self.message_user(request, f"Re-applied {done} losing versions.")

    @admin.action(description="Keep the winner and mark as resolved")
    def dismiss(self, request, queryset):
        done = queryset.filter(resolved_at=None).update(
            resolved_at=timezone.now(),
            resolution=f"winner kept by {request.user.get_username()}",
        )
        self.message_user(request, f"Resolved {done} conflicts.", messages.SUCCESS)


@admin.register(RejectedEnvelope)
class RejectedEnvelopeAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "delivered_by", "producer", "sequence", "code"]
    list_filter = ["code", "delivered_by"]
    fields = [
        "received_at", "delivered_by", "producer", "sequence", "code", "detail",
        "envelope",
    ]  # fmt: skip


@admin.register(Acknowledgement)
class AcknowledgementAdmin(ReadOnlyAdmin):
    list_display = ["holder", "producer", "through_sequence", "updated"]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["node_id", "role", "is_active", "can_relay", "created"]
    list_filter = ["role", "is_active", "can_relay"]
    readonly_fields = ["token_hash"]
    actions = ["revoke"]

    @admin.action(description="Revoke: refuse every further delivery")
    def revoke(self, request, queryset):
        done = queryset.update(is_active=False)
        self.message_user(request, f"Revoked {done} nodes.")

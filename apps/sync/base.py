"""Provides the base model, manager and audit trail for models that travel.

``SyncModel`` makes every save atomic, so a record and its outgoing
transaction commit together even in autocommit (the shell, a script).
Its queryset captures ``bulk_create()`` and refuses ``update()`` and
``bulk_update()``, which would change rows without a trace in the outbox.
"""

import uuid

from django.conf import settings
from django.db import models, transaction
from django.dispatch import receiver
from simple_history.models import HistoricalRecords
from simple_history.signals import pre_create_historical_record

from . import state
from .errors import CaptureRefused


class SyncQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise CaptureRefused(
            f"{self.model._meta.label}.objects.update() would change rows "
            "without writing outgoing transactions. Save each object instead."
        )

    def bulk_update(self, objs, fields, batch_size=None):
        raise CaptureRefused(
            f"{self.model._meta.label}.objects.bulk_update() would change rows "
            "without writing outgoing transactions. Save each object instead."
        )

    def bulk_create(self, objs, *args, **kwargs):
        """Insert ``objs`` and capture each one, with its history row."""
        from .capture import capture_created

        if kwargs.get("update_conflicts") or kwargs.get("ignore_conflicts"):
            raise CaptureRefused(
                "bulk_create() with ignore_conflicts or update_conflicts cannot "
                "tell which rows changed. Save each object instead."
            )
        with transaction.atomic(using=self.db):
            created = super().bulk_create(objs, *args, **kwargs)
            capture_created(self.model, created, using=self.db)
        return created


class SyncManager(models.Manager.from_queryset(SyncQuerySet)):
    pass


class SyncModel(models.Model):
    """Base for models that travel: UUID primary key, atomic save."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)

    objects = SyncManager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        with transaction.atomic(using=kwargs.get("using")):
            super().save(*args, **kwargs)


def _current_node() -> str:
    return settings.SYNC_NODE_ID


class NodeAudit(models.Model):
    """Who changed a record, on which node: filled in when the row is made."""

    history_node = models.CharField(max_length=64, default=_current_node)
    history_username = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        abstract = True


class SyncedHistoricalRecords(HistoricalRecords):
    """An audit trail that travels: UUID ids, the node and the user's name.

    Rows are written where a change is made and travel as their own
    transactions, so applying a change elsewhere must not write a second row.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("history_id_field", models.UUIDField(default=uuid.uuid4))
        kwargs.setdefault("bases", (NodeAudit,))
        kwargs.setdefault("user_db_constraint", False)
        kwargs.setdefault("use_base_model_db", True)
        super().__init__(**kwargs)

    def post_save(self, instance, created, using=None, **kwargs):
        if not state.applying():
            super().post_save(instance, created, using=using, **kwargs)

    def post_delete(self, instance, using=None, **kwargs):
        if not state.applying():
            super().post_delete(instance, using=using, **kwargs)


@receiver(pre_create_historical_record)
def _record_username(sender, history_instance, history_user=None, **kwargs):
    if isinstance(history_instance, NodeAudit) and history_user is not None:
        history_instance.history_username = history_user.get_username()

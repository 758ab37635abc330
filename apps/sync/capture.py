"""Provides change capture: every write of a travelling model fills the outbox.

Signals write the outgoing transaction in the writer's own database
transaction, so the record and its envelope commit together or not at all.
Before the write, the node's clock row is locked; that lock orders captured
writes and applies, which makes sequence numbers gap-free in commit order.
"""

import logging

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models.signals import (
    m2m_changed,
    post_delete,
    post_save,
    pre_delete,
    pre_save,
)
from django.utils import timezone

from . import bulk, envelope, hlc, state
from .models import OutgoingTransaction, ProducerClock, RecordVersion
from .registry import site_models
from .serialization import serialize

log = logging.getLogger(__name__)


def capture_enabled() -> bool:
    return settings.SYNC_CAPTURE and not state.applying()


def lock_clock(using: str = "default") -> ProducerClock:
    """Lock and return this node's clock row, creating it on first use."""
    node = settings.SYNC_NODE_ID
    clocks = ProducerClock.objects.using(using).select_for_update()
    clock = clocks.filter(pk=node).first()
    if clock is None:
        try:
            with transaction.atomic(using=using):
                ProducerClock.objects.using(using).create(node_id=node)
        except IntegrityError:
            pass  # another writer made it first
        clock = clocks.get(pk=node)
    return clock


def capture(
    instances: list[models.Model], action: str, using: str = "default"
) -> list[OutgoingTransaction]:
    """Write one outgoing transaction per instance, in order, and return them."""
    if not instances or not capture_enabled():
        return []
    synced = site_models.get(type(instances[0])._meta.label_lower)
    with transaction.atomic(using=using):
        clock = lock_clock(using)
        current = {}
        if not synced.append_only:
            current = dict(
                RecordVersion.objects.using(using)
                .filter(model=synced.label, record_id__in=[i.pk for i in instances])
                .values_list("record_id", "tx_id")
            )
        rows, versions = [], []
        for instance in instances:
            clock.last_sequence += 1
            clock.last_hlc = hlc.tick(clock.last_hlc)
            sealed = envelope.seal(
                producer=clock.node_id,
                sequence=clock.last_sequence,
                model=synced.label,
                record_id=instance.pk,
                action=action,
                hlc=clock.last_hlc,
                base_version=current.get(instance.pk),
                schema_version=str(settings.SYNC_SCHEMA_VERSION),
                payload=serialize(synced, instance),
                prev_digest=bytes(clock.last_digest),
            )
            clock.last_digest = sealed.digest()
            rows.append(OutgoingTransaction(**_columns(sealed)))
            if not synced.append_only:
                current[instance.pk] = sealed.id
                versions.append(
                    RecordVersion(
                        model=synced.label,
                        record_id=instance.pk,
                        tx_id=sealed.id,
                        hlc=sealed.hlc,
                        producer=sealed.producer,
                        deleted=action == "delete",
                    )
                )
        clock.save(
            using=using, update_fields=["last_sequence", "last_hlc", "last_digest"]
        )
        OutgoingTransaction.objects.using(using).bulk_create(rows)
        save_versions(versions, using)
    log.debug("captured %d %s of %s", len(rows), action, synced.label)
    return rows


def capture_created(model, instances, using: str = "default") -> None:
    """Capture rows inserted in bulk, and write and capture their history."""
    from .registry import history_model_of

    capture(list(instances), "insert", using)
    history = history_model_of(model)
    if history is not None and not state.applying():
        manager = getattr(model, model._meta.simple_history_manager_attribute)
        now = timezone.now()
        rows = [
            manager.model(
                history_type="+",
                history_date=now,
                **{
                    f.attname: getattr(i, f.attname)
                    for f in manager.model.tracked_fields
                },
            )
            for i in instances
        ]
        history.objects.using(using).bulk_create(rows)
        capture(rows, "insert", using)


def save_versions(versions: list[RecordVersion], using: str = "default") -> None:
    bulk.write(
        RecordVersion,
        versions,
        using,
        unique_fields=["model", "record_id"],
        update_fields=["tx_id", "hlc", "producer", "deleted"],
    )


def _columns(sealed: envelope.Envelope) -> dict:
    return {
        "id": sealed.id,
        "producer": sealed.producer,
        "sequence": sealed.sequence,
        "model": sealed.model,
        "record_id": sealed.record_id,
        "action": sealed.action,
        "hlc": sealed.hlc,
        "base_version": sealed.base_version,
        "schema_version": sealed.schema_version,
        "key_id": sealed.key_id,
        "nonce": sealed.nonce,
        "ciphertext": sealed.ciphertext,
        "signature": sealed.signature,
        "prev_digest": sealed.prev_digest,
    }


def _travels(sender) -> bool:
    return sender in site_models and capture_enabled()


def _lock_before_write(sender, using, raw=False, **kwargs):
    if _travels(sender) and not raw:
        lock_clock(using)


def _after_save(sender, instance, created, using, raw=False, **kwargs):
    if _travels(sender) and not raw:
        capture([instance], "insert" if created else "update", using)


def _after_delete(sender, instance, using, **kwargs):
    if _travels(sender):
        capture([instance], "delete", using)


def _after_m2m_change(sender, instance, action, reverse, model, pk_set, using, **kw):
    if not capture_enabled():
        return
    if not reverse:
        if type(instance) in site_models:
            if action.startswith("pre_"):
                lock_clock(using)
            else:
                capture([instance], "update", using)
        return
    # The change was made from the other side: each source record changed.
    if model not in site_models:
        return
    if action.startswith("pre_"):
        lock_clock(using)
        if action == "pre_clear":
            accessor = _reverse_accessor(model, sender)
            instance._sync_cleared = list(getattr(instance, accessor).all())
        return
    if action == "post_clear":
        sources = instance.__dict__.pop("_sync_cleared", [])
    else:
        sources = list(model._base_manager.using(using).filter(pk__in=pk_set))
    capture(sources, "update", using)


def _reverse_accessor(model, through) -> str:
    for field in model._meta.many_to_many:
        if field.remote_field.through is through:
            return field.remote_field.get_accessor_name()
    raise LookupError(f"no many-to-many of {model} goes through {through}")


def connect() -> None:
    """Connect capture to Django's model signals (once, at start-up)."""
    uid = "sync.capture"
    pre_save.connect(_lock_before_write, dispatch_uid=f"{uid}.pre_save")
    pre_delete.connect(_lock_before_write, dispatch_uid=f"{uid}.pre_delete")
    post_save.connect(_after_save, dispatch_uid=f"{uid}.post_save")
    post_delete.connect(_after_delete, dispatch_uid=f"{uid}.post_delete")
    m2m_changed.connect(_after_m2m_change, dispatch_uid=f"{uid}.m2m")

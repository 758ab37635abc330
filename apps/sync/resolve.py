"""Provides conflict resolution by a person: make a losing version current."""

import logging

from django.db import transaction
from django.utils import timezone

from .models import Conflict
from .registry import site_models

log = logging.getLogger(__name__)


def reapply_loser(conflict: Conflict, by: str) -> None:
    """Write the losing version as a new local change, which then travels.

    The change is made here, so it gets a fresh clock and sequence and is
    newer than both versions everywhere it goes.
    """
    synced = site_models.get(conflict.model)
    model = synced.model
    with transaction.atomic():
        fields = conflict.loser_payload.get("fields", {})
        if conflict.loser_action == "delete":
            model.objects.filter(pk=conflict.record_id).first().delete()
        else:
            instance = model._base_manager.filter(pk=conflict.record_id).first()
            if instance is None:
                instance = model(pk=conflict.record_id)
            m2m = {}
            for field in synced.fields:
                if field.name not in fields:
                    continue
                value = fields[field.name]
                if field.is_relation:
                    setattr(instance, field.attname, value["pk"] if value else None)
                else:
                    setattr(instance, field.attname, field.to_python(value))
            for field in synced.m2m_fields:
                if field.name in fields:
                    m2m[field.name] = [link["pk"] for link in fields[field.name]]
            instance.save()
            for name, pks in m2m.items():
                getattr(instance, name).set(pks)
        conflict.resolved_at = timezone.now()
        conflict.resolution = f"losing version re-applied by {by}"
        conflict.save(update_fields=["resolved_at", "resolution"])
    log.info("re-applied losing version of %s %s", conflict.model, conflict.record_id)

"""Provides the payload form of a record: field values, natural keys for links."""

from django.db import models

from .registry import SyncedModel, site_models


def serialize(synced: SyncedModel, instance: models.Model) -> dict:
    """Return the JSON-ready payload of ``instance``.

    A link is ``{"pk": ..., "natural_key": [...]}``: the primary key is enough
    for a travelling target (its UUID is the same on every node); the natural
    key lets a receiver find local reference data such as a user.
    """
    fields = {}
    for field in synced.fields:
        if field.is_relation:
            fields[field.name] = _link(synced, instance, field)
        else:
            fields[field.name] = field.value_from_object(instance)
    for field in synced.m2m_fields:
        fields[field.name] = [
            _describe(related) for related in getattr(instance, field.name).all()
        ]
    return {"fields": fields}


def _link(synced: SyncedModel, instance, field) -> dict | None:
    pk = getattr(instance, field.attname)
    if pk is None:
        return None
    if synced.append_only or field.related_model in site_models:
        return {"pk": pk}
    return _describe(getattr(instance, field.name))


def _describe(related: models.Model) -> dict:
    link = {"pk": related.pk}
    if hasattr(related, "natural_key"):
        link["natural_key"] = list(related.natural_key())
    return link

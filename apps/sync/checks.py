"""Provides the system checks that a travelling model meets the engine's needs."""

from django.core import checks
from django.db import models

from .base import SyncModel
from .registry import site_models


@checks.register(checks.Tags.models)
def check_registered_models(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    errors = []
    for synced in site_models:
        model = synced.model
        name = model._meta.label
        if not isinstance(model._meta.pk, models.UUIDField):
            errors.append(
                checks.Error(
                    f"{name} travels but its primary key is not a UUIDField.",
                    hint="Inherit sync.base.SyncModel, whose id is a UUID made "
                    "on the node that creates the record.",
                    obj=model,
                    id="sync.E001",
                )
            )
        if synced.append_only:
            continue
        if not issubclass(model, SyncModel):
            errors.append(
                checks.Error(
                    f"{name} travels but does not inherit sync.base.SyncModel.",
                    hint="Inherit SyncModel so saves are atomic with their "
                    "outgoing transaction and bulk updates are refused.",
                    obj=model,
                    id="sync.E002",
                )
            )
        if not callable(getattr(model, "natural_key", None)):
            errors.append(
                checks.Error(
                    f"{name} travels but has no natural_key() method.",
                    hint="Define natural_key() returning the fields that identify "
                    "the record to a person, e.g. (self.identifier,).",
                    obj=model,
                    id="sync.E003",
                )
            )
        if not callable(getattr(model._default_manager, "get_by_natural_key", None)):
            errors.append(
                checks.Error(
                    f"{name} travels but its manager has no get_by_natural_key().",
                    hint="Give the default manager get_by_natural_key(*key) that "
                    "returns the record natural_key() describes.",
                    obj=model,
                    id="sync.E004",
                )
            )
        dependencies = set(
            getattr(getattr(model, "natural_key", None), "dependencies", [])
        )
        for field in model._meta.get_fields():
            target = getattr(field, "related_model", None)
            if not (field.concrete and field.is_relation) or target in (None, model):
                continue
            if target in site_models and target._meta.label_lower not in dependencies:
                errors.append(
                    checks.Error(
                        f"{name}.{field.name} links to {target._meta.label}, which "
                        "is missing from natural_key.dependencies.",
                        hint=f"Add '{target._meta.label_lower}' to "
                        f"{model.__name__}.natural_key.dependencies.",
                        obj=model,
                        id="sync.E005",
                    )
                )
    return errors

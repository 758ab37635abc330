"""Provides the registry of models that travel between nodes.

An app declares its travelling models in an ``offline.py`` module::

    from sync.registry import site_models

    site_models.register(Household, HouseholdMember)
    site_models.keep_local(Appointment)  # declared on purpose not to travel

A registered model's django-simple-history model travels with it, as an
append-only log. Requirements are checked by ``manage.py check`` (see checks).
"""

from dataclasses import dataclass, field
from functools import cached_property

from django.apps import apps
from django.db import models

from .errors import RegistryError


@dataclass(frozen=True)
class SyncedModel:
    """How one model travels."""

    model: type[models.Model]
    append_only: bool = False
    exclude: frozenset[str] = field(default_factory=frozenset)

    @property
    def label(self) -> str:
        return self.model._meta.label_lower

    # Worked out once: apply asks for every change it applies.
    @cached_property
    def fields(self) -> tuple[models.Field, ...]:
        """The concrete fields that travel, primary key excluded."""
        return tuple(
            f
            for f in self.model._meta.concrete_fields
            if not f.primary_key and f.name not in self.exclude
        )

    @cached_property
    def m2m_fields(self) -> tuple[models.ManyToManyField, ...]:
        """The many-to-many fields that travel."""
        return tuple(
            f for f in self.model._meta.many_to_many if f.name not in self.exclude
        )


class Registry:
    """Which models travel, and which are declared to stay on the node."""

    def __init__(self) -> None:
        self._synced: dict[str, SyncedModel] = {}
        self._local: set[str] = set()

    def register(self, *models_: type[models.Model], exclude=()) -> None:
        """Declare models that travel; their history models travel too."""
        for model in models_:
            self._add(SyncedModel(model, exclude=frozenset(exclude)))
            history = history_model_of(model)
            if history is not None:
                # The user is a local account: its name travels instead.
                self._add(
                    SyncedModel(
                        history, append_only=True, exclude=frozenset({"history_user"})
                    )
                )

    def keep_local(self, *models_: type[models.Model]) -> None:
        """Declare models that never travel, so the check does not flag them."""
        for model in models_:
            self._local.add(model._meta.label_lower)

    def _add(self, synced: SyncedModel) -> None:
        if synced.label in self._synced:
            raise RegistryError(f"{synced.label} is registered twice.")
        self._synced[synced.label] = synced

    def get(self, label: str) -> SyncedModel:
        try:
            return self._synced[label]
        except KeyError:
            raise RegistryError(
                f"{label} is not registered for offline use on this node."
            ) from None

    def find(self, label: str) -> SyncedModel | None:
        return self._synced.get(label)

    def get_for_model(self, model: type[models.Model]) -> SyncedModel | None:
        return self._synced.get(model._meta.label_lower)

    def is_local(self, model: type[models.Model]) -> bool:
        return model._meta.label_lower in self._local

    def __iter__(self):
        return iter(self._synced.values())

    def __contains__(self, model) -> bool:
        return model._meta.label_lower in self._synced

    def labels(self) -> list[str]:
        return sorted(self._synced)

    def unregistered_models(self, app_label: str) -> list[str]:
        """Return models of an app that are neither synced nor kept local."""
        return sorted(
            m._meta.label_lower
            for m in apps.get_app_config(app_label).get_models()
            if m._meta.label_lower not in self._synced
            and m._meta.label_lower not in self._local
        )

    def clear(self) -> None:
        self._synced.clear()
        self._local.clear()


def history_model_of(model: type[models.Model]) -> type[models.Model] | None:
    """Return the django-simple-history model that records ``model``, if any."""
    attribute = getattr(model._meta, "simple_history_manager_attribute", None)
    if attribute is None:
        return None
    return getattr(model, attribute).model


site_models = Registry()

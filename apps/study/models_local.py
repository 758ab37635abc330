"""Provides the study's tables that stay on the node that uses them."""

from django.db import models


class IdentifierCounter(models.Model):
    """The last number this node gave out for an identifier prefix."""

    prefix = models.CharField(max_length=10, unique=True)
    last = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.prefix} at {self.last}"


class SymptomManager(models.Manager):
    def get_by_natural_key(self, short_name):
        return self.get(short_name=short_name)


class Symptom(models.Model):
    """Reference list of symptoms, loaded by a migration on every node."""

    short_name = models.CharField(max_length=30, unique=True)
    name = models.CharField(max_length=100)

    objects = SymptomManager()

    def __str__(self) -> str:
        return self.name

    def natural_key(self):
        return (self.short_name,)

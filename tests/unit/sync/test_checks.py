"""System checks: a model that cannot travel safely is named before it runs."""

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import models
from django.test.utils import isolate_apps
from sync import checks
from sync.registry import Registry


def test_registered_study_models_pass_the_check():
    assert checks.check_registered_models() == []


def _register_a_model_that_cannot_travel(monkeypatch) -> None:
    class Referral(models.Model):
        clinic = models.CharField(max_length=50)

        class Meta:
            app_label = "study"

        def __str__(self) -> str:
            return self.clinic

    registry = Registry()
    registry.register(Referral)
    monkeypatch.setattr(checks, "site_models", registry)


@isolate_apps("study")
def test_model_without_uuid_key_or_natural_key_fails_the_check(monkeypatch):
    _register_a_model_that_cannot_travel(monkeypatch)

    errors = checks.check_registered_models()

    assert {e.id for e in errors} == {
        "sync.E001",
        "sync.E002",
        "sync.E003",
        "sync.E004",
    }
    assert all("study.Referral" in e.msg for e in errors)
    assert all(e.is_serious() for e in errors)


@isolate_apps("study")
def test_sync_commands_do_not_run_while_a_model_cannot_travel(monkeypatch):
    _register_a_model_that_cannot_travel(monkeypatch)

    with pytest.raises(SystemCheckError, match="study.Referral"):
        call_command("sync", "status", skip_checks=False)

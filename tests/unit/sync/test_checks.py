"""System checks: a model that cannot travel safely is named before it runs."""

from django.db import models
from django.test.utils import isolate_apps
from sync import checks
from sync.registry import Registry


def test_registered_study_models_pass_the_check():
    assert checks.check_registered_models() == []


@isolate_apps("study")
def test_model_without_uuid_key_or_natural_key_fails_the_check(monkeypatch):
    class Referral(models.Model):
        clinic = models.CharField(max_length=50)

        class Meta:
            app_label = "study"

        def __str__(self) -> str:
            return self.clinic

    registry = Registry()
    registry.register(Referral)
    monkeypatch.setattr(checks, "site_models", registry)

    errors = checks.check_registered_models()

    assert {e.id for e in errors} == {
        "sync.E001",
        "sync.E002",
        "sync.E003",
        "sync.E004",
    }
    assert all("study.Referral" in e.msg for e in errors)
    assert all(e.is_serious() for e in errors)

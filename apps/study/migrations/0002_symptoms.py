"""Loads the reference list of symptoms, the same on every node."""

from django.db import migrations

SYMPTOMS = [
    ("cough", "cough for two weeks or more"),
    ("fever", "fever"),
    ("night_sweats", "night sweats"),
    ("weight_loss", "unexplained weight loss"),
    ("diarrhoea", "diarrhoea"),
    ("rash", "skin rash"),
    ("headache", "persistent headache"),
]


def load(apps, schema_editor):
    symptoms = apps.get_model("study", "Symptom").objects.using(
        schema_editor.connection.alias
    )
    for short_name, name in SYMPTOMS:
        symptoms.update_or_create(short_name=short_name, defaults={"name": name})


class Migration(migrations.Migration):
    dependencies = [("study", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]

"""Provides the form a driver or lab assistant fills in to check specimens."""

from django import forms
from django.utils import timezone


class ReconcileForm(forms.Form):
    producer = forms.ChoiceField(
        label="Field laptop",
        help_text="The laptop the specimens were requisitioned on.",
    )
    shift_date = forms.DateField(
        label="Shift date",
        help_text="The day the blood was drawn.",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    scans = forms.CharField(
        label="Specimens in hand",
        required=False,
        help_text="Scan each label, or type its identifier; one per line.",
        widget=forms.Textarea(
            attrs={"rows": 12, "autofocus": True, "spellcheck": "false"}
        ),
    )
    notes = forms.CharField(
        label="Notes",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    started = forms.DateTimeField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, laptops: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["producer"].choices = [("", "— choose a laptop —")] + [
            (node, node) for node in laptops
        ]

    def clean_started(self):
        started = self.cleaned_data.get("started")
        if started is None or started > timezone.now():
            return None
        return started

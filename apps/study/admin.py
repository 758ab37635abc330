"""Provides data entry for research assistants through the Django admin."""

from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from . import models


@admin.register(models.Household)
class HouseholdAdmin(SimpleHistoryAdmin):
    list_display = ["household_identifier", "village", "status", "report_datetime"]
    list_filter = ["status", "village"]
    search_fields = ["household_identifier", "village"]
    readonly_fields = ["household_identifier"]


@admin.register(models.HouseholdMember)
class HouseholdMemberAdmin(SimpleHistoryAdmin):
    list_display = ["first_name", "initials", "household", "age_in_years", "eligible"]
    search_fields = ["first_name", "household__household_identifier"]
    autocomplete_fields = ["household"]


@admin.register(models.SubjectConsent)
class SubjectConsentAdmin(SimpleHistoryAdmin):
    list_display = ["subject_identifier", "member", "consent_datetime"]
    search_fields = ["subject_identifier", "member__first_name"]
    readonly_fields = ["subject_identifier"]


@admin.register(models.SubjectVisit)
class SubjectVisitAdmin(SimpleHistoryAdmin):
    list_display = ["consent", "visit_code", "visit_datetime", "reason"]
    list_filter = ["visit_code", "reason"]


@admin.register(models.VitalSigns, models.Demographics, models.SymptomsReview)
class CrfAdmin(SimpleHistoryAdmin):
    list_display = ["visit", "report_datetime"]


@admin.register(models.SubjectRequisition)
class SubjectRequisitionAdmin(SimpleHistoryAdmin):
    list_display = ["specimen_identifier", "visit", "panel", "is_drawn"]
    list_filter = ["panel", "is_drawn"]
    search_fields = ["specimen_identifier"]
    readonly_fields = ["specimen_identifier"]

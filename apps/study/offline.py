"""Declares which study models travel between nodes."""

from sync.registry import site_models

from .models import (
    Demographics,
    Household,
    HouseholdMember,
    SubjectConsent,
    SubjectRequisition,
    SubjectVisit,
    SymptomsReview,
    VitalSigns,
)
from .models_local import IdentifierCounter, Symptom

site_models.register(
    Household,
    HouseholdMember,
    SubjectConsent,
    SubjectVisit,
    VitalSigns,
    Demographics,
    SymptomsReview,
    SubjectRequisition,
)
# Counters are per node by design; symptoms are reference data on every node.
site_models.keep_local(IdentifierCounter, Symptom)

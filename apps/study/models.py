"""Provides the household survey: households, members, consent, visits, forms.

Every model here travels (see offline.py) and keeps an audit trail that
travels with it.
"""

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from sync.base import SyncedHistoricalRecords, SyncManager, SyncModel

from .identifiers import next_identifier
from .models_local import IdentifierCounter, Symptom  # noqa: F401


class HouseholdManager(SyncManager):
    def get_by_natural_key(self, household_identifier):
        return self.get(household_identifier=household_identifier)


class Household(SyncModel):
    class Status(models.TextChoices):
        ELIGIBLE = "eligible", "eligible members present"
        ABSENT = "absent", "no one home"
        REFUSED = "refused", "refused to take part"

    household_identifier = models.CharField(max_length=40, unique=True, editable=False)
    village = models.CharField(max_length=50)
    latitude = models.DecimalField(max_digits=9, decimal_places=6)
    longitude = models.DecimalField(max_digits=9, decimal_places=6)
    status = models.CharField(max_length=10, choices=Status.choices)
    report_datetime = models.DateTimeField(default=timezone.now)
    comment = models.TextField(blank=True, default="")

    objects = HouseholdManager()
    history = SyncedHistoricalRecords()

    def __str__(self) -> str:
        return self.household_identifier

    def save(self, *args, **kwargs):
        if not self.household_identifier:
            self.household_identifier = next_identifier("HH")
        super().save(*args, **kwargs)

    def natural_key(self):
        return (self.household_identifier,)


class MemberManager(SyncManager):
    def get_by_natural_key(self, household_identifier, first_name, initials):
        return self.get(
            household__household_identifier=household_identifier,
            first_name=first_name,
            initials=initials,
        )


class HouseholdMember(SyncModel):
    class Gender(models.TextChoices):
        FEMALE = "F", "female"
        MALE = "M", "male"

    class Relation(models.TextChoices):
        HEAD = "head", "head of household"
        SPOUSE = "spouse", "spouse"
        CHILD = "child", "son or daughter"
        OTHER = "other", "other relative or resident"

    household = models.ForeignKey(Household, on_delete=models.PROTECT)
    first_name = models.CharField(max_length=50)
    initials = models.CharField(max_length=3)
    gender = models.CharField(max_length=1, choices=Gender.choices)
    age_in_years = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(0), MaxValueValidator(120)]
    )
    relation = models.CharField(max_length=10, choices=Relation.choices)
    eligible = models.BooleanField(default=False)

    objects = MemberManager()
    history = SyncedHistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["household", "first_name", "initials"],
                name="one_member_per_name",
            )
        ]

    def __str__(self) -> str:
        return f"{self.first_name} ({self.initials}) of {self.household_id}"

    def natural_key(self):
        return self.household.natural_key() + (self.first_name, self.initials)

    natural_key.dependencies = ["study.household"]


class ConsentManager(SyncManager):
    def get_by_natural_key(self, subject_identifier):
        return self.get(subject_identifier=subject_identifier)


class SubjectConsent(SyncModel):
    member = models.OneToOneField(HouseholdMember, on_delete=models.PROTECT)
    subject_identifier = models.CharField(max_length=40, unique=True, editable=False)
    consent_datetime = models.DateTimeField(default=timezone.now)
    dob = models.DateField("date of birth")
    identity = models.CharField("identity number", max_length=20)
    is_literate = models.BooleanField()
    witness_name = models.CharField(max_length=50, blank=True, default="")

    objects = ConsentManager()
    history = SyncedHistoricalRecords()

    def __str__(self) -> str:
        return self.subject_identifier

    def save(self, *args, **kwargs):
        if not self.subject_identifier:
            self.subject_identifier = next_identifier("S")
        super().save(*args, **kwargs)

    def natural_key(self):
        return (self.subject_identifier,)

    natural_key.dependencies = ["study.householdmember"]


class VisitManager(SyncManager):
    def get_by_natural_key(self, subject_identifier, visit_code):
        return self.get(
            consent__subject_identifier=subject_identifier, visit_code=visit_code
        )


class SubjectVisit(SyncModel):
    class Code(models.TextChoices):
        ENROLMENT = "T0", "enrolment"
        YEAR_1 = "T1", "first annual"
        YEAR_2 = "T2", "second annual"

    class Reason(models.TextChoices):
        SCHEDULED = "scheduled", "scheduled"
        UNSCHEDULED = "unscheduled", "unscheduled"
        MISSED = "missed", "missed"

    consent = models.ForeignKey(SubjectConsent, on_delete=models.PROTECT)
    visit_code = models.CharField(max_length=2, choices=Code.choices)
    visit_datetime = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=12, choices=Reason.choices)

    objects = VisitManager()
    history = SyncedHistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["consent", "visit_code"], name="one_visit_per_code"
            )
        ]

    def __str__(self) -> str:
        return f"{self.consent_id} {self.visit_code}"

    def natural_key(self):
        return self.consent.natural_key() + (self.visit_code,)

    natural_key.dependencies = ["study.subjectconsent"]


class CrfManager(SyncManager):
    def get_by_natural_key(self, subject_identifier, visit_code):
        return self.get(
            visit__consent__subject_identifier=subject_identifier,
            visit__visit_code=visit_code,
        )


class Crf(SyncModel):
    """A case report form: one per visit."""

    visit = models.OneToOneField(SubjectVisit, on_delete=models.PROTECT)
    report_datetime = models.DateTimeField(default=timezone.now)

    objects = CrfManager()

    class Meta:
        abstract = True

    def natural_key(self):
        return self.visit.natural_key()

    natural_key.dependencies = ["study.subjectvisit"]


class VitalSigns(Crf):
    weight_kg = models.DecimalField(
        max_digits=5, decimal_places=1, validators=[MinValueValidator(1)]
    )
    height_cm = models.DecimalField(
        max_digits=5, decimal_places=1, validators=[MinValueValidator(30)]
    )
    systolic = models.PositiveSmallIntegerField(validators=[MaxValueValidator(300)])
    diastolic = models.PositiveSmallIntegerField(validators=[MaxValueValidator(200)])

    history = SyncedHistoricalRecords()

    class Meta:
        verbose_name_plural = "vital signs"


class Demographics(Crf):
    class Marital(models.TextChoices):
        SINGLE = "single", "never married"
        MARRIED = "married", "married"
        WIDOWED = "widowed", "widowed"
        DIVORCED = "divorced", "divorced or separated"

    class Education(models.TextChoices):
        NONE = "none", "none"
        PRIMARY = "primary", "primary"
        SECONDARY = "secondary", "secondary"
        TERTIARY = "tertiary", "tertiary"

    marital_status = models.CharField(max_length=10, choices=Marital.choices)
    education = models.CharField(max_length=10, choices=Education.choices)
    employed = models.BooleanField()

    history = SyncedHistoricalRecords()

    class Meta:
        verbose_name_plural = "demographics"


class SymptomsReview(Crf):
    symptoms = models.ManyToManyField(Symptom, blank=True)
    other_symptoms = models.CharField(max_length=200, blank=True, default="")

    history = SyncedHistoricalRecords()


class RequisitionManager(SyncManager):
    def get_by_natural_key(self, specimen_identifier):
        return self.get(specimen_identifier=specimen_identifier)


class SubjectRequisition(SyncModel):
    """A specimen asked for at a visit; its identifier is printed on the label."""

    class Panel(models.TextChoices):
        VIRAL_LOAD = "viral_load", "viral load"
        CD4 = "cd4", "CD4 count"
        PBMC = "pbmc", "PBMC plasma store"

    visit = models.ForeignKey(SubjectVisit, on_delete=models.PROTECT)
    panel = models.CharField(max_length=12, choices=Panel.choices)
    specimen_identifier = models.CharField(max_length=40, unique=True, editable=False)
    is_drawn = models.BooleanField()
    reason_not_drawn = models.CharField(max_length=100, blank=True, default="")
    drawn_datetime = models.DateTimeField(null=True, blank=True)
    estimated_volume_ml = models.DecimalField(max_digits=4, decimal_places=1)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    objects = RequisitionManager()
    history = SyncedHistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["visit", "panel"], name="one_panel_per_visit"
            )
        ]

    def __str__(self) -> str:
        return self.specimen_identifier

    def save(self, *args, **kwargs):
        if not self.specimen_identifier:
            self.specimen_identifier = next_identifier("SPC")
        super().save(*args, **kwargs)

    def natural_key(self):
        return (self.specimen_identifier,)

    natural_key.dependencies = ["study.subjectvisit"]

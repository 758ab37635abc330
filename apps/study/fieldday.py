"""Provides a realistic field day of survey data, for trying things and benchmarks.

A research assistant visits households; members are listed, eligible adults
consent, are seen at their enrolment visit, fill three forms and give blood
for one to three panels. Some entries are corrected later in the day.
"""

import datetime
import random
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from .models import (
    Demographics,
    Household,
    HouseholdMember,
    SubjectConsent,
    SubjectRequisition,
    SubjectVisit,
    Symptom,
    SymptomsReview,
    VitalSigns,
)

VILLAGES = ["Ranaka", "Digawana", "Otse", "Molapowabojang", "Lentsweletau"]
FIRST_NAMES = [
    "Mpho", "Kagiso", "Neo", "Tumelo", "Lorato", "Kabelo", "Boitumelo",
    "Thato", "Onalenna", "Goitseone", "Masego", "Tebogo", "Keabetswe", "Oratile",
]  # fmt: skip


@dataclass
class FieldDay:
    households: int = 0
    members: int = 0
    consents: int = 0
    requisitions: int = 0
    corrections: int = 0

    def __str__(self) -> str:
        return (
            f"{self.households} households, {self.members} members, "
            f"{self.consents} consented, {self.requisitions} requisitions, "
            f"{self.corrections} corrections"
        )


def enter_field_day(households: int, seed: int | None = None) -> FieldDay:
    """Enter ``households`` households the way a research assistant would."""
    rng = random.Random(seed)
    symptoms = list(Symptom.objects.all())
    day = FieldDay()
    for _ in range(households):
        with transaction.atomic():
            _household(rng, symptoms, day)
    return day


def _household(rng: random.Random, symptoms, day: FieldDay) -> None:
    status = rng.choices(
        [Household.Status.ELIGIBLE, Household.Status.ABSENT, Household.Status.REFUSED],
        weights=[8, 1, 1],
    )[0]
    household = Household.objects.create(
        village=rng.choice(VILLAGES),
        latitude=f"{-24.9 + rng.uniform(-0.2, 0.2):.6f}",
        longitude=f"{25.4 + rng.uniform(-0.2, 0.2):.6f}",
        status=status,
    )
    day.households += 1
    if status != Household.Status.ELIGIBLE:
        return
    names = rng.sample(FIRST_NAMES, rng.randint(1, 6))
    for position, name in enumerate(names):
        age = rng.randint(25, 70) if position == 0 else rng.randint(2, 80)
        member = HouseholdMember.objects.create(
            household=household,
            first_name=name,
            initials=f"{name[0]}{rng.choice('ABDGKMNST')}",
            gender=rng.choice(HouseholdMember.Gender.values),
            age_in_years=age,
            relation=HouseholdMember.Relation.HEAD
            if position == 0
            else rng.choice(HouseholdMember.Relation.values[1:]),
            eligible=16 <= age <= 64,
        )
        day.members += 1
        if member.eligible and rng.random() < 0.7:
            _enrol(rng, member, symptoms, day)
    if rng.random() < 0.2:
        household.comment = "GPS re-taken at the gate"
        household.latitude = f"{float(household.latitude) + 0.0001:.6f}"
        household.save()
        day.corrections += 1


def _enrol(rng, member, symptoms, day: FieldDay) -> None:
    today = timezone.now()
    consent = SubjectConsent.objects.create(
        member=member,
        dob=(today - datetime.timedelta(days=365 * member.age_in_years + 100)).date(),
        identity=f"{rng.randint(100000000, 999999999)}",
        is_literate=rng.random() < 0.8,
    )
    day.consents += 1
    visit = SubjectVisit.objects.create(
        consent=consent,
        visit_code=SubjectVisit.Code.ENROLMENT,
        reason=SubjectVisit.Reason.SCHEDULED,
    )
    VitalSigns.objects.create(
        visit=visit,
        weight_kg=f"{rng.uniform(45, 95):.1f}",
        height_cm=f"{rng.uniform(145, 190):.1f}",
        systolic=rng.randint(100, 160),
        diastolic=rng.randint(60, 100),
    )
    Demographics.objects.create(
        visit=visit,
        marital_status=rng.choice(Demographics.Marital.values),
        education=rng.choice(Demographics.Education.values),
        employed=rng.random() < 0.4,
    )
    review = SymptomsReview.objects.create(visit=visit)
    if symptoms and rng.random() < 0.4:
        review.symptoms.add(*rng.sample(symptoms, rng.randint(1, 2)))
    for panel in rng.sample(SubjectRequisition.Panel.values, rng.randint(1, 3)):
        drawn = rng.random() < 0.9
        SubjectRequisition.objects.create(
            visit=visit,
            panel=panel,
            is_drawn=drawn,
            reason_not_drawn="" if drawn else "participant declined",
            drawn_datetime=timezone.now() if drawn else None,
            estimated_volume_ml=f"{rng.choice([2, 4, 6, 10])}.0",
        )
        day.requisitions += 1


def bulk_field_days(transactions: int, seed: int = 0) -> int:
    """Enter about ``transactions`` outgoing transactions quickly, in bulk.

    Made for benchmarks: the records are as realistic as a field day's, but
    go in through captured ``bulk_create`` a few hundred at a time. Each
    enrolled member makes 14 transactions (7 records and their history).
    """
    rng = random.Random(seed)
    made = 0
    serial = 0
    while made < transactions:
        households, members, consents, visits = [], [], [], []
        vitals, demographics, requisitions = [], [], []
        for _ in range(min(50, max(1, (transactions - made) // 14))):
            serial += 1
            household = Household(
                household_identifier=f"HH-BENCH-{seed}-{serial:07d}",
                village=rng.choice(VILLAGES),
                latitude=f"{-24.9 + rng.uniform(-0.2, 0.2):.6f}",
                longitude=f"{25.4 + rng.uniform(-0.2, 0.2):.6f}",
                status=Household.Status.ELIGIBLE,
            )
            member = HouseholdMember(
                household=household,
                first_name=rng.choice(FIRST_NAMES),
                initials="BX",
                gender=rng.choice(HouseholdMember.Gender.values),
                age_in_years=rng.randint(18, 60),
                relation=HouseholdMember.Relation.HEAD,
                eligible=True,
            )
            consent = SubjectConsent(
                member=member,
                subject_identifier=f"S-BENCH-{seed}-{serial:07d}",
                dob=datetime.date(1980, 1, 1),
                identity=f"{rng.randint(100000000, 999999999)}",
                is_literate=True,
            )
            visit = SubjectVisit(
                consent=consent,
                visit_code=SubjectVisit.Code.ENROLMENT,
                reason=SubjectVisit.Reason.SCHEDULED,
            )
            households.append(household)
            members.append(member)
            consents.append(consent)
            visits.append(visit)
            vitals.append(
                VitalSigns(
                    visit=visit,
                    weight_kg=f"{rng.uniform(45, 95):.1f}",
                    height_cm=f"{rng.uniform(145, 190):.1f}",
                    systolic=rng.randint(100, 160),
                    diastolic=rng.randint(60, 100),
                )
            )
            demographics.append(
                Demographics(
                    visit=visit,
                    marital_status=rng.choice(Demographics.Marital.values),
                    education=rng.choice(Demographics.Education.values),
                    employed=rng.random() < 0.4,
                )
            )
            requisitions.append(
                SubjectRequisition(
                    visit=visit,
                    panel=SubjectRequisition.Panel.VIRAL_LOAD,
                    specimen_identifier=f"SPC-BENCH-{seed}-{serial:07d}",
                    is_drawn=True,
                    drawn_datetime=timezone.now(),
                    estimated_volume_ml="4.0",
                )
            )
        with transaction.atomic():
            for batch in (
                households, members, consents, visits, vitals, demographics,
                requisitions,
            ):  # fmt: skip
                for record in batch:  # links were set before parents had ids
                    for field in record._meta.concrete_fields:
                        if field.is_relation:
                            setattr(record, field.name, getattr(record, field.name))
                type(batch[0]).objects.bulk_create(batch)
                made += 2 * len(batch)
    return made

"""Provides study records for tests, and other nodes that produce envelopes.

``household_tree()`` saves a realistic household on this node, so its changes
are captured. ``RemoteProducer`` plays another node: its own Ed25519 key, its
own sequence and clock, and envelopes sealed exactly as that node would seal
them (a history row first, then the record, as a save makes them).
"""

import dataclasses
import datetime
import decimal
import itertools
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.utils import timezone
from study.identifiers import check_character
from study.models import (
    Household,
    HouseholdMember,
    SubjectConsent,
    SubjectVisit,
    SymptomsReview,
    VitalSigns,
)
from sync import envelope, hlc, keys
from sync.models import Node, OutgoingTransaction
from sync.registry import history_model_of, site_models
from sync.serialization import serialize

_numbers = itertools.count(1)
HISTORY_TYPES = {"insert": "+", "update": "~", "delete": "-"}


def identifier(prefix: str, node_id: str) -> str:
    """Return an identifier as ``node_id`` would hand it out."""
    node = node_id.upper().replace("-", "").replace("_", "")
    body = f"{prefix}-{node}-{next(_numbers):05d}"
    return f"{body}-{check_character(body)}"


def household(node_id: str = "laptop-a", **values) -> Household:
    """Return an unsaved household as ``node_id`` would make it."""
    values.setdefault("household_identifier", identifier("HH", node_id))
    values.setdefault("village", "Lentsweletau")
    values.setdefault("latitude", decimal.Decimal("-24.234567"))
    values.setdefault("longitude", decimal.Decimal("25.812345"))
    values.setdefault("status", Household.Status.ELIGIBLE)
    return Household(**values)


def member(of: Household, **values) -> HouseholdMember:
    """Return an unsaved member of household ``of``."""
    values.setdefault("first_name", f"Neo{next(_numbers)}")
    values.setdefault("initials", "NM")
    values.setdefault("gender", HouseholdMember.Gender.FEMALE)
    values.setdefault("age_in_years", 34)
    values.setdefault("relation", HouseholdMember.Relation.HEAD)
    values.setdefault("eligible", True)
    return HouseholdMember(household=of, **values)


def household_tree(using: str = "default") -> dict:
    """Save a household with one consented member, a visit and its forms here."""
    home = household(settings.SYNC_NODE_ID)
    home.household_identifier = ""  # made by save(), as in the field
    home.save(using=using)
    person = member(home)
    person.save(using=using)
    consent = SubjectConsent(
        member=person,
        dob=datetime.date(1990, 5, 17),
        identity="123456789",
        is_literate=True,
    )
    consent.save(using=using)
    visit = SubjectVisit(
        consent=consent,
        visit_code=SubjectVisit.Code.ENROLMENT,
        reason=SubjectVisit.Reason.SCHEDULED,
    )
    visit.save(using=using)
    vitals = VitalSigns(
        visit=visit,
        weight_kg=decimal.Decimal("61.5"),
        height_cm=decimal.Decimal("164.0"),
        systolic=118,
        diastolic=76,
    )
    vitals.save(using=using)
    review = SymptomsReview(visit=visit)
    review.save(using=using)
    return {
        "household": home,
        "member": person,
        "consent": consent,
        "visit": visit,
        "vitals": vitals,
        "review": review,
    }


def outbox_envelopes(using: str = "default") -> list[envelope.Envelope]:
    """Return this node's outbox as the envelopes a push would carry."""
    rows = OutgoingTransaction.objects.using(using).order_by("sequence")
    return [envelope.Envelope.from_row(row) for row in rows]


class RemoteProducer:
    """Another node of the deployment, producing signed envelopes."""

    def __init__(self, node_id: str, role: str = Node.Role.CLIENT):
        self.node_id = node_id
        self.role = role
        self.key = Ed25519PrivateKey.generate()
        self.sequence = 0
        self.clock = 0
        self.versions: dict[uuid.UUID, uuid.UUID] = {}

    def register(self, using: str = "default") -> Node:
        """Enter this node in the node register of the database ``using``."""
        return Node.objects.using(using).create(
            node_id=self.node_id,
            role=self.role,
            public_key=keys.public_key_text(self.key),
        )

    def saw(self, record_id: uuid.UUID, tx_id: uuid.UUID, stamp: int = 0) -> None:
        """Remember that this node received version ``tx_id`` of a record."""
        self.versions[record_id] = tx_id
        self.clock = hlc.merge(self.clock, stamp)

    def save(self, instance, action: str = "insert", username: str = "", **kw):
        """Return the envelopes a save (or delete) of ``instance`` makes there.

        As on a real node, the history row is captured first, then the record.
        ``kw`` goes to ``seal`` for the record's envelope (e.g. ``hlc=``).
        """
        history = history_model_of(type(instance))
        row = history(
            history_id=uuid.uuid4(),
            history_type=HISTORY_TYPES[action],
            history_date=timezone.now(),
            history_node=self.node_id,
            history_username=username,
            **{f.attname: getattr(instance, f.attname) for f in history.tracked_fields},
        )
        return [self.seal(row, "insert"), self.seal(instance, action, **kw)]

    def seal(
        self,
        instance,
        action: str,
        *,
        hlc: int | None = None,
        base_version: uuid.UUID | None | type = dataclasses.MISSING,
        payload: dict | None = None,
    ) -> envelope.Envelope:
        """Return one signed envelope of ``instance``, next in this node's sequence.

        ``payload`` replaces the record's own, as a faulty producer might.
        """
        synced = site_models.get_for_model(type(instance))
        self.sequence += 1
        self.clock = hlc if hlc is not None else _tick(self.clock)
        if base_version is dataclasses.MISSING:
            base_version = (
                None if synced.append_only else self.versions.get(instance.pk)
            )
        sealed = envelope.seal(
            producer=self.node_id,
            sequence=self.sequence,
            model=synced.label,
            record_id=instance.pk,
            action=action,
            hlc=self.clock,
            base_version=base_version,
            schema_version=str(settings.SYNC_SCHEMA_VERSION),
            payload=serialize(synced, instance) if payload is None else payload,
            signing_key=self.key,
        )
        if not synced.append_only:
            self.versions[instance.pk] = sealed.id
        return sealed

    def resign(self, sealed: envelope.Envelope, **changes) -> envelope.Envelope:
        """Return ``sealed`` with ``changes``, signed again with this node's key."""
        changed = dataclasses.replace(sealed, **changes, signature=b"")
        return dataclasses.replace(
            changed, signature=self.key.sign(changed.signed_bytes())
        )


def _tick(last: int) -> int:
    return hlc.tick(last)

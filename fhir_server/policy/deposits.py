"""What the patient's settings do to a document deposited in their record.

"New documents arrive masked": a patient-privacy Consent of the patient that denies, names ``MASQUE_PS`` in
``provision.securityLabel`` and has neither actor nor purpose (a purpose makes it an emergency setting, an actor a
block) — every DocumentReference deposited from then on, by anyone, gets the ``MASQUE_PS`` label before it is
stored and indexed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..fhirjson import dumps, loads
from ..interactions.access import within
from ..search.indexing import IndexEntry, index_entries
from ..search.parameters import parse
from ..store import ResourceVersion, Transaction
from ..store.query import Condition, Has
from . import codes

_MASK_BY_DEFAULT: Condition = Has(
    "patient",
    parse("Consent", [
        ("status", "active"), ("scope", f"{codes.CONSENT_SCOPE}|{codes.PATIENT_PRIVACY}"), ("provision-type", "deny"),
        ("security-label", codes.MASQUE_PS), ("purpose:missing", "true"), ("actor:missing", "true"),
    ]),
)  # fmt: skip
MASQUE_PS_LABEL = {"coding": [{"system": codes.TRE_A07, "code": codes.MASQUE_PS}]}


async def apply_defaults(
    tx: Transaction, version: ResourceVersion, entries: Sequence[IndexEntry]
) -> tuple[ResourceVersion, Sequence[IndexEntry]]:
    if version.type != "DocumentReference" or version.version != 1 or version.body is None:
        return version, entries
    document = loads(version.body, max_depth=1 << 20)
    subject = (document.get("subject") or {}).get("reference") or ""
    if not subject.startswith("Patient/") or _masked(document):
        return version, entries
    if not await within(tx, "Patient", subject.split("/", 1)[1], (_MASK_BY_DEFAULT,)):
        return version, entries
    document["securityLabel"] = [*(document.get("securityLabel") or ()), MASQUE_PS_LABEL]
    return replace(version, body=dumps(document)), index_entries(document)


def _masked(document: dict) -> bool:
    return any(
        c.get("code") == codes.MASQUE_PS
        for label in document.get("securityLabel") or ()
        for c in label.get("coding") or ()
    )

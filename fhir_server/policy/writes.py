"""What a write may contain or change, beyond where it may go (``rules.py`` confines that).

* A patient's privacy Consents: the médecin traitant cannot be blocked (422); a professional records only
  an authorisation of themselves, unless they are the médecin traitant or an administrateur of that
  patient (who may block others); only the patient side names administrateurs.
* A document: its author changes it (``rules.change``); the patient side may mask or unmask a
  professional's document (``MASQUE_PS`` in ``securityLabel``, as PDSm4DMP does by JSON Patch) and change
  nothing else of it. A document the patient side deposits follows ``record/documents.py`` (format sniffed,
  size, DMP type and class, author, hospitalisation); a professional never marks one read for the patient.
* The patient's folders (``record/folders.py``): the patient side's only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from ..errors import forbidden, unprocessable
from ..interactions.access import within
from ..messaging import messages
from ..record import documents, folders
from ..store import ResourceVersion, Transaction
from . import codes

if TYPE_CHECKING:
    from .access import PolicyAccess

_PATIENT_SIDE = ("Patient/", "RelatedPerson/")


async def check(access: PolicyAccess, tx: Transaction, version: ResourceVersion) -> None:
    if version.type == "Communication":
        if not version.deleted:
            await _notification_kept(tx, version)
        await messages.check(access, tx, version)  # the messaging (docs/messaging.md)
    if version.type == "Consent":
        await _consent(access, tx, version)
    elif version.type == "DocumentReference" and not version.deleted:
        _one_type(_body(version))
        if access.patient_side is not None:
            await _patient_document_change(tx, version)
            await _patient_document_content(access, tx, version)
        else:
            previous = await tx.read_current("DocumentReference", version.id)
            documents.check_read_state_kept(_body(previous), _body(version))
    elif version.type == "Binary" and not version.deleted and access.patient_side is not None:
        await documents.check_binary(tx, version)  # what the patient side uploads (record/documents.py)
    elif version.type == "List":
        await folders.check(access.professional is not None, tx, version)


async def _notification_kept(tx: Transaction, version: ResourceVersion) -> None:
    """The patient's notifications are written by the server only (notify/patient.py): a token cannot make one
    up, turn a message into one or one into something else; its recipient may only mark it read or unread."""
    body = _body(version)
    previous = await tx.read_version(version.type, version.id, version.version - 1) if version.version > 1 else None
    before = _body(previous)
    if not _is_notification(body) and not _is_notification(before):
        return
    if not (_is_notification(body) and _is_notification(before) and _unread(body) == _unread(before)):
        raise forbidden(
            f"Notifications (category {codes.NOTIFICATION_EVENT}) are written by the server: "
            "their recipient only marks them read or unread ($mark-read, $mark-unread)"
        )


def _is_notification(communication: dict | None) -> bool:
    for concept in (communication or {}).get("category") or ():
        for coding in (concept.get("coding") or ()) if isinstance(concept, dict) else ():
            if isinstance(coding, dict) and coding.get("system") in codes.SERVER_MESSAGES:
                return True
    return False


def _unread(communication: dict | None) -> dict:
    """What a read mark leaves unchanged: everything but ``received`` and the server's meta."""
    return {k: v for k, v in (communication or {}).items() if k not in ("received", "meta")}


def _one_type(document: dict | None) -> None:
    """The habilitation matrix decides by type: a second coding could carry an allowed type past a denied one
    (the DMP's typeCode is single-valued)."""
    if document is not None and len((document.get("type") or {}).get("coding") or ()) > 1:
        raise unprocessable(
            "A document carries one type coding (DocumentReference.type, JDV_J07): access rules depend on it",
            expression=("DocumentReference.type",),
        )


# --- Consent ------------------------------------------------------------------------------------------------
def _is_privacy(consent: dict) -> bool:
    return any(
        c.get("system") == codes.CONSENT_SCOPE and c.get("code") == codes.PATIENT_PRIVACY
        for c in (consent.get("scope") or {}).get("coding") or ()
    )


def _actors(consent: dict) -> list[tuple[str, set[tuple[str, str]]]]:
    """(reference, role codings) of the base provision's actors."""
    found = []
    for actor in (consent.get("provision") or {}).get("actor") or ():
        roles = {(c.get("system", ""), c.get("code", "")) for c in (actor.get("role") or {}).get("coding") or ()}
        found.append(((actor.get("reference") or {}).get("reference") or "", roles))
    return found


def _patient_id(consent: dict) -> str | None:
    ref = (consent.get("patient") or {}).get("reference") or ""
    return ref.split("/", 1)[1] if ref.startswith("Patient/") else None


async def _consent(access: PolicyAccess, tx: Transaction, version: ResourceVersion) -> None:
    previous = await tx.read_current("Consent", version.id)
    old = _body(previous)
    new = _body(version)
    privacy = [c for c in (old, new) if c is not None and _is_privacy(c)]
    if not privacy:
        return
    if new is not None and _is_privacy(new):
        await _medecin_traitant_not_blocked(tx, new)
        _administrateur_shape(new)
    if access.professional is None:
        return  # the patient side manages its privacy Consents (its scope keeps it to its own patients)
    professional = access.principal.professional
    assert professional is not None
    for consent in privacy:
        if any(code == codes.ADMINISTRATEUR for _, roles in _actors(consent) for _, code in roles):
            raise forbidden("Only the patient (or their representative) names administrateurs")
        patient = _patient_id(consent)
        privileged = patient is not None and await within(tx, "Patient", patient, (access.professional.privileged,))
        if privileged:
            continue
        own = set(professional.refs)
        permits_self = (consent.get("provision") or {}).get("type") == "permit" and all(
            ref in own for ref, _ in _actors(consent)
        )
        if not (permits_self and _actors(consent)):
            raise forbidden(
                "A professional's software records only the patient's authorisation of that professional; "
                "blocks and other choices are the patient's, their médecin traitant's or administrateurs'"
            )


async def _medecin_traitant_not_blocked(tx: Transaction, consent: dict) -> None:
    if (consent.get("provision") or {}).get("type") != "deny" or (consent.get("status") != "active"):
        return
    patient_id = _patient_id(consent)
    patient = _body(await tx.read_current("Patient", patient_id)) if patient_id else None
    if patient is None:
        return
    traitants = {(gp.get("reference") or "") for gp in patient.get("generalPractitioner") or ()}
    blocked = {ref for ref, _ in _actors(consent)}
    if traitants & blocked:
        raise unprocessable("The médecin traitant cannot be blocked (Patient.generalPractitioner)")


def _administrateur_shape(consent: dict) -> None:
    actors = _actors(consent)
    named = [ref for ref, roles in actors if (codes.ACTOR_ROLE, codes.ADMINISTRATEUR) in roles]
    if named and (len(actors) != 1 or (consent.get("provision") or {}).get("type") != "permit"):
        raise unprocessable("An administrateur is named by a permit Consent with exactly one actor")


# --- documents ------------------------------------------------------------------------------------------------
async def _patient_document_change(tx: Transaction, version: ResourceVersion) -> None:
    previous = _body(await tx.read_current("DocumentReference", version.id))
    new = _body(version)
    if new is None:
        return
    labels_before = _visibility(previous) if previous else set()
    labels_after = _visibility(new)
    if {codes.INVISIBLE_PATIENT, codes.INVISIBLE_REPRESENTANTS_LEGAUX} & (labels_before ^ labels_after):
        raise forbidden("Only the document's author sets or lifts INVISIBLE_PATIENT / INVISIBLE_REPRESENTANTS_LEGAUX")
    if previous is None or _authored_by_patient_side(previous):
        return
    if _without_visibility(previous) != _without_visibility(new):
        raise forbidden(
            "Only its author may change this document; the patient may mask or unmask it "
            "(MASQUE_PS in securityLabel) and nothing else"
        )


async def _patient_document_content(access: PolicyAccess, tx: Transaction, version: ResourceVersion) -> None:
    """A document the patient side deposits, or changes of its own: format, size, DMP type and class, author,
    hospitalisation (record/documents.py)."""
    previous = _body(await tx.read_current("DocumentReference", version.id)) if version.version > 1 else None
    if previous is not None and _without_visibility(previous) == _without_visibility(_body(version) or {}):
        return  # a masking: documents stored before these rules stay maskable
    if previous is None or _authored_by_patient_side(previous):
        await documents.check_document(access.principal, tx, version)


def _visibility(document: dict) -> set[str]:
    return {c.get("code", "") for label in document.get("securityLabel") or () for c in label.get("coding") or ()}


def _without_visibility(document: dict) -> dict:
    """The document but for meta and the MASQUE_PS label (what a masking may change)."""
    kept = {k: v for k, v in document.items() if k not in ("meta", "securityLabel", "text")}
    labels = [
        label
        for label in document.get("securityLabel") or ()
        if not any(c.get("code") == codes.MASQUE_PS for c in label.get("coding") or ())
    ]
    return {**kept, "securityLabel": labels}


def _authored_by_patient_side(document: dict) -> bool:
    authors = [(a.get("reference") or "") for a in document.get("author") or ()]
    return bool(authors) and all(a.startswith(_PATIENT_SIDE) for a in authors)


def _body(version: ResourceVersion | None) -> dict | None:
    if version is None or version.body is None or version.deleted:
        return None
    return orjson.loads(version.body)

"""The patient's notifications, derived from the audit trail: "l'usager est averti à chaque fois qu'un document
est envoyé ou modifié dans son dossier", "une notification dès qu'un professionnel s'y connecte".

``PatientNotifier`` listens to the trail (``AuditTrail.listeners``): for the AuditEvents of each unit of work it
decides which notifications are due, and writes them in the same unit — a ``Communication`` addressed to the
patient (their notification centre) and, when the patient has an email address, an outbox email — so a
notification exists exactly when the access or the change it reports does.

Events (``EVENTS``; an open list — appointments come with the agenda):

* ``professional-access`` — a professional read the record: at most once per professional, patient and day;
* ``emergency-access`` — a professional read it in an emergency mode (Centre 15, bris de glace): once per
  emergency access (the emergency token), never throttled per day, never turned off, and also sent to the
  patient's médecin traitant (``Patient.generalPractitioner``);
* ``document-added`` / ``document-replaced`` — a document (DocumentReference) created / changed by anyone but
  the patient;
* ``consent-changed`` — a privacy or sharing choice (Consent) written by someone other than the patient;
* ``message-received`` — a professional sent the patient a message (docs/messaging.md): once per message.

Nothing of the record travels: the text says what happened, by whom (profession, national number), when, and
links to the notification; never a document's title, type or content. Preferences: ``preferences.py``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import orjson

from ..audit import reading
from ..config import Settings
from ..instant import new_id, now_us
from ..interactions.crud import create_in
from ..messaging import messages
from ..policy.codes import NOTIFICATION_EVENT
from ..policy.matrix import PROFESSIONS
from ..store import Transaction
from ..store.base import StoreQuery, TokenMatch
from . import preferences
from .outbox import EMAIL, OutboxItem

EVENT_SYSTEM = NOTIFICATION_EVENT
KEY_SYSTEM = "https://github.com/fhir-server/fhir-server/NamingSystem/notification-key"
EMAIL_MODE = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode", "code": "EMAILWRIT",
              "display": "email"}  # fmt: skip

#: code → (French, English): what the notification says (no health data).
EVENTS: dict[str, tuple[str, str]] = {
    "professional-access": ("Un professionnel de santé a consulté votre dossier médical",
                            "A health professional accessed your medical record"),
    "emergency-access": ("Accès en urgence à votre dossier médical",
                         "Emergency access to your medical record"),
    "document-added": ("Un document a été ajouté à votre dossier médical",
                       "A document was added to your medical record"),
    "document-replaced": ("Un document de votre dossier médical a été modifié",
                          "A document of your medical record was changed"),
    "consent-changed": ("Vos paramètres de confidentialité ont été modifiés",
                        "Your privacy settings were changed"),
    "message-received": ("Vous avez reçu un nouveau message d'un professionnel de santé",
                         "You received a new message from a health professional"),
}  # fmt: skip
_MODES = {"centre_15": "en mode régulation (Centre 15)", "bris_de_glace": "en mode bris de glace"}
_READS = ("read", "vread", "search-type", "search-system", "search-compartment", "history-instance",
          "history-type", "history-system", "operation", "batch")  # fmt: skip
_WRITES = {"create": "document-added", "update": "document-replaced", "patch": "document-replaced"}


class PatientNotifier:
    def __init__(self, settings: Settings, wake=None) -> None:
        self.settings = settings
        self._wake = wake  # the delivery worker's wake(): emails leave without waiting for its next pass
        self._sent: OrderedDict[str, None] = OrderedDict()  # dedup keys known to exist (saves a query each)

    async def __call__(self, tx: Transaction, events: Sequence[dict]) -> None:
        enqueued = False
        for event in events:
            for patient, code, key, actor in _notices(event):
                enqueued |= await self._notify(tx, event, patient, code, key, actor)
        if enqueued and self._wake is not None:
            self._wake()

    async def _notify(self, tx: Transaction, event: dict, patient: str, code: str, raw: str | None,
                      actor: str) -> bool:  # fmt: skip
        if code == "message-received":
            raw = await _message_key(tx, patient, raw)
            if raw is None:
                return False
        if raw is not None and raw in self._sent:
            self._remember(raw)
            return False
        key = _key(raw) if raw is not None else None
        if key is not None and await tx.find_ids(_by_key(key), 1):
            self._remember(raw)
            return False
        if code != "emergency-access" and not await preferences.enabled(tx, patient, code):
            return False
        record = await tx.read_current("Patient", patient)
        if record is None or record.body is None:
            return False
        body = orjson.loads(record.body)
        base = event.get("source", {}).get("site", "")
        sent = await self._communication(tx, event, patient, f"Patient/{patient}", code, key, actor, _email(body),
                                         base)  # fmt: skip
        if code == "emergency-access":
            for gp in body.get("generalPractitioner") or ():
                reference = gp.get("reference", "") if isinstance(gp, dict) else ""
                if reference.split("/")[0] in ("Practitioner", "PractitionerRole"):
                    email = await _directory_email(tx, reference)
                    sent |= await self._communication(tx, event, patient, reference, code, None, actor, email, base)
        if raw is not None:
            self._remember(raw)
        return sent

    async def _communication(self, tx: Transaction, event: dict, patient: str, recipient: str, code: str,
                             key: str | None, actor: str, email: str | None, base: str) -> bool:  # fmt: skip
        fr, en = EVENTS[code]
        text = _sentence(event, fr, actor)
        communication: dict = {
            "resourceType": "Communication",
            "status": "completed",
            "category": [{"coding": [{"system": EVENT_SYSTEM, "code": code, "display": fr}]}],
            "priority": "urgent" if code == "emergency-access" else "routine",
            "subject": {"reference": f"Patient/{patient}"},
            "recipient": [{"reference": recipient}],
            "sent": event.get("recorded"),
            "about": [{"reference": f"AuditEvent/{event['id']}"}],
            "payload": [{"contentString": text}],
        }
        if key is not None:
            communication["identifier"] = [{"system": KEY_SYSTEM, "value": key}]
        if email:
            communication["medium"] = [{"coding": [EMAIL_MODE]}]
        stored = await create_in(tx, "Communication", communication)
        if not email:
            return False
        link = _link(self.settings.portal_url or base, stored.version.id)
        payload = {"to": email, "subject": f"Mon espace santé : {fr} / {en}",
                   "text": f"{text}\n\n{en}.\n\n{link}\n", "communication": stored.version.id}  # fmt: skip
        await tx.enqueue(OutboxItem(new_id(), EMAIL, payload, due=now_us()))
        return True

    def _remember(self, key: str) -> None:  # the raw key: this process's memory only, never stored
        self._sent[key] = None
        self._sent.move_to_end(key)
        while len(self._sent) > 50_000:
            self._sent.popitem(last=False)


def _notices(event: dict) -> list[tuple[str, str, str | None, str]]:
    """(patient, event code, dedup key or None, who) for each notification ``event`` calls for."""
    if event.get("outcome") != "0" or (event.get("type") or {}).get("code") != "rest":
        return []
    person = reading.requestor(event)
    who = (person or {}).get("who", {})
    actor = who.get("reference") or who.get("identifier", {}).get("value") or ""
    professional = person is not None and (
        reading.profession(person) is not None or reading.id_nat_ps(person) is not None
    )
    interaction = (event.get("subtype") or [{}])[0].get("code", "")
    touched = reading.touched(event)
    notices = []
    for patient in reading.patients(event):
        self_acting = actor == f"Patient/{patient}"
        if professional and interaction in _READS:
            mode = reading.access_mode(event)
            if mode != "normal":
                token = ((person or {}).get("policy") or [event["id"]])[0]
                notices.append((patient, "emergency-access", _raw("emergency", patient, token), actor))
            else:
                day = (event.get("recorded") or "")[:10]
                ps = reading.id_nat_ps(person) or actor
                notices.append((patient, "professional-access", _raw("ps", patient, ps, day), actor))
        if professional and interaction == "create":
            notices += [(patient, "message-received", r, actor) for r in touched if r.startswith("Communication/")]
        if self_acting or interaction not in (*_WRITES, "delete"):
            continue
        if interaction in _WRITES and any(r.startswith("DocumentReference/") for r in touched):
            notices.append((patient, _WRITES[interaction], None, actor))
        if any(r.startswith("Consent/") for r in touched):
            notices.append((patient, "consent-changed", None, actor))
    return notices


def _sentence(event: dict, headline: str, actor: str) -> str:
    """The notification's text: what, by whom (profession, RPPS number), when, in which mode."""
    person = reading.requestor(event) or {}
    profession = reading.profession(person)
    number = reading.id_nat_ps(person)
    by = ""
    if profession or number:
        label = PROFESSIONS.get(profession or "", "professionnel de santé").lower()
        by = f" par un {label}" + (f" (n° {number})" if number else "")
    mode = _MODES.get(reading.access_mode(event), "")
    when = (event.get("recorded") or "")[:16].replace("T", " à ")
    return f"{headline}{by}{' ' + mode if mode else ''}, le {when} (UTC)."


async def _message_key(tx: Transaction, patient: str, reference: str | None) -> str | None:
    """A created Communication that is a message sent to ``patient`` (either of its copies): its dedup key,
    one notification per message; None for any other Communication."""
    type_, _, id_ = (reference or "").split("/_history", 1)[0].partition("/")
    found = await tx.read_current(type_, id_) if type_ == "Communication" else None
    body = orjson.loads(found.body) if found is not None and found.body is not None else None
    if not messages.is_message(body) or (body or {}).get("status") != "completed":
        return None
    recipients = [r.get("reference") for r in body.get("recipient") or () if isinstance(r, dict)]  # type: ignore[union-attr]
    identifier = messages.message_id(body)
    if recipients != [f"Patient/{patient}"] or identifier is None:
        return None
    return _raw("message", identifier)


def _link(base: str, communication_id: str) -> str:
    return f"{base.rstrip('/')}/Communication/{communication_id}"


def _by_key(key: str) -> StoreQuery:
    return StoreQuery("Communication", all_of=((TokenMatch("identifier", key, KEY_SYSTEM),),))


def _raw(*parts: str) -> str:
    return "|".join(parts)


def _key(raw: str) -> str:
    """A dedup key that names nobody (a hash): the notification's identifier."""
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _email(resource: dict) -> str | None:
    """The contact email: the telecom of system email, the lowest rank first, not an old one."""
    found = [t for t in resource.get("telecom") or () if isinstance(t, dict) and t.get("system") == "email"
             and t.get("value") and t.get("use") != "old"]  # fmt: skip
    found.sort(key=lambda t: t.get("rank", 1_000_000))
    return found[0]["value"] if found else None


async def _directory_email(tx: Transaction, reference: str) -> str | None:
    """A professional's email: the PractitionerRole's telecom, else its Practitioner's."""
    type_, _, id_ = reference.partition("/")
    found = await tx.read_current(type_, id_)
    if found is None or found.body is None:
        return None
    body = orjson.loads(found.body)
    email = _email(body)
    practitioner = (body.get("practitioner") or {}).get("reference")
    if email is None and type_ == "PractitionerRole" and practitioner:
        return await _directory_email(tx, practitioner)
    return email

"""The insurer's registry feed: Patients created or updated by INS, each new person notified with a
provisional enrolment code (docs/lifecycle.md, "Registry feed").

Input: NDJSON (one Patient per line) or a FHIR Bundle of Patients. Each Patient carries its INS-NIR
(``identifier`` of system urn:oid:1.2.250.1.213.1.4.8), name, birth date, gender, contacts, optionally the
Vitale card serial number (``identifier`` of system ``VITALE_SERIAL``: never stored in the Patient, only its
hash in the auth state) and, for a dependant (ayant droit), the INS of the insured person who opens the
right (extension ``mes-ouvrant-droit``).

Every entry is checked before anything is written; each then goes in its own unit of work (the Patient, its
letter or outbox email, the representative, the AuditEvents): a failing entry leaves nothing behind.
Idempotent by INS: the same data imported again writes nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..audit.events import Actor
from ..config import Settings
from ..errors import FhirError
from ..fhirjson import loads
from ..instant import new_id
from ..interactions.crud import create_in, update_in
from ..interactions.observers import ObservedTransaction, WriteObserver
from ..policy.codes import INS_NIR
from ..store import ResourceVersion, Store, Transaction
from ..validation import validate_resource
from . import status
from .clock import CLOCK
from .enrolment import Enrolment
from .lifecycle import audit_event, body_of, by_nir, issue_and_send, record, valid_nir
from .representatives import registry_representative

VITALE_SERIAL = "https://github.com/fhir-server/fhir-server/NamingSystem/vitale-card-serial"
#: What the registry owns in a Patient: replaced by an import when the entry carries it, kept otherwise.
REGISTRY_FIELDS = ("name", "birthDate", "gender", "telecom", "address")
_SERIAL = re.compile(r"^[0-9A-Za-z]{1,32}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


@dataclass(frozen=True, slots=True)
class Entry:
    label: str  # "line 3", "entry[2]": how errors name it
    nir: str
    patient: dict  # the registry's fields, without the card serial number
    serial: str | None


@dataclass(slots=True)
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    emails: int = 0  # codes sent by email (the server's delivery worker may be woken)
    errors: list[str] = field(default_factory=list)  # "line 3: …", never a value of the entry


class RegistryInputError(ValueError):
    """Input that is neither NDJSON nor a Bundle."""


# --- reading and checking -----------------------------------------------------------------------------------
def read_entries(data: bytes, form: str | None = None) -> tuple[list[Entry], list[str]]:
    """The entries of an input (``form``: ``bundle``, ``ndjson``, or None to tell by the content), and one
    message per entry that cannot be imported."""
    if form != "ndjson":
        try:
            document = loads(data)
        except (FhirError, ValueError) as exc:
            if form == "bundle":
                raise RegistryInputError(f"the body is not JSON: {exc}") from None
            document = None
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            items = [(f"entry[{i}]", e.get("resource") if isinstance(e, dict) else None)
                     for i, e in enumerate(document.get("entry") or ())]  # fmt: skip
            return _check_all(items)
        if form == "bundle":
            raise RegistryInputError("the body is not a Bundle of Patients")
    items: list[tuple[str, object]] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {number}", loads(line)))
        except (FhirError, ValueError):
            items.append((f"line {number}", ValueError("not a JSON object")))
    return _check_all(items)


def _check_all(items: list[tuple[str, object]]) -> tuple[list[Entry], list[str]]:
    entries, errors = [], []
    for label, resource in items:
        try:
            entries.append(check_entry(label, resource))
        except ValueError as exc:
            errors.append(f"{label}: {exc}")
    if not items:
        errors.append("the input holds no Patient")
    return entries, errors


def check_entry(label: str, resource: object) -> Entry:
    """One registry Patient as an ``Entry``; ``ValueError`` saying what is wrong (never quoting a value)."""
    if isinstance(resource, Exception):
        raise ValueError(str(resource))
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        raise ValueError("not a Patient resource")
    identifiers = [i for i in resource.get("identifier") or () if isinstance(i, dict)]
    nirs = [str(i.get("value") or "") for i in identifiers if i.get("system") == INS_NIR]
    if len(nirs) != 1 or not valid_nir(nirs[0]):
        raise ValueError(f"needs exactly one identifier of system {INS_NIR} holding a valid NIR (15 characters, "
                         "its key right)")  # fmt: skip
    serials = [str(i.get("value") or "") for i in identifiers if i.get("system") == VITALE_SERIAL]
    if len(serials) > 1 or (serials and not _SERIAL.match(serials[0])):
        raise ValueError(f"at most one identifier of system {VITALE_SERIAL}, 1-32 letters or digits")
    if not resource.get("name"):
        raise ValueError("Patient.name is required")
    if not _DATE.match(str(resource.get("birthDate") or "")):
        raise ValueError("Patient.birthDate is required, a full date (YYYY-MM-DD)")
    patient = _registry_patient(resource, [i for i in identifiers if i.get("system") != VITALE_SERIAL], nirs[0])
    try:
        validate_resource(patient)
    except FhirError as exc:
        raise ValueError(f"not a valid R4 Patient: {exc.message}") from None
    return Entry(label, nirs[0], patient, serials[0] if serials else None)


def _registry_patient(resource: dict, identifiers: list[dict], nir: str) -> dict:
    patient: dict = {"resourceType": "Patient", "identifier": identifiers}
    patient.update((k, resource[k]) for k in REGISTRY_FIELDS if k in resource)
    opener = [e for e in resource.get("extension") or () if _is_opener(e)]
    if opener:
        value = opener[0].get("valueIdentifier") or {}
        if len(opener) > 1 or value.get("system") != INS_NIR or not valid_nir(str(value.get("value") or "")):
            raise ValueError(f"the extension {status.OUVRANT_DROIT} holds one valueIdentifier: a valid INS-NIR")
        if value.get("value") == nir:
            raise ValueError("a person does not open their own right as a dependant (mes-ouvrant-droit is their INS)")
        patient["extension"] = [
            {"url": status.OUVRANT_DROIT, "valueIdentifier": {"system": INS_NIR, "value": value["value"]}}
        ]
    return patient


def _is_opener(extension: object) -> bool:
    return isinstance(extension, dict) and extension.get("url") == status.OUVRANT_DROIT


def is_dependant(patient: dict) -> bool:
    return any(_is_opener(e) for e in patient.get("extension") or ())


# --- writing ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Importer:
    store: Store
    enrolment: Enrolment
    settings: Settings
    base: str  # the public base URL: in the letters' links and the trace
    actor: Actor  # who feeds the registry: the backend's token, or the operator at the command line
    observers: Sequence[WriteObserver] = ()  # the request's trace, Subscriptions

    async def run(self, entries: list[Entry], result: ImportResult | None = None) -> ImportResult:
        result = result or ImportResult()
        for entry in entries:
            try:
                outcome, emailed = await self.store.transact(lambda tx, e=entry: self._one(tx, e))
            except (FhirError, ValueError) as exc:
                result.errors.append(f"{entry.label}: {exc}")
                continue
            setattr(result, outcome, getattr(result, outcome) + 1)
            result.emails += emailed
        return result

    async def _one(self, tx: Transaction, entry: Entry) -> tuple[str, int]:
        observed = ObservedTransaction(tx, self.observers) if self.observers else tx
        ids = await tx.find_ids(by_nir(entry.nir), 2)
        if len(ids) > 1:
            raise ValueError("several Patients already hold this INS: resolve the duplicate first")
        current = await tx.read_current("Patient", ids[0]) if ids else None
        now = CLOCK.now()
        if current is None:
            return "created", await self._create(tx, observed, entry, now)
        return await self._update(tx, observed, entry, current, now), 0

    async def _create(self, tx: Transaction, observed: Transaction, entry: Entry, now: datetime) -> int:
        deadline = now + timedelta(days=self.settings.space_opposition_days)
        space = status.Space(status.PENDING, notified=status.instant(now), deadline=status.instant(deadline))
        patient_id = new_id()
        stored = (await create_in(observed, "Patient", status.write(entry.patient, space), id_=patient_id)).version
        if entry.serial:
            await asyncio.to_thread(self.enrolment.remember_card, patient_id, entry.serial)
        channel = await issue_and_send(observed, self.enrolment, stored, space, self.base)
        if is_dependant(entry.patient):
            await registry_representative(observed, body_of(stored), now)
        await record(tx, [
            audit_event(self.actor, self.base, "registry-import", patient_id,
                        "Personne créée par le référentiel de l'assurance maladie ; espace en attente (pending)",
                        version=stored, action="C"),
            audit_event(self.actor, self.base, "space-notify", patient_id,
                        f"Notification de création avec code provisoire envoyée ({channel})", action="E",
                        details=(("channel", channel),)),
        ])  # fmt: skip
        return int(channel == "email")

    async def _update(self, tx: Transaction, observed: Transaction, entry: Entry, current: ResourceVersion,
                      now: datetime) -> str:  # fmt: skip
        existing = body_of(current)
        merged = merge(existing, entry.patient)
        card = bool(entry.serial) and await asyncio.to_thread(self.enrolment.remember_card, current.id, entry.serial)
        if _content(merged) == _content(existing):
            return "updated" if card else "unchanged"
        validate_resource(merged)
        stored = (await update_in(observed, "Patient", current.id, merged, current.version)).version
        if is_dependant(merged):
            await registry_representative(observed, body_of(stored), now)
        await record(tx, [audit_event(self.actor, self.base, "registry-import", current.id,
                                      "Données d'identité mises à jour par le référentiel de l'assurance maladie",
                                      version=stored)])  # fmt: skip
        return "updated"


def merge(existing: dict, registry: dict) -> dict:
    """The existing Patient with the registry's demographics: id, space, médecin traitant and every other
    element kept; the registry's identifiers added to those already there."""
    merged = {**existing, **{k: registry[k] for k in REGISTRY_FIELDS if k in registry}}
    known = {(i.get("system"), i.get("value")) for i in existing.get("identifier") or () if isinstance(i, dict)}
    added = [i for i in registry.get("identifier") or () if (i.get("system"), i.get("value")) not in known]
    if added:
        merged["identifier"] = [*(existing.get("identifier") or ()), *added]
    opener = next((e for e in registry.get("extension") or () if _is_opener(e)), None)
    if opener is not None:  # in place of the previous one: the same data must compare equal
        kept = [opener if _is_opener(e) else e for e in existing.get("extension") or ()]
        merged["extension"] = kept if any(_is_opener(e) for e in kept) else [*kept, opener]
    return merged


def _content(patient: dict) -> dict:
    return {k: v for k, v in patient.items() if k != "meta"}

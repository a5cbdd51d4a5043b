"""The patient's notification preferences: which events notify them (``Patient/[id]/$notification-preferences``).

Stored as one ``Basic`` resource per patient (code ``notification-preferences``, ``subject`` the Patient, one
``notification-preference`` extension per event: ``event`` code + ``enabled``), in the patient's compartment:
the patient and their representatives read it, and write it with the same rights as the rest of the record.
Unset events notify. ``emergency-access`` cannot be turned off (refused with 400).
"""

from __future__ import annotations

import hashlib

import orjson

from ..errors import bad_request
from ..store import Transaction

CODE_SYSTEM = "https://github.com/fhir-server/fhir-server/CodeSystem/notification-event"
BASIC_CODE = {"system": "https://github.com/fhir-server/fhir-server/CodeSystem/basic-resource-type",
              "code": "notification-preferences"}  # fmt: skip
PREFERENCE_URL = "https://github.com/fhir-server/fhir-server/StructureDefinition/notification-preference"
#: The events a patient may turn off; the others (emergencies) always notify.
OPTIONAL = ("professional-access", "document-added", "document-replaced", "consent-changed")
MANDATORY = ("emergency-access",)


def resource_id(patient: str) -> str:
    """The Basic's id: derived from the patient id (a FHIR id is at most 64 characters, so hashed)."""
    return "notification-preferences-" + hashlib.sha256(patient.encode()).hexdigest()[:32]


def choices(basic: dict | None) -> dict[str, bool]:
    """Every event → enabled (stored choices over the defaults: every event notifies)."""
    found = dict.fromkeys((*OPTIONAL, *MANDATORY), True)
    for extension in (basic or {}).get("extension") or ():
        if extension.get("url") != PREFERENCE_URL:
            continue
        parts = {e.get("url"): e for e in extension.get("extension") or ()}
        code = (parts.get("event") or {}).get("valueCode")
        enabled = (parts.get("enabled") or {}).get("valueBoolean")
        if code in OPTIONAL and isinstance(enabled, bool):
            found[code] = enabled
    return found


async def enabled(tx: Transaction, patient: str, event: str) -> bool:
    if event not in OPTIONAL:
        return True
    stored = await tx.read_current("Basic", resource_id(patient))
    return choices(orjson.loads(stored.body) if stored is not None and stored.body else None)[event]


def as_parameters(values: dict[str, bool]) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "preference", "part": [{"name": "event", "valueCode": code},
                                        {"name": "enabled", "valueBoolean": on},
                                        {"name": "mandatory", "valueBoolean": code in MANDATORY}]}
        for code, on in values.items()]}  # fmt: skip


def from_parameters(patient: str, parameters: object, current: dict[str, bool]) -> dict:
    """The Basic to store for a Parameters body of ``preference`` (event + enabled) parts; 400 for anything
    else, and for an attempt to turn an emergency notification off."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise bad_request("$notification-preferences takes a Parameters body")
    values = dict(current)
    for parameter in parameters.get("parameter") or ():
        parts = {p.get("name"): p for p in parameter.get("part") or ()} if isinstance(parameter, dict) else {}
        code = (parts.get("event") or {}).get("valueCode")
        on = (parts.get("enabled") or {}).get("valueBoolean")
        if parameter.get("name") != "preference" or not isinstance(on, bool) or not isinstance(code, str):
            raise bad_request(
                "each parameter is a 'preference' with an 'event' (valueCode) and 'enabled' (valueBoolean)"
            )
        if code in MANDATORY and not on:
            raise bad_request(f"{code} notifications cannot be turned off")
        if code not in OPTIONAL and code not in MANDATORY:
            raise bad_request(f"unknown notification event {code!r} (known: {', '.join((*OPTIONAL, *MANDATORY))})")
        values[code] = on
    extension = [{"url": PREFERENCE_URL, "extension": [{"url": "event", "valueCode": code},
                                                       {"url": "enabled", "valueBoolean": on}]}
                 for code, on in values.items() if code in OPTIONAL]  # fmt: skip
    return {"resourceType": "Basic", "id": resource_id(patient), "code": {"coding": [BASIC_CODE]},
            "subject": {"reference": f"Patient/{patient}"}, "extension": extension}  # fmt: skip

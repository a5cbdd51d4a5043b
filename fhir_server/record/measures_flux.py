"""The IG's transaction flux ("Le flux d'alimentation des mesures", IHE POU PCH-01): one Observation and,
optionally, the PhdDevice that measured it, conditionally created by its identifier.

Two hooks of ``interactions/bundles.py``:

* ``check_bundle``: a Bundle declaring the flux profile is held to the IG's structure errors (422, before
  anything runs): only POST of Observation or Device, exactly one Observation, the Device's ``ifNoneExist`` by
  ``identifier=urn:oid:…|…``, meta.profile on both, the Observation linked to the Device by id, its subject by
  identifier.
* ``resolve``: in any transaction, an Observation whose subject is given by identifier only (INS, or the IG's
  idPe) gets the reference of the one Patient the caller may reach with it; none: 403 with the IG's "idPe
  requested do not match authorized idPe"; several: 422. The IG's Device is referenced as ``Device/<its id>``
  (not its fullUrl): that reference follows the identity the server gives it, and a Device created by the
  flux records the patient it measures (so it falls inside the patient's data, where a patient's app may write).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import FhirError, Issue, forbidden
from ..search.criteria import parse_criteria
from ..store import Transaction

if TYPE_CHECKING:
    from ..interactions.bundles import EntryRequest

PROFILE = "https://interop.esante.gouv.fr/ig/fhir/mesures/StructureDefinition/mesures-bundle-flux-alimentation"
_IF_NONE_EXIST = re.compile(r"identifier=urn:oid:[0-9]+(\.[0-9]+)+\|[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*")


def _refused(message: str, diagnostics: str, code: str = "invalid", where: str = "") -> FhirError:
    """The IG's error: 422, an OperationOutcome of level error with its message and diagnostic."""
    return FhirError(422, [Issue(code, f"{message} {diagnostics}", expression=(where,) if where else ())])


def check_bundle(bundle: dict, entries: list[EntryRequest]) -> None:
    if PROFILE not in ((bundle.get("meta") or {}).get("profile") or ()):
        return
    for entry in entries:
        if entry.method != "POST" or entry.type not in ("Observation", "Device"):
            raise _refused(
                "Bundle not valid.",
                f"Resource of type {entry.type} is not acceptable with method {entry.method}.",
                "not-supported",
                f"Bundle.entry[{entry.index}]",
            )
    observations = [e for e in entries if e.type == "Observation"]
    if len(observations) != 1:
        raise _refused("Bundle not valid.", "Bundle must contains one observation creation (POST)")
    observation = observations[0].resource or {}
    devices = [e for e in entries if e.type == "Device"]
    for device in devices:
        if device.if_none_exist is not None and not _IF_NONE_EXIST.fullmatch(device.if_none_exist):
            raise _refused(
                "Bundle not valid.",
                "Device request must have a valid IfNoneExist attribute : identifier=urn:oid:<OID>|<DEVICE ID>",
                where=f"Bundle.entry[{device.index}].request",
            )
        if not ((device.resource or {}).get("meta") or {}).get("profile"):
            raise _refused("Device resource not valid.", "Device must provide meta.profile value.")
    if not (observation.get("meta") or {}).get("profile"):
        raise _refused("Observation resource not valid.", "Observation must provide meta.profile value.")
    if not isinstance((observation.get("subject") or {}).get("identifier"), dict):
        raise _refused(
            "Observation resource not valid.",
            "Observation.subject.identifier is mandatory.",
            where="Observation.subject.identifier",
        )
    if devices:
        _linked(observation, devices)


def _linked(observation: dict, devices: list[EntryRequest]) -> None:
    reference = (observation.get("device") or {}).get("reference")
    if not reference:
        raise _refused("Observation and Device link not valid.", "Observation.device.reference is mandatory.")
    names = {f"Device/{(d.resource or {}).get('id')}" for d in devices} | {d.full_url for d in devices}
    if reference not in names:
        raise _refused(
            "Observation and Device link not valid.",
            "Observation and device not linked by id (Observation.device.reference <-> Device.id)",
        )


async def resolve(tx: Transaction, entries: list[EntryRequest], mapping: dict[str, str]) -> None:
    """Subjects by identifier → Patient references; ``Device/<local id>`` → the Device's identity."""
    for entry in entries:
        local = (entry.resource or {}).get("id")
        if entry.type == "Device" and entry.method == "POST" and local and entry.full_url in mapping:
            mapping.setdefault(f"Device/{local}", mapping[entry.full_url])
    for entry in entries:
        if entry.type != "Observation" or entry.method not in ("POST", "PUT") or entry.resource is None:
            continue
        subject = entry.resource.get("subject")
        if isinstance(subject, dict) and not subject.get("reference") and isinstance(subject.get("identifier"), dict):
            patient = await _patient(tx, subject["identifier"])
            entry.resource = {**entry.resource, "subject": {**subject, "reference": f"Patient/{patient}"}}
            _device_of(entry.resource, entries, mapping, patient)


async def _patient(tx: Transaction, identifier: dict) -> str:
    system, value = identifier.get("system"), identifier.get("value")
    if not isinstance(system, str) or not isinstance(value, str) or not value:
        raise _refused(
            "Observation resource not valid.",
            "Observation.subject.identifier needs a system and a value",
            where="Observation.subject.identifier",
        )
    # The guarded transaction looks only into what the caller may reach: another person's identifier matches
    # nothing, which tells nothing of whether that person exists.
    ids = await tx.find_ids(parse_criteria("Patient", [("identifier", f"{system}|{value}")]), 2)
    if not ids:
        raise forbidden(
            "idPe requested do not match authorized idPe. (Observation.subject.identifier names no "
            "patient this token may write for)",
            expression=("Observation.subject.identifier",),
        )
    if len(ids) > 1:
        raise _refused(
            "Observation resource not valid.",
            "Observation.subject.identifier matches several patients",
            "multiple-matches",
            "Observation.subject.identifier",
        )
    return ids[0]


def _device_of(observation: dict, entries: list[EntryRequest], mapping: dict[str, str], patient: str) -> None:
    """The flux's Device, when created, records the patient it measures (unless it names one)."""
    reference = (observation.get("device") or {}).get("reference")
    for entry in entries:
        if entry.type != "Device" or entry.method != "POST" or entry.resource is None:
            continue
        names = {f"Device/{entry.resource.get('id')}", entry.full_url}
        if reference in names and "patient" not in entry.resource:
            entry.resource = {**entry.resource, "patient": {"reference": f"Patient/{patient}"}}

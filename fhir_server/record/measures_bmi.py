"""The server's BMI: computed from the patient's last weight and last height, kept current in the unit of work of
each write that changes either (create, update, delete).

The IG makes BMI the server's ("Les observations IMC sont calculées à la volée et ne peuvent donc pas être
créées"): one Observation per patient, coded LOINC 39156-5 in kg/m2 to one decimal, ``derivedFrom`` the weight
and height it comes from, tagged and identified as the server's. It is written with the store's own transaction
(under the caller's guard, not through it: the caller may not write a BMI, the server may).
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from ..instant import date_range
from ..search.criteria import parse_criteria
from ..store import ResourceVersion, Transaction
from .measures import BMI, HEIGHT, LOINC, UCUM, WEIGHT, check, invalid, is_bmi, loinc_codes
from .origin import ORIGIN
from .origin import SERVER_COMPUTED as COMPUTED

IDENTIFIER = "https://github.com/fhir-server/fhir-server/identifier/computed-bmi"
PROFILE = "https://interop.esante.gouv.fr/ig/fhir/mesures/StructureDefinition/mesures-fr-observation-bmi"
VITAL_SIGNS = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
#: Statuses of a measure that stands (not preliminary, cancelled or entered in error).
STANDING = frozenset({"final", "amended", "corrected"})
#: A patient's weights (or heights) read to find the last one: far more than a lifetime of self-measures.
MAX_MEASURES = 10_000
_TO_KG = {"kg": 1.0, "g": 0.001}
_TO_M = {"m": 1.0, "cm": 0.01}


def is_server_bmi(observation: dict | None) -> bool:
    tags = ((observation or {}).get("meta") or {}).get("tag") or ()
    return any(t.get("system") == ORIGIN and t.get("code") == COMPUTED for t in tags if isinstance(t, dict))


def body_of(version: ResourceVersion | None) -> dict | None:
    if version is None or version.body is None or version.deleted:
        return None
    return orjson.loads(version.body)


def patient_of(observation: dict | None) -> str | None:
    """The Patient id of a weight or height (None for any other Observation)."""
    if observation is None or not {WEIGHT, HEIGHT} & set(loinc_codes(observation.get("code"))):
        return None
    ref = (observation.get("subject") or {}).get("reference") or ""
    return ref.split("/", 1)[1] if ref.startswith("Patient/") and ref.count("/") == 1 else None


async def on_write(tx: Transaction, version: ResourceVersion) -> None:
    """A caller's write of an Observation (the policy's write check, ``policy/writes.py``): refuse a BMI and
    a measure in the wrong units, then recompute the BMI of the patient(s) whose weight or height it changes."""
    if version.type != "Observation":
        return
    before = body_of(await tx.read_current("Observation", version.id))
    after = body_of(version)
    if is_bmi(before) or is_bmi(after):
        raise invalid(
            "Bmi observation cannot be created: the server computes BMI (LOINC 39156-5) from the "
            "patient's last weight and height",
            "Observation.code",
            "not-supported",
        )
    if after is not None:
        check(after)
    for patient in dict.fromkeys(p for p in (patient_of(before), patient_of(after)) if p):
        await recompute(tx, patient, version.id, after)


async def recompute(tx: Transaction, patient: str, pending_id: str, pending: dict | None) -> None:
    """Create, update or delete the patient's BMI so it follows their last weight and height (``pending``:
    the Observation ``pending_id`` as the unit of work is about to leave it, None when deleted)."""
    weight = await _last(tx, patient, WEIGHT, pending_id, pending)
    height = await _last(tx, patient, HEIGHT, pending_id, pending)
    current_id = await _current_bmi(tx, patient)
    current = body_of(await tx.read_current("Observation", current_id)) if current_id else None
    wanted = _bmi(patient, weight, height)
    from ..interactions import crud  # interactions sit above the record: imported on use

    if wanted is None:
        if current_id:
            await crud.delete_in(tx, "Observation", current_id)
        return
    if current is not None and _same(current, wanted):
        return
    if current_id:
        await crud.update_in(tx, "Observation", current_id, {**wanted, "id": current_id}, None)
    else:
        await crud.create_in(tx, "Observation", wanted)


async def _current_bmi(tx: Transaction, patient: str) -> str | None:
    query = parse_criteria("Observation", [("identifier", f"{IDENTIFIER}|{patient}")])
    ids = await tx.find_ids(query, 1)
    return ids[0] if ids else None


async def _last(tx: Transaction, patient: str, code: str, pending_id: str, pending: dict | None) -> tuple | None:
    """(effective instant, id, body) of the patient's last standing measure of ``code``."""
    query = parse_criteria("Observation", [("subject", f"Patient/{patient}"), ("code", f"{LOINC}|{code}")])
    candidates: dict[str, dict | None] = {}
    for id_ in await tx.find_ids(query, MAX_MEASURES):
        candidates[id_] = body_of(await tx.read_current("Observation", id_))
    candidates[pending_id] = pending if pending is not None and patient_of(pending) == patient else None
    dated = _dated(code, candidates.items())
    return max(dated, default=None)


def _dated(code: str, candidates: Iterable[tuple[str, dict | None]]) -> list[tuple]:
    out = []
    for id_, body in candidates:
        if body is None or code not in loinc_codes(body.get("code")) or body.get("status") not in STANDING:
            continue
        when = _effective(body)
        if when is not None and _quantity(body, _TO_KG if code == WEIGHT else _TO_M) is not None:
            out.append((when, id_, body))
    return out


def _effective(body: dict) -> int | None:
    value = body.get("effectiveDateTime") or (body.get("effectivePeriod") or {}).get("start") or body.get("issued")
    bounds = date_range(value) if isinstance(value, str) else None
    return bounds[0] if bounds else None


def _quantity(body: dict, factors: dict[str, float]) -> float | None:
    quantity = body.get("valueQuantity") or {}
    value, unit = quantity.get("value"), quantity.get("code")
    if quantity.get("system") != UCUM or unit not in factors or not isinstance(value, int | float) or value <= 0:
        return None
    return value * factors[unit]


def _bmi(patient: str, weight: tuple | None, height: tuple | None) -> dict | None:
    if weight is None or height is None:
        return None
    kg = _quantity(weight[2], _TO_KG)
    metres = _quantity(height[2], _TO_M)
    assert kg is not None and metres is not None
    latest = weight[2] if weight[0] >= height[0] else height[2]
    effective = latest.get("effectiveDateTime") or (latest.get("effectivePeriod") or {}).get("start")
    return {
        "resourceType": "Observation",
        "meta": {
            "profile": [PROFILE],
            "tag": [{"system": ORIGIN, "code": COMPUTED, "display": "Computed by the server"}],
        },
        "identifier": [{"system": IDENTIFIER, "value": patient}],
        "status": "final",
        "category": [{"coding": [VITAL_SIGNS]}],
        "code": {"coding": [{"system": LOINC, "code": BMI, "display": "Body mass index (BMI) [Ratio]"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": effective,
        "valueQuantity": {"value": round(kg / metres**2, 1), "unit": "kg/m2", "system": UCUM, "code": "kg/m2"},
        "derivedFrom": [{"reference": f"Observation/{weight[1]}"}, {"reference": f"Observation/{height[1]}"}],
    }


def _same(current: dict, wanted: dict) -> bool:
    keys = ("valueQuantity", "derivedFrom", "effectiveDateTime", "status")
    return all(current.get(k) == wanted.get(k) for k in keys)

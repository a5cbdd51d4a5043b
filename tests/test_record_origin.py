"""The origin of each medical-profile entry (issue 13): the server stamps who entered every version — the
``mes-origin`` tag (patient-declared | professional | service) and the ``mes-entered-by`` extension (the user
and the application) — from the verified token, whatever the client sent; the history keeps each version's
origin; ``_tag`` finds them; ``$meta-add``/``$meta-delete`` cannot forge or erase them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from test_measures import LEA, LONG, MAX, MED, SYSTEM, measure, measures_server

from fhir_server.record import origin
from fhir_server.security.principal import Principal
from fhir_server.validation import profiles

BY_PS = f"_tag={origin.ORIGIN}|{origin.PROFESSIONAL}"
BY_PATIENT = f"_tag={origin.ORIGIN}|{origin.PATIENT_DECLARED}"
FORGED_TAG = {"system": origin.ORIGIN, "code": origin.PROFESSIONAL}
FORGED_EXTENSION = {
    "url": origin.ENTERED_BY,
    "extension": [{"url": "enterer", "valueReference": {"reference": "PractitionerRole/r-med"}}],
}


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with measures_server(store_url) as c:
        yield c


def allergy(patient: str = "lea", **extra) -> dict:
    return {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91935009", "display": "Allergy to peanuts"}]},
        **extra,
    }


def condition(patient: str = "lea") -> dict:
    return {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"text": "Asthme"},
    }


def stamped(resource: dict) -> tuple[list[str], dict[str, object]]:
    """The origin codes of ``resource`` and its ``mes-entered-by`` details."""
    codes_ = [t["code"] for t in resource.get("meta", {}).get("tag", ()) if t["system"] == origin.ORIGIN]
    [entered] = [e for e in resource.get("extension", ()) if e["url"] == origin.ENTERED_BY]
    details = {d["url"]: d.get("valueReference", d.get("valueIdentifier")) for d in entered["extension"]}
    return codes_, details


async def post(c: httpx.AsyncClient, body: dict, headers: dict) -> dict:
    r = await c.post(f"/{body['resourceType']}", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_each_version_says_who_entered_it_whatever_the_client_sent(client):
    mine = await post(client, allergy(meta={"tag": [FORGED_TAG]}, extension=[FORGED_EXTENSION]), LEA)
    assert stamped(mine) == (
        [origin.PATIENT_DECLARED],
        {"enterer": {"reference": "Patient/lea"}, "application": {"system": origin.CLIENT_ID, "value": "mes-app"}},
    )
    by_doctor = await post(client, condition(), MED)
    codes_, details = stamped(by_doctor)
    assert codes_ == [origin.PROFESSIONAL] and details["enterer"] == {"reference": "PractitionerRole/r-med"}
    by_device = await post(client, measure("29463-7", 70, "kg", "2026-01-02"), SYSTEM)
    codes_, details = stamped(by_device)
    assert codes_ == [origin.SERVICE] and "enterer" not in details and details["application"]["value"] == "feed"

    # what the server answered is what it stored (read) and what the patient corrects keeps the history
    read = (await client.get(f"/Condition/{by_doctor['id']}", headers=LEA)).json()
    assert stamped(read)[0] == [origin.PROFESSIONAL]
    corrected = {**read, "code": {"text": "Asthme allergique"}}
    r = await client.put(f"/Condition/{by_doctor['id']}", json=corrected, headers=LEA)
    assert r.status_code == 200, r.text
    assert stamped(r.json()) == (
        [origin.PATIENT_DECLARED],
        {"enterer": {"reference": "Patient/lea"}, "application": {"system": origin.CLIENT_ID, "value": "mes-app"}},
    )
    history = (await client.get(f"/Condition/{by_doctor['id']}/_history", headers=LEA)).json()
    assert [stamped(e["resource"])[0] for e in history["entry"]] == [[origin.PATIENT_DECLARED], [origin.PROFESSIONAL]]


async def test_the_origin_is_searchable_and_cannot_be_forged_by_meta_operations(client):
    await post(client, allergy(), LEA)
    by_doctor = await post(client, allergy(code={"text": "Pénicilline"}), MED)
    r = await client.get(f"/AllergyIntolerance?patient=Patient/lea&{BY_PS}", headers=LEA)
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [by_doctor["id"]]
    r = await client.get(f"/AllergyIntolerance?{BY_PATIENT}&_summary=count", headers=LEA)
    assert r.json()["total"] == 1

    mine = await post(client, allergy(), LEA)
    for operation in ("$meta-add", "$meta-delete"):
        parameters = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [FORGED_TAG]}}]}
        r = await client.post(f"/AllergyIntolerance/{mine['id']}/{operation}", json=parameters, headers=LEA)
        assert r.status_code == 403 and "written by the server" in r.text, r.text
    read = (await client.get(f"/AllergyIntolerance/{mine['id']}", headers=LEA)).json()
    assert stamped(read)[0] == [origin.PATIENT_DECLARED]


async def test_a_stamped_entry_goes_back_unchanged_and_another_patient_learns_nothing(client):
    mine = await post(client, allergy(), LEA)
    r = await client.put(f"/AllergyIntolerance/{mine['id']}", json=mine, headers=LEA)  # read-modify-write round trip
    assert r.status_code == 200, r.text
    r = await client.get(f"/AllergyIntolerance?{BY_PATIENT}&_summary=count", headers=MAX)
    assert r.json()["total"] == 0


def test_the_extension_conforms_to_its_definition_and_each_kind_of_caller_has_its_origin():
    registry = profiles.registry()
    definition = registry.extensions[origin.ENTERED_BY]
    extension = {
        "url": origin.ENTERED_BY,
        "extension": [
            {"url": "enterer", "valueReference": {"reference": "RelatedPerson/x"}},
            {"url": "application", "valueIdentifier": {"system": origin.CLIENT_ID, "value": "app"}},
        ],
    }
    assert registry.check({"resourceType": "Extension", **extension}, definition) == []
    extension["extension"].append({"url": "date", "valueDateTime": "2026-01-01"})
    assert registry.check({"resourceType": "Extension", **extension}, definition) != []

    def principal(scope: str, **claims) -> Principal:
        return Principal.from_claims({"scope": scope, "client_id": "c", "sub": "s", **LONG, **claims})

    representative = principal("user/*.cruds", fhirUser="RelatedPerson/mum", represented=["lea"])
    app = principal("patient/*.cruds", patient="lea")
    backend = principal("system/*.cruds")
    assert [origin.origin_of(p) for p in (representative, app, backend)] == [
        origin.PATIENT_DECLARED,
        origin.PATIENT_DECLARED,
        origin.SERVICE,
    ]
    assert origin.enterer_of(representative) == "RelatedPerson/mum" and origin.enterer_of(app) == "Patient/lea"

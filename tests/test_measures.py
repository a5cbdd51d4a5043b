"""Health measures (issue 13, the ANS "Mesures de santé" IG) on both stores: the IG's transaction flux with its
own examples (subject by identifier resolved to the stored Patient, or refused with the IG's errors, nothing
stored), units per measure, the server's BMI kept current from the last weight and height, ``$lastn`` under
the caller's access, and a child's growth searched by date range.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import FHIR_BASE
from test_access_control import StandInVerifier, token
from test_policy import consent, directory, ps_token

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.loader import load_paths
from fhir_server.policy import codes
from fhir_server.record import measures_bmi, measures_flux
from fhir_server.store import open_store

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ans-examples" / "mesures"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
IDPE = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2560"  # the IG's example subject identifier system
VITAL = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]
WEIGHT, HEIGHT, HEAD, BMI = "29463-7", "8302-2", "8287-5", "39156-5"

LONG = {"exp": int(time.time()) + 24 * 3600}  # minted at import: valid however long the suite runs
LEA = token("patient/*.cruds", client_id="mes-app", sub="lea-sub", fhirUser="Patient/lea", patient="lea", **LONG)
MAX = token("patient/*.cruds", client_id="mes-app", sub="max-sub", fhirUser="Patient/max", patient="max", **LONG)
TOM = token("patient/*.cruds", client_id="mes-app", sub="tom-sub", fhirUser="Patient/tom", patient="tom", **LONG)
SYSTEM = token("system/*.cruds", client_id="feed", sub="feed", **LONG)
MED = ps_token("med", **LONG)  # authorised by Léa, not by Max


def patient(id_: str, ins: str, idpe: str | None = None) -> dict:
    identifiers = [{"system": codes.INS_NIR, "value": ins}]
    if idpe:
        identifiers.append({"system": IDPE, "value": idpe})
    return {"resourceType": "Patient", "id": id_, "identifier": identifiers}


SEED = [
    *directory(),
    patient("lea", "283051234567881", "lea-idpe"),
    patient("max", "190012345678912", "max-idpe"),
    patient("tom", "115062345678901"),
    patient("twin-a", "200000000000001", "shared-idpe"),  # a registry error: two patients, one identifier
    patient("twin-b", "200000000000002", "shared-idpe"),
    consent("permit-med", "lea", "permit", ("PractitionerRole/r-med",)),
]


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def flux(idpe: str = "lea-idpe", system: str = IDPE, if_none_exist: bool = True, device: bool = True) -> dict:
    """The IG's flux example with its subject adapted to a stored patient (and the Device's ifNoneExist the
    IG's flux page requires; the published example omits it). Without its Device (optional in the IG's Bundle
    profile, mes-device 0..1): what a patient's app sends, as patient tokens create no Device (not patient data
    in R4's Patient compartment)."""
    bundle = example("Bundle-bundle-example.json")
    bundle["entry"][1]["resource"]["subject"] = {"identifier": {"system": system, "value": idpe}}
    if not device:
        del bundle["entry"][0]
        del bundle["entry"][0]["resource"]["device"]
    elif if_none_exist:
        bundle["entry"][0]["request"]["ifNoneExist"] = (
            "identifier=urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680|FE-ED-AB-AA-DE-AD-77-C5"
        )
    return bundle


def measure(code: str, value: float, unit: str, when: str, subject: str = "lea", **extra) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": VITAL,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        **extra,
    }


@contextlib.asynccontextmanager
async def measures_server(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        for resource in SEED:  # seeded while access is open (the operator's feed)
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        app.state.auth = StandInVerifier()
        yield c


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with measures_server(store_url) as c:
        yield c


async def found(c: httpx.AsyncClient, query: str, headers: dict = SYSTEM) -> list[dict]:
    r = await c.get(f"/{query}", headers=headers)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", ()) if e.get("search", {}).get("mode") == "match"]


async def create(c: httpx.AsyncClient, body: dict, headers: dict = LEA) -> dict:
    r = await c.post("/Observation", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def bmi_of(c: httpx.AsyncClient, subject: str = "lea") -> list[dict]:
    return await found(c, f"Observation?subject=Patient/{subject}&code={LOINC}|{BMI}")


def issue(r: httpx.Response) -> dict:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]


# --- the flux ------------------------------------------------------------------------------------------------------
async def test_the_igs_flux_stores_the_observation_for_the_patient_its_identifier_names(client):
    r = await client.post("/", json=flux(if_none_exist=False), headers=MED)  # the published example as it is
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    device_ref, obs_ref = (e["response"]["location"].rsplit("/_history", 1)[0] for e in r.json()["entry"])
    obs = (await client.get(f"/{obs_ref}", headers=LEA)).json()
    assert obs["subject"]["reference"] == "Patient/lea"
    assert obs["subject"]["identifier"] == {"system": IDPE, "value": "lea-idpe"}  # what the sender said, kept
    assert obs["device"]["reference"] == device_ref  # Device/<its id in the Bundle> follows the new identity
    device = (await client.get(f"/{device_ref}", headers=MED)).json()
    assert device["patient"]["reference"] == "Patient/lea"
    assert [o["id"] for o in await found(client, "Observation?subject=Patient/lea", LEA)] == [obs["id"]]


async def test_a_patients_app_sends_the_flux_without_a_device(client):
    r = await client.post("/", json=flux(device=False), headers=LEA)
    assert r.status_code == 200, r.text
    [obs] = await found(client, "Observation?subject=Patient/lea", LEA)
    assert obs["valueQuantity"]["value"] == 71 and obs["subject"]["reference"] == "Patient/lea"
    r = await client.post("/", json=flux(if_none_exist=False), headers=LEA)
    assert r.status_code == 403, r.text  # a Device is not a patient's data: their tokens do not create one
    assert len(await found(client, "Observation?subject=Patient/lea", LEA)) == 1


async def test_the_flux_creates_the_device_once_by_its_identifier_and_takes_the_ins(client):
    first = await client.post("/", json=flux(), headers=SYSTEM)
    assert first.status_code == 200, first.text
    again = await client.post("/", json=flux("283051234567881", codes.INS_NIR), headers=MED)
    assert again.status_code == 200, again.text
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK", "201 Created"]
    devices = await found(
        client, "Device?identifier=urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680|FE-ED-AB-AA-DE-AD-77-C5"
    )
    assert len(devices) == 1
    observations = await found(client, "Observation?subject=Patient/lea", LEA)
    assert {o["device"]["reference"] for o in observations} == {f"Device/{devices[0]['id']}"}
    assert len(observations) == 2


@pytest.mark.parametrize(
    ("headers", "idpe", "status", "code"),
    [
        (LEA, "max-idpe", 403, "forbidden"),  # another person's identifier: the IG's "idPe … do not match"
        (LEA, "nobody", 403, "forbidden"),
        (SYSTEM, "nobody", 403, "forbidden"),
        (SYSTEM, "shared-idpe", 422, "multiple-matches"),
    ],
)
async def test_the_flux_is_refused_when_the_identifier_names_no_reachable_patient_or_several(
    client, headers, idpe, status, code
):
    r = await client.post("/", json=flux(idpe, device=headers is not LEA), headers=headers)
    assert r.status_code == status, r.text
    assert issue(r)["code"] == code
    if status == 403:
        assert "idPe requested do not match authorized idPe" in issue(r)["diagnostics"]
    assert await found(client, "Observation") == [] and await found(client, "Device") == []  # nothing stored


def _broken(change) -> dict:
    bundle = flux()
    change(bundle)
    return bundle


def _two_observations(b: dict) -> None:
    b["entry"].append(copy.deepcopy(b["entry"][1]) | {"fullUrl": "urn:uuid:7d9c6a1e-0d5f-4f3c-9c1a-1b2c3d4e5f60"})


STRUCTURE_ERRORS = {
    "put": (lambda b: b["entry"][0]["request"].update(method="PUT", url="Device/x"), "is not acceptable with method"),
    "two observations": (_two_observations, "one observation creation"),
    "bad ifNoneExist": (lambda b: b["entry"][0]["request"].update(ifNoneExist="identifier=FE-ED"), "IfNoneExist"),
    "no device profile": (lambda b: b["entry"][0]["resource"].pop("meta"), "Device must provide meta.profile"),
    "no observation profile": (lambda b: b["entry"][1]["resource"].pop("meta"), "Observation must provide meta"),
    "subject by reference": (
        lambda b: b["entry"][1]["resource"].update(subject={"reference": "Patient/lea"}),
        "Observation.subject.identifier is mandatory",
    ),
    "no device link": (lambda b: b["entry"][1]["resource"].pop("device"), "Observation.device.reference is mandatory"),
    "wrong device link": (
        lambda b: b["entry"][1]["resource"].update(device={"reference": "Device/other"}),
        "not linked by id",
    ),
}


@pytest.mark.parametrize("case", STRUCTURE_ERRORS)
async def test_the_flux_answers_the_igs_structure_errors(client, case):
    change, words = STRUCTURE_ERRORS[case]
    r = await client.post("/", json=_broken(change), headers=MED)
    assert r.status_code == 422, r.text
    assert words in issue(r)["diagnostics"]
    assert await found(client, "Observation") == [] and await found(client, "Device") == []


async def test_the_igs_blood_pressure_and_glucose_examples_are_accepted(client):
    for name in ("Observation-ExampleMesFrObservationBP001.json", "Observation-ExampleMesObservationGlucose001.json"):
        body = example(name)
        del body["id"]
        body["subject"] = {"reference": "Patient/lea"}
        created = await create(client, body)
        assert created["meta"]["profile"] == body["meta"]["profile"]


# --- units -----------------------------------------------------------------------------------------------------------
def _bp(systolic_unit: str = "mm[Hg]", components: tuple[str, ...] = ("8480-6", "8462-4")) -> dict:
    body = {
        "resourceType": "Observation",
        "status": "final",
        "category": VITAL,
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": "Patient/lea"},
        "effectiveDateTime": "2026-03-01",
        "component": [],
    }
    for code in components:
        unit = systolic_unit if code == "8480-6" else "mm[Hg]"
        body["component"].append(
            {
                "code": {"coding": [{"system": LOINC, "code": code}]},
                "valueQuantity": {"value": 120, "system": UCUM, "code": unit},
            }
        )
    return body


WRONG = {
    "weight in pounds": (measure(WEIGHT, 150, "[lb_av]", "2026-01-01"), "Observation.valueQuantity.code"),
    "height in inches": (measure(HEIGHT, 70, "[in_i]", "2026-01-01"), "Observation.valueQuantity.code"),
    "temperature in °F": (measure("8310-5", 99, "[degF]", "2026-01-01"), "Observation.valueQuantity.code"),
    "heart rate without UCUM": (
        measure("8867-4", 60, "/min", "2026-01-01") | {"valueQuantity": {"value": 60, "unit": "bpm"}},
        "Observation.valueQuantity.code",
    ),
    "SpO2 as a ratio": (measure("59408-5", 0.97, "1", "2026-01-01"), "Observation.valueQuantity.code"),
    "HbA1c in mmol/mol": (measure("4548-4", 48, "mmol/mol", "2026-01-01"), "Observation.valueQuantity.code"),
    "head circumference in mm": (measure(HEAD, 350, "mm", "2026-01-01"), "Observation.valueQuantity.code"),
    "cholesterol in kg": (measure("2093-3", 2, "kg", "2026-01-01"), "Observation.valueQuantity.code"),
    "weight without value": (
        {**measure(WEIGHT, 1, "kg", "2026-01-01"), "valueQuantity": None} | {"valueString": "lourd"},
        "Observation.valueString",
    ),
    "systolic in kPa": (_bp("kPa"), "Observation.component[0].valueQuantity.code"),
    "no diastolic": (_bp(components=("8480-6",)), "Observation.component"),
}


@pytest.mark.parametrize("case", WRONG)
async def test_a_known_measure_in_the_wrong_unit_is_refused_naming_the_element(client, case):
    body, element = WRONG[case]
    body = {k: v for k, v in body.items() if v is not None}
    r = await client.post("/Observation", json=body, headers=LEA)
    assert r.status_code == 422, r.text
    assert issue(r)["expression"] == [element]
    assert await found(client, "Observation") == []


@pytest.mark.parametrize(
    "body",
    [
        measure(WEIGHT, 71500, "g", "2026-01-01"),
        measure(HEIGHT, 1.62, "m", "2026-01-01"),
        measure("2339-0", 5.4, "mmol/L", "2026-01-01"),
        measure("41950-7", 8000, "/d", "2026-01-01"),
        measure("1234-5", 3, "furlong", "2026-01-01"),  # not one of the IG's measures: passes unchanged
        _bp(),
    ],
)
async def test_measures_in_their_units_and_other_codes_are_accepted(client, body):
    created = await create(client, body)
    assert created["valueQuantity" if "valueQuantity" in body else "component"] == (
        body.get("valueQuantity") or body["component"]
    )


# --- BMI -------------------------------------------------------------------------------------------------------------
async def test_the_server_keeps_the_bmi_of_the_last_weight_and_height(client):
    weight = await create(client, measure(WEIGHT, 70, "kg", "2026-01-01T08:00:00+01:00"))
    assert await bmi_of(client) == []  # no height yet
    height = await create(client, measure(HEIGHT, 175, "cm", "2026-01-02"))
    [bmi] = await bmi_of(client)
    assert bmi["valueQuantity"] == {"value": 22.9, "unit": "kg/m2", "system": UCUM, "code": "kg/m2"}
    assert bmi["derivedFrom"] == [
        {"reference": f"Observation/{weight['id']}"},
        {"reference": f"Observation/{height['id']}"},
    ]
    assert {"system": measures_bmi.ORIGIN, "code": measures_bmi.COMPUTED}.items() <= bmi["meta"]["tag"][0].items()
    assert bmi["effectiveDateTime"] == "2026-01-02"

    heavier = await create(client, measure(WEIGHT, 80, "kg", "2026-02-01"))
    [updated] = await bmi_of(client)
    assert (updated["id"], updated["meta"]["versionId"]) == (bmi["id"], "2")
    assert updated["valueQuantity"]["value"] == 26.1
    await create(client, measure(WEIGHT, 60, "kg", "2025-01-01"))  # an older weight: not the last one
    assert (await bmi_of(client))[0]["meta"]["versionId"] == "2"

    assert (await client.delete(f"/Observation/{heavier['id']}", headers=LEA)).status_code == 204
    assert (await bmi_of(client))[0]["valueQuantity"]["value"] == 22.9  # back to the previous last weight
    metres = measure(HEIGHT, 1.8, "m", "2026-01-02") | {"id": height["id"]}
    assert (await client.put(f"/Observation/{height['id']}", json=metres, headers=LEA)).status_code == 200
    assert (await bmi_of(client))[0]["valueQuantity"]["value"] == 21.6
    assert (await client.delete(f"/Observation/{height['id']}", headers=LEA)).status_code == 204
    assert await bmi_of(client) == []  # no height left: no BMI


async def test_a_professionals_weight_updates_the_bmi_and_others_are_untouched(client):
    await create(client, measure(HEIGHT, 160, "cm", "2026-01-01"))
    await create(client, measure(WEIGHT, 64, "kg", "2026-01-05"), MED)
    assert (await bmi_of(client))[0]["valueQuantity"]["value"] == 25.0
    await create(client, measure(WEIGHT, 90, "kg", "2026-01-06", "max"), MAX)
    assert await bmi_of(client, "max") == []  # Max has no height
    assert len(await bmi_of(client)) == 1


async def test_nobody_but_the_server_writes_a_bmi(client):
    sent = measure(BMI, 22.0, "kg/m2", "2026-01-01")
    for headers in (LEA, MED, SYSTEM):  # a device feed's backend too
        r = await client.post("/Observation", json=sent, headers=headers)
        assert r.status_code == 422, r.text
        assert issue(r)["code"] == "not-supported" and "server computes BMI" in issue(r)["diagnostics"]
    await create(client, measure(WEIGHT, 70, "kg", "2026-01-01"))
    await create(client, measure(HEIGHT, 175, "cm", "2026-01-01"))
    [bmi] = await bmi_of(client)
    changed = {**bmi, "valueQuantity": {**bmi["valueQuantity"], "value": 18.0}}
    assert (await client.put(f"/Observation/{bmi['id']}", json=changed, headers=LEA)).status_code == 422
    assert (await client.delete(f"/Observation/{bmi['id']}", headers=LEA)).status_code == 422
    recoded = {**bmi, "code": {"coding": [{"system": LOINC, "code": WEIGHT}]}}  # nor turned into something else
    assert (await client.put(f"/Observation/{bmi['id']}", json=recoded, headers=LEA)).status_code == 422
    assert (await bmi_of(client))[0]["valueQuantity"]["value"] == 22.9


async def test_a_backends_measures_follow_the_igs_rules_too(client):
    r = await client.post("/Observation", json=measure(WEIGHT, 70, "lb", "2026-01-01"), headers=SYSTEM)
    assert r.status_code == 422 and issue(r)["expression"] == ["Observation.valueQuantity.code"], r.text
    await create(client, measure(WEIGHT, 70, "kg", "2026-01-01"), SYSTEM)
    await create(client, measure(HEIGHT, 175, "cm", "2026-01-01"), SYSTEM)
    assert (await bmi_of(client))[0]["valueQuantity"]["value"] == 22.9


async def test_the_examples_bmi_is_the_servers_and_a_new_weight_keeps_it_current(tmp_path):
    """``fhir-server load`` keeps what the operator loads; the dataset carries Léa's BMI in the server's shape,
    so the first weight sent afterwards updates that same BMI instead of adding a second one."""
    store_url = f"sqlite:///{tmp_path / 'examples.db'}"
    loaded, errors, output = await load_examples(store_url)
    assert loaded > 0 and errors == 0, output
    app = create_app(Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        app.state.auth = StandInVerifier()
        [bmi] = await bmi_of(c, "lea-marchand")
        assert measures_bmi.is_server_bmi(bmi) and bmi["valueQuantity"]["value"] == 22.9
        await create(c, measure(WEIGHT, 70, "kg", "2026-11-01", "lea-marchand"), SYSTEM)
        [updated] = await bmi_of(c, "lea-marchand")
        assert (updated["id"], updated["valueQuantity"]["value"]) == (bmi["id"], 24.8)  # 70 / 1.68²


async def load_examples(store_url: str) -> tuple[int, int, str]:
    examples = Path(__file__).resolve().parents[1] / "examples"
    store = open_store(store_url)
    stream = io.StringIO()
    async with store:
        paths = [examples / "patients.json", examples / "medical-profile.json"]
        report = await load_paths(store, paths, Settings(store=store_url), stream=stream)
    return report.resources, report.errors, stream.getvalue()


async def test_the_flux_weight_updates_the_bmi_in_its_transaction(client):
    await create(client, measure(HEIGHT, 180, "cm", "2022-01-01"))
    r = await client.post("/", json=flux(), headers=MED)
    assert r.status_code == 200, r.text
    assert (await bmi_of(client))[0]["valueQuantity"]["value"] == 21.9  # 71 kg / 1.80 m²


# --- $lastn ----------------------------------------------------------------------------------------------------------
async def _series(c: httpx.AsyncClient) -> None:
    for day, kg in (("01", 70), ("03", 72), ("02", 71)):
        await create(c, measure(WEIGHT, kg, "kg", f"2026-04-{day}"))
    for day, cm in (("01", 170), ("02", 171)):
        await create(c, measure(HEIGHT, cm, "cm", f"2026-04-{day}"))
    await create(c, measure(WEIGHT, 95, "kg", "2026-05-01", "max"), MAX)


def _values(observations: list[dict]) -> list[tuple[str, float]]:
    return [(o["code"]["coding"][0]["code"], o["valueQuantity"]["value"]) for o in observations]


async def test_lastn_gives_the_last_measures_per_code_under_the_callers_access(client):
    await _series(client)
    weight, height = f"{LOINC}|{WEIGHT}", f"{LOINC}|{HEIGHT}"
    query = f"Observation/$lastn?patient=lea&category=vital-signs&code={weight}&max=1"
    for headers in (LEA, MED):
        assert _values(await found(client, query, headers)) == [(WEIGHT, 72)]
    two = await found(client, f"Observation/$lastn?patient=Patient/lea&code={weight},{height}&max=2", LEA)
    assert _values(two) == [(WEIGHT, 72), (WEIGHT, 71), (HEIGHT, 171), (HEIGHT, 170)]
    every = _values(await found(client, "Observation/$lastn?subject=Patient/lea&category=vital-signs", LEA))
    assert sorted(every) == sorted([(BMI, 24.6), (HEIGHT, 171), (WEIGHT, 72)])  # the server's BMI is a measure too
    dated = await found(client, f"Observation/$lastn?patient=lea&code={weight}&date=le2026-04-02&max=5", LEA)
    assert _values(dated) == [(WEIGHT, 71), (WEIGHT, 70)]
    for headers in (LEA, MED):  # Max's data: another patient for Léa, unauthorised for the professional
        assert await found(client, f"Observation/$lastn?patient=max&code={weight}", headers) == []
        assert all(
            o["subject"]["reference"] == "Patient/lea"
            for o in await found(client, "Observation/$lastn?patient=Patient/max,Patient/lea", headers)
        )
    assert _values(await found(client, f"Observation/$lastn?patient=max&code={weight}", MAX)) == [(WEIGHT, 95)]


@pytest.mark.parametrize("query", ["code=x", "patient=lea&max=0", "patient=lea&max=two", "patient=lea&_count=3"])
async def test_lastn_refuses_what_it_cannot_answer(client, query):
    r = await client.get(f"/Observation/$lastn?{query}", headers=LEA)
    assert r.status_code == 400, r.text


# --- growth and trends -----------------------------------------------------------------------------------------------
async def test_a_childs_growth_is_searched_by_date_range_in_order(client):
    ages = [
        ("2024-06-15", 3.4, 50, 34.5),
        ("2024-09-15", 6.1, 61, 40.0),
        ("2025-06-15", 9.6, 74, 45.5),
        ("2025-12-15", 10.9, 80, 47.0),
        ("2026-06-15", 12.2, 86, 48.0),
    ]
    for when, kg, cm, head in reversed(ages):  # written out of order: the sort orders them
        for code, value, unit in ((WEIGHT, kg, "kg"), (HEIGHT, cm, "cm"), (HEAD, head, "cm")):
            await create(client, measure(code, value, unit, when, "tom"), TOM)
    for code, column in ((WEIGHT, 1), (HEIGHT, 2), (HEAD, 3)):
        query = f"Observation?subject=Patient/tom&code={LOINC}|{code}&_sort=date&date=ge2024-09-01&date=le2025-12-31"
        series = await found(client, query, TOM)
        assert [o["effectiveDateTime"] for o in series] == ["2024-09-15", "2025-06-15", "2025-12-15"]
        assert [o["valueQuantity"]["value"] for o in series] == [row[column] for row in ages[1:4]]
    trend = await found(client, f"Observation?subject=Patient/tom&code={LOINC}|{WEIGHT}&_sort=-date", TOM)
    assert [o["valueQuantity"]["value"] for o in trend] == [12.2, 10.9, 9.6, 6.1, 3.4]
    assert await found(client, f"Observation?subject=Patient/tom&code={LOINC}|{WEIGHT}", LEA) == []


def test_the_flux_profile_is_the_igs():
    assert example("Bundle-bundle-example.json")["meta"]["profile"] == [measures_flux.PROFILE]

"""Required bindings (fhir_server/validation/bindings.py): an element bound ``required`` in R4 holds a code of
its value set, on every write path (create, update, PATCH, transaction, batch, ``$validate``, load)."""

from __future__ import annotations

import json

import pytest
from conftest import fhir_client
from test_bundles import post, tx
from test_load import bundle, run_load, write_json
from test_validation_helpers import _outcome, _ready

from fhir_server.validation import issues_of
from fhir_server.validation.bindings import _DATA
from fhir_server.validation.remote import InProcess, Validators

GENDER = ("Patient.gender", "administrative-gender", "male, female, other, unknown")
OBS_STATUS = ("Observation.status", "observation-status", "registered, preliminary, final, amended")
ENC_STATUS = ("Encounter.status", "encounter-status", "planned, arrived, triaged, in-progress")
BAD = [
    ({"resourceType": "Patient", "gender": "bogus"}, GENDER),
    ({"resourceType": "Observation", "status": "nonsense", "code": {"text": "PAS"}}, OBS_STATUS),
    ({"resourceType": "Encounter", "status": "nope",
      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}, ENC_STATUS),
]  # fmt: skip
IDS = ["Patient.gender", "Observation.status", "Encounter.status"]


@pytest.fixture
async def client(store_url):
    async with fhir_client(store_url) as c:
        yield c


def binding_issues(resource: object) -> list[tuple[str, str]]:
    """(expression, diagnostics) of each required-binding issue."""
    return [(i.expression[0], i.diagnostics) for i in issues_of(resource) if i.code == "code-invalid"]


def assert_names(outcome: dict, expected: tuple[str, str, str], status: int | None = None) -> None:
    """The outcome has an error issue on the element, naming the value set and the first allowed codes."""
    expression, valueset, codes = expected
    issues = [i for i in outcome["issue"] if i.get("expression") == [expression]]
    assert issues, outcome
    assert issues[0]["severity"] == "error" and issues[0]["code"] == "code-invalid"
    assert f"http://hl7.org/fhir/ValueSet/{valueset}" in issues[0]["diagnostics"]
    assert codes in issues[0]["diagnostics"]


async def total(client) -> int:
    return (await client.get("/_history")).json()["total"]


# --- what is checked --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resource", "expected"), BAD, ids=IDS)
def test_bad_codes_name_element_and_allowed_codes(resource, expected):
    [(expression, diagnostics)] = binding_issues(resource)
    assert expression == expected[0]
    assert f"'{resource.get('gender') or resource['status']}'" in diagnostics and expected[2] in diagnostics


def test_datatypes_backbones_choices_and_repeats():
    # ContactPoint.system: R4 has pager, not beeper
    assert binding_issues({"resourceType": "Patient", "telecom": [{"system": "pager", "value": "1"}]}) == []
    found = binding_issues({"resourceType": "Patient", "telecom": [{"system": "beeper", "value": "1"}]})
    assert [e for e, _ in found] == ["Patient.telecom[0].system"]
    assert "phone, fax, email, pager, url, sms, other" in found[0][1]
    patient = {
        "resourceType": "Patient",
        "text": {"status": "draft", "div": "<div xmlns='http://www.w3.org/1999/xhtml'>x</div>"},
        "identifier": [{"use": "usual", "value": "1"}, {"use": "primary", "value": "2"}],
        "name": [{"use": "nickname", "family": "A"}, {"use": "alias", "family": "B"}],
        "address": [{"use": "home", "type": "letter"}],
        "contact": [{"gender": "femme", "telecom": [{"system": "email", "use": "perso", "value": "a@b.c"}]}],
        "link": [{"other": {"reference": "Patient/x"}, "type": "see-also"}],
    }
    assert [e for e, _ in binding_issues(patient)] == [
        "Patient.text.status",
        "Patient.identifier[1].use",
        "Patient.name[1].use",
        "Patient.address[0].type",
        "Patient.contact[0].gender",
        "Patient.contact[0].telecom[0].use",
        "Patient.link[0].type",
    ]
    observation = {
        "resourceType": "Observation", "status": "final", "code": {"text": "PAS"},
        "valueQuantity": {"value": 120, "comparator": "~"},  # value[x] → Quantity.comparator
        "component": [{"code": {"text": "a"}, "valueRange": {"low": {"value": 1, "comparator": "lt"}}}],
    }  # fmt: skip
    # repeating code (Timing.repeat.dayOfWeek) inside a backbone element's datatype
    request = {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/p"},
        "dosageInstruction": [{"timing": {"repeat": {"dayOfWeek": ["mon", "lun"], "periodUnit": "d"}}}],
    }  # fmt: skip
    assert [e for e, _ in binding_issues(observation)] == [
        "Observation.valueQuantity.comparator",
        "Observation.component[0].valueRange.low.comparator",
    ]
    assert [e for e, _ in binding_issues(request)] == [
        "MedicationRequest.dosageInstruction[0].timing.repeat.dayOfWeek[1]"
    ]


def test_extensions_and_primitive_siblings_are_walked():
    extension = {"url": "http://example.org/e", "valueQuantity": {"value": 1, "comparator": "about"}}
    found = binding_issues({"resourceType": "Patient", "extension": [extension], "_gender": {"extension": [extension]}})
    assert [e for e, _ in found] == [
        "Patient.extension[0].valueQuantity.comparator",
        "Patient.gender.extension[0].valueQuantity.comparator",
    ]


def test_nested_resources():
    contained = {"resourceType": "Observation", "id": "o", "status": "nonsense", "code": {"text": "PAS"}}
    assert binding_issues({"resourceType": "Patient", "contained": [contained]})[0][0] == "Patient.contained[0].status"
    collection = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient"}},
                  {"resource": {"resourceType": "Patient", "gender": "x"}}]}  # fmt: skip
    assert [e for e, _ in binding_issues(collection)] == ["Bundle.entry[1].resource.gender"]
    found = {e for e, _ in binding_issues({**collection, "type": "pile"})}
    assert found == {"Bundle.type", "Bundle.entry[1].resource.gender"}
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "a", "resource": {"resourceType": "Encounter", "status": "nope", "class": {"code": "AMB"}}},
        {"name": "b", "part": [{"name": "c", "valueContactPoint": {"system": "beeper"}}]},
    ]}  # fmt: skip
    assert [e for e, _ in binding_issues(parameters)] == [
        "Parameters.parameter[0].resource.status",
        "Parameters.parameter[1].part[0].valueContactPoint.system",
    ]


def test_codeable_concepts_are_checked_for_codings_of_the_value_set_systems_only():
    clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    condition = {"resourceType": "Condition", "subject": {"reference": "Patient/p"}}
    ok = {**condition, "clinicalStatus": {"coding": [{"system": clinical, "code": "active"}]}}
    other = {**condition, "clinicalStatus": {"coding": [{"system": "http://example.org/local", "code": "x"}]}}
    bad = {**condition, "clinicalStatus": {"coding": [{"system": "http://example.org/local", "code": "x"},
                                                      {"system": clinical, "code": "cured"}]}}  # fmt: skip
    assert binding_issues(ok) == binding_issues(other) == []
    [(expression, diagnostics)] = binding_issues(bad)
    assert expression == "Condition.clinicalStatus.coding[1].code"
    assert clinical in diagnostics and "active, recurrence, relapse" in diagnostics


def test_unexpandable_value_sets_are_not_checked():
    # Attachment.contentType (mime types), Money.currency (ISO 4217): not in the R4 package, left alone
    reference = {
        "resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"contentType": "application/x-anything"}}],
    }  # fmt: skip
    assert binding_issues(reference) == []
    claim_item = {"sequence": 1, "productOrService": {"text": "x"}, "unitPrice": {"value": 1, "currency": "XYZ"}}
    assert all("currency" not in e for e, _ in binding_issues({"resourceType": "Claim", "item": [claim_item]}))
    data = json.loads(_DATA.read_text())
    assert set(data["unchecked"]) == {
        "http://hl7.org/fhir/ValueSet/currencies",
        "http://hl7.org/fhir/ValueSet/mimetypes",
        "http://hl7.org/fhir/ValueSet/ucum-units",
        "http://loinc.org/vs/LL379-9",
    }


def test_wrong_json_types_and_malformed_codes_are_reported_once():
    assert [i.code for i in issues_of({"resourceType": "Patient", "gender": 3})] == ["structure"]
    assert [i.code for i in issues_of({"resourceType": "Patient", "gender": "male "})] == ["value"]


# --- every write path ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resource", "expected"), BAD, ids=IDS)
async def test_create_and_update(client, resource, expected):
    r = await client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 400, r.text
    assert_names(r.json(), expected)
    r = await client.put(f"/{resource['resourceType']}/x", json={**resource, "id": "x"})
    assert r.status_code == 400, r.text
    assert_names(r.json(), expected)
    assert await total(client) == 0


async def test_valid_resource_is_created(client):
    r = await client.post("/Patient", json={"resourceType": "Patient", "gender": "female",
                                           "telecom": [{"system": "pager", "value": "1"}]})  # fmt: skip
    assert r.status_code == 201, r.text


async def test_nested_datatype_and_contained_resource(client):
    r = await client.post("/Patient", json={"resourceType": "Patient", "telecom": [{"system": "beeper", "value": "1"}]})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.telecom[0].system"]
    contained = {"resourceType": "Observation", "id": "o", "status": "nonsense", "code": {"text": "PAS"}}
    r = await client.post("/Patient", json={"resourceType": "Patient", "contained": [contained]})
    assert r.status_code == 400
    assert_names(r.json(), ("Patient.contained[0].status", *OBS_STATUS[1:]))
    assert await total(client) == 0


async def test_patch_result_is_422(client):
    created = (await client.post("/Patient", json={"resourceType": "Patient", "gender": "female"})).json()
    patch = [{"op": "replace", "path": "/gender", "value": "bogus"}]
    r = await client.patch(f"/Patient/{created['id']}", content=json.dumps(patch),
                           headers={"Content-Type": "application/json-patch+json"})  # fmt: skip
    assert r.status_code == 422, r.text
    assert_names(r.json(), GENDER)
    assert (await client.get(f"/Patient/{created['id']}")).json()["gender"] == "female"


async def test_transaction_is_refused_whole(client):
    good = {"resourceType": "Patient", "gender": "female"}
    r = await client.post("/", json=tx(post(None, good), post(None, BAD[1][0])))
    assert r.status_code == 400, r.text
    assert_names(r.json(), OBS_STATUS)  # as for any invalid entry: the entry is named in the diagnostics
    assert r.json()["issue"][0]["diagnostics"].startswith("Bundle.entry[1]")
    assert await total(client) == 0


async def test_batch_entry_fails_alone(client):
    good = {"resourceType": "Patient", "gender": "female"}
    r = await client.post("/", json=tx(post(None, good), post(None, BAD[2][0]), kind="batch"))
    assert r.status_code == 200, r.text
    first, second = r.json()["entry"]
    assert first["response"]["status"] == "201 Created"
    assert second["response"]["status"].startswith("400")
    assert "encounter-status" in json.dumps(second["response"]["outcome"])
    assert await total(client) == 1


async def test_validate_reports_like_other_invalid_content(client):
    # $validate answers 200 whatever the verdict; the OperationOutcome carries it (as for a bad date)
    for resource, expected in BAD:
        r = await client.post(f"/{resource['resourceType']}/$validate", json=resource)
        assert r.status_code == 200, r.text
        assert_names(r.json(), expected)
    ok = await client.post("/Patient/$validate", json={"resourceType": "Patient", "gender": "male"})
    assert ok.json()["issue"][0]["severity"] == "information"


async def test_load_reports_the_entry(store_url, tmp_path):
    write_json(tmp_path / "in" / "a.json", bundle("batch",
        post(None, {"resourceType": "Patient", "gender": "female"}), post(None, BAD[0][0])))  # fmt: skip
    report, output = await run_load(store_url, [tmp_path / "in"])
    assert (report.resources, report.errors) == (1, 1), output
    [error] = [line for line in output.splitlines() if line.startswith("error:")]
    assert "a.json" in error and "Bundle.entry[1]" in error and "administrative-gender" in error


async def test_helper_processes_check_bindings_too():
    helpers = Validators(1)
    await helpers.start()
    try:
        await _ready(helpers)
        for resource, expected in BAD:
            remote = await _outcome(helpers, resource)
            assert remote == await _outcome(InProcess(), resource)
            assert remote is not None and remote[0][0] == 400 and remote[0][3] == (expected[0],)
    finally:
        await helpers.close()

"""This server's profiles (profiles/) and their engine (fhir_server.validation.profiles), alone and through
``$validate``: each rule kind passes what conforms and names what does not, with the element and the profile."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import REPO_ROOT, fhir_client

from fhir_server.validation import issues_of, profiles
from fhir_server.validation.profiles import ProfileError, Registry

BASE = "https://github.com/fhir-server/fhir-server"
PATIENT = f"{BASE}/StructureDefinition/mes-patient-ins"
DOCUMENT = f"{BASE}/StructureDefinition/mes-dmp-documentreference"
MESSAGE = f"{BASE}/StructureDefinition/mes-message"
INS = "urn:oid:1.2.250.1.213.1.4.8"
A03 = "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def example(file: str, id_: str) -> dict:
    bundle = json.loads((REPO_ROOT / "examples" / file).read_text("utf-8"))
    [found] = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == id_]
    return copy.deepcopy(found)


def a_patient() -> dict:
    return example("patients.json", "lea-marchand")


def a_document() -> dict:
    return example("dmp-documents.json", "jean-pierre-morel-cr-imagerie-2025")


def check(resource: dict, url: str) -> list:
    registry = profiles.registry()
    return registry.check(resource, registry.get(url))


def one(issues: list, code: str, expression: str, *words: str):
    """The single issue of ``issues``: its code, expression, and words of its diagnostics (the profile's url)."""
    assert len(issues) == 1, [i.to_fhir() for i in issues]
    [issue] = issues
    assert (issue.code, issue.expression) == (code, (expression,)), issue.to_fhir()
    for word in (*words, "(profile https://github.com/fhir-server/fhir-server/StructureDefinition/"):
        assert word in issue.diagnostics, issue.diagnostics
    return issue


# --- the folder ----------------------------------------------------------------------------------------------


def test_the_profiles_folder_loads_and_its_resources_are_valid_r4():
    registry = profiles.registry()
    assert sorted(registry.profiles) == [DOCUMENT, MESSAGE, PATIENT]
    for resource in registry.resources:
        assert issues_of(resource) == [], resource["id"]
        assert resource["id"] in {p.stem.split("-", 1)[1] for p in (REPO_ROOT / "profiles").glob("*.json")}
        if resource["resourceType"] != "CodeSystem":  # ours; the CodeSystem copies the ANS one (its url)
            assert resource["url"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"
    pairs, _ = registry.expansion(f"{BASE}/ValueSet/mes-dmp-classe-document")  # the whole TRE_A03 copy
    assert len(pairs) == 12 and (A03, "90") in pairs
    assert len(registry.expansion(f"{BASE}/ValueSet/mes-dmp-type-document")[0]) == 122
    assert profiles.supported_profiles("Patient") == [PATIENT] and profiles.supported_profiles("Group") == []


def test_conforming_examples_pass():
    assert check(a_patient(), PATIENT) == []
    assert check(a_document(), DOCUMENT) == []
    usual = a_patient()
    usual["name"].append({"use": "usual", "family": "Autre"})  # other names: the slicing is open
    usual["identifier"].append({"system": "urn:oid:1.2.250.1.213.1.4.9", "value": "x"})  # other identifiers too
    assert check(usual, PATIENT) == []
    versioned = profiles.registry().get(f"{PATIENT}|0.1.0")
    assert versioned is not None and profiles.registry().get(f"{PATIENT}|9.9") is None


# --- each rule kind ------------------------------------------------------------------------------------------


def test_missing_ins_slice():
    patient = a_patient()
    patient["identifier"] = [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "287064410905745"}]
    one(check(patient, PATIENT), "required", "Patient.identifier", "slice 'ins'", "at least 1 required, 0 found")
    del patient["identifier"]
    issues = check(patient, PATIENT)
    assert {i.diagnostics.split(":")[0] for i in issues} == {"Patient.identifier", "Patient.identifier (slice 'ins')"}


def test_wrong_fixed_system():
    document = a_document()
    document["masterIdentifier"]["system"] = "urn:oid:1.2.250.1.213.1.4.8"
    one(check(document, DOCUMENT), "value", "DocumentReference.masterIdentifier.system",
        'must be exactly "urn:ietf:rfc:3986" (fixedUri)')  # fmt: skip
    patient = a_patient()
    patient["identifier"][0]["use"] = "usual"  # fixedCode inside the slice
    one(check(patient, PATIENT), "value", "Patient.identifier[0].use", '"official"')


def test_cardinality_above_max():
    patient = a_patient()
    patient["identifier"].append(dict(patient["identifier"][0]))
    one(check(patient, PATIENT), "structure", "Patient.identifier", "slice 'ins'", "at most 1 allowed, 2 found")
    document = a_document()
    document["category"].append(document["category"][0])
    one(check(document, DOCUMENT), "structure", "DocumentReference.category", "at most 1 allowed, 2 found")


def test_pattern_mismatch():
    patient = a_patient()
    patient["identifier"][0]["type"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                    "code": "NI"}]}  # fmt: skip
    one(check(patient, PATIENT), "value", "Patient.identifier[0].type", "does not match the pattern", "INS-NIR")
    patient["identifier"][0]["type"]["coding"].append(
        {"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203", "code": "INS-NIR", "display": "x"}
    )
    assert check(patient, PATIENT) == []  # a pattern is a subset: more codings, more keys are fine


def test_regex_on_the_ins_value():
    patient = a_patient()
    patient["identifier"][0]["value"] = "2870644109057"  # the NIR without its key
    one(check(patient, PATIENT), "value", "Patient.identifier[0].value", "regular expression")
    patient["identifier"][0]["value"] = "1520469383128" + "2A"[::-1]
    assert len(check(patient, PATIENT)) == 1
    patient["identifier"][0]["value"] = "175092A35000163"  # Corse-du-Sud: 2A in the place of birth
    assert check(patient, PATIENT) == []


def test_required_binding_on_a_profile_value_set():
    document = a_document()
    document["category"] = [{"coding": [{"system": A03, "code": "03", "display": "Traitement"}]}]
    one(check(document, DOCUMENT), "code-invalid", "DocumentReference.category[0]",
        f"{A03}|03 is not in the value set {BASE}/ValueSet/mes-dmp-classe-document (required binding)")  # fmt: skip
    document = a_document()
    document["type"]["coding"][0]["code"] = "00000-0"
    one(check(document, DOCUMENT), "code-invalid", "DocumentReference.type", "mes-dmp-type-document")
    patient = a_patient()
    patient["gender"] = "unknown"  # a code: the INS sex is male or female
    one(check(patient, PATIENT), "code-invalid", "Patient.gender", "'unknown'", "mes-ins-gender")
    document = a_document()
    document["securityLabel"][0]["coding"][0]["code"] = "U"  # the binding of a slice
    one(check(document, DOCUMENT), "code-invalid", "DocumentReference.securityLabel[0]", "mes-dmp-confidentialite")


def test_nested_elements():
    document = a_document()
    del document["content"][0]["attachment"]["contentType"]
    one(check(document, DOCUMENT), "required", "DocumentReference.content[0].attachment.contentType", "at least 1")
    document = a_document()
    del document["context"]["practiceSetting"]
    one(check(document, DOCUMENT), "required", "DocumentReference.context.practiceSetting")
    del document["context"]  # an absent parent: only the parent is reported
    one(check(document, DOCUMENT), "required", "DocumentReference.context")
    patient = a_patient()
    del patient["name"][0]["family"]
    one(check(patient, PATIENT), "required", "Patient.name[0].family")


def test_slices_by_pattern_and_reference_targets():
    document = a_document()
    masked = {"system": "https://mos.esante.gouv.fr/NOS/TRE_A07", "code": "MASQUE_PS"}
    document["securityLabel"] = [{"coding": [masked]}]
    one(check(document, DOCUMENT), "required", "DocumentReference.securityLabel", "slice 'confidentiality'")
    document = a_document()
    document["subject"] = {"reference": "Group/famille"}
    one(check(document, DOCUMENT), "value", "DocumentReference.subject", "refers to a Group; allowed: Patient")
    document["subject"] = {"reference": f"Patient?identifier={INS}|287064410905745"}  # conditional: a Patient
    assert check(document, DOCUMENT) == []
    document["author"] = [{"reference": "#a"}]
    document["contained"] = [{"resourceType": "Location", "id": "a"}]
    one(check(document, DOCUMENT), "value", "DocumentReference.author[0]", "refers to a Location")


def test_a_profile_of_another_type():
    issues = check(a_document(), PATIENT)
    assert len(issues) == 1 and "constrains Patient, not DocumentReference" in issues[0].diagnostics


# --- the engine on profiles written for the test ---------------------------------------------------------------


def structure(*elements: dict, type_: str = "Observation") -> dict:
    return {"resourceType": "StructureDefinition", "id": "t", "url": "urn:test:sd", "name": "T", "status": "draft",
            "kind": "resource", "abstract": False, "type": type_, "derivation": "constraint",
            "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{type_}",
            "differential": {"element": [{"id": type_, "path": type_}, *elements]}}  # fmt: skip


def value_set(url: str, *includes: dict) -> dict:
    return {"resourceType": "ValueSet", "url": url, "status": "draft", "compose": {"include": list(includes)}}


CATEGORY_SLICING = [
    {"id": "Observation.category", "path": "Observation.category",
     "slicing": {"discriminator": [{"type": "value", "path": "coding.code"}], "rules": "closed"}},
    {"id": "Observation.category:vs", "path": "Observation.category", "sliceName": "vs", "min": 1, "max": "1",
     "patternCodeableConcept": {"coding": [{"code": "vital-signs"}]}},
]  # fmt: skip


def test_closed_slicing_and_value_set_composition():
    binding = {"strength": "required", "valueSet": "urn:test:vs"}
    registry = Registry([
        structure(*CATEGORY_SLICING, {"id": "Observation.code", "path": "Observation.code", "binding": binding}),
        value_set("urn:test:vs", {"valueSet": ["urn:test:all"]}),
        {**value_set("urn:test:all", {"system": "urn:cs"}), "compose": {
            "include": [{"system": "urn:cs"}], "exclude": [{"system": "urn:cs", "concept": [{"code": "b"}]}]}},
        {"resourceType": "CodeSystem", "url": "urn:cs", "status": "draft", "content": "complete",
         "concept": [{"code": "a", "concept": [{"code": "a1"}]}, {"code": "b"}]},
    ])  # fmt: skip
    profile = registry.get("urn:test:sd")
    assert registry.expansion("urn:test:vs")[0] == {("urn:cs", "a"), ("urn:cs", "a1")}
    vital = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                         "code": "vital-signs"}]}  # fmt: skip
    ok = {"resourceType": "Observation", "status": "final", "category": [vital],
          "code": {"coding": [{"system": "urn:cs", "code": "a1"}]}}  # fmt: skip
    assert registry.check(ok, profile) == []
    extra = {**ok, "category": [vital, {"coding": [{"code": "laboratory"}]}]}
    [issue] = registry.check(extra, profile)
    assert issue.expression == ("Observation.category[1]",) and "closed" in issue.diagnostics
    excluded = {**ok, "code": {"coding": [{"system": "urn:cs", "code": "b"}]}}
    assert [i.code for i in registry.check(excluded, profile)] == ["code-invalid"]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ([structure({"id": "Observation.code", "path": "Observation.code",
                     "binding": {"strength": "required", "valueSet": "urn:nowhere"}})], "not in profiles/"),
        ([structure({"id": "Observation.category", "path": "Observation.category",
                     "slicing": {"discriminator": [{"type": "exists", "path": "code"}]}})], "discriminators"),
        ([structure({"id": "Observation.category:x", "path": "Observation.category", "sliceName": "x"})],
         "no slicing"),
        ([structure(CATEGORY_SLICING[0], {"id": "Observation.category:x", "path": "Observation.category",
                                          "sliceName": "x"})], "fixes no value"),
        ([structure({"path": "Observation.code"})], "needs an id"),
        ([value_set("urn:v", {"system": "urn:s", "filter": [{"property": "concept", "op": "is-a", "value": "x"}]}),
          structure({"id": "Observation.code", "path": "Observation.code",
                     "binding": {"strength": "required", "valueSet": "urn:v"}})], "filters are not supported"),
        ([{**structure(), "baseDefinition": "urn:other"}], "the base must be"),
    ],
)  # fmt: skip
def test_what_the_engine_refuses_to_load(resources, message):
    with pytest.raises(ProfileError, match=message):
        Registry(resources)


# --- through $validate -----------------------------------------------------------------------------------------


def params(**parts) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": k, **v} for k, v in parts.items()]}


@pytest.fixture
async def client(store_url):
    async with fhir_client(store_url) as c:
        yield c


async def outcome(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()["issue"]


async def test_validate_with_a_profile(client):
    good, bad = a_patient(), a_patient()
    del bad["meta"]  # not claimed: checked only because the request names the profile
    bad["identifier"][0]["system"] = "urn:oid:1.2.250.1.213.1.4.10"
    [info] = await outcome(await client.post(f"/Patient/$validate?profile={PATIENT}", json=good))
    assert info["severity"] == "information"
    [issue] = await outcome(await client.post(f"/Patient/$validate?profile={PATIENT}", json=bad))
    assert issue["severity"] == "error" and issue["expression"] == ["Patient.identifier"]
    assert PATIENT in issue["diagnostics"] and "slice 'ins'" in issue["diagnostics"]
    assert (await outcome(await client.post("/Patient/$validate", json=bad)))[0]["severity"] == "information"
    # the profile as a Parameters part (valueCanonical or valueUri), and a versioned canonical
    for part in ({"valueCanonical": PATIENT}, {"valueUri": f"{PATIENT}|0.1.0"}):
        body = params(resource={"resource": bad}, profile=part)
        [issue] = await outcome(await client.post("/Patient/$validate", json=body))
        assert issue["expression"] == ["Patient.identifier"]
    # claimed in meta.profile: checked without being asked
    bad["meta"] = {"profile": [PATIENT]}
    [issue] = await outcome(await client.post("/Patient/$validate", json=bad))
    assert issue["expression"] == ["Patient.identifier"]
    # R4 and profile issues side by side
    bad["birthDate"] = "1987-13-01"
    issues = await outcome(await client.post(f"/Patient/$validate?profile={PATIENT}", json=bad))
    assert {tuple(i.get("expression", ())) for i in issues} >= {("Patient.birthDate",), ("Patient.identifier",)}
    # the R4 base profile of the type is known
    base = "http://hl7.org/fhir/StructureDefinition/Patient"
    assert (await outcome(await client.post(f"/Patient/$validate?profile={base}", json=good)))[0]["code"] == (
        "informational"
    )


async def test_validate_instance_with_a_profile(client):
    document = a_document()
    assert (await client.put(f"/DocumentReference/{document['id']}", json=document)).status_code == 201
    del document["masterIdentifier"]
    url = f"/DocumentReference/{document['id']}/$validate?mode=update&profile={DOCUMENT}"
    [issue] = await outcome(await client.post(url, json=document))
    assert issue["expression"] == ["DocumentReference.masterIdentifier"] and DOCUMENT in issue["diagnostics"]


async def test_unknown_or_mismatched_profiles_are_refused(client):
    unknown = await client.post("/Patient/$validate?profile=https://example.org/StructureDefinition/x",
                                json=a_patient())  # fmt: skip
    assert unknown.status_code == 400
    [issue] = unknown.json()["issue"]
    assert issue["code"] == "not-found"
    assert "Unknown profile 'https://example.org/StructureDefinition/x'" in issue["diagnostics"]
    assert PATIENT in issue["diagnostics"]  # what it does know for the type
    other = await client.post(f"/DocumentReference/$validate?profile={PATIENT}", json=a_document())
    assert other.status_code == 400 and "constrains Patient, not DocumentReference" in other.text
    stale = await client.post(f"/Patient/$validate?profile={PATIENT}|2.0.0", json=a_patient())
    assert stale.status_code == 400


async def test_the_capability_statement_lists_the_profiles(client):
    statement = (await client.get("/metadata")).json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert resources["Patient"]["supportedProfile"] == [PATIENT]
    assert resources["DocumentReference"]["supportedProfile"] == [DOCUMENT]
    assert "supportedProfile" not in resources["Observation"]

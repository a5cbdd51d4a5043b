"""fhir_server.validation: official R4 examples, and focused negative cases for both validators."""

from __future__ import annotations

import copy
import json
import tarfile
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest

from fhir_server.errors import FhirError
from fhir_server.validation import R4_RESOURCE_TYPES, r4, validate_resource, warm_up

EXAMPLES_TGZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "hl7.fhir.r4.examples-4.0.1.tgz"

# Conformance/terminology resources: not what this server stores, and some official ones are invalid.
DEFINITIONAL = {
    "SearchParameter",
    "ValueSet",
    "CodeSystem",
    "StructureDefinition",
    "ConceptMap",
    "OperationDefinition",
    "CapabilityStatement",
    "ImplementationGuide",
    "NamingSystem",
    "CompartmentDefinition",
    "StructureMap",
    "GraphDefinition",
    "MessageDefinition",
    "TerminologyCapabilities",
    "ExampleScenario",
}
INVALID_EXAMPLE = "Questionnaire-qs1.json"  # nested items without the required linkId


def official_examples() -> dict[str, dict]:
    if not EXAMPLES_TGZ.exists():
        pytest.skip(f"official R4 examples not available at {EXAMPLES_TGZ}")
    return _load_examples()


@cache
def _load_examples() -> dict[str, dict]:
    examples = {}
    with tarfile.open(EXAMPLES_TGZ) as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            # files are named after their resource type: skip parsing the 4000 definitional ones
            if not member.isfile() or not name.endswith(".json") or name.split("-")[0] in DEFINITIONAL:
                continue
            resource = json.loads(tar.extractfile(member).read(), parse_float=Decimal)  # type: ignore[union-attr]
            if resource.get("resourceType") in R4_RESOURCE_TYPES - DEFINITIONAL:
                examples[name] = resource
    return examples


def issues_of(resource: dict) -> list[tuple[str, str, str]]:
    """(code, expression, diagnostics) of each issue; [] when the resource is valid."""
    try:
        validate_resource(resource)
    except FhirError as exc:
        assert exc.status == 400
        return [(i.code, i.expression[0] if i.expression else "", i.diagnostics) for i in exc.issues]
    return []


def expressions(resource: dict) -> list[str]:
    return [expr for _, expr, _ in issues_of(resource)]


def with_changes(resource: dict, **changes) -> dict:
    changed = copy.deepcopy(resource)
    for key, value in changes.items():
        if value is REMOVE:
            del changed[key]
        else:
            changed[key] = value
    return changed


REMOVE = object()

# --- official examples -------------------------------------------------------------------------------


def test_official_examples_validate():
    examples = official_examples()
    assert len(examples) > 700
    failures = {name: issues_of(resource)[:3] for name, resource in examples.items() if name != INVALID_EXAMPLE}
    assert {name: issues for name, issues in failures.items() if issues} == {}


def test_questionnaire_qs1_is_invalid():
    qs1 = official_examples()[INVALID_EXAMPLE]
    issues = issues_of(qs1)
    assert ("required", "Questionnaire.item[0].item[0].linkId", "Missing required element 'linkId'") in issues
    assert len(issues) <= 20  # capped


def test_extension_primitive_sibling_is_valid_r4():
    # As in Bundle-v2-valuesets: a translation extension on an extension's valueString.
    translation = {
        "extension": [{"url": "lang", "valueCode": "nl"}],
        "url": "http://hl7.org/fhir/translation",
    }
    ext = {"url": "http://example.org/x", "valueString": "Ja", "_valueString": {"extension": [translation]}}
    assert issues_of({"resourceType": "Patient", "extension": [ext]}) == []
    bad = copy.deepcopy(ext)
    del bad["_valueString"]["extension"][0]["url"]
    assert expressions({"resourceType": "Patient", "extension": [bad]}) == [
        "Patient.extension[0].valueString.extension[0].url"
    ]


def test_code_with_no_break_space_is_valid_r4():
    # R4 regexes are XML Schema ones: U+00A0 is not whitespace there (Bundle-v2-valuesets has such codes).
    # (A Coding.code: Patient.gender is bound to administrative-gender, where "male\u00a0" is not a code.)
    assert issues_of({"resourceType": "Patient", "maritalStatus": {"coding": [{"code": "male\u00a0"}]}}) == []
    assert expressions({"resourceType": "Patient", "gender": "male "}) == ["Patient.gender"]


def test_r4_fixups_of_r4b_models():
    def with_ext(**value) -> dict:
        return {"resourceType": "Patient", "extension": [{"url": "http://example.org/x", **value}]}

    # R4 uuid: any version, urn:uuid: prefix, lowercase (R4B: python UUID4)
    assert issues_of(with_ext(valueUuid="urn:uuid:a8d2b2a2-1111-11ee-8000-000000000000")) == []
    assert expressions(with_ext(valueUuid="a8d2b2a2-0000-4000-8000-000000000000")) == ["Patient.extension[0].valueUuid"]
    # Extension.valueMeta exists in R4 only, valueRatioRange in R4B only
    assert issues_of(with_ext(valueMeta={"versionId": "2"})) == []
    assert expressions(with_ext(valueMeta={"versionId": ""})) == ["Patient.extension[0].valueMeta.versionId"]
    assert expressions(with_ext(valueRatioRange={"denominator": {"value": 1}})) == [
        "Patient.extension[0].valueRatioRange"
    ]
    plan = {"resourceType": "PlanDefinition", "status": "draft", "subjectCanonical": "http://x"}
    assert expressions(plan) == ["PlanDefinition.subjectCanonical"]


@pytest.mark.parametrize("resource_type", ["Binary", "MedicinalProduct"])
def test_base64(resource_type):
    def binary(data: str) -> dict:
        if resource_type == "Binary":
            return {"resourceType": "Binary", "contentType": "text/plain", "data": data}
        ext = {"url": "http://example.org/x", "valueBase64Binary": data}
        return with_changes(MEDICINAL_PRODUCT, extension=[ext])

    assert issues_of(binary("SGVs bG8=\n")) == []
    assert len(issues_of(binary("!!!!"))) == 1  # python's decoder would skip these characters
    assert len(issues_of(binary("AAAA" + " " * 200_000 + "!"))) == 1  # fast: no backtracking regex


# --- R4B-model types: Patient, Observation ----------------------------------------------------------

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "name": [{"family": "Martin", "given": ["Anne", "Marie"]}],
    "gender": "female",
    "birthDate": "1974-12-25",
    "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}],
}

OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-01-02T10:00:00+01:00",
    "valueQuantity": {"value": Decimal("72.50"), "unit": "kg"},
}


def test_valid_r4b_resources():
    assert issues_of(PATIENT) == []
    assert issues_of(OBSERVATION) == []


def test_patient_unknown_element():
    assert issues_of(with_changes(PATIENT, nickname="Annie")) == [
        ("structure", "Patient.nickname", "Unknown element 'nickname'")
    ]
    # python-side aliases of the models are not FHIR JSON
    assert expressions(with_changes(PATIENT, birthDate__ext={"id": "x"})) == ["Patient.birthDate__ext"]
    assert expressions(with_changes(PATIENT, fhir_comments=["x"])) == ["Patient.fhir_comments"]


def test_patient_wrong_primitive_type():
    assert expressions(with_changes(PATIENT, active="true")) == ["Patient.active"]
    patient = copy.deepcopy(PATIENT)
    patient["name"][0]["given"][0] = 1
    assert issues_of(patient) == [("structure", "Patient.name[0].given[0]", "Expected a string but found number 1")]
    assert expressions(with_changes(PATIENT, multipleBirthInteger=True)) == ["Patient.multipleBirthInteger"]


def test_patient_bad_date():
    ((code, expr, _),) = issues_of(with_changes(PATIENT, birthDate="1974-13-25"))
    assert (code, expr) == ("value", "Patient.birthDate")
    assert expressions(with_changes(PATIENT, birthDate="1974-12-25T10:00:00Z")) == ["Patient.birthDate"]


def test_patient_bad_id():
    assert expressions(with_changes(PATIENT, id="p_1")) == ["Patient.id"]
    assert expressions(with_changes(PATIENT, id="a" * 65)) == ["Patient.id"]
    assert issues_of(with_changes(PATIENT, id="a" * 64)) == []


def test_patient_missing_required():
    patient = copy.deepcopy(PATIENT)
    del patient["link"][0]["other"]
    assert issues_of(patient) == [("required", "Patient.link[0].other", "Missing required element 'other'")]


def test_patient_choice_misuse():
    assert expressions(with_changes(PATIENT, deceasedString="yes")) == ["Patient.deceasedString"]
    ((_, expr, message),) = issues_of(with_changes(PATIENT, deceasedBoolean=True, deceasedDateTime="2020"))
    assert expr == "Patient.deceasedDateTime"
    assert "deceased[x]" in message


def test_observation_negative_cases():
    assert expressions(with_changes(OBSERVATION, status=REMOVE)) == ["Observation.status"]
    assert issues_of(with_changes(OBSERVATION, status=REMOVE))[0][0] == "required"
    assert expressions(with_changes(OBSERVATION, valueText="x")) == ["Observation.valueText"]
    assert expressions(with_changes(OBSERVATION, valueString="x")) == ["Observation.valueString"]
    assert expressions(with_changes(OBSERVATION, effectiveDateTime="2024-01-02T10:00")) == [
        "Observation.effectiveDateTime"
    ]
    assert expressions(with_changes(OBSERVATION, valueQuantity={"value": "72.5"})) == [
        "Observation.valueQuantity.value"
    ]
    assert expressions(with_changes(OBSERVATION, id="bad id")) == ["Observation.id"]
    assert expressions(with_changes(OBSERVATION, code=[{"text": "x"}])) == ["Observation.code"]


# --- R4 structural types: MedicinalProduct, Evidence ------------------------------------------------

MEDICINAL_PRODUCT = {
    "resourceType": "MedicinalProduct",
    "id": "mp1",
    "type": {"text": "medicinal product"},
    "name": [{"productName": "Aspirin 500 mg", "namePart": [{"part": "Aspirin", "type": {"code": "INV"}}]}],
    "marketingStatus": [
        {
            "country": {"text": "FR"},
            "status": {"text": "active"},
            "dateRange": {"start": "2020-01-01", "end": "2030-12-31T00:00:00Z"},
        }
    ],
    "specialDesignation": [{"indicationCodeableConcept": {"text": "pain"}}],
}

EVIDENCE = {
    "resourceType": "Evidence",
    "id": "ev1",
    "status": "active",
    "date": "2020-05-01",
    "approvalDate": "2020-04-30",
    "exposureBackground": {"reference": "EvidenceVariable/ev2"},
    "extension": [{"url": "http://example.org/n", "valueInteger": 3}],
}


def test_structural_types():
    assert {
        "MedicinalProduct",
        "Evidence",
        "EvidenceVariable",
        "SubstanceSpecification",
    } <= r4.structural_types()
    assert "Patient" not in r4.structural_types()
    assert len(R4_RESOURCE_TYPES) == 146


def test_valid_r4_structural_resources():
    assert issues_of(MEDICINAL_PRODUCT) == []
    assert issues_of(EVIDENCE) == []


def test_r4_structural_unknown_element():
    assert issues_of(with_changes(MEDICINAL_PRODUCT, brand="x")) == [
        ("structure", "MedicinalProduct.brand", "Unknown element 'brand'")
    ]
    # an R4B-only Evidence element is unknown in R4
    assert expressions(with_changes(EVIDENCE, statistic=[{"description": "x"}])) == ["Evidence.statistic"]
    assert expressions(with_changes(EVIDENCE, _status={"foo": 1})) == ["Evidence.status.foo"]
    assert expressions(with_changes(EVIDENCE, _exposureBackground={"id": "x"})) == ["Evidence._exposureBackground"]


def test_r4_structural_wrong_primitive_type():
    product = copy.deepcopy(MEDICINAL_PRODUCT)
    product["name"][0]["productName"] = 5
    assert issues_of(product) == [
        ("structure", "MedicinalProduct.name[0].productName", "Expected a string but found number 5")
    ]
    evidence = with_changes(EVIDENCE, extension=[{"url": "http://example.org/n", "valueInteger": "3"}])
    assert expressions(evidence) == ["Evidence.extension[0].valueInteger"]


def test_r4_structural_bad_date():
    product = copy.deepcopy(MEDICINAL_PRODUCT)
    product["marketingStatus"][0]["dateRange"]["start"] = "2020-13-01"
    assert issues_of(product) == [
        (
            "value",
            "MedicinalProduct.marketingStatus[0].dateRange.start",
            "Invalid dateTime value '2020-13-01'",
        )
    ]
    assert expressions(with_changes(EVIDENCE, approvalDate="2020-04-30T10:00:00Z")) == ["Evidence.approvalDate"]


def test_r4_structural_bad_id():
    assert expressions(with_changes(MEDICINAL_PRODUCT, id="mp/1")) == ["MedicinalProduct.id"]
    assert expressions(with_changes(EVIDENCE, id="e" * 65)) == ["Evidence.id"]


def test_r4_structural_missing_required():
    assert issues_of(with_changes(MEDICINAL_PRODUCT, name=REMOVE)) == [
        ("required", "MedicinalProduct.name", "Missing required element 'name'")
    ]
    product = copy.deepcopy(MEDICINAL_PRODUCT)
    del product["name"][0]["namePart"][0]["type"]
    assert expressions(product) == ["MedicinalProduct.name[0].namePart[0].type"]
    assert expressions(with_changes(EVIDENCE, exposureBackground=REMOVE)) == ["Evidence.exposureBackground"]


def test_r4_structural_cardinality():
    product = copy.deepcopy(MEDICINAL_PRODUCT)
    product["name"] = product["name"][0]
    assert expressions(product) == ["MedicinalProduct.name"]
    assert expressions(with_changes(MEDICINAL_PRODUCT, type=[{"text": "x"}])) == ["MedicinalProduct.type"]


def test_r4_structural_choice_misuse():
    product = copy.deepcopy(MEDICINAL_PRODUCT)
    product["specialDesignation"][0] = {"indicationString": "pain"}
    assert expressions(product) == ["MedicinalProduct.specialDesignation[0].indicationString"]
    product["specialDesignation"][0] = {
        "indicationCodeableConcept": {"text": "pain"},
        "indicationReference": {"reference": "MedicinalProductIndication/1"},
    }
    assert expressions(product) == ["MedicinalProduct.specialDesignation[0].indicationReference"]
    two = {"url": "http://example.org/n", "valueInteger": 3, "valueString": "3"}
    assert expressions(with_changes(EVIDENCE, extension=[two])) == ["Evidence.extension[0].valueString"]


# --- JSON-level rules, both validators --------------------------------------------------------------


@pytest.mark.parametrize("resource", [PATIENT, MEDICINAL_PRODUCT], ids=["r4b", "r4"])
def test_json_rules(resource):
    rt = resource["resourceType"]
    assert expressions(with_changes(resource, language="")) == [f"{rt}.language"]
    assert expressions(with_changes(resource, language=None)) == [f"{rt}.language"]
    assert expressions(with_changes(resource, meta={})) == [f"{rt}.meta"]
    assert expressions(with_changes(resource, extension=[])) == [f"{rt}.extension"]
    assert expressions(with_changes(resource, text={"status": "generated", "div": "plain"})) == [f"{rt}.text.div"]
    assert expressions(with_changes(resource, meta={"resourceType": "Meta"})) == [f"{rt}.meta.resourceType"]
    assert expressions(with_changes(resource, _language={"extension": [{"url": "u", "valueCode": "x"}]})) == []


def test_primitive_array_nulls_line_up_with_extensions():
    patient = copy.deepcopy(PATIENT)
    patient["name"][0]["given"] = [None, "Marie"]
    assert expressions(patient) == ["Patient.name[0].given[0]"]
    patient["name"][0]["_given"] = [
        {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
        None,
    ]
    assert issues_of(patient) == []
    patient["name"][0]["_given"] = [{"id": "a"}]
    assert sorted(expressions(patient)) == ["Patient.name[0]._given", "Patient.name[0].given[0]"]


def test_resource_type_checks():
    assert issues_of({"id": "x"}) == [("required", "Resource", "resourceType is missing")]
    assert issues_of({"resourceType": 7}) == [("structure", "Resource", "resourceType is not a string")]
    contained = with_changes(PATIENT, contained=[{"id": "o1"}, {"resourceType": "Nope", "id": "o2"}])
    assert expressions(contained) == ["Patient.contained[0]", "Patient.contained[1]"]


def test_nested_resources_use_their_own_validator():
    bad_product = with_changes(MEDICINAL_PRODUCT, brand="x")
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": PATIENT}, {"resource": bad_product}, {"resource": EVIDENCE}],
    }
    assert expressions(bundle) == ["Bundle.entry[1].resource.brand"]
    patient = with_changes(PATIENT, contained=[with_changes(OBSERVATION, id="o1", status=REMOVE)])
    assert expressions(patient) == ["Patient.contained[0].status"]
    product = with_changes(MEDICINAL_PRODUCT, contained=[with_changes(PATIENT, active="yes")])
    assert expressions(product) == ["MedicinalProduct.contained[0].active"]


def test_input_is_not_modified():
    # fix-ups and nested resources are applied on a copy
    ext = {"url": "http://example.org/x", "valueString": "a", "_valueString": {"id": "s1"}}
    patient = with_changes(PATIENT, extension=[ext], contained=[MEDICINAL_PRODUCT])
    before = copy.deepcopy(patient)
    assert issues_of(patient) == []
    assert patient == before


def test_issues_are_capped():
    patient = with_changes(PATIENT, **{f"unknown{i}": i for i in range(30)})
    assert len(issues_of(patient)) == 20


def test_warm_up():
    warm_up(["Patient", "MedicinalProduct", "Bundle"])
    warm_up()

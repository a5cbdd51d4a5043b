"""Write-time index entries: the FHIRPath compiler against fhirpathpy, normalization, timing."""

from __future__ import annotations

import json
import random
import re
import tarfile
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from fhir_server.instant import date_range
from fhir_server.search import fhirpath_compile as fc
from fhir_server.search import indexing as ix
from fhir_server.search import normalize as n
from fhir_server.search.indexing import index_entries, parameters
from fhir_server.search.registry import definitions
from fhir_server.store import IndexEntry

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "hl7.fhir.r4.examples-4.0.1.tgz"
DEFINITIONS = {
    "SearchParameter", "ValueSet", "CodeSystem", "StructureDefinition", "ConceptMap", "OperationDefinition",
    "CapabilityStatement", "ImplementationGuide", "NamingSystem", "CompartmentDefinition", "StructureMap",
    "GraphDefinition", "MessageDefinition", "TerminologyCapabilities", "ExampleScenario",
}  # fmt: skip
LAST_UPDATED = "2024-05-01T10:00:00.123Z"
US_2024_05_01 = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z


def is_definition(resource: dict) -> bool:
    if resource.get("resourceType") == "Bundle" and resource.get("entry"):
        return all(is_definition(e.get("resource", {})) for e in resource["entry"])
    return resource.get("resourceType") in DEFINITIONS


@pytest.fixture(scope="module")
def examples() -> dict[str, dict]:
    """Every non-definition official example, parsed as the server parses (decimals as Decimal)."""
    if not EXAMPLES.exists():
        pytest.skip(f"official examples not found at {EXAMPLES}")
    found = {}
    with tarfile.open(EXAMPLES) as archive:
        for member in archive.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not name.endswith(".json") or name == "package.json" or not member.isfile():
                continue
            resource = json.loads(archive.extractfile(member).read(), parse_float=Decimal)
            if isinstance(resource, dict) and "resourceType" in resource and not is_definition(resource):
                found[name] = resource
    return found


def entries(resource: dict, param: str) -> set[tuple]:
    return {(e.value, e.system, e.low, e.high) for e in index_entries(resource) if e.param == param}


# ---------------------------------------------------------------------------------------------------
# The compiler against fhirpathpy on every (example, parameter) pair.
# ---------------------------------------------------------------------------------------------------


def _ref_type(inputs: list) -> list:
    """Oracle for ``resolve() is T``: the ``Type`` of ``[base/]Type/id[/_history/v]``, else Reference.type."""
    out = []
    for ref in inputs:
        if isinstance(ref, dict):
            parts = (ref.get("reference") or "").split("/_history/")[0].split("/")
            found = parts[-2] if len(parts) >= 2 and parts[-2][:1].isupper() else ref.get("type")
            out += [found] if found else []
    return out


ORACLE_FUNCTIONS = {
    "refType": {"fn": _ref_type, "arity": {0: []}},
    **fc.FHIRPATHPY_FUNCTIONS,  # hasExtension(), which fhirpathpy lacks
}


def oracle_expression(expression: str, type_: str) -> str:
    """The expression as fhirpathpy can run it with the meaning the compiler gives it.

    fhirpathpy does not implement resolve(); treats ``Resource.x`` as a field named Resource; makes
    ``as`` an error on more than one item (the parameters mean ``ofType``); and reads ``DateTime``
    as System.DateTime, which no FHIR element is.
    """
    expression = re.sub(r"\b(?:Resource|DomainResource)\.", type_ + ".", expression)
    expression = re.sub(r"resolve\(\) is (\w+)", r"refType() = '\1'", expression)
    expression = re.sub(r"\(([\w.]+) as (\w+)\)", r"(\1.ofType(\2))", expression)
    return expression.replace(".as(", ".ofType(").replace("ofType(DateTime)", "ofType(dateTime)")


_ORACLES: dict[str, Any] = {}


def oracle(expression: str, type_: str, focus: Any, root: dict) -> list:
    text = oracle_expression(expression, type_)
    if text not in _ORACLES:
        _ORACLES[text] = fhirpathpy.compile(text, models["r4"], {"userInvocationTable": ORACLE_FUNCTIONS})
    return _ORACLES[text](focus, {"resource": root})


def canonical(values: list) -> set[str]:
    """Values compared as a set: FHIRPath unions de-duplicate, branch order may differ."""
    return {json.dumps(v, sort_keys=True, default=str) for v in values}


def test_compiled_extractors_match_fhirpathpy_on_every_example(examples: dict[str, dict]) -> None:
    mismatches, pairs = [], 0
    for name, resource in sorted(examples.items()):
        type_ = resource["resourceType"]
        for code, definition in parameters(type_).items():
            pairs += 1
            expression = definition["expression"]
            branches = fc.compile_param(expression, type_)
            got = fc.evaluate(branches, [resource], resource)
            want = oracle(expression, type_, resource, resource)
            if canonical(got) != canonical(want):
                mismatches.append(f"{name} {code}: {expression}\n  compiled {got!r:.300}\n  fhirpathpy {want!r:.300}")
            if definition["type"] == "composite":
                pairs += _check_components(name, code, definition, branches, resource, mismatches)
    assert pairs > 15_000
    assert not mismatches, f"{len(mismatches)} of {pairs} differ:\n" + "\n".join(mismatches[:20])


def _check_components(name: str, code: str, definition: dict, elements: tuple, resource: dict, out: list) -> int:
    """Each component expression on each element of the composite (e.g. every Observation.component)."""
    type_, checked = resource["resourceType"], 0
    for element in elements:
        for item in element.fn([resource], resource):
            for component in definition["component"]:
                checked += 1
                got = fc.evaluate(fc.compile_param(component["expression"], element.type, type_), [item], resource)
                focus = ResourceNode.create_node(item, element.type)
                want = oracle(component["expression"], type_, focus, resource)
                if canonical(got) != canonical(want):
                    out.append(f"{name} {code}[{component['expression']}]: {got!r:.200} != {want!r:.200}")
    return checked


def test_every_official_expression_compiles() -> None:
    """The compiler covers the whole R4 set: nothing falls back to fhirpathpy."""
    compiled = 0
    for definition in definitions():
        if not definition.get("expression") or definition["type"] == "special":
            continue
        for base in definition.get("base", ()):
            type_ = "Patient" if base in ("Resource", "DomainResource") else base
            elements = fc.compile_param(definition["expression"], type_)
            compiled += 1
            for component in definition.get("component", ()):
                for element in elements:
                    fc.compile_param(component["expression"], element.type, type_)
    assert compiled > 1_700
    assert not fc.FALLBACKS, fc.FALLBACKS


def test_fallback_runs_fhirpathpy() -> None:
    expression = "Patient.name.given.count()"  # count() is outside the compiled subset
    patient = {"resourceType": "Patient", "name": [{"given": ["A", "B"]}, {"given": ["C"]}]}
    branches = fc.compile_param(expression, "Patient")
    assert (expression, "Patient") in fc.FALLBACKS
    assert fc.evaluate(branches, [patient], patient) == [3]
    fc.FALLBACKS.pop((expression, "Patient"))


def test_compiler_semantics() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "http://other.org/fhir/Patient/9/_history/2"},
        "performer": [{"reference": "Practitioner/1"}, {"reference": "urn:uuid:x", "type": "Patient"}],
        "valueQuantity": {"value": Decimal("1.50")},
        "component": [{"valueString": "a"}, {"valueQuantity": {"value": 2}}],
    }

    def run(expression: str) -> list:
        return fc.evaluate(fc.compile_expression(expression, "Observation"), [obs], obs)

    assert run("Observation.subject.where(resolve() is Patient)") == [obs["subject"]]
    assert run("Observation.performer.where(resolve() is Patient)") == [obs["performer"][1]]
    assert run("Observation.value as Quantity") == [obs["valueQuantity"]]
    assert run("Observation.value.as(string)") == []
    assert run("(Observation.component.value as Quantity).value") == [2]  # ofType semantics
    assert run("Observation.component.value.exists()") == [True]
    assert run("Observation.effective.exists() and Observation.status != 'final'") == [False]
    assert run("Patient.name | Observation.status") == []  # other types' union members drop out
    assert [b.type for b in fc.compile_expression("Observation.value", "Observation")][:2] == [
        "Quantity",
        "CodeableConcept",
    ]


# ---------------------------------------------------------------------------------------------------
# Normalization.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Hélène", "helene"),
        ("Œuvre", "oeuvre"),
        ("Æsir", "aesir"),
        ("François ÇA", "francois ca"),
        ("Straße", "strasse"),
        ("O\N{RIGHT SINGLE QUOTATION MARK}Brien", "o'brien"),
        ("O'Brien", "o'brien"),
        ("  Jean-Pierre \t DUPONT ", "jean-pierre dupont"),
        ("Łódź", "lodz"),
        ("ﬁnal", "final"),
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert n.fold(text) == folded


def test_string_entries_of_names_and_addresses() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Dupont-Hélène", "given": ["Zoé", "Anne"], "prefix": ["Mme"], "text": "Zoé DUPONT"}],
        "address": [
            {
                "line": ["3 rue de l\N{RIGHT SINGLE QUOTATION MARK}Église"],
                "city": "Saint-Étienne",
                "postalCode": "42000",
                "country": "FR",
            }
        ],
    }
    assert entries(patient, "family") == {("dupont-helene", "Dupont-Hélène", None, None)}
    assert entries(patient, "given") == {("zoe", "Zoé", None, None), ("anne", "Anne", None, None)}
    assert ("mme", "Mme", None, None) in entries(patient, "name")
    assert ("zoe dupont", "Zoé DUPONT", None, None) in entries(patient, "name")
    assert entries(patient, "address") == {
        ("3 rue de l'eglise", "3 rue de l\N{RIGHT SINGLE QUOTATION MARK}Église", None, None),
        ("saint-etienne", "Saint-Étienne", None, None),
        ("42000", "42000", None, None),
        ("fr", "FR", None, None),
    }
    assert entries(patient, "address-city") == {("saint-etienne", "Saint-Étienne", None, None)}


def test_token_entries() -> None:
    patient = {
        "resourceType": "Patient",
        "active": False,
        "gender": "female",
        "identifier": [
            {
                "system": "urn:oid:1.2.250.1.213.1.4.8",
                "value": "1234567890123",
                "type": {
                    "coding": [{"system": "http://interopsante.org/CodeSystem/v2-0203", "code": "INS-NIR"}],
                    "text": "NIR définitif",
                },
            },
            {"value": "no-system"},
        ],
        "telecom": [{"system": "email", "value": "zoe@example.org"}, {"system": "phone", "value": "0102"}],
        "maritalStatus": {"coding": [{"system": "http://s", "code": "M", "display": "Married"}], "text": "Mariée"},
    }
    assert entries(patient, "identifier") == {
        ("1234567890123", "urn:oid:1.2.250.1.213.1.4.8", None, None),
        ("no-system", None, None, None),
    }
    assert entries(patient, "identifier:text") == {("nir definitif", None, None, None)}
    assert entries(patient, "identifier:of-type") == {
        ("http://interopsante.org/CodeSystem/v2-0203|INS-NIR|1234567890123", None, None, None)
    }
    assert entries(patient, "active") == {("false", None, None, None)}
    assert entries(patient, "gender") == {("female", "http://hl7.org/fhir/administrative-gender", None, None)}
    assert entries(patient, "email") == {("zoe@example.org", "email", None, None)}
    assert entries(patient, "phone") == {("0102", "phone", None, None)}
    assert entries(patient, "telecom") == {("zoe@example.org", "email", None, None), ("0102", "phone", None, None)}
    rows = n.codeable_concept_rows("marital", patient["maritalStatus"])
    assert rows == [("marital", "M", "http://s", None, None), ("marital:text", "married", None, None, None),
                    ("marital:text", "mariee", None, None, None)]  # fmt: skip
    assert n.coding_rows("c", {"code": "x"}) == [("c", "x", None, None, None)]


def test_reference_entries() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/123/_history/4"},
        "performer": [
            {"reference": "https://other.example/fhir/Practitioner/7/_history/1"},
            {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "type": "Organization"},
            {"reference": "#contained-1"},
            {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810000000001"}, "display": "Dr X"},
        ],
        "basedOn": [{"reference": "urn:uuid:0a0e"}],
    }
    # low = the version of a versioned reference (what _include returns)
    assert entries(obs, "subject") == {("Patient/123", "Patient", 4.0, None)}
    assert entries(obs, "patient") == {("Patient/123", "Patient", 4.0, None)}
    assert entries(obs, "performer") == {
        ("https://other.example/fhir/Practitioner/7", "Practitioner", 1.0, None),
        ("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "Organization", None, None),
        ("#contained-1", None, None, None),  # a local reference: present (:missing), matches no Type/id search
    }
    assert entries(obs, "performer:identifier") == {("810000000001", "urn:oid:1.2.250.1.71.4.2.1", None, None)}
    assert entries(obs, "based-on") == {("urn:uuid:0a0e", None, None, None)}  # several targets: unknown
    assert n.canonical_rows("q", "http://example.org/Questionnaire/phq9|2.0") == [
        ("q", "http://example.org/Questionnaire/phq9", "Questionnaire", None, None),
        ("q", "http://example.org/Questionnaire/phq9|2.0", "Questionnaire", None, None),  # url|version searches
    ]
    assert n.reference_rows("r", {"reference": "Patient/1"}) == [("r", "Patient/1", "Patient", None, None)]
    assert n.reference_value("Group?identifier=x") == ("Group?identifier=x", None)


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2024", 1_704_067_200_000_000, 1_735_689_600_000_000),
        ("2024-02", 1_706_745_600_000_000, 1_709_251_200_000_000),  # 29 days: leap year
        ("2024-05-01", US_2024_05_01, US_2024_05_01 + 86_400_000_000),
        ("2024-05-01T10:00Z", US_2024_05_01 + 36_000_000_000, US_2024_05_01 + 36_060_000_000),
        ("2024-05-01T10:00:00Z", US_2024_05_01 + 36_000_000_000, US_2024_05_01 + 36_001_000_000),
        ("2024-05-01T10:00:00.5Z", US_2024_05_01 + 36_000_500_000, US_2024_05_01 + 36_000_600_000),
        ("2024-05-01T12:00:00+02:00", US_2024_05_01 + 36_000_000_000, US_2024_05_01 + 36_001_000_000),
        ("2024-05-01T05:30:00-04:30", US_2024_05_01 + 36_000_000_000, US_2024_05_01 + 36_001_000_000),
        ("2024-05-01T10:00:00", US_2024_05_01 + 36_000_000_000, US_2024_05_01 + 36_001_000_000),  # no zone: UTC
        ("1969-12-31", -86_400_000_000, 0),
    ],
)
def test_date_ranges(value: str, low: int, high: int) -> None:
    assert n.date_rows("d", value) == [("d", None, None, low, high)]


def test_date_range_agrees_with_datetime() -> None:
    """instant.date_range's integer arithmetic against datetime on a spread of instants and zones."""
    rng = random.Random(7)
    for _ in range(2000):
        year, month, day = rng.randint(1, 9998), rng.randint(1, 12), rng.randint(1, 28)
        hour, minute, second = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
        zone = rng.choice(["Z", "+02:00", "-11:30", "+14:00"])
        tz = (
            UTC
            if zone == "Z"
            else timezone(int(zone[0] + "1") * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:])))
        )
        expected = datetime(year, month, day, hour, minute, second, tzinfo=tz) - datetime(1970, 1, 1, tzinfo=UTC)
        low = expected // timedelta(microseconds=1)
        text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{zone}"
        assert date_range(text) == (low, low + 1_000_000), text


@pytest.mark.parametrize("value", ["2023-02-29", "2024-13", "2024-05-01T24:00:00Z", "2024-05-01T10:00:60Z", "May 1"])
def test_invalid_dates_give_no_entry(value: str) -> None:
    assert n.date_rows("d", value) == []


def test_date_entries_of_periods_and_timing() -> None:
    day = 86_400_000_000
    assert n.period_rows("p", {"start": "2024-05-01"}) == [("p", None, None, US_2024_05_01, float("inf"))]
    assert n.period_rows("p", {"end": "2024-05-01"}) == [("p", None, None, float("-inf"), US_2024_05_01 + day)]
    assert n.period_rows("p", {"start": "2024-05-01", "end": "2024-05-02"}) == [
        ("p", None, None, US_2024_05_01, US_2024_05_01 + 2 * day)
    ]
    assert n.period_rows("p", {}) == []
    timing = {"event": ["2024-05-01", "2024-05-02"]}
    assert [r[3] for r in n.timing_rows("t", timing)] == [US_2024_05_01, US_2024_05_01 + day]
    encounter = {"resourceType": "Encounter", "period": {"start": "2024-05-01T10:00:00Z"}}
    assert entries(encounter, "date") == {(None, None, US_2024_05_01 + 36_000_000_000, float("inf"))}


def test_number_and_quantity_ranges() -> None:
    assert n.number_range(Decimal("100")) == (99.5, 100.5)
    assert n.number_range(Decimal("1.50")) == (1.495, 1.505)
    assert n.number_range(Decimal("1e2")) == (50.0, 150.0)
    assert n.number_rows("n", Decimal("1.50")) == [("n", "1.5", None, 1.5, 1.5)]  # stored values are exact
    assert n.number_rows("n", 3) == [("n", "3", None, 3.0, 3.0)]
    assert n.number_rows("n", True) == []
    assert n.canonical_number(Decimal("1E+2")) == "100"
    ucum = "http://unitsofmeasure.org"
    quantity = {"value": Decimal("5.4"), "unit": "mmol/L", "code": "mmol/L", "system": ucum}
    assert n.quantity_rows("q", quantity) == [("q", "mmol/L", ucum, 5.4, 5.4)]
    quantity = {"value": Decimal("185"), "unit": "lbs", "code": "[lb_av]", "system": ucum}
    assert n.quantity_rows("q", quantity) == [("q", "[lb_av]", ucum, 185.0, 185.0), ("q", "lbs", ucum, 185.0, 185.0)]
    assert n.quantity_rows("q", {"value": 5, "comparator": "<"}) == [("q", None, None, float("-inf"), 5.0)]
    assert n.money_rows("m", {"value": Decimal("12.30"), "currency": "EUR"}) == [("m", "EUR", n.ISO_4217, 12.3, 12.3)]
    assert n.range_quantity_rows("r", {"low": {"value": 1, "code": "a"}}) == [("r", "a", None, 1.0, float("inf"))]


def test_composite_entries_of_blood_pressure(examples: dict[str, dict]) -> None:
    bp = examples["Observation-blood-pressure.json"]
    ucum = "http://unitsofmeasure.org"
    found = entries(bp, "component-code-value-quantity")
    assert ("http://loinc.org|8480-6", f"{ucum}|mm[Hg]", 107.0, 107.0) in found
    assert ("http://loinc.org|8462-4", f"{ucum}|mm[Hg]", 60.0, 60.0) in found
    assert ("http://loinc.org|8480-6", f"{ucum}|mm[Hg]", 59.5, 60.5) not in found  # never across components
    assert entries(bp, "combo-code-value-quantity") >= found
    assert entries(bp, "code-value-quantity") == set()  # the panel itself has no value
    assert ("http://loinc.org|85354-9", None, None, None) not in entries(bp, "code-value-quantity")


def test_composite_encodings() -> None:
    obs = {
        "resourceType": "Observation",
        "code": {"coding": [{"code": "x"}]},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "Neg"}]},
    }
    assert entries(obs, "code-value-concept") == {("|x", "http://snomed.info/sct|neg", None, None)}
    obs = {"resourceType": "Observation", "code": {"coding": [{"system": "s", "code": "x"}]}, "valueString": "Élevé"}
    assert entries(obs, "code-value-string") == {("s|x", "eleve", None, None)}
    obs = {"resourceType": "Observation", "code": {"coding": [{"system": "s", "code": "x"}]},
           "valueDateTime": "2024-05-01"}  # fmt: skip
    assert entries(obs, "code-value-date") == {("s|x", None, US_2024_05_01, US_2024_05_01 + 86_400_000_000)}
    sequence = {
        "resourceType": "MolecularSequence",
        "referenceSeq": {"chromosome": {"coding": [{"system": "c", "code": "1"}]}},
        "variant": [{"start": 123, "end": 345}],
    }
    assert entries(sequence, "chromosome-variant-coordinate") == {("c|1", None, 123.0, 345.0)}


def test_resource_level_parameters() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {
            "lastUpdated": LAST_UPDATED,
            "profile": ["http://interopsante.org/fhir/StructureDefinition/FrPatient"],
            "tag": [{"system": "http://example.org/tags", "code": "vip", "display": "V.I.P."}],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
            "source": "urn:uuid:source-1",
        },
    }
    last_updated = US_2024_05_01 + 36_000_123_000
    assert entries(patient, "_lastUpdated") == {(None, None, last_updated, last_updated + 1000)}
    assert entries(patient, "_profile") == {("http://interopsante.org/fhir/StructureDefinition/FrPatient", None, None,
                                              None)}  # fmt: skip
    assert entries(patient, "_tag") == {("vip", "http://example.org/tags", None, None)}
    assert entries(patient, "_tag:text") == {("v.i.p.", None, None, None)}
    assert entries(patient, "_security") == {
        ("R", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", None, None)
    }
    assert entries(patient, "_source") == {("urn:uuid:source-1", None, None, None)}
    assert entries(patient, "_id") == set()  # native to the stores


def test_entries_are_index_entries_without_duplicates(examples: dict[str, dict]) -> None:
    for resource in examples.values():
        found = index_entries(resource)
        assert all(isinstance(e, IndexEntry) for e in found)
        assert len(found) == len(set(found))


def test_deceased_and_unknown_types() -> None:
    assert entries({"resourceType": "Patient"}, "deceased") == {("false", None, None, None)}
    assert entries({"resourceType": "Patient", "deceasedDateTime": "2020"}, "deceased") == {("true", None, None, None)}
    assert index_entries({"resourceType": "NotAType", "meta": {"tag": [{"code": "t"}]}}) == [IndexEntry("_tag", "t")]


@pytest.mark.parametrize("junk", [None, 1, True, "x", [], {}, [1], ["a"], [None], {"coding": "x"}, [{"value": {}}]])
def test_malformed_values_never_fail_a_write(examples: dict[str, dict], junk: Any) -> None:
    """Indexing runs on every write: a wrong shape gives fewer entries, never an exception."""
    for name in ("Patient-example.json", "Observation-blood-pressure.json", "Questionnaire-3141.json"):
        resource = examples[name]
        for key in resource:
            if key != "resourceType":
                index_entries({**resource, key: junk})
                index_entries({**resource, key: [junk, resource[key]]})


def test_timing(examples: dict[str, dict]) -> None:
    """Not an assertion: CPU µs per index_entries on warm, compiled plans (best of 5 rounds)."""
    for name in ("Patient-example.json", "Observation-example.json", "Observation-blood-pressure.json"):
        resource = dict(examples[name], meta={"lastUpdated": LAST_UPDATED})
        index_entries(resource)
        rounds, best = 300, float("inf")
        for _ in range(5):
            start = time.process_time()  # CPU time: other processes on the machine do not count
            for _ in range(rounds):
                index_entries(resource)
            best = min(best, (time.process_time() - start) / rounds)
        print(f"\nindex_entries({name}): {best * 1e6:.0f} µs, {len(index_entries(resource))} entries")


# ---------------------------------------------------------------------------------------------------
# Implied code systems of bound ``code`` elements.
# ---------------------------------------------------------------------------------------------------

GENDER = "http://hl7.org/fhir/administrative-gender"


def test_branches_know_their_element_path() -> None:
    def paths(expression: str, type_: str) -> list[tuple[str, str | None]]:
        return [(b.type, b.path) for b in fc.compile_expression(expression, type_)]

    assert paths("Patient.gender", "Patient") == [("code", "Patient.gender")]
    assert paths("Patient.contact.gender", "Patient") == [("code", "Patient.contact.gender")]
    assert paths("Patient.address.use", "Patient") == [("code", "Address.use")]  # the defining type
    assert paths("Resource.language", "Patient") == [("code", "Resource.language")]  # not Patient.language
    assert paths("Patient.telecom.where(system='phone')", "Patient") == [("ContactPoint", "Patient.telecom")]
    assert paths("(Observation.value as Quantity).comparator", "Observation") == [("code", "Quantity.comparator")]
    assert paths("Observation.value as Quantity", "Observation") == [("Quantity", "Observation.value[x]")]
    assert paths("Bundle.entry[0].resource", "Bundle") == [("Resource", "Bundle.entry.resource")]


def test_bound_codes_carry_their_code_system() -> None:
    patient = {"resourceType": "Patient", "gender": "male", "address": [{"use": "home", "city": "X"}]}
    assert entries(patient, "gender") == {("male", GENDER, None, None)}
    assert entries(patient, "address-use") == {("home", "http://hl7.org/fhir/address-use", None, None)}
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert entries(obs, "status") == {("final", "http://hl7.org/fhir/observation-status", None, None)}
    document = {"resourceType": "DocumentReference", "content": [{"attachment": {"contentType": "application/pdf"}}]}
    assert entries(document, "contenttype") == {("application/pdf", "urn:ietf:bcp:13", None, None)}
    # Bound to a ValueSet of two code systems (task-intent, request-intent), or not bound: no system.
    assert entries({"resourceType": "Task", "intent": "order"}, "intent") == {("order", None, None, None)}
    assert entries({"resourceType": "SearchParameter", "code": "x"}, "code") == {("x", None, None, None)}
    # Other types used as tokens are untouched (an id, a uri).
    assert entries({"resourceType": "Patient", "id": "p", "meta": {"source": "urn:s"}}, "_source") == {
        ("urn:s", None, None, None)
    }


def test_committed_code_systems_match_the_generator() -> None:
    """capability/code-systems-r4.json is what tools/build_code_systems.py makes of the R4 package."""
    if not EXAMPLES.exists():
        pytest.skip(f"official package not found at {EXAMPLES}")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import build_code_systems
    finally:
        sys.path.pop(0)
    built = build_code_systems.build(EXAMPLES)
    assert built == ix.code_systems()
    assert built["Patient.gender"] == GENDER and built["Address.use"] == "http://hl7.org/fhir/address-use"
    assert "Task.intent" not in built  # two systems
    assert build_code_systems.single_system({"compose": {"include": [{"system": "a"}, {"system": "a"}]}}) == "a"
    assert build_code_systems.single_system({"compose": {"include": [{"system": "a", "valueSet": ["v"]}]}}) is None


# ---------------------------------------------------------------------------------------------------
# _text and _content: words.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hélène DUPONT", ["helene", "dupont"]),
        ("L\N{RIGHT SINGLE QUOTATION MARK}Hôpital Saint-Éloi", ["l", "hopital", "saint", "eloi"]),
        ("He\N{COMBINING ACUTE ACCENT}le\N{COMBINING GRAVE ACCENT}ne", ["helene"]),  # decomposed accents
        ("Œuvre Straße ﬁnal", ["oeuvre", "strasse", "final"]),
        ("MRN: 12345 (Acme_Healthcare), 3rd", ["mrn", "12345", "acme", "healthcare", "3rd"]),
        ("«\N{NO-BREAK SPACE}Bonjour\N{NO-BREAK SPACE}»", ["bonjour"]),
        ("x\ud800y", ["x", "y"]),  # a lone surrogate never fails a write
        ("-- ... --", []),
    ],
)
def test_words(text: str, words: list[str]) -> None:
    assert n.words(text) == words


def test_xhtml_text_strips_tags_and_decodes_entities() -> None:
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml"><p class="x">Caf&eacute;&nbsp;&amp;&#160;cr&#232;me'
        "<br/>br&#xFB;l&#xE9;e</p><!-- a comment --><b>Bold</b>text</div>"
    )
    assert n.xhtml_text(div).split() == ["Café", "&", "crème", "brûlée", "Bold", "text"]
    assert n.words(n.xhtml_text(div)) == ["cafe", "creme", "brulee", "bold", "text"]


def words_of(resource: dict, param: str) -> list[str]:
    """The word entries of ``param`` in order."""
    return [e.value for e in index_entries(resource) if e.param == param]


@pytest.fixture
def with_content(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ix, "WORD_PARAMETERS", frozenset({"_text", "_content"}))


def narrative(xhtml: str) -> dict:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{xhtml}</div>'}


def test_text_entries_are_distinct_narrative_words_in_order() -> None:
    patient = {
        "resourceType": "Patient",
        "text": narrative("<p>Hélène <b>DUPONT</b>, née Dupont &amp; Cie</p>"),
        "name": [{"family": "Martin"}],
    }
    assert words_of(patient, "_text") == ["helene", "dupont", "nee", "cie"]
    assert words_of(patient, "_content") == []  # off by default
    assert words_of({"resourceType": "Patient", "name": [{"family": "Martin"}]}, "_text") == []
    bundle = {"resourceType": "Bundle", "type": "collection", "text": narrative("Bundle has none")}
    assert words_of(bundle, "_text") == []  # _text is a DomainResource parameter


def test_word_cap_keeps_the_first_words_in_document_order(with_content: None) -> None:
    many = " ".join(f"w{i}" for i in range(400))
    patient = {"resourceType": "Patient", "text": narrative(f"<p>{many} w3 w5</p>")}
    found = words_of(patient, "_text")
    assert n.MAX_WORDS == 300 and found == [f"w{i}" for i in range(300)]
    strings = {"resourceType": "Patient", "name": [{"given": [f"g{i}" for i in range(500)]}]}
    assert words_of(strings, "_content") == [f"g{i}" for i in range(300)]


def test_content_entries_read_prose_only(with_content: None) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "idword",
        "meta": {"versionId": "7", "lastUpdated": LAST_UPDATED, "tag": [{"system": "http://sys", "code": "codeword",
                                                                         "display": "Tagged"}]},
        "text": narrative("<p>Narrative words</p>"),
        "extension": [{"url": "http://ext/urlword", "valueString": "Extended"}],
        "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN77"}],
        "active": True,
        "name": [{"use": "official", "family": "Lefèvre", "given": ["Zoé"], "_given": [{"extension": [
            {"url": "http://ext", "valueString": "Primitive-Extension"}]}]}],
        "gender": "female",
        "birthDate": "1980-03-15",
        "contained": [{"resourceType": "Organization", "id": "org", "name": "Contained Clinic"}],
        "managingOrganization": {"reference": "Organization/refword", "display": "Displayed"},
        "photo": [{"contentType": "image/png", "data": "YmFzZTY0d29yZA==", "title": "Portrait"}],
        "communication": [{"language": {"text": "Français"}}],
    }  # fmt: skip
    assert words_of(patient, "_content") == [
        "tagged", "narrative", "words", "extended", "mrn77", "lefevre", "zoe", "primitive", "extension",
        "contained", "clinic", "displayed", "portrait", "francais",
    ]  # fmt: skip
    assert words_of(patient, "_text") == ["narrative", "words"]
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "Glucose"},
                   "valueQuantity": {"value": Decimal("6.3"), "unit": "mmol/L"},
                   "note": [{"text": "**Fasting**"}]}  # fmt: skip
    assert words_of(observation, "_content") == ["glucose", "mmol", "l", "fasting"]


def test_deep_nesting_never_fails_a_write(with_content: None) -> None:
    extension: dict = {"url": "http://x", "valueString": "deepest"}
    for _ in range(5000):
        extension = {"url": "http://x", "extension": [extension]}
    found = words_of({"resourceType": "Patient", "extension": [extension], "name": [{"family": "Top"}]}, "_content")
    assert found == ["top"]

"""The patch interaction (http://hl7.org/fhir/R4/http.html#patch): JSON Patch and FHIRPath Patch.

The official cases run against the pure appliers: the JSON Patch test suite (``json-patch-tests.json``) and
the FHIRPath Patch cases of the FHIR test cases (``fhir-patch-tests.xml``, in FHIR XML: converted to FHIR
JSON here, for the subset of the XML format they use). Then the interaction over HTTP, on both stores.
"""

from __future__ import annotations

import asyncio
import copy
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import fhir_client
from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension

from fhir_server.errors import FhirError
from fhir_server.interactions.patch import apply_fhirpath_patch, apply_json_patch
from fhir_server.validation.r4b import BOOL, DEC, ELEM, INT, PEXT, RES, XHTML, model_class, raw_specs

CASES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fhir-test-cases"
JSON_PATCH_CASES = CASES / "json-patch-tests.json"
FHIR_PATCH_CASES = CASES / "fhir-patch-tests.xml"

FHIR = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"


# --- the JSON Patch test suite ------------------------------------------------------------------------


def _json_patch_cases() -> list:
    if not JSON_PATCH_CASES.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{JSON_PATCH_CASES} is absent"))]
    cases = json.loads(JSON_PATCH_CASES.read_text(), parse_float=Decimal)
    params = []
    for i, case in enumerate(cases):
        marks = [pytest.mark.skip(reason="disabled in the suite")] if case.get("disabled") else []
        params.append(pytest.param(case, id=case.get("comment", f"case {i}"), marks=marks))
    return params


@pytest.mark.parametrize("case", _json_patch_cases())
def test_json_patch_suite(case: dict) -> None:
    doc = copy.deepcopy(case["doc"])
    if "error" in case:
        with pytest.raises(FhirError) as caught:
            apply_json_patch(doc, case["patch"])
        assert caught.value.status in (400, 422)
        assert "JSON Patch operation" in caught.value.message
    else:
        assert apply_json_patch(doc, case["patch"]) == case["expected"]
    assert doc == case["doc"]  # the input is never modified


# --- FHIR XML → FHIR JSON (the subset the FHIRPath Patch cases use) -------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def xml_resource(elem: ET.Element) -> dict:
    """A FHIR XML resource element → FHIR JSON; which elements repeat and the JSON type of primitives
    come from the R4B models (Patient and Parameters are the same in R4)."""
    assert elem.tag.startswith("{" + FHIR_NS + "}"), elem.tag
    type_ = _local(elem.tag)
    return {"resourceType": type_, **_xml_element(elem, model_class(type_))}


def _xml_element(elem: ET.Element, model: Any) -> dict:
    specs = raw_specs(model)
    out: dict[str, Any] = {}
    for attribute in ("id", "url"):  # the XML attributes of Element.id and Extension.url
        if attribute in elem.attrib:
            out[attribute] = elem.attrib[attribute]
    for child in elem:
        name = _local(child.tag)
        field = specs[name]  # an unknown element fails the conversion, loudly
        ext = None
        if field.kind == XHTML:
            value = _xhtml(child)
        elif field.kind == RES:
            (inner,) = list(child)
            value = xml_resource(inner)
        elif field.kind in (ELEM, PEXT):
            value = _xml_element(child, field.model)
        else:
            value = _primitive(child.get("value"), field.kind)
            if "id" in child.attrib or len(child):
                ext = _xml_element(child, FHIRPrimitiveExtension)
        if field.is_list:
            out.setdefault(name, []).append(value)
            out.setdefault("_" + name, []).append(ext)
        else:
            if value is not None:
                out[name] = value
            if ext is not None:
                out["_" + name] = ext
    for key in [k for k in out if k.startswith("_") and isinstance(out[k], list)]:
        if all(e is None for e in out[key]):
            del out[key]
    return out


def _primitive(text: str | None, kind: int) -> Any:
    if text is None:
        return None
    if kind == BOOL:
        return {"true": True, "false": False}[text]
    if kind == INT:
        return int(text)
    if kind == DEC:
        return Decimal(text)
    return text


def _xhtml(elem: ET.Element) -> str:
    div = copy.deepcopy(elem)
    div.tail = None
    return ET.tostring(div, encoding="unicode", default_namespace=XHTML_NS)


def _normalized(value: Any) -> Any:
    """For comparing results: narrative as canonical XML (the XML source and a JSON string differ only in
    serialization)."""
    if isinstance(value, dict):
        return {k: _canonical_div(v) if k == "div" else _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _canonical_div(value: Any) -> Any:
    return ET.canonicalize(value) if isinstance(value, str) else value


def test_xml_converter() -> None:
    xml = f"""<Patient xmlns="{FHIR_NS}"><id value="x"/><active value="true"/>
      <name><family value="Chalmers"><extension url="http://e"><valueString value="VV"/></extension></family>
      <given value="Peter"/><given value="James"/></name>
      <multipleBirthInteger value="2"/><maritalStatus id="1"><text value="m"/></maritalStatus></Patient>"""
    assert xml_resource(ET.fromstring(xml)) == {
        "resourceType": "Patient",
        "id": "x",
        "active": True,
        "name": [
            {
                "family": "Chalmers",
                "_family": {"extension": [{"url": "http://e", "valueString": "VV"}]},
                "given": ["Peter", "James"],
            }
        ],
        "multipleBirthInteger": 2,
        "maritalStatus": {"id": "1", "text": "m"},
    }


# --- the FHIRPath Patch cases ---------------------------------------------------------------------------

# Cases this implementation cannot pass, with the reason (none at present).
FHIR_PATCH_XFAIL: dict[str, str] = {}


def _fhir_patch_cases() -> list:
    if not FHIR_PATCH_CASES.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{FHIR_PATCH_CASES} is absent"))]
    params = []
    for case in ET.parse(FHIR_PATCH_CASES).getroot().iter("case"):
        name = case.get("name")
        marks = [pytest.mark.xfail(reason=FHIR_PATCH_XFAIL[name], strict=True)] if name in FHIR_PATCH_XFAIL else []
        params.append(pytest.param(case, id=name, marks=marks))
    return params


def _only_child(case: ET.Element, name: str) -> ET.Element:
    (elem,) = [e for e in case.find(name) if isinstance(e.tag, str)]
    return elem


@pytest.mark.parametrize("case", _fhir_patch_cases())
def test_fhir_patch_suite(case: ET.Element) -> None:
    resource = xml_resource(_only_child(case, "input"))
    parameters = xml_resource(_only_child(case, "diff"))
    before = copy.deepcopy(resource)
    error = case.find("error")
    if error is not None:
        with pytest.raises(FhirError) as caught:
            apply_fhirpath_patch(resource, parameters)
        assert caught.value.status == 422
        assert error.get("msg").lower() in caught.value.message.lower()
    else:
        expected = xml_resource(_only_child(case, "output"))
        assert _normalized(apply_fhirpath_patch(resource, parameters)) == _normalized(expected)
    assert resource == before  # the input is never modified


# --- FHIRPath Patch: beyond the official cases ------------------------------------------------------------


def operation(type_: str, path: str, **parts: Any) -> dict:
    """A Parameters.parameter for one FHIRPath Patch operation; ``parts``: name → {value[x]: …} or parts
    (a string: a valueString, for ``name``)."""
    part = [{"name": "type", "valueCode": type_}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        part.append({"name": name, **({"valueString": value} if isinstance(value, str) else value)})
    return {"name": "operation", "part": part}


def fhirpath_patch(*operations: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def test_fhirpath_patch_choice_types_and_primitive_extensions() -> None:
    patient = {"resourceType": "Patient", "id": "p", "deceasedBoolean": False, "birthDate": "1970-01-01"}
    ext = {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-01-01T10:00Z"}
    result = apply_fhirpath_patch(
        patient,
        fhirpath_patch(
            operation("replace", "Patient.deceased", value={"valueDateTime": "2020-02-02"}),
            operation("add", "Patient.birthDate", name="extension", value={"valueExtension": ext}),
            operation("add", "Patient", name="multipleBirth[x]", value={"valueInteger": 2}),
        ),
    )
    assert result == {
        "resourceType": "Patient",
        "id": "p",
        "deceasedDateTime": "2020-02-02",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [ext]},
        "multipleBirthInteger": 2,
    }
    deleted = apply_fhirpath_patch(result, fhirpath_patch(operation("delete", "Patient.birthDate.extension")))
    assert deleted == {k: v for k, v in result.items() if k != "_birthDate"}


def test_fhirpath_patch_lists() -> None:
    patient = {"resourceType": "Patient", "name": [{"given": ["a", "c"], "_given": [None, {"id": "c"}]}]}
    result = apply_fhirpath_patch(
        patient,
        fhirpath_patch(
            operation("insert", "Patient.name[0].given", index={"valueInteger": 1}, value={"valueString": "b"}),
            operation("move", "Patient.name[0].given", source={"valueInteger": 2}, destination={"valueInteger": 0}),
            operation(
                "insert", "Patient.telecom", index={"valueInteger": 0}, value={"valueContactPoint": {"value": "1"}}
            ),
            operation(
                "add",
                "Patient",
                name="contact",
                value={
                    "part": [
                        {"name": "telecom", "valueContactPoint": {"value": "2"}},
                        {"name": "gender", "valueCode": "other"},
                    ]
                },
            ),
        ),
    )
    assert result == {
        "resourceType": "Patient",
        "name": [{"given": ["c", "a", "b"], "_given": [{"id": "c"}, None, None]}],
        "telecom": [{"value": "1"}],
        "contact": [{"telecom": [{"value": "2"}], "gender": "other"}],
    }
    emptied = apply_fhirpath_patch(result, fhirpath_patch(operation("delete", "Patient.telecom[0]")))
    assert "telecom" not in emptied  # FHIR JSON has no empty arrays


@pytest.mark.parametrize(
    ("patch", "status", "text"),
    [
        (fhirpath_patch(operation("delete", "Patient.name.")), 400, "not a valid FHIRPath"),
        (fhirpath_patch(operation("remove", "Patient.name")), 400, "type must be one of"),
        (fhirpath_patch(operation("add", "Patient", value={"valueCode": "x"})), 400, "'name' is missing"),
        (fhirpath_patch(operation("insert", "Patient.name", value={"valueString": "x"})), 400, "'index' is missing"),
        (fhirpath_patch({"name": "op"}), 400, "named 'operation'"),
        (fhirpath_patch(operation("delete", "Patient.name")), 422, "selects 2 elements"),
        (fhirpath_patch(operation("replace", "Patient.gender", value={"valueCode": "x"})), 422, "no content found"),
        (fhirpath_patch(operation("add", "Patient", name="active", value={"valueBoolean": False})), 422, "already"),
        (fhirpath_patch(operation("add", "Patient", name="nope", value={"valueBoolean": False})), 422, "no element"),
        (fhirpath_patch(operation("add", "Patient", name="deceased", value={"valueDateTime": "2020"})), 422, "already"),
        (fhirpath_patch(operation("add", "Patient", name="deceased", value={"valueString": "x"})), 422, "a choice"),
        (
            fhirpath_patch(operation("insert", "Patient.name", index={"valueInteger": 3}, value={"valueString": "x"})),
            422,
            "out of range",
        ),
        (
            fhirpath_patch(
                operation("move", "Patient.name", source={"valueInteger": 0}, destination={"valueInteger": 2})
            ),
            422,
            "out of range",
        ),
    ],
)
def test_fhirpath_patch_errors(patch: dict, status: int, text: str) -> None:
    patient = {
        "resourceType": "Patient",
        "active": True,
        "deceasedBoolean": False,
        "name": [{"family": "a"}, {"family": "b"}],
    }
    with pytest.raises(FhirError) as caught:
        apply_fhirpath_patch(patient, patch)
    assert caught.value.status == status
    assert text in caught.value.message
    assert "operation 0" in caught.value.message


# --- over HTTP, on both stores ------------------------------------------------------------------------


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with fhir_client(store_url) as c:
        yield c


def patient(**extra: Any) -> dict:
    return {"resourceType": "Patient", "name": [{"family": "Dupont", "given": ["Hélène"]}], **extra}


async def create(client: httpx.AsyncClient, body: dict) -> dict:
    r = await client.post(f"/{body['resourceType']}", json=body, headers={"Content-Type": FHIR})
    assert r.status_code == 201, r.text
    return r.json()


async def send_patch(
    client: httpx.AsyncClient, url: str, body: Any, content_type: str = JSON_PATCH, **headers: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.patch(url, content=content, headers={"Content-Type": content_type, **headers})


def assert_outcome(response: httpx.Response, status: int, text: str | None = None) -> dict:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    if text:
        assert text in json.dumps(outcome, ensure_ascii=False), outcome
    return outcome


async def assert_unchanged(client: httpx.AsyncClient, created: dict) -> None:
    r = await client.get(f"/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["etag"] == 'W/"1"'


async def test_json_patch_replace(client):
    created = await create(client, patient(gender="female"))
    url = f"/Patient/{created['id']}"
    r = await send_patch(client, url, [{"op": "replace", "path": "/name/0/family", "value": "Martin"}])
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    assert "GMT" in r.headers["last-modified"]
    body = r.json()
    assert body["meta"]["versionId"] == "2"
    assert body["meta"]["lastUpdated"] > created["meta"]["lastUpdated"]
    assert body["name"] == [{"family": "Martin", "given": ["Hélène"]}]
    assert body["gender"] == "female"
    assert (await client.get(url)).json() == body

    history = (await client.get(f"{url}/_history")).json()
    assert [e["request"]["method"] for e in history["entry"]] == ["PATCH", "POST"]
    assert history["entry"][0]["request"]["url"] == f"Patient/{created['id']}"
    assert history["entry"][0]["response"]["status"] == "200"

    minimal = await send_patch(client, url, [{"op": "add", "path": "/active", "value": True}], Prefer="return=minimal")
    assert minimal.status_code == 200 and minimal.content == b""
    assert minimal.headers["etag"] == 'W/"3"'


async def test_json_patch_of_a_whole_array_and_server_owned_meta(client):
    created = await create(client, patient(telecom=[{"system": "phone", "value": "1"}]))
    url = f"/Patient/{created['id']}"
    ops = [
        {"op": "test", "path": "/meta/versionId", "value": "1"},
        {"op": "remove", "path": "/telecom/0"},  # leaves [] behind: FHIR JSON has none, the array goes
        {"op": "replace", "path": "/meta/versionId", "value": "99"},
        {"op": "add", "path": "/name/0/given/-", "value": "Marie"},
    ]
    r = await send_patch(client, url, ops)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "telecom" not in body
    assert body["meta"]["versionId"] == "2"  # the server's, whatever the patch says
    assert body["name"][0]["given"] == ["Hélène", "Marie"]


async def test_concurrent_patches_all_land(client):
    """Read, apply and write are one unit of work: no patch is lost to a concurrent one."""
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    given = [f"G{i}" for i in range(8)]
    results = await asyncio.gather(
        *(send_patch(client, url, [{"op": "add", "path": "/name/0/given/-", "value": g}]) for g in given)
    )
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert sorted(int(r.json()["meta"]["versionId"]) for r in results) == list(range(2, 10))
    final = (await client.get(url)).json()
    assert sorted(final["name"][0]["given"]) == sorted(["Hélène", *given])


async def test_decimal_precision_survives_a_patch(client):
    raw = b'{"resourceType":"Observation","status":"preliminary","code":{"text":"x"},"valueQuantity":{"value":1.50}}'
    r = await client.post("/Observation", content=raw, headers={"Content-Type": FHIR})
    assert r.status_code == 201
    url = f"/Observation/{r.json()['id']}"
    r = await send_patch(client, url, [{"op": "replace", "path": "/status", "value": "final"}])
    assert r.status_code == 200, r.text
    assert b'"value":1.50' in r.content
    r = await send_patch(client, url, [{"op": "test", "path": "/valueQuantity/value", "value": 1.5}])
    assert r.status_code == 200  # JSON numbers compare by value


async def test_if_match(client):
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    ops = [{"op": "add", "path": "/active", "value": True}]
    assert_outcome(await send_patch(client, url, ops, **{"If-Match": 'W/"2"'}), 412, "version 1")
    await assert_unchanged(client, created)
    r = await send_patch(client, url, ops, **{"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"'
    assert_outcome(await send_patch(client, url, ops, **{"If-Match": "nonsense"}), 400, "ETag")


async def test_conditional_patch(client):
    a = await create(client, patient(identifier=[{"system": "http://example.org/mrn", "value": "a"}]))
    b = await create(client, patient(identifier=[{"system": "http://example.org/mrn", "value": "b"}]))
    ops = [{"op": "add", "path": "/active", "value": False}]
    r = await send_patch(client, "/Patient?identifier=http://example.org/mrn|b", ops)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == b["id"] and r.json()["active"] is False
    assert r.headers["etag"] == 'W/"2"'
    assert_outcome(await send_patch(client, "/Patient?identifier=http://example.org/mrn|zz", ops), 404)
    assert_outcome(await send_patch(client, "/Patient?family=Dupont", ops), 412, "more than one")
    assert_outcome(await send_patch(client, "/Patient", ops), 400, "criteria")
    await assert_unchanged(client, a)


async def test_invalid_result_is_refused_and_nothing_written(client):
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    assert_outcome(await send_patch(client, url, [{"op": "add", "path": "/active", "value": "yes"}]), 422, "active")
    assert_outcome(await send_patch(client, url, [{"op": "add", "path": "/colour", "value": "blue"}]), 422, "colour")
    replace = fhirpath_patch(operation("add", "Patient", name="birthDate", value={"valueDate": "not-a-date"}))
    assert_outcome(await send_patch(client, url, replace, FHIR), 422, "birthDate")
    await assert_unchanged(client, created)


async def test_patch_that_cannot_apply_is_422(client):
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    failed_test = [{"op": "test", "path": "/name/0/family", "value": "Martin"}, {"op": "remove", "path": "/name"}]
    assert_outcome(await send_patch(client, url, failed_test), 422, "operation 0 (test at '/name/0/family')")
    missing = [{"op": "remove", "path": "/birthDate"}]
    assert_outcome(await send_patch(client, url, missing), 422, "operation 0 (remove at '/birthDate')")
    await assert_unchanged(client, created)


@pytest.mark.parametrize(
    ("body", "content_type", "text"),
    [
        (b"{not json", JSON_PATCH, "Malformed JSON"),
        (b"", JSON_PATCH, "empty"),
        ({"op": "add", "path": "/active", "value": True}, JSON_PATCH, "JSON array"),
        ([{"op": "delete", "path": "/active"}], JSON_PATCH, "'op' must be one of"),
        ([{"op": "add", "value": True}], JSON_PATCH, "'path' is missing"),
        ([{"op": "add", "path": "/active"}], JSON_PATCH, "'value' is missing"),
        ([{"op": "add", "path": "active", "value": True}], JSON_PATCH, "must start with '/'"),
        ([{"op": "move", "path": "/a"}], JSON_PATCH, "'from' is missing"),
        ([{"op": "add", "path": "/active", "value": True}], FHIR, "Content-Type application/json-patch+json"),
        (patient(), FHIR, "Parameters"),
        (fhirpath_patch(operation("replace", "Patient.name[", value={"valueString": "x"})), FHIR, "FHIRPath"),
    ],
)
async def test_malformed_patch_is_400(client, body, content_type, text):
    created = await create(client, patient())
    assert_outcome(await send_patch(client, f"/Patient/{created['id']}", body, content_type), 400, text)
    await assert_unchanged(client, created)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/fhir+xml", "application/json-patch+json; charset=latin-1"],
)
async def test_unsupported_content_type_is_415(client, content_type):
    created = await create(client, patient())
    r = await send_patch(client, f"/Patient/{created['id']}", [], content_type)
    assert_outcome(r, 415)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ([{"op": "replace", "path": "/id", "value": "other"}], JSON_PATCH),
        ([{"op": "remove", "path": "/id"}], JSON_PATCH),
        ([{"op": "replace", "path": "/resourceType", "value": "Person"}], JSON_PATCH),
        ([{"op": "replace", "path": "", "value": {"resourceType": "Patient", "id": "x"}}], JSON_PATCH),
        (fhirpath_patch(operation("replace", "Patient.id", value={"valueId": "other"})), FHIR),
        (fhirpath_patch(operation("delete", "Patient.id")), FHIR),
    ],
)
async def test_id_and_resource_type_cannot_be_patched(client, body, content_type):
    created = await create(client, patient())
    r = await send_patch(client, f"/Patient/{created['id']}", body, content_type)
    assert_outcome(r, 400)
    await assert_unchanged(client, created)


async def test_deleted_unknown_and_bad_urls(client):
    created = await create(client, patient())
    url = f"/Patient/{created['id']}"
    assert (await client.delete(url)).status_code == 204
    ops = [{"op": "add", "path": "/active", "value": True}]
    r = await send_patch(client, url, ops)
    assert_outcome(r, 410)
    assert r.headers["etag"] == 'W/"2"'
    assert_outcome(await send_patch(client, "/Patient/unknown", ops), 404, "Patient/unknown")
    assert_outcome(await send_patch(client, "/NotAType/1", ops), 404)


async def test_fhirpath_patch_over_http(client):
    created = await create(client, patient(gender="male", telecom=[{"system": "phone", "value": "1"}]))
    url = f"/Patient/{created['id']}"
    body = fhirpath_patch(
        operation("add", "Patient", name="birthDate", value={"valueDate": "1970-01-01"}),
        operation("replace", "Patient.gender", value={"valueCode": "female"}),
        operation("replace", "Patient.name.where(family = 'Dupont').family", value={"valueString": "Durand"}),
        operation("delete", "Patient.telecom.where(system = 'phone')"),
        operation("add", "Patient", name="maritalStatus", value={"valueCodeableConcept": {"text": "married"}}),
        operation(
            "insert",
            "Patient.identifier",
            index={"valueInteger": 0},
            value={"valueIdentifier": {"system": "http://example.org/mrn", "value": "42"}},
        ),
    )
    r = await send_patch(client, url, body, FHIR)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    patched = r.json()
    assert {k: v for k, v in patched.items() if k != "meta"} == {
        "resourceType": "Patient",
        "id": created["id"],
        "name": [{"family": "Durand", "given": ["Hélène"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "maritalStatus": {"text": "married"},
        "identifier": [{"system": "http://example.org/mrn", "value": "42"}],
    }
    found = (await client.get("/Patient?identifier=http://example.org/mrn|42")).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [created["id"]]  # reindexed

    # application/json works too; a failing operation reports its index and path
    bad = fhirpath_patch(
        operation("delete", "Patient.gender"), operation("replace", "Patient.deceased", value={"valueBoolean": True})
    )
    r = await send_patch(client, url, bad, "application/json")
    assert_outcome(r, 422, "operation 1 (replace at 'Patient.deceased')")
    r = await send_patch(client, url, fhirpath_patch(operation("delete", "Patient.gender")), "application/json")
    assert r.status_code == 200 and "gender" not in r.json()
    history = (await client.get(f"{url}/_history")).json()
    assert [e["request"]["method"] for e in history["entry"]] == ["PATCH", "PATCH", "POST"]

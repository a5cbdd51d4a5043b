"""The search-parameter registry is the R4 specification's ``search-parameters.json`` and nothing else.

The R4 package (``hl7.fhir.r4.examples-4.0.1.tgz``) also holds example SearchParameters
(``SearchParameter/example-reference`` redefines ``Condition?subject`` with target Organization,
``SearchParameter/example`` redefines ``_id``, ``example-extension`` adds ``Patient?part-agree``): none may
reach the registry, the CapabilityStatement or the stored definitions. The other files generated from the
package (compartments, code systems, resource elements, R4 structures) come from its definition Bundles.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FHIR_BASE, fhir_client

from fhir_server.interactions import definitions as stored_definitions
from fhir_server.interactions.definitions import load_search_parameters
from fhir_server.search import registry
from fhir_server.store import open_store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT.parent / "shared" / "data" / "hl7.fhir.r4.examples-4.0.1.tgz"
SP = "http://hl7.org/fhir/SearchParameter"
# The project's own parameters (capability/search-parameters-custom.json): (base, code) → url.
PROJECT = "https://github.com/fhir-server/fhir-server/SearchParameter/"
CUSTOM = {
    ("Binary", "securitycontext"): f"{PROJECT}Binary-securitycontext",
    # the access policy reads authorisations, blocks and administrateurs through them (docs/policy.md)
    ("Consent", "provision-type"): f"{PROJECT}Consent-provision-type",
    ("Consent", "actor-role"): f"{PROJECT}Consent-actor-role",
    ("AuditEvent", "purpose"): f"{PROJECT}AuditEvent-purpose",  # R5's; the access mode of an event (docs/audit.md)
    ("Patient", "mes-space-status"): f"{PROJECT}Patient-mes-space-status",  # the space's state (docs/lifecycle.md)
    # the ANS NdE guide's, for its Subscriptions' criteria (CommunicationRequest?event-type=SOR)
    (
        "CommunicationRequest",
        "event-type",
    ): "https://interop.esante.gouv.fr/ig/fhir/nde/SearchParameter/NdE-CommunicationRequest-EventType",
}
# What the package holds besides its definitions, read by the tests below.
BUNDLES = (
    "package/Bundle-searchParams.json",  # the specification's search-parameters.json
    "package/Bundle-resources.json",  # resource StructureDefinitions, CompartmentDefinitions…
    "package/Bundle-types.json",  # data types
    "package/Bundle-valuesets.json",
    "package/Bundle-v2-valuesets.json",
    "package/Bundle-v3-valuesets.json",
)
EXAMPLE_PARAMETERS = ("example", "example-reference", "example-extension")


@pytest.fixture(scope="module")
def package() -> dict[str, list[dict]]:
    """Bundle file name → its resources; plus ``SearchParameter-<id>.json`` files of the examples."""
    if not EXAMPLES.exists():
        pytest.skip(f"official package not found at {EXAMPLES}")
    wanted = {*BUNDLES, *(f"package/SearchParameter-{i}.json" for i in EXAMPLE_PARAMETERS)}
    found: dict[str, list[dict]] = {}
    with tarfile.open(EXAMPLES) as archive:
        for member in archive:
            if member.name in wanted:
                doc = json.load(archive.extractfile(member))  # type: ignore[arg-type]
                found[member.name] = [e["resource"] for e in doc["entry"]] if doc["resourceType"] == "Bundle" else [doc]
    assert set(found) == wanted
    return found


def _signature(definition: dict) -> tuple:
    return definition["url"], definition["type"], definition.get("expression"), sorted(definition.get("target", ()))


def _table(definitions: list[dict] | tuple[dict, ...]) -> dict[tuple[str, str], tuple]:
    """(base, code) → (url, type, expression, targets); a second definition of a (base, code) fails."""
    table: dict[tuple[str, str], tuple] = {}
    for d in definitions:
        for base in d.get("base", ()):
            assert (base, d["code"]) not in table, f"{base}?{d['code']} defined twice"
            table[base, d["code"]] = _signature(d)
    return table


# --- the registry -------------------------------------------------------------------------------


def test_registry_is_the_r4_search_parameters_bundle(package):
    source = package["package/Bundle-searchParams.json"]
    assert len(source) == 1375
    official = _table(source)
    loaded = {(base, code): _signature(d) for base, table in registry.by_type().items() for code, d in table.items()}
    # Nothing missing, nothing changed: every official (base, code) is loaded with its own definition.
    assert {k: loaded.get(k) for k in official} == official
    # Nothing extra but ours, listed explicitly, none shadowing an official (base, code).
    assert {k: v[0] for k, v in loaded.items() if k not in official} == CUSTOM
    assert not set(CUSTOM) & set(official)
    with open(ROOT / "capability" / "search-parameters-custom.json", "rb") as f:
        custom = json.load(f)["parameters"]
    assert {(base, d["code"]): d["url"] for d in custom for base in d["base"]} == CUSTOM
    # Every loaded definition (those without a base too) is an official or a custom one, each once.
    urls = [d["url"] for d in registry.definitions()]
    assert sorted(urls) == sorted([d["url"] for d in source] + list(CUSTOM.values()))
    assert not any(url.startswith(f"{SP}/example") for url in urls)
    assert registry.parameter("Condition", "subject")["url"] == f"{SP}/Condition-subject"
    assert registry.parameter("Patient", "_id")["url"] == f"{SP}/Resource-id"
    assert registry.parameter("Patient", "part-agree") is None


def test_committed_registry_is_what_the_generator_builds(package):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_search_parameters
    finally:
        sys.path.pop(0)
    with open(ROOT / "capability" / "search-parameters-r4.json", "rb") as f:
        committed = json.load(f)
    assert committed["resourceType"] == "Bundle" and committed["type"] == "collection"
    assert committed["parameters"] == build_search_parameters.build(EXAMPLES)
    # the examples of the package are not definitions
    for id_ in EXAMPLE_PARAMETERS:
        example = package[f"package/SearchParameter-{id_}.json"][0]
        assert example["url"] not in {d["url"] for d in committed["parameters"]}


# --- the engine, over HTTP, on both stores -------------------------------------------------------


@pytest.fixture
async def client(store_url: str):
    async with fhir_client(store_url) as c:
        patient = {"resourceType": "Patient", "id": "pat", "name": [{"family": "Martin", "given": ["Anne"]}]}
        org = {"resourceType": "Organization", "id": "org", "name": "Martin SA"}
        condition = {
            "resourceType": "Condition",
            "id": "cond",
            "code": {"text": "asthma"},
            "subject": {"reference": "Patient/pat"},
        }
        for resource in (patient, org, condition):
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        yield c


async def _search(client, query: str) -> list[tuple[str, str]]:
    r = await client.get(query)
    assert r.status_code == 200, r.text
    return sorted((e["search"]["mode"], e["fullUrl"].removeprefix(f"{FHIR_BASE}/")) for e in r.json().get("entry", []))


async def test_condition_subject_is_the_r4_parameter(client):
    assert await _search(client, "/Condition?subject=Patient/pat") == [("match", "Condition/cond")]
    assert await _search(client, "/Condition?subject=pat") == [("match", "Condition/cond")]
    assert await _search(client, "/Condition?subject:Patient=pat") == [("match", "Condition/cond")]
    assert await _search(client, "/Condition?subject.family=martin") == [("match", "Condition/cond")]
    assert await _search(client, "/Condition?subject:Patient.name=anne") == [("match", "Condition/cond")]
    assert await _search(client, "/Condition?_include=Condition:subject") == [
        ("include", "Patient/pat"),
        ("match", "Condition/cond"),
    ]
    assert await _search(client, "/Patient?_revinclude=Condition:subject") == [
        ("include", "Condition/cond"),
        ("match", "Patient/pat"),
    ]


async def test_example_parameters_are_unknown(client):
    r = await client.get("/Patient?part-agree=DocumentReference/x")
    assert r.status_code == 400 and "part-agree" in r.text, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert await _search(client, "/Condition?_id=cond") == [("match", "Condition/cond")]


async def test_metadata_lists_the_r4_definitions(client, package):
    official = {d["url"] for d in package["package/Bundle-searchParams.json"]} | set(CUSTOM.values())
    statement = (await client.get("/metadata")).json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for resource in resources.values():
        params = {p["name"]: p["definition"] for p in resource.get("searchParam", ())}
        assert params["_id"] == f"{SP}/Resource-id", resource["type"]
        assert set(params.values()) <= official, resource["type"]
    condition = {p["name"]: p["definition"] for p in resources["Condition"]["searchParam"]}
    assert condition["subject"] == f"{SP}/Condition-subject"
    assert "part-agree" not in {p["name"] for p in resources["Patient"]["searchParam"]}
    assert "Condition:subject" in resources["Condition"]["searchInclude"]
    assert "Condition:subject" in resources["Patient"]["searchRevInclude"]
    assert "Condition:subject" not in resources["Organization"].get("searchRevInclude", ())


# --- the stored SearchParameters (load_definitions) ---------------------------------------------


def _trimmed(resource: dict) -> dict:
    """A package SearchParameter as the registry (and so the former loader) kept it."""
    keep = {key for d in registry.definitions() for key in d}
    return {k: v for k, v in resource.items() if k in keep}


async def test_stored_definitions_follow_the_registry(store_url, monkeypatch, package):
    """A database loaded from the former registry (examples included, a stale definition) is brought in
    line at start-up: examples deleted, the stale one updated, the rest untouched, and nothing else."""
    new = [d for d in registry.definitions() if {"Condition", "Resource"} & set(d.get("base", ()))]
    stale = {**registry.by_url()[f"{SP}/Condition-subject"], "target": ["Organization"]}
    examples = [_trimmed(package[f"package/SearchParameter-{i}.json"][0]) for i in EXAMPLE_PARAMETERS]
    old = [stale if d["id"] == "Condition-subject" else d for d in new] + examples
    user = {  # not one of ours: more elements than the registry keeps
        "resourceType": "SearchParameter", "url": f"{SP}/mine", "name": "mine", "status": "draft",
        "publisher": "me", "description": "d", "code": "mine", "base": ["Patient"], "type": "token",
        "expression": "Patient.gender",
    }  # fmt: skip

    monkeypatch.setattr(stored_definitions, "definitions", lambda: old)
    async with fhir_client(store_url, load_definitions=True) as client:
        assert (await client.put("/SearchParameter/mine", json={**user, "id": "mine"})).status_code == 201
        found = (await client.get("/SearchParameter?base=Condition&code=subject")).json()
        assert sorted(e["resource"]["id"] for e in found["entry"]) == ["Condition-subject", "example-reference"]

    monkeypatch.setattr(stored_definitions, "definitions", lambda: new)
    async with fhir_client(store_url, load_definitions=True) as client:
        for id_ in EXAMPLE_PARAMETERS:
            assert (await client.get(f"/SearchParameter/{id_}")).status_code == 410, id_
        found = (await client.get("/SearchParameter?base=Condition&code=subject")).json()
        assert [e["resource"]["id"] for e in found["entry"]] == ["Condition-subject"]
        subject = (await client.get("/SearchParameter/Condition-subject")).json()
        assert subject["meta"]["versionId"] == "2" and sorted(subject["target"]) == ["Group", "Patient"]
        assert (await client.get("/SearchParameter/Resource-id/_history")).json()["total"] == 1  # untouched
        assert (await client.get("/SearchParameter/mine")).status_code == 200
        total = (await client.get("/SearchParameter?_summary=count")).json()["total"]
        assert total == len(new) + 1

    store = open_store(store_url)
    async with store:
        assert await load_search_parameters(store) == 0  # in line: nothing written


# --- the other files generated from the package -----------------------------------------------------


def _bundle_resources(package: dict[str, list[dict]], *names: str) -> Iterator[dict]:
    for name in names:
        yield from package[f"package/{name}"]


def _tools():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_code_systems
        import build_r4_structures
        import build_resource_facts
    finally:
        sys.path.pop(0)
    return build_code_systems, build_r4_structures, build_resource_facts


def _capability(name: str):
    with open(ROOT / "capability" / name, "rb") as f:
        return json.load(f)


def test_compartments_are_the_five_r4_compartment_definitions(package):
    definitions = [r for r in package["package/Bundle-resources.json"] if r["resourceType"] == "CompartmentDefinition"]
    assert sorted(d["code"] for d in definitions) == ["Device", "Encounter", "Patient", "Practitioner", "RelatedPerson"]
    expected = {d["code"]: {r["code"]: r["param"] for r in d["resource"] if r.get("param")} for d in definitions}
    assert _capability("compartments-r4.json") == expected  # not CompartmentDefinition/example (also Device)


def test_resource_elements_are_those_of_the_base_resources(package):
    _, _, facts = _tools()
    sds = [
        r
        for r in package["package/Bundle-resources.json"]
        if r["resourceType"] == "StructureDefinition" and r["kind"] == "resource"
        and r.get("derivation") == "specialization"
    ]  # fmt: skip
    assert len(sds) == 147
    assert _capability("resource-elements-r4.json") == {sd["type"]: facts._elements(sd) for sd in sds}


def test_code_systems_come_from_the_definition_bundles(package):
    """Bindings of base resources and types, to ValueSets of valuesets / v2 / v3 bundles (no example)."""
    code_systems, _, _ = _tools()
    bindings: dict[str, str] = {}
    for sd in _bundle_resources(package, "Bundle-resources.json", "Bundle-types.json"):
        base = sd["resourceType"] == "StructureDefinition" and sd.get("derivation") == "specialization"
        if base and sd["kind"] in ("resource", "complex-type"):
            bindings.update(code_systems.required_code_bindings(sd))
    valuesets = _bundle_resources(package, *(f"Bundle-{n}valuesets.json" for n in ("", "v2-", "v3-")))
    systems = {vs["url"]: code_systems.single_system(vs) for vs in valuesets if vs["resourceType"] == "ValueSet"}
    expected = {path: system for path, vs in sorted(bindings.items()) if (system := systems.get(vs))}
    assert _capability("code-systems-r4.json") == expected
    assert len(expected) == 341


def test_r4_structures_come_from_the_base_definitions(package, monkeypatch):
    """fhir_server/validation/r4_structures.json: base resources and types only (no profile, extension or
    example StructureDefinition)."""
    _, structures, _ = _tools()
    sds = {
        sd["type"]: sd
        for sd in _bundle_resources(package, "Bundle-resources.json", "Bundle-types.json")
        if sd["resourceType"] == "StructureDefinition"
        and sd["kind"] in ("resource", "complex-type", "primitive-type")
        and sd.get("derivation") != "constraint"
    }
    monkeypatch.setattr(structures, "load_definitions", lambda tgz: sds)
    with open(ROOT / "fhir_server" / "validation" / "r4_structures.json", "rb") as f:
        assert json.load(f) == structures.build(EXAMPLES)

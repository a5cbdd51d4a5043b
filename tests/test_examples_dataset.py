"""The French example dataset (examples/*.json, built by tools/build_examples.py): its facts hold, it is what the
generator writes, it validates (R4 and this server's profiles), and ``fhir-server load examples/`` loads it on
both stores, twice without duplicates, so that searches find what the README shows."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import subprocess
from collections import Counter

import pytest
from conftest import REPO_ROOT, fhir_client, fhir_server_command

from fhir_server.config import Settings
from fhir_server.loader import load_paths
from fhir_server.store import open_store
from fhir_server.validation import issues_of, profiles

EXAMPLES = REPO_ROOT / "examples"
DATASET = sorted(EXAMPLES.glob("*.json"))  # the dataset; examples/walkthrough/ belongs to the README
INS = "urn:oid:1.2.250.1.213.1.4.8"
IDNPS = "urn:oid:1.2.250.1.71.4.2.1"
RPPS = "https://rpps.esante.gouv.fr"
FINESS = "https://finess.esante.gouv.fr"
A03 = "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument"
G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
PROJECT = "https://github.com/fhir-server/fhir-server/StructureDefinition/"
LEA_INS, LEBRETON_IDNPS = "287064410905745", "810099901018"

COUNTS = {
    "Organization": 3, "Practitioner": 9, "PractitionerRole": 9, "Patient": 5, "RelatedPerson": 1,
    "DocumentReference": 8, "Binary": 8, "AllergyIntolerance": 1, "Condition": 1, "Immunization": 5,
    "Observation": 5,
}  # fmt: skip
TOTAL = sum(COUNTS.values())


def resources() -> list[dict]:
    return [e["resource"] for path in DATASET for e in json.loads(path.read_text("utf-8"))["entry"]]


def of_type(type_: str) -> list[dict]:
    return [r for r in resources() if r["resourceType"] == type_]


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def identifier(resource: dict, system: str) -> str:
    [value] = [i["value"] for i in resource.get("identifier", []) if i.get("system") == system]
    return value


# --- the files ---------------------------------------------------------------------------------------------


def test_the_files_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("build_examples", REPO_ROOT / "tools" / "build_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert sorted(built) == [p.name for p in DATASET]
    for path in DATASET:
        assert path.read_bytes() == built[path.name], f"{path.name}: run python tools/build_examples.py"


def test_every_entry_is_a_put_with_a_stable_id():
    for path in DATASET:
        bundle = json.loads(path.read_text("utf-8"))
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction", path
        for entry in bundle["entry"]:
            r = entry["resource"]
            assert entry["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
    assert Counter(r["resourceType"] for r in resources()) == COUNTS
    assert len({(r["resourceType"], r["id"]) for r in resources()}) == TOTAL


def test_identifiers_carry_valid_keys():
    for p in of_type("Patient"):
        nir = identifier(p, INS)
        assert len(nir) == 15 and nir.isdigit() and int(nir[13:]) == 97 - int(nir[:13]) % 97, nir
        born = p["birthDate"]
        assert nir[0] == {"male": "1", "female": "2"}[p["gender"]] and nir[1:5] == born[2:4] + born[5:7]
    for practitioner in of_type("Practitioner"):
        rpps = identifier(practitioner, RPPS)
        assert len(rpps) == 11 and luhn_ok(rpps) and identifier(practitioner, IDNPS) == "8" + rpps
    for organization in of_type("Organization"):
        finess = identifier(organization, FINESS)
        assert len(finess) == 9 and luhn_ok(finess)
        assert identifier(organization, "urn:oid:1.2.250.1.71.4.2.2") == "1" + finess
    professions = {c["coding"][0]["code"] for r in of_type("PractitionerRole") for c in r["code"]
                   if c["coding"][0]["system"] == G15}  # fmt: skip
    assert professions == {"10", "21", "40", "50", "60", "70"}


def test_references_resolve_and_documents_point_at_their_binaries():
    known = {f"{r['resourceType']}/{r['id']}" for r in resources()}

    def references(node):
        if isinstance(node, dict):
            if isinstance(node.get("reference"), str):
                yield node["reference"]
            for value in node.values():
                yield from references(value)
        elif isinstance(node, list):
            for value in node:
                yield from references(value)

    for r in resources():
        for target in references(r):
            assert target in known, f"{r['resourceType']}/{r['id']} → {target}"
    binaries = {b["id"]: b for b in of_type("Binary")}
    for doc in of_type("DocumentReference"):
        [content] = doc["content"]
        attachment = content["attachment"]
        binary = binaries[attachment["url"].removeprefix("Binary/")]
        assert binary["securityContext"] == {"reference": f"DocumentReference/{doc['id']}"}
        pdf = base64.b64decode(binary["data"])
        assert pdf.startswith(b"%PDF-1.4\n") and pdf.endswith(b"%%EOF\n") and 300 < len(pdf) < 2000
        assert attachment["size"] == len(pdf)
        assert attachment["hash"] == base64.b64encode(hashlib.sha1(pdf).digest()).decode()
        assert binary["contentType"] == attachment["contentType"] == "application/pdf"
    classes = {doc["category"][0]["coding"][0]["code"] for doc in of_type("DocumentReference")}
    assert classes == {"10", "11", "31", "42", "43", "52", "90"}


def test_every_resource_is_valid_r4_and_conforms_to_the_profiles():
    registry = profiles.registry()
    for r in resources():
        assert issues_of(r) == [], f"{r['resourceType']}/{r['id']}"
        applicable = registry.for_type(r["resourceType"])
        declared = r.get("meta", {}).get("profile", [])
        assert sorted(declared) == sorted(p.url for p in applicable), f"{r['resourceType']}/{r['id']}"
        for profile in applicable:
            assert registry.check(r, profile) == [], f"{r['resourceType']}/{r['id']} against {profile.url}"
    assert {p.type for p in registry.profiles.values()} == {"Patient", "DocumentReference", "Communication"}


# --- loading -----------------------------------------------------------------------------------------------


async def load(store_url: str, paths) -> tuple[int, int, str]:
    store = open_store(store_url)
    stream = io.StringIO()
    async with store:
        report = await load_paths(store, paths, Settings(store=store_url), stream=stream)
    return report.resources, report.errors, stream.getvalue()


async def counts(client) -> dict[str, int]:
    found = {}
    for type_ in COUNTS:
        r = await client.get(f"/{type_}?_summary=count")
        assert r.status_code == 200, r.text
        found[type_] = r.json()["total"]
    return found


async def matches(client, path: str) -> list[dict]:
    r = await client.get(path)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


async def test_load_twice_without_duplicates_and_search(store_url):
    for round_ in (1, 2):
        loaded, errors, output = await load(store_url, DATASET)
        assert (loaded, errors) == (TOTAL, 0), output
        async with fhir_client(store_url) as client:
            assert await counts(client) == COUNTS, f"after load {round_}"
            lea = (await client.get("/Patient/lea-marchand")).json()
            assert lea["meta"]["versionId"] == str(round_)
    async with fhir_client(store_url) as client:
        [patient] = await matches(client, f"/Patient?identifier={INS}|{LEA_INS}")
        assert patient["id"] == "lea-marchand" and patient["generalPractitioner"][0]["reference"].endswith("lebreton")
        docs = await matches(client, f"/DocumentReference?patient=lea-marchand&category={A03}|10")
        assert [d["id"] for d in docs] == ["lea-marchand-cr-biologie-2026-01"]
        assert len(await matches(client, "/DocumentReference?patient=lea-marchand")) == 2
        [role] = await matches(client, f"/PractitionerRole?practitioner.identifier={IDNPS}|{LEBRETON_IDNPS}")
        assert role["id"] == "anne-lebreton-centre-sante-erdre"
        assert role["specialty"][0]["coding"][0]["code"] == "SM54"
        pharmacists = await matches(client, f"/PractitionerRole?role={G15}|21&_include=PractitionerRole:practitioner")
        assert [r["id"] for r in pharmacists] == ["julien-marechal-pharmacie-du-sillon"]
        [binary] = await matches(client, "/Binary?securitycontext=DocumentReference/lea-marchand-synthese-2026")
        assert binary["id"] == "lea-marchand-synthese-2026-pdf"
        weights = await matches(client, "/Observation?subject=Patient/lea-marchand&code=http://loinc.org|29463-7")
        assert [str(o["valueQuantity"]["value"]) for o in weights] == ["64.5"]
        assert len(await matches(client, "/Immunization?patient=hugo-marchand")) == 3
        [mother] = await matches(client, "/RelatedPerson?patient=hugo-marchand")
        assert identifier(mother, INS) == LEA_INS
        profiled = await matches(client, f"/DocumentReference?_profile={PROJECT}mes-dmp-documentreference&_count=50")
        assert len(profiled) == COUNTS["DocumentReference"]


def test_load_command_on_the_examples_directory(tmp_path):
    """What the README runs: ``fhir-server load examples/`` (the walk-through files included), twice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    store = f"sqlite:///{tmp_path / 'examples.db'}"
    for _ in range(2):
        done = subprocess.run([*fhir_server_command(), "load", "--store", store, str(EXAMPLES)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert " 0 errors" in done.stdout, done.stdout


@pytest.mark.parametrize("name", [p.name for p in DATASET])
async def test_each_file_loads_alone(name, tmp_path):
    """Literal references by id: no file depends on another being loaded first."""
    loaded, errors, output = await load(f"sqlite:///{tmp_path / 'one.db'}", [EXAMPLES / name])
    assert errors == 0 and loaded > 0, output

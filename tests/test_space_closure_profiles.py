"""The lifecycle's definitions in profiles/: the ``mes-space`` extension matches what ``space.status`` writes
(every sub-extension, its type and binding), its code systems hold exactly the states and closure reasons of the
code, and ``mes-ouvrant-droit`` takes an INS. Instances are checked by the profile engine itself."""

from __future__ import annotations

import json

from conftest import REPO_ROOT

from fhir_server.policy.codes import INS_NIR
from fhir_server.space import status
from fhir_server.validation import profiles

BASE = "https://github.com/fhir-server/fhir-server"


def check(extension: dict, url: str) -> list:
    registry = profiles.registry()
    definition = registry.extensions[url]
    return registry.check({"resourceType": "Extension", **extension}, definition)


def space_extension(space: status.Space) -> dict:
    patient = status.write({"resourceType": "Patient", "id": "p"}, space)
    [found] = [e for e in patient["extension"] if e["url"] == status.SPACE]
    return found


FULL = status.Space(
    status=status.CLOSED, notified="2025-01-01T08:00:00+01:00", deadline="2025-02-12T08:00:00+01:00",
    created="2025-02-12T08:00:00+01:00", activated="2025-03-01T10:00:00+01:00", closed="2026-01-05T11:00:00+01:00",
    closure_reason="patient-request", retain_until="2036-01-05",
)  # fmt: skip


def test_what_the_code_writes_conforms_to_the_extension():
    assert check(space_extension(FULL), status.SPACE) == []
    assert check(space_extension(status.Space(status=status.PENDING)), status.SPACE) == []
    opposed = status.Space(status=status.OPPOSED, opposed="2025-01-20T09:00:00+01:00", closure_reason="opposition")
    assert check(space_extension(opposed), status.SPACE) == []


def test_every_sub_extension_is_defined_and_nothing_else():
    written = {sub["url"] for sub in space_extension(FULL)["extension"]}
    definition = json.loads((REPO_ROOT / "profiles" / "StructureDefinition-mes-space.json").read_text("utf-8"))
    slices = {e["sliceName"] for e in definition["differential"]["element"] if "sliceName" in e}
    assert "opposed" not in written and written | {"opposed"} == slices  # FULL sets every field but ``opposed``


def test_the_extension_refuses_what_the_code_never_writes():
    wrong = space_extension(FULL)
    wrong["extension"][0]["valueCode"] = "archived"
    [issue] = check(wrong, status.SPACE)
    assert issue.code == "code-invalid" and "archived" in issue.diagnostics
    reason = space_extension(FULL)
    for sub in reason["extension"]:
        if sub["url"] == "closureReason":
            sub["valueCoding"]["code"] = "bored"
    [issue] = check(reason, status.SPACE)
    assert issue.code == "code-invalid" and "bored" in issue.diagnostics
    unknown = space_extension(FULL)
    unknown["extension"].append({"url": "colour", "valueString": "blue"})
    [issue] = check(unknown, status.SPACE)
    assert "slicing is closed" in issue.diagnostics
    no_status = space_extension(FULL)
    no_status["extension"] = no_status["extension"][1:]
    [issue] = check(no_status, status.SPACE)
    assert issue.code == "required" and "status" in issue.diagnostics


def test_the_code_systems_hold_the_states_and_reasons_of_the_code():
    registry = profiles.registry()
    states = registry.code_systems[f"{BASE}/CodeSystem/mes-space-status"]
    assert [c["code"] for c in states["concept"]] == list(status.STATES)
    reasons = registry.code_systems[status.CLOSURE_REASON]
    assert {c["code"]: c["display"] for c in reasons["concept"]} == status.CLOSURE_REASONS
    pairs, _ = registry.expansion(f"{BASE}/ValueSet/mes-space-closure-reason")
    assert pairs == {(status.CLOSURE_REASON, code) for code in status.CLOSURE_REASONS}


def test_ouvrant_droit_is_an_ins():
    ouvrant = {"url": status.OUVRANT_DROIT, "valueIdentifier": {"system": INS_NIR, "value": "183057512345643"}}
    assert check(ouvrant, status.OUVRANT_DROIT) == []
    other = {"url": status.OUVRANT_DROIT, "valueIdentifier": {"system": "urn:oid:1.2.250.1.213.1.4.9", "value": "x"}}
    [issue] = check(other, status.OUVRANT_DROIT)
    assert issue.code == "value" and "pattern" in issue.diagnostics
    assert check({"url": status.OUVRANT_DROIT}, status.OUVRANT_DROIT)[0].code == "required"


def test_extension_definitions_are_not_resource_profiles():
    registry = profiles.registry()
    assert {status.SPACE, status.OUVRANT_DROIT} <= set(registry.extensions)
    assert profiles.supported_profiles("Extension") == [] and registry.get(status.SPACE) is None

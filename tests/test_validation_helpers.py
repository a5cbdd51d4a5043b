"""Validation in helper processes (``validation_processes``): same answers as in-process, and a helper
that dies is replaced by in-process validation without failing requests."""

from __future__ import annotations

import asyncio

import pytest
from conftest import fhir_client

from fhir_server.errors import FhirError
from fhir_server.validation.remote import InProcess, Validators

VALID = {"resourceType": "Patient", "name": [{"family": "Lefèvre", "given": ["Zoé"]}], "birthDate": "1983-05-12"}
INVALID = [
    {"resourceType": "Patient", "birthDate": "12/05/1983"},
    {"resourceType": "Patient", "gender": ["female"], "unknownElement": 1},
    {"resourceType": "Observation", "status": "final"},  # code is required
    {"resourceType": "Nope"},
    ["not", "an", "object"],
]


async def _ready(validators: Validators) -> None:
    for _ in range(600):
        if all(h.ready for h in validators._helpers):
            return
        await asyncio.sleep(0.05)
    pytest.fail("the validation helper did not start")


async def _outcome(validator: InProcess, resource: object) -> list | None:
    try:
        await validator.validate(resource)
    except FhirError as exc:
        return [(exc.status, i.code, i.diagnostics, i.expression) for i in exc.issues]
    return None


async def test_helpers_answer_like_in_process_validation():
    helpers = Validators(1)
    await helpers.start()
    try:
        await _ready(helpers)
        local = InProcess()
        assert await _outcome(helpers, VALID) is None
        for resource in INVALID:
            remote = await _outcome(helpers, resource)
            assert remote is not None and remote == await _outcome(local, resource)
        # Many at once (a transaction's entries) come back in order.
        outcomes = await asyncio.gather(*(_outcome(helpers, r) for r in [VALID, *INVALID] * 20))
        assert outcomes == [await _outcome(local, r) for r in [VALID, *INVALID] * 20]
    finally:
        await helpers.close()


async def test_a_dead_helper_falls_back_to_in_process_validation():
    helpers = Validators(1)
    await helpers.start()
    try:
        await _ready(helpers)
        helpers._helpers[0].process.kill()
        for _ in range(100):  # in flight or after: every answer is still given, the same way
            assert await _outcome(helpers, INVALID[0]) == await _outcome(InProcess(), INVALID[0])
            assert await _outcome(helpers, VALID) is None
        assert not helpers._helpers[0].alive
    finally:
        await helpers.close()


async def test_server_with_a_helper_validates_creates_and_transactions(store_url):
    async with fhir_client(store_url, validation_processes=1) as client:
        validators = client._transport.app.state.context.validator
        assert isinstance(validators, Validators)
        await _ready(validators)
        assert (await client.post("/Patient", json=VALID)).status_code == 201
        bad = await client.post("/Patient", json=INVALID[0])
        assert bad.status_code == 400 and "birthDate" in bad.text
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": VALID, "request": {"method": "POST", "url": "Patient"}},
            {"resource": INVALID[2], "request": {"method": "POST", "url": "Observation"}},
        ]}  # fmt: skip
        refused = await client.post("/", json=bundle)
        assert refused.status_code == 400 and "entry[1]" in refused.text
        assert (await client.get("/Patient?_summary=count")).json()["total"] == 1
        # Index entries prepared in the helper are the ones searches use (and _lastUpdated is the server's).
        found = (await client.get("/Patient?family=lefevre&given=zoe&birthdate=1983-05-12")).json()
        assert found["total"] == 1
        stamped = found["entry"][0]["resource"]["meta"]["lastUpdated"]
        assert (await client.get(f"/Patient?_lastUpdated={stamped}")).json()["total"] == 1
        updated = {**found["entry"][0]["resource"], "name": [{"family": "Martin"}]}
        assert (await client.put(f"/Patient/{updated['id']}", json=updated)).status_code == 200
        assert (await client.get("/Patient?family=martin")).json()["total"] == 1
        assert (await client.get("/Patient?family=lefevre")).json()["total"] == 0


def test_prepared_index_entries_equal_those_of_the_stored_resource():
    """Entries computed with the validation (on the resource as sent, in a helper) and restamped equal the
    entries of the stored resource, for every official R4 example (some carry a meta.lastUpdated)."""
    from test_examples_roundtrip import load_examples

    from fhir_server.fhirjson import loads
    from fhir_server.interactions.crud import stamp
    from fhir_server.search.indexing import index_entries, restamped

    checked = 0
    for _, raw in load_examples():
        resource = loads(raw, max_depth=10_000)
        stored = stamp(resource, "x1", 7, 1_700_000_000_123_456)
        assert sorted(map(repr, restamped(index_entries(resource), stored))) == sorted(
            map(repr, index_entries(stored))
        ), resource["resourceType"]
        checked += 1
    assert checked >= 700  # the non-definition examples

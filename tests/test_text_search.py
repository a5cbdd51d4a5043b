"""Over HTTP on both stores: implied code systems of bound codes, ``_text`` and ``_content`` word search."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import fhir_client
from test_search import error, ids

from fhir_server.interactions import search as search_interaction
from fhir_server.search import indexing

GENDER = "http://hl7.org/fhir/administrative-gender"
OBSERVATION_STATUS = "http://hl7.org/fhir/observation-status"


def narrative(xhtml: str) -> dict:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{xhtml}</div>'}


PATIENTS = [
    {"resourceType": "Patient", "id": "helene", "gender": "female",
     "text": narrative("<p>Helene <b>DUPONT</b>, born in Besan&ccedil;on &amp; living in Lyon</p>"),
     "name": [{"family": "Dupont", "given": ["Hélène"]}],
     "contact": [{"name": {"family": "Zygomatic"}}]},
    {"resourceType": "Patient", "id": "marc", "gender": "male",
     "text": narrative("<p>Marc Dupontel, Lyon</p>"),
     "name": [{"family": "Dupontel", "given": ["Marc"]}]},
    {"resourceType": "Patient", "id": "zoe", "gender": "female",
     "name": [{"family": "Lefèvre", "given": ["Zoé"]}],
     "address": [{"use": "home", "city": "Saint-Étienne"}]},
]  # fmt: skip


@pytest.fixture
async def client(store_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """Both word parameters indexed (``_content`` is off by default: the ``content_search`` setting)."""
    monkeypatch.setattr(indexing, "WORD_PARAMETERS", indexing.WORD_PARAMETERS)  # restored after the test
    # TODO: drop once interactions/search.py no longer lists _text/_content in NOT_SUPPORTED (a no-op then).
    unblocked = tuple(name for name in search_interaction.NOT_SUPPORTED if name not in ("_text", "_content"))
    monkeypatch.setattr(search_interaction, "NOT_SUPPORTED", unblocked)
    async with fhir_client(store_url, content_search=True) as c:
        for p in PATIENTS:
            assert (await c.put(f"/Patient/{p['id']}", json=p)).status_code == 201
        observation = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "Glucose"},
                       "subject": {"reference": "Patient/helene"}}  # fmt: skip
        assert (await c.put("/Observation/o1", json=observation)).status_code == 201
        yield c


async def test_bound_codes_match_with_their_implied_system(client):
    assert await ids(client, "/Patient?gender=male") == ["marc"]
    assert await ids(client, f"/Patient?gender={GENDER}|male") == ["marc"]
    assert await ids(client, f"/Patient?gender={GENDER}|female,{GENDER}|male") == ["helene", "marc", "zoe"]
    assert await ids(client, f"/Patient?gender={GENDER}|") == ["helene", "marc", "zoe"]
    assert await ids(client, "/Patient?gender=|male") == []  # the code has a system: the implied one
    assert await ids(client, "/Patient?gender=http://example.org/other|male") == []
    assert await ids(client, "/Patient?address-use=http://hl7.org/fhir/address-use|home") == ["zoe"]
    assert await ids(client, f"/Observation?status={OBSERVATION_STATUS}|final") == ["o1"]
    assert await ids(client, f"/Observation?subject:Patient.gender={GENDER}|female") == ["o1"]


async def test_in_a_valueset_of_the_whole_code_system(client):
    genders = {"resourceType": "ValueSet", "id": "genders", "url": "http://example.org/vs/genders", "status": "active",
               "compose": {"include": [{"system": GENDER}]}}  # fmt: skip
    assert (await client.put("/ValueSet/genders", json=genders)).status_code == 201
    assert await ids(client, "/Patient?gender:in=http://example.org/vs/genders") == ["helene", "marc", "zoe"]


async def test_text_searches_the_narrative(client):
    assert await ids(client, "/Patient?_text=hélène") == ["helene"]  # "Helene" in the narrative
    assert await ids(client, "/Patient?_text=HELENE") == ["helene"]
    assert await ids(client, "/Patient?_text=besancon") == ["helene"]  # Besan&ccedil;on
    assert await ids(client, "/Patient?_text=lyon") == ["helene", "marc"]
    assert await ids(client, "/Patient?_text=dupont") == ["helene", "marc"]  # words are prefixes
    assert await ids(client, "/Patient?_text=dupont lyon") == ["helene", "marc"]
    assert await ids(client, "/Patient?_text=helene lyon") == ["helene"]  # every word (AND)
    assert await ids(client, "/Patient?_text=helene marc") == []
    assert await ids(client, "/Patient?_text=helene,marc") == ["helene", "marc"]  # comma: OR
    assert await ids(client, "/Patient?_text=helene&_text=dupontel") == []
    assert await ids(client, "/Patient?_text=zoe") == []  # no narrative
    assert await ids(client, "/Patient?_text:missing=true") == ["zoe"]
    assert await ids(client, "/Patient?_text=amp") == []  # entities are not words
    await error(client, "/Patient?_text=--", "no word")
    await error(client, "/Patient?_text:exact=Helene", "_text")
    await error(client, "/Bundle?_text=x", "_text")


async def test_content_searches_every_string(client):
    assert await ids(client, "/Patient?_content=zygomatic") == ["helene"]  # a contact's name only
    assert await ids(client, "/Patient?_text=zygomatic") == []
    assert await ids(client, "/Patient?_content=saint-etienne") == ["zoe"]  # saint AND etienne
    assert await ids(client, "/Patient?_content=LEFÈVRE zoé") == ["zoe"]
    assert await ids(client, "/Patient?_content=lyon") == ["helene", "marc"]  # the narrative too
    assert await ids(client, "/Patient?_content=zygomatic,zoe") == ["helene", "zoe"]
    assert await ids(client, "/Patient?_content=female") == []  # codes are not prose
    assert await ids(client, "/Observation?_content=glucose") == ["o1"]
    assert await ids(client, "/Patient?_has:Observation:subject:_content=glucose") == ["helene"]


async def test_content_is_refused_when_not_indexed(client, monkeypatch):
    monkeypatch.setattr(indexing, "WORD_PARAMETERS", frozenset({"_text"}))
    await error(client, "/Patient?_content=zygomatic", "not indexed")
    assert await ids(client, "/Patient?_text=helene") == ["helene"]


async def test_content_search_is_a_setting(store_url):
    """_content (every string of the resource) is refused unless the server indexes it (content_search)."""
    from fhir_server.search.indexing import use_content_search

    patient = {"resourceType": "Patient", "name": [{"family": "Martin"}],
               "address": [{"line": ["12 rue de l'Église"], "city": "Besançon"}]}  # fmt: skip
    try:
        async with fhir_client(store_url) as client:
            refused = await client.get("/Patient?_content=eglise")
            assert refused.status_code == 400 and "_content" in refused.text
        async with fhir_client(store_url, content_search=True) as client:
            assert (await client.post("/Patient", json=patient)).status_code == 201
            found = (await client.get("/Patient?_content=eglise")).json()
            assert found["total"] == 1
            assert (await client.get("/Patient?_content=besancon eglise")).json()["total"] == 1
            assert (await client.get("/Patient?_content=lyon")).json()["total"] == 0
    finally:
        use_content_search(False)

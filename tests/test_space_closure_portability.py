"""Data portability: the person downloads their whole record with their own token, as a Bundle
(``GET Patient/[id]/$everything``) or as NDJSON (``GET Patient/$export``, Bulk Data, confined to their record),
and the document contents (``GET Binary/[id]`` from each document's attachment URL). Nothing of another
patient comes with it. Both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from test_policy import DOCS, exported_ids, record
from test_space_closure import LEA, Mes, mes_server

#: Léa's record as seeded (test_policy.record), less the document hidden from her (INVISIBLE_PATIENT)
LEA_RECORD = {
    r["id"]
    for r in record()
    if r["id"] == "lea"
    or (r.get("subject") or r.get("patient") or {}).get("reference") == "Patient/lea"
    or (r["resourceType"] == "Binary" and r["securityContext"]["reference"].startswith("DocumentReference/lea-"))
} - {"lea-hidden", "bin-lea-hidden"}
OTHERS = {r["id"] for r in record() if r["id"].startswith(("max", "nina"))}


@pytest.fixture
async def mes(store_url: str, tmp_path: Path) -> AsyncIterator[Mes]:
    async with mes_server(store_url, tmp_path / "exports") as m:
        yield m


def test_the_expected_record_is_what_was_seeded():
    binaries = {f"bin-lea-{k}" for k in DOCS if k != "hidden"}
    assert binaries < LEA_RECORD and {"lea", "lea-cr", "lea-weight", "lea-imm", "mum", "permit-med"} < LEA_RECORD
    assert {"max-cr", "nina-cr", "max-imm", "max-no-btg"} <= OTHERS


async def everything(c: httpx.AsyncClient, headers: dict) -> list[dict]:
    url, found = "/Patient/lea/$everything?_count=50", []
    while url:
        r = await c.get(url, headers=headers)
        assert r.status_code == 200, r.text
        bundle = r.json()
        found += [e["resource"] for e in bundle.get("entry", ())]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        url = url.removeprefix("http://fhir.test")
    return found


async def document_contents(c: httpx.AsyncClient, documents: list[dict], headers: dict) -> set[str]:
    """The Binaries the documents point at, read one by one (their content is the document itself)."""
    found = set()
    for document in documents:
        for content in document["content"]:
            url = content["attachment"]["url"]
            r = await c.get(f"/{url}", headers={**headers, "Accept": "application/fhir+json"})
            assert r.status_code == 200, (url, r.text)
            found.add(r.json()["id"])
    return found


async def test_everything_gives_the_person_their_whole_record_and_nothing_else(mes: Mes):
    c = mes.client
    resources = await everything(c, LEA)
    record_part = {r["id"] for r in resources if r["resourceType"] not in ("PractitionerRole", "Practitioner")}
    documents = [r for r in resources if r["resourceType"] == "DocumentReference"]
    binaries = await document_contents(c, documents, LEA)
    assert record_part | binaries == LEA_RECORD
    assert not (record_part | binaries) & OTHERS
    for other in ("max-cr", "bin-lea-hidden"):
        assert (await c.get(f"/{'Binary' if other.startswith('bin') else 'DocumentReference'}/{other}",
                            headers=LEA)).status_code == 404  # fmt: skip
    # another patient's $everything is not hers to download
    assert (await c.get("/Patient/max/$everything", headers=LEA)).status_code == 404


async def test_export_gives_the_person_their_record_as_ndjson(mes: Mes):
    c = mes.client
    exported = await exported_ids(c, "/Patient/$export", LEA)
    documents = [r for r in await everything(c, LEA) if r["resourceType"] == "DocumentReference"]
    binaries = await document_contents(c, documents, LEA)
    assert exported | binaries == LEA_RECORD
    assert not exported & OTHERS

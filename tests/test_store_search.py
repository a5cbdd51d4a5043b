"""Search predicate trees give the same answers on both stores (the store half of the search engine)."""

from __future__ import annotations

import math

import pytest

from fhir_server.store import IndexEntry, ResourceVersion, Store
from fhir_server.store.query import (
    AllOf,
    AnyOf,
    Chain,
    Entry,
    Has,
    IdIn,
    Missing,
    Not,
    Range,
    Search,
    SortKey,
)

INF = math.inf


async def put(store: Store, type_: str, id_: str, entries: list[IndexEntry], version: int = 1) -> None:
    body = f'{{"resourceType":"{type_}","id":"{id_}"}}'.encode()

    async def work(tx):
        await tx.put(ResourceVersion(type_, id_, version, version * 1000, "PUT", body), entries)

    await store.transact(work)


@pytest.fixture
async def corpus(store: Store) -> Store:
    await put(store, "Patient", "helene", [
        IndexEntry("family", "dupont", "Dupont"), IndexEntry("given", "helene", "Hélène"),
        IndexEntry("gender", "female", "http://hl7.org/fhir/administrative-gender"),
        IndexEntry("birthdate", low=100.0, high=200.0),
    ])  # fmt: skip
    await put(store, "Patient", "marc", [
        IndexEntry("family", "dupontel", "Dupontel"), IndexEntry("given", "marc", "Marc"),
        IndexEntry("gender", "male", "http://hl7.org/fhir/administrative-gender"),
        IndexEntry("birthdate", low=300.0, high=400.0),
    ])  # fmt: skip
    await put(store, "Patient", "zoe", [IndexEntry("family", "martin", "Martin"), IndexEntry("gender", "female")])
    await put(store, "Observation", "o1", [
        IndexEntry("subject", "Patient/helene", "Patient"), IndexEntry("code", "8480-6", "http://loinc.org"),
        IndexEntry("value-quantity", "mm[Hg]", "http://unitsofmeasure.org", 119.5, 120.5),
    ])  # fmt: skip
    await put(store, "Observation", "o2", [
        IndexEntry("subject", "Patient/marc", "Patient"), IndexEntry("code", "8462-4", "http://loinc.org"),
        IndexEntry("value-quantity", "mm[Hg]", "http://unitsofmeasure.org", 79.5, 80.5),
    ])  # fmt: skip
    await put(store, "Observation", "o3", [IndexEntry("code", "8480-6", "http://loinc.org"),
                                           IndexEntry("period", low=-INF, high=500.0)])  # fmt: skip
    return store


async def ids(store: Store, type_: str, *where) -> list[str]:
    search = Search(type_, tuple(where))
    found = [v.id for v in await store.search(search, 100)]
    assert await store.count(search) == len(found)
    assert await store.find_ids(search, 100) == found
    return found


async def test_entry_tests(corpus):
    assert await ids(corpus, "Patient", Entry("family", value_prefix="dupont")) == ["helene", "marc"]
    assert await ids(corpus, "Patient", Entry("family", value="dupont")) == ["helene"]
    assert await ids(corpus, "Patient", Entry("family", value_contains="ont")) == ["helene", "marc"]
    assert await ids(corpus, "Patient", Entry("family", system="Dupontel")) == ["marc"]
    assert await ids(corpus, "Patient", Entry("gender", value="female", no_system=True)) == ["zoe"]
    assert await ids(corpus, "Patient", Entry("gender", value="female")) == ["helene", "zoe"]
    system = "http://hl7.org/fhir/administrative-gender"
    assert await ids(corpus, "Patient", Entry("gender", value="female", system=system)) == ["helene"]


async def test_ranges(corpus):
    within = (Range("low", ">=", 50), Range("high", "<=", 250))
    assert await ids(corpus, "Patient", Entry("birthdate", ranges=within)) == ["helene"]
    assert await ids(corpus, "Patient", Entry("birthdate", ranges=(Range("high", ">", 250),))) == ["marc"]
    assert await ids(corpus, "Observation", Entry("period", ranges=(Range("low", "<", 0),))) == ["o3"]
    quantity = Entry("value-quantity", value="mm[Hg]", ranges=(Range("low", ">=", 100),))
    assert await ids(corpus, "Observation", quantity) == ["o1"]


async def test_boolean_structure(corpus):
    assert await ids(corpus, "Patient", Missing("birthdate", True)) == ["zoe"]
    assert await ids(corpus, "Patient", Missing("birthdate", False)) == ["helene", "marc"]
    assert await ids(corpus, "Patient", Not(Entry("gender", value="female"))) == ["marc"]
    either = AnyOf((Entry("given", value="marc"), Entry("family", value="martin")))
    assert await ids(corpus, "Patient", either) == ["marc", "zoe"]
    assert await ids(corpus, "Patient", AnyOf(())) == []
    assert await ids(corpus, "Patient", AllOf(())) == ["helene", "marc", "zoe"]
    both = AllOf((Entry("gender", value="female"), Entry("family", value_prefix="d")))
    assert await ids(corpus, "Patient", both) == ["helene"]
    assert await ids(corpus, "Patient", IdIn(("zoe", "nobody"))) == ["zoe"]
    assert await ids(corpus, "Patient", IdIn(())) == []


async def test_chain_and_has(corpus):
    chain = Chain("subject", Search("Patient", (Entry("family", value_prefix="dupontel"),)))
    assert await ids(corpus, "Observation", chain) == ["o2"]
    deep = Chain("subject", Search("Patient", (Entry("gender", value="female"),)))
    assert await ids(corpus, "Observation", deep, Entry("code", value="8480-6")) == ["o1"]
    has = Has("subject", Search("Observation", (Entry("code", value="8462-4"),)))
    assert await ids(corpus, "Patient", has) == ["marc"]
    nested = Has("subject", Search("Observation", (Chain("subject", Search("Patient", (IdIn(("helene",)),))),)))
    assert await ids(corpus, "Patient", nested) == ["helene"]


async def test_deleted_and_replaced_entries_do_not_match(corpus):
    async def delete(tx):
        await tx.put(ResourceVersion("Patient", "marc", 2, 5000, "DELETE", None), [])

    await corpus.transact(delete)
    assert await ids(corpus, "Patient", Entry("family", value_prefix="dupont")) == ["helene"]
    chain = Chain("subject", Search("Patient", (Entry("given", value="marc"),)))
    assert await ids(corpus, "Observation", chain) == []
    await put(corpus, "Patient", "helene", [IndexEntry("family", "durand", "Durand")], version=2)
    assert await ids(corpus, "Patient", Entry("family", value_prefix="dupont")) == []


async def test_paging_after(corpus):
    search = Search("Patient")
    first = [v.id for v in await corpus.search(search, 2)]
    rest = [v.id for v in await corpus.search(search, 2, after=first[-1])]
    assert first + rest == ["helene", "marc", "zoe"]


async def test_sorted_pages_forward_and_backward(corpus):
    search = Search("Patient")
    by_birth = (SortKey("birthdate", by="range"),)
    assert [m.version.id for m in await corpus.search_page(search, 10, sort=by_birth)] == ["helene", "marc", "zoe"]
    newest = (SortKey("birthdate", descending=True, by="range"),)
    assert [m.version.id for m in await corpus.search_page(search, 10, sort=newest)] == ["marc", "helene", "zoe"]
    by_family = (SortKey("family", descending=True),)
    first = await corpus.search_page(search, 2, sort=by_family)
    assert [m.version.id for m in first] == ["zoe", "marc"]
    rest = await corpus.search_page(search, 2, sort=by_family, after=first[-1].key)
    assert [m.version.id for m in rest] == ["helene"]
    back = await corpus.search_page(search, 2, sort=by_family, after=rest[0].key, reverse=True)
    assert [m.version.id for m in back] == ["marc", "zoe"]
    plain_back = await corpus.search_page(search, 5, after=("zoe",), reverse=True)
    assert [m.version.id for m in plain_back] == ["marc", "helene"]


async def test_include_and_revinclude(corpus):
    included = await corpus.include("Observation", ["o1", "o2", "o3"], "subject", {"Patient": ()})
    assert sorted(v.id for v in included) == ["helene", "marc"]
    assert await corpus.include("Observation", ["o1"], "subject", {"Group": ()}) == []
    only_male = {"Patient": (Entry("gender", value="male"),)}
    assert [v.id for v in await corpus.include("Observation", ["o1", "o2"], "subject", only_male)] == ["marc"]
    reverse = await corpus.revinclude(["Patient/helene", "Patient/zoe"], Search("Observation"), "subject")
    assert [v.id for v in reverse] == ["o1"]
    constrained = Search("Observation", (Entry("code", value="8462-4"),))
    assert await corpus.revinclude(["Patient/helene"], constrained, "subject") == []


async def test_ascending_range_sort_differs_from_id_order(corpus):
    by_value = (SortKey("value-quantity", by="range"),)
    page = await corpus.search_page(Search("Observation"), 10, sort=by_value)
    assert [m.version.id for m in page] == ["o2", "o1", "o3"]

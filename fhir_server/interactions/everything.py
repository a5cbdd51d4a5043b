"""``Patient/[id]/$everything`` (http://hl7.org/fhir/R4/patient-operation-everything.html).

The patient, every resource of its compartment (R4 CompartmentDefinition), and the Practitioners,
Organizations, Medications… those reference, page by page: the cursor is (type position, last id), so a
page costs one keyset query per compartment type it touches plus one per referenced type.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import bad_request
from ..fhirjson import loads
from ..instant import date_range
from ..search.compartments import compartment_condition, definitions
from ..store import ResourceVersion
from ..store.query import Entry, IdIn, Range, Search
from . import crud
from .bundles import _references
from .context import Context
from .paging import decode_cursor, encode_cursor, page_size

REFERENCED = ("Practitioner", "PractitionerRole", "Organization", "Location", "Medication", "Device", "Substance")
PARAMETERS = ("_since", "_type", "_count", "_cursor")


@dataclass(frozen=True, slots=True)
class EverythingPage:
    matches: list[ResourceVersion]
    included: list[ResourceVersion]
    next_cursor: str | None


def _types(requested: str | None) -> list[str]:
    compartment = ["Patient", *sorted(t for t in definitions()["Patient"] if t != "Patient")]
    if not requested:
        return compartment
    wanted = requested.split(",")
    unknown = [t for t in wanted if t not in compartment and t not in REFERENCED]
    if unknown:
        raise bad_request(f"_type: {', '.join(unknown)} not in the Patient compartment")
    return [t for t in compartment if t in wanted]


async def everything(ctx: Context, patient_id: str, params: list[tuple[str, str]]) -> EverythingPage:
    values = dict(params)
    for name, _ in params:
        if name not in PARAMETERS:
            raise bad_request(f"$everything does not take {name!r} (supported: {', '.join(PARAMETERS)})")
    await crud.read(ctx, "Patient", patient_id)  # 404 / 410 first
    # Types the token may not read are left out of the record (as if empty), not refused.
    types = [t for t in _types(values.get("_type")) if ctx.access.may(t, "r") or ctx.access.may(t, "s")]
    since = ()
    if "_since" in values:
        found = date_range(values["_since"])
        if found is None:
            raise bad_request(f"_since={values['_since']!r} is not a valid instant")
        since = (Entry("_lastUpdated", ranges=(Range("high", ">", found[0]),)),)
    limit = page_size(values.get("_count"), ctx.settings.default_page_size, ctx.settings.max_page_size)
    position, after = decode_cursor(values["_cursor"], 2) if "_cursor" in values else (0, None)
    matches: list[ResourceVersion] = []
    next_cursor = None
    for index in range(position, len(types)):
        type_ = types[index]
        where = (compartment_condition("Patient", patient_id, type_), *since, *ctx.constraints(type_))
        resume = (after,) if after is not None else None
        page = await ctx.store.search_page(Search(type_, where), limit - len(matches) + 1, after=resume)
        after = None
        if len(matches) + len(page) > limit:
            page = page[: limit - len(matches)]
            matches += [m.version for m in page]
            next_cursor = encode_cursor([index, page[-1].version.id]) if page else encode_cursor([index, None])
            break
        matches += [m.version for m in page]
    wanted = set(types) | set(REFERENCED) if "_type" not in values else set(types)
    return EverythingPage(matches, await _referenced(ctx, matches, wanted), next_cursor)


async def _referenced(ctx: Context, matches: list[ResourceVersion], wanted: set[str]) -> list[ResourceVersion]:
    targets: dict[str, set[str]] = {}
    for version in matches:
        assert version.body is not None
        for reference in _references(loads(version.body, max_depth=10_000)):
            type_, _, id_ = reference.partition("/")
            if type_ in REFERENCED and type_ in wanted and id_ and "/" not in id_:
                targets.setdefault(type_, set()).add(id_)
    included = []
    for type_, ids in sorted(targets.items()):
        query = Search(type_, (IdIn(tuple(sorted(ids))), *ctx.constraints(type_)))
        included += [m.version for m in await ctx.store.search_page(query, len(ids))]
    return included

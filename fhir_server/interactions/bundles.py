"""batch and transaction Bundles (http://hl7.org/fhir/R4/http.html#transaction).

A transaction is one unit of work on the store: entries run in the order DELETE → POST → PUT/PATCH →
GET/HEAD, ``fullUrl`` identities (``urn:uuid:``, ``urn:oid:``, absolute URLs) and conditional references
(``Patient?identifier=…``, resolved to exactly one match) are rewritten to the ids the server assigns, and
any failing entry fails the whole Bundle: nothing is written. A batch runs each entry on its own, and a
failing entry gets its own OperationOutcome. GET entries read the committed state (they run last).
"""

from __future__ import annotations

import asyncio
from base64 import b64decode
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from ..errors import FhirError, Issue, bad_request, not_found, precondition_failed, too_large
from ..fhirjson import dumps
from ..instant import new_id
from ..record import measures_flux
from ..search.criteria import parse_criteria
from ..store import ResourceVersion, Transaction
from ..validation import R4_RESOURCE_TYPES
from . import crud
from .context import Context
from .patch import conditional_patch_in, parse_patch, patch_in

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class EntryRequest:
    """One entry's request, parsed and checked before anything runs."""

    index: int
    method: str
    type: str
    id: str | None = None
    version: str | None = None
    query: list[tuple[str, str]] = field(default_factory=list)
    resource: dict | None = None
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: str | None = None
    url: str = ""
    patcher: object | None = None  # PATCH entries: the parsed patch


@dataclass
class EntryResult:
    """What one entry produced: a status, maybe a version (write/read), a GET's search, or an outcome."""

    status: int
    version: ResourceVersion | None = None
    created: bool = False
    search: tuple | None = None  # (SearchRequest, SearchPage, path) for GET searches
    outcome: list[Issue] | None = None
    read: bool = False  # a GET entry: its resource is the answer whatever Prefer says


def parse_entries(bundle: object, base: str, max_entries: int) -> tuple[str, list[EntryRequest]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise bad_request("POST [base] takes a Bundle of type batch or transaction")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise bad_request(f"Bundle.type must be batch or transaction, not {kind!r}", expression=("Bundle.type",))
    raw = bundle.get("entry") or []
    if not isinstance(raw, list):
        raise bad_request("Bundle.entry must be an array", expression=("Bundle.entry",))
    if len(raw) > max_entries:
        raise too_large(f"The Bundle has {len(raw)} entries; the limit is {max_entries}")
    entries = [_entry(i, e, base) for i, e in enumerate(raw)]
    measures_flux.check_bundle(bundle, entries)  # the IG "Mesures de santé" flux's structure errors
    return kind, entries


def _entry(index: int, entry: object, base: str) -> EntryRequest:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise bad_request(f"{where} has no request", expression=(f"{where}.request",))
    request = entry["request"]
    method, url = request.get("method"), request.get("url")
    if method not in ORDER or not isinstance(url, str) or not url:
        raise bad_request(f"{where}.request needs a method (GET, HEAD, POST, PUT, PATCH, DELETE) and a url")
    if base and url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    if parts[0] not in R4_RESOURCE_TYPES:
        raise bad_request(
            f"{where}.request.url {url!r}: unknown or unsupported target", expression=(f"{where}.request.url",)
        )
    parsed = EntryRequest(
        index, method, parts[0], url=url, query=parse_qsl(query, keep_blank_values=True),
        full_url=entry.get("fullUrl"), if_none_exist=request.get("ifNoneExist"), if_match=request.get("ifMatch"),
    )  # fmt: skip
    if len(parts) >= 2:
        parsed.id = parts[1]
    if len(parts) == 4 and parts[2] == "_history" and method in ("GET", "HEAD"):
        parsed.version = parts[3]
    elif len(parts) > 2:
        raise bad_request(f"{where}.request.url {url!r} is not supported in a Bundle")
    if method in ("POST", "PUT"):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            raise bad_request(f"{where} needs a resource for {method}", expression=(f"{where}.resource",))
        parsed.resource = crud.check_resource_type(resource, parsed.type)
    if method == "POST" and parsed.id:
        raise bad_request(f"{where}: POST goes to [type], not [type]/[id]")
    if method in ("PUT", "DELETE") and not parsed.id and not parsed.query:
        raise bad_request(f"{where}: {method} needs [type]/[id] or search criteria")
    if method == "PATCH":
        if not parsed.id and not parsed.query:
            raise bad_request(f"{where}: PATCH needs [type]/[id] or search criteria")
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
            parsed.patcher = parse_patch(dumps(resource), "application/fhir+json")  # FHIRPath Patch
        elif isinstance(resource, dict) and resource.get("resourceType") == "Binary":
            parsed.patcher = parse_patch(b64decode(resource.get("data", "")), "application/json-patch+json")
        else:
            raise bad_request(f"{where}: a PATCH entry carries a Parameters (FHIRPath Patch) or a Binary (JSON Patch)")
    return parsed


async def _validate(ctx: Context, entries: list[EntryRequest]) -> None:
    """Every entry's resource, all sent at once (helper processes validate them in parallel)."""
    with_resource = [e for e in entries if e.resource is not None]
    outcomes = await asyncio.gather(
        *(ctx.validator.validate(e.resource) for e in with_resource), return_exceptions=True
    )
    for entry, outcome in zip(with_resource, outcomes, strict=True):
        if isinstance(outcome, FhirError):
            raise _at(entry, outcome, ".resource")
        if isinstance(outcome, BaseException):
            raise outcome


def _at(entry: EntryRequest, exc: FhirError, where: str = "") -> FhirError:
    """The same error, its diagnostics prefixed with the entry it comes from."""
    prefix = f"Bundle.entry[{entry.index}]{where}"
    issues = [Issue(i.code, f"{prefix}: {i.diagnostics}", i.severity, i.expression) for i in exc.issues]
    return FhirError(exc.status, issues, exc.headers)


# --- transaction -------------------------------------------------------------------------------------


async def transaction(ctx: Context, entries: list[EntryRequest]) -> list[EntryResult]:
    """All or nothing: reads of GET entries run inside the unit of work too (after the writes); GET
    searches are parsed before anything is written and run on the committed state."""
    from . import search as search_interaction

    await _validate(ctx, entries)
    identities = _assign_identities(entries)
    searches = {
        e.index: await search_interaction.parse_request(ctx, e.type, e.query)
        for e in entries
        if e.method in ("GET", "HEAD") and not e.id
    }
    ordered = sorted((e for e in entries if e.method not in ("GET", "HEAD")), key=lambda e: ORDER[e.method])

    async def work(tx: Transaction) -> dict[int, EntryResult]:
        mapping = dict(identities)
        results: dict[int, EntryResult] = {}
        for entry in ordered:  # conditional creates decide their identity first
            if entry.method == "POST" and entry.if_none_exist:
                query = parse_criteria(entry.type, parse_qsl(entry.if_none_exist, keep_blank_values=True))
                found = await crud._single_match(tx, query)
                if found is not None:
                    existing = await tx.read_current(entry.type, found)
                    results[entry.index] = EntryResult(200, existing)
                    if entry.full_url:
                        mapping[entry.full_url] = f"{entry.type}/{found}"
        await measures_flux.resolve(tx, entries, mapping)  # measures' subjects given by identifier
        await _resolve_conditional_references(tx, entries, mapping)
        for entry in ordered:
            if entry.index in results:
                continue
            if entry.resource is not None:
                entry.resource = _rewrite(entry.resource, mapping)
            try:
                results[entry.index] = await _write_entry(tx, entry)
            except FhirError as exc:  # the whole transaction fails, naming the entry
                raise _at(entry, exc) from None
        for entry in entries:
            if entry.method in ("GET", "HEAD") and entry.id:
                try:
                    results[entry.index] = await _read_in(tx, entry)
                except FhirError as exc:
                    raise _at(entry, exc) from None
        return results

    results = await crud._transact(ctx, work)
    for index, request in searches.items():
        page = await search_interaction.search(ctx, request)
        results[index] = EntryResult(200, search=(request, page, entries[index].type))
    return [results[e.index] for e in entries]


async def _read_in(tx: Transaction, entry: EntryRequest) -> EntryResult:
    assert entry.id is not None
    if entry.version:
        return EntryResult(200, await crud.vread_in(tx, entry.type, entry.id, entry.version), read=True)
    return EntryResult(200, await crud.read_in(tx, entry.type, entry.id), read=True)


def _assign_identities(entries: list[EntryRequest]) -> dict[str, str]:
    """fullUrl → Type/id for every entry that creates or names a resource; duplicates are refused."""
    mapping: dict[str, str] = {}
    seen: set[str] = set()
    for entry in entries:
        if entry.method == "POST":
            entry.id = new_id()  # pre-assigned so references can point at it before it is written
        if entry.method in ("POST", "PUT", "DELETE") and entry.id:
            identity = f"{entry.type}/{entry.id}"
            if identity in seen:
                raise bad_request(f"Bundle.entry[{entry.index}]: {identity} appears twice in the transaction")
            seen.add(identity)
        if entry.full_url and entry.method in ("POST", "PUT") and entry.id:
            mapping[entry.full_url] = f"{entry.type}/{entry.id}"
            tail = _type_id_tail(entry.full_url)
            if tail and entry.method == "POST":  # Type/old-id references to an absolute fullUrl
                mapping.setdefault(tail, f"{entry.type}/{entry.id}")
    return mapping


def _type_id_tail(full_url: str) -> str | None:
    if not urlsplit(full_url).scheme.startswith("http"):
        return None
    parts = full_url.rstrip("/").split("/")
    return f"{parts[-2]}/{parts[-1]}" if len(parts) >= 2 and parts[-2] in R4_RESOURCE_TYPES else None


async def _resolve_conditional_references(
    tx: Transaction, entries: list[EntryRequest], mapping: dict[str, str]
) -> None:
    """``Type?criteria`` references → the one resource they match (else the transaction fails)."""
    for entry in entries:
        for reference in _references(entry.resource) if entry.resource else ():
            if "?" not in reference or reference in mapping:
                continue
            type_, _, criteria = reference.partition("?")
            if type_ not in R4_RESOURCE_TYPES:
                raise bad_request(f"Bundle.entry[{entry.index}]: conditional reference {reference!r}: unknown type")
            ids = await tx.find_ids(parse_criteria(type_, parse_qsl(criteria, keep_blank_values=True)), 2)
            if not ids:
                raise not_found(f"Bundle.entry[{entry.index}]: conditional reference {reference!r} matches nothing")
            if len(ids) > 1:
                raise precondition_failed(
                    f"Bundle.entry[{entry.index}]: conditional reference {reference!r} matches several resources"
                )
            mapping[reference] = f"{type_}/{ids[0]}"


def _references(node: object) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str):
                found.append(ref)
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return found


def _rewrite(node, mapping: dict[str, str]):
    """A copy with every ``reference`` (and Attachment ``url``) naming a Bundle identity rewritten."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("reference", "url") and isinstance(value, str) and value in mapping:
                out[key] = mapping[value]
            else:
                out[key] = _rewrite(value, mapping) if isinstance(value, dict | list) else value
        return out
    if isinstance(node, list):
        return [_rewrite(v, mapping) if isinstance(v, dict | list) else v for v in node]
    return node


async def _write_entry(tx: Transaction, entry: EntryRequest) -> EntryResult:
    if entry.method == "POST":
        assert entry.resource is not None
        result = await crud.create_in(tx, entry.type, entry.resource, None, entry.id)
        return EntryResult(201, result.version, created=True)
    if entry.method == "PUT":
        assert entry.resource is not None
        if entry.query:
            result = await crud.conditional_update_in(
                tx, entry.type, parse_criteria(entry.type, entry.query), entry.resource
            )
        else:
            if entry.resource.get("id") != entry.id:
                raise bad_request(f"Bundle.entry[{entry.index}]: the resource id does not match {entry.url!r}")
            expected = crud._parse_etag(entry.if_match) if entry.if_match else None
            result = await crud.update_in(tx, entry.type, entry.id or "", entry.resource, expected)
        return EntryResult(201 if result.created else 200, result.version, created=result.created)
    if entry.method == "PATCH":
        expected = crud._parse_etag(entry.if_match) if entry.if_match else None
        if entry.query:
            query = parse_criteria(entry.type, entry.query)
            result = await conditional_patch_in(tx, entry.type, query, entry.patcher, expected)
        else:
            result = await patch_in(tx, entry.type, entry.id or "", entry.patcher, expected)
        return EntryResult(200, result.version)
    # DELETE
    if entry.query:
        await crud.conditional_delete_in(tx, entry.type, parse_criteria(entry.type, entry.query))
        return EntryResult(204)
    expected = crud._parse_etag(entry.if_match) if entry.if_match else None
    deleted = await crud.delete_in(tx, entry.type, entry.id or "", expected)
    return EntryResult(204, deleted)


async def _read_entry(ctx: Context, entry: EntryRequest) -> EntryResult:
    from . import search as search_interaction

    if entry.id and entry.version:
        return EntryResult(200, await crud.vread(ctx, entry.type, entry.id, entry.version), read=True)
    if entry.id:
        return EntryResult(200, await crud.read(ctx, entry.type, entry.id), read=True)
    request = await search_interaction.parse_request(ctx, entry.type, entry.query)
    page = await search_interaction.search(ctx, request)
    return EntryResult(200, search=(request, page, entry.type))


# --- batch -------------------------------------------------------------------------------------------


async def batch(ctx: Context, entries: list[EntryRequest]) -> list[EntryResult]:
    """Each entry on its own (own unit of work); a failure is reported in its entry, the rest goes on."""
    results = []
    for entry in entries:
        try:
            if entry.method in ("GET", "HEAD"):
                results.append(await _read_entry(ctx, entry))
                continue
            await _validate(ctx, [entry])
            if entry.method == "POST":
                query = None
                if entry.if_none_exist:
                    query = parse_criteria(entry.type, parse_qsl(entry.if_none_exist, keep_blank_values=True))
                entry.id = new_id()

                async def create(tx: Transaction, entry: EntryRequest = entry, query=query) -> EntryResult:
                    assert entry.resource is not None
                    result = await crud.create_in(tx, entry.type, entry.resource, query, entry.id)
                    return EntryResult(201 if result.created else 200, result.version, created=result.created)

                results.append(await crud._transact(ctx, create))
            else:

                async def write(tx: Transaction, entry: EntryRequest = entry) -> EntryResult:
                    return await _write_entry(tx, entry)

                results.append(await crud._transact(ctx, write))
        except FhirError as exc:
            results.append(EntryResult(exc.status, outcome=exc.issues))
    return results

"""create, read, vread, update, delete and their conditional forms (http://hl7.org/fhir/R4/http.html)."""

from __future__ import annotations

from ..errors import bad_request, conflict, gone, method_not_allowed, not_found, precondition_failed
from ..fhirjson import dumps
from ..instant import new_id, now_us, to_instant
from ..search.criteria import parse_criteria, parse_criteria_string
from ..search.indexing import IndexEntry, index_entries, restamped
from ..store import ResourceVersion, Store, Transaction, VersionConflict
from ..store.query import Search
from .access import UNRESTRICTED, GuardedTransaction, within
from .context import Context, ResourceResult
from .observers import ObservedTransaction

# Conditional delete of more matches than this is refused (412) rather than run unbounded.
MAX_CONDITIONAL_DELETE = 1000
#: Types whose resources, once written, never change: update (PUT, update-as-create included), PATCH and
#: delete answer 405 for everyone, on every path (REST, conditional, Bundle entries); only creates remain.
#: Old AuditEvents go only through the operator's retention purge (``fhir-server audit purge``, docs/audit.md).
IMMUTABLE_TYPES = frozenset({"AuditEvent"})


def refuse_immutable(type_: str, interaction: str) -> None:
    """405 if ``type_`` is immutable (called first by every update, patch and delete path: no lookup, no
    validation, no scope check can answer differently)."""
    if type_ in IMMUTABLE_TYPES:
        raise method_not_allowed(f"{type_} resources are immutable: {interaction} is not allowed (only create)")


def check_resource_type(resource: object, type_: str) -> dict:
    if not isinstance(resource, dict):
        raise bad_request("The request body must be a JSON object (a FHIR resource)")
    found = resource.get("resourceType")
    if found != type_:
        raise bad_request(f"resourceType {found!r} does not match the URL type {type_!r}", expression=("resourceType",))
    return resource


def stamp(resource: dict, id_: str, version: int, last_updated: int) -> dict:
    """What is stored: the client's content with the server-owned id, versionId and lastUpdated."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = to_instant(last_updated)
    body = {"resourceType": resource["resourceType"], "id": id_, "meta": meta}
    body.update((k, v) for k, v in resource.items() if k not in body)
    return body


def _next_time(current: ResourceVersion | None) -> int:
    """Now, but strictly after the previous version so a resource's history is ordered."""
    now = now_us()
    return max(now, current.last_updated + 1000) if current else now


def _parse_etag(value: str) -> int:
    tag = value.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not tag.isdigit():
        raise bad_request(f'Malformed ETag {value!r}: expected W/"<versionId>"')
    return int(tag)


async def _write(
    tx: Transaction,
    type_: str,
    id_: str,
    resource: dict | None,
    method: str,
    current: ResourceVersion | None,
    prepared: list[IndexEntry] | None = None,
) -> ResourceVersion:
    """``prepared``: the index entries of ``resource`` as sent (computed with its validation, off the event
    loop): only ``_lastUpdated`` depends on what the server stamps."""
    if method != "POST":
        refuse_immutable(type_, method)
    version = (current.version if current else 0) + 1
    last_updated = _next_time(current)
    if resource is None:
        stored = ResourceVersion(type_, id_, version, last_updated, method, None)
        await tx.put(stored, ())
        return stored
    if type_ == "Subscription":  # criteria and channel checked, status set by the server (docs/notifications.md)
        from ..notify.subscriptions import normalise  # notify sits above interactions: imported on use

        resource, prepared = normalise(resource), None
    body = stamp(resource, id_, version, last_updated)
    stored = ResourceVersion(type_, id_, version, last_updated, method, dumps(body))
    written = await tx.put(stored, index_entries(body) if prepared is None else restamped(prepared, body))
    return written or stored  # the access guard may have written more (a patient's deposit settings)


async def _single_match(tx: Transaction, query: Search) -> str | None:
    ids = await tx.find_ids(query, 2)
    if len(ids) > 1:
        raise precondition_failed("The conditional criteria match more than one resource")
    return ids[0] if ids else None


async def create(ctx: Context, type_: str, resource: object, if_none_exist: str | None = None) -> ResourceResult:
    resource = check_resource_type(resource, type_)
    entries = await ctx.validator.validate(resource, index=True)
    query = parse_criteria_string(type_, if_none_exist) if if_none_exist else None

    async def work(tx: Transaction) -> ResourceResult:
        return await create_in(tx, type_, resource, query, entries=entries)

    return await _transact(ctx, work)


async def create_in(
    tx: Transaction,
    type_: str,
    resource: dict,
    query: Search | None = None,
    id_: str | None = None,
    entries: list[IndexEntry] | None = None,
) -> ResourceResult:
    """Create inside a unit of work (``id_``: pre-assigned, as a transaction Bundle does; ``entries``:
    prepared with the validation)."""
    if query is not None:
        found = await _single_match(tx, query)
        if found is not None:
            existing = await tx.read_current(type_, found)
            assert existing is not None
            return ResourceResult(existing, created=False)
    return ResourceResult(await _write(tx, type_, id_ or new_id(), resource, "POST", None, entries), created=True)


async def read(ctx: Context, type_: str, id_: str) -> ResourceVersion:
    ctx.access.require(type_, "r")
    found = _readable(type_, id_, await ctx.store.read_current(type_, id_))
    await require_visible(ctx, type_, id_)
    return found


async def require_visible(ctx: Context, type_: str, id_: str, source=None) -> None:
    """A resource outside the caller's data reads as unknown (404), never as forbidden: its existence
    is not disclosed. Versions follow their resource's current version."""
    if not await within(source or ctx.store, type_, id_, ctx.constraints(type_)):
        raise not_found(f"{type_}/{id_} is not known")


async def read_in(tx: Transaction, type_: str, id_: str) -> ResourceVersion:
    return _readable(type_, id_, await tx.read_current(type_, id_))


def _readable(type_: str, id_: str, current: ResourceVersion | None) -> ResourceVersion:
    if current is None:
        raise not_found(f"{type_}/{id_} is not known")
    if current.deleted:
        raise gone(f"{type_}/{id_} was deleted", headers=_deleted_headers(current))
    return current


async def vread(ctx: Context, type_: str, id_: str, version_id: str) -> ResourceVersion:
    ctx.access.require(type_, "r")
    await require_versions_visible(ctx, type_, id_)
    return await _vread(ctx.store, type_, id_, version_id)


async def require_versions_visible(ctx: Context, type_: str, id_: str) -> None:
    """Versions (vread, instance history) follow their resource's current version: a confined caller sees
    them only while it sees the resource; a deleted one has no index entries left to test, so it is
    unknown to them. A resource that never existed is left to the caller (404 or an empty history)."""
    if not ctx.constraints(type_):
        return
    current = await ctx.store.read_current(type_, id_)
    if current is None:
        return
    if current.deleted:
        raise not_found(f"{type_}/{id_} is not known")
    await require_visible(ctx, type_, id_)


async def vread_in(tx: Transaction, type_: str, id_: str, version_id: str) -> ResourceVersion:
    return await _vread(tx, type_, id_, version_id)


async def _vread(source: Store | Transaction, type_: str, id_: str, version_id: str) -> ResourceVersion:
    if not version_id.isdigit():
        raise not_found(f"{type_}/{id_} has no version {version_id!r}")
    found = await source.read_version(type_, id_, int(version_id))
    if found is None:
        raise not_found(f"{type_}/{id_} has no version {version_id}")
    if found.deleted:
        raise gone(f"Version {version_id} of {type_}/{id_} is a deletion", headers=_deleted_headers(found))
    return found


def _deleted_headers(version: ResourceVersion) -> dict[str, str]:
    return {"ETag": f'W/"{version.version}"'}


async def update(ctx: Context, type_: str, id_: str, resource: object, if_match: str | None = None) -> ResourceResult:
    refuse_immutable(type_, "update")
    resource = check_resource_type(resource, type_)
    body_id = resource.get("id")
    if body_id is None:
        raise bad_request("The resource has no id: an update needs the id of the URL in the body", expression=("id",))
    if body_id != id_:
        raise bad_request(f"The body id {body_id!r} does not match the URL id {id_!r}", expression=("id",))
    entries = await ctx.validator.validate(resource, index=True)
    expected = _parse_etag(if_match) if if_match else None

    async def work(tx: Transaction) -> ResourceResult:
        return await update_in(tx, type_, id_, resource, expected, entries)

    return await _transact(ctx, work)


async def update_in(
    tx: Transaction,
    type_: str,
    id_: str,
    resource: dict,
    expected: int | None,
    entries: list[IndexEntry] | None = None,
) -> ResourceResult:
    refuse_immutable(type_, "update")
    current = await tx.read_current(type_, id_)
    if expected is not None and (current is None or current.deleted or current.version != expected):
        have = "no current version" if current is None or current.deleted else f"version {current.version}"
        raise precondition_failed(f"If-Match expects version {expected} of {type_}/{id_}, the server has {have}")
    created = current is None or current.deleted
    return ResourceResult(await _write(tx, type_, id_, resource, "PUT", current, entries), created=created)


async def conditional_update(
    ctx: Context, type_: str, criteria: list[tuple[str, str]], resource: object
) -> ResourceResult:
    refuse_immutable(type_, "update")
    resource = check_resource_type(resource, type_)
    await ctx.validator.validate(resource)
    query = _criteria(type_, criteria)

    async def work(tx: Transaction) -> ResourceResult:
        return await conditional_update_in(tx, type_, query, resource)

    return await _transact(ctx, work)


async def conditional_update_in(tx: Transaction, type_: str, query: Search, resource: dict) -> ResourceResult:
    refuse_immutable(type_, "update")
    body_id = resource.get("id")
    found = await _single_match(tx, query)
    if found is None:
        id_ = body_id or new_id()
    elif body_id is not None and body_id != found:
        raise bad_request(
            f"The body id {body_id!r} differs from the matching resource {type_}/{found}", expression=("id",)
        )
    else:
        id_ = found
    return await update_in(tx, type_, id_, {**resource, "id": id_}, None)


async def delete(ctx: Context, type_: str, id_: str, if_match: str | None = None) -> ResourceVersion | None:
    """Delete; returns the deletion version, or None when there was nothing live to delete."""
    refuse_immutable(type_, "delete")
    expected = _parse_etag(if_match) if if_match else None

    async def work(tx: Transaction) -> ResourceVersion | None:
        return await delete_in(tx, type_, id_, expected)

    return await _transact(ctx, work)


async def delete_in(tx: Transaction, type_: str, id_: str, expected: int | None = None) -> ResourceVersion | None:
    refuse_immutable(type_, "delete")
    current = await tx.read_current(type_, id_)
    if expected is not None and (current is None or current.deleted or current.version != expected):
        raise precondition_failed(f"If-Match expects version {expected} of {type_}/{id_}")
    if current is None or current.deleted:
        return None
    return await _write(tx, type_, id_, None, "DELETE", current)


async def conditional_delete(ctx: Context, type_: str, criteria: list[tuple[str, str]]) -> list[ResourceVersion]:
    """Delete every match (conditionalDelete = multiple), all in one atomic unit."""
    refuse_immutable(type_, "delete")
    query = _criteria(type_, criteria)

    async def work(tx: Transaction) -> list[ResourceVersion]:
        return await conditional_delete_in(tx, type_, query)

    return await _transact(ctx, work)


async def conditional_delete_in(tx: Transaction, type_: str, query: Search) -> list[ResourceVersion]:
    refuse_immutable(type_, "delete")
    ids = await tx.find_ids(query, MAX_CONDITIONAL_DELETE + 1)
    if len(ids) > MAX_CONDITIONAL_DELETE:
        raise precondition_failed(f"The criteria match more than {MAX_CONDITIONAL_DELETE} resources")
    deleted = []
    for id_ in ids:
        current = await tx.read_current(type_, id_)
        deleted.append(await _write(tx, type_, id_, None, "DELETE", current))
    return deleted


def _criteria(type_: str, criteria: list[tuple[str, str]]) -> Search:
    if not criteria:
        raise bad_request("Conditional update/delete needs search criteria in the URL")
    return parse_criteria(type_, criteria)


async def _transact(ctx: Context, work):
    """Run ``work`` as one unit of work; a restricted caller's writes go through the access guard, then
    every write is shown to the observers (its AuditEvent, notifications, subscriptions) in the same unit.
    The guard wraps the observed transaction: observers see what the guard let through, with the store's own
    transaction (what they write is the server's, not checked against the caller)."""
    if ctx.access is not UNRESTRICTED:
        unguarded = work

        async def work(tx: Transaction):
            return await unguarded(GuardedTransaction(tx, ctx.access))

    if ctx.observers:  # under the guard: they see what it let through, write with the store's own
        bare = work

        async def work(tx: Transaction):
            return await bare(ObservedTransaction(tx, ctx.observers))

    try:
        return await ctx.store.transact(work)
    except VersionConflict as exc:
        raise conflict(f"Concurrent modification, retry the request: {exc}") from None


_update_in = update_in  # the name PATCH support was written against

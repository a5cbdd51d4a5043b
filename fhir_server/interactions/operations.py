"""Operations on resources: ``$validate``, ``$meta``, ``$meta-add``, ``$meta-delete``
(http://hl7.org/fhir/R4/resource-operations.html)."""

from __future__ import annotations

from ..errors import FhirError, Issue, bad_request, forbidden, not_found
from ..fhirjson import dumps, loads
from ..record import origin
from ..search.indexing import index_entries
from ..store import ResourceVersion, Transaction
from ..validation import profiles, validate_resource
from . import crud
from .context import Context

VALIDATION_MODES = ("create", "update", "delete")


def parameter(parameters: dict, name: str) -> dict | None:
    for part in parameters.get("parameter") or ():
        if isinstance(part, dict) and part.get("name") == name:
            return part
    return None


# --- $validate ---------------------------------------------------------------------------------------


async def validate(
    ctx: Context, type_: str, id_: str | None, body: object, mode: str | None = None, profile: str | None = None
) -> list[Issue]:
    """The issues found (none: valid). Malformed requests raise; invalid content is reported, not raised.

    ``profile`` (the ``profile`` query parameter) and a ``profile`` part of a Parameters body name profiles
    to check besides R4: the R4 base profile of the type or one of this server's (``profiles/``); any other
    canonical is a 400. The profiles of this server the resource claims in ``meta.profile`` are checked too."""
    resource, mode, named = _validate_request(body, mode)
    if mode not in (None, *VALIDATION_MODES):
        raise bad_request(f"mode={mode!r}: expected create, update or delete")
    if mode in ("update", "delete") and id_ is None:
        raise bad_request(f"mode={mode} needs the instance-level call [type]/[id]/$validate")
    named = [p for p in (named, profile) if isinstance(p, str) and p]
    requested = [profiles.resolve(p, type_) for p in dict.fromkeys(named)]
    ctx.access.require(type_, "d" if mode == "delete" else ("u" if id_ else "c"))
    if id_ is not None and mode != "delete":
        await crud.require_visible(ctx, type_, id_)
    if mode == "delete":
        await crud.read(ctx, type_, id_ or "")
        return []
    if resource is None:
        raise bad_request("$validate needs a resource (the body, or a Parameters 'resource' part)")
    issues: list[Issue] = []
    if resource.get("resourceType") != type_:
        issues.append(Issue("invalid", f"resourceType {resource.get('resourceType')!r} is not {type_}"))
    elif mode == "update" and resource.get("id") != id_:
        issues.append(Issue("invalid", f"The resource id must be {id_!r} for an update", expression=("id",)))
    try:
        validate_resource(resource)
    except FhirError as exc:
        issues += exc.issues
    if resource.get("resourceType") == type_:
        issues += profiles.check(resource, [*(p for p in requested if p is not None), *profiles.declared(resource)])
    return issues


def _validate_request(body: object, mode: str | None) -> tuple[dict | None, str | None, str | None]:
    if not isinstance(body, dict):
        raise bad_request("$validate takes a resource or a Parameters resource")
    if body.get("resourceType") != "Parameters":
        return body, mode, None
    resource_part = parameter(body, "resource")
    mode_part = parameter(body, "mode")
    profile_part = parameter(body, "profile")
    resource = resource_part.get("resource") if resource_part else None
    return (
        resource if isinstance(resource, dict) else None,
        mode_part.get("valueCode") if mode_part else mode,
        profile_part.get("valueUri") or profile_part.get("valueCanonical") if profile_part else None,
    )


# --- $meta, $meta-add, $meta-delete ------------------------------------------------------------------


async def meta(ctx: Context, type_: str, id_: str, version_id: str | None = None) -> dict:
    found = await (crud.vread(ctx, type_, id_, version_id) if version_id else crud.read(ctx, type_, id_))
    assert found.body is not None
    return loads(found.body, max_depth=10_000).get("meta", {})


async def change_meta(
    ctx: Context, type_: str, id_: str, body: object, *, add: bool, version_id: str | None = None
) -> dict:
    """``$meta-add`` / ``$meta-delete``: change profiles, tags and security labels without a new version."""
    crud.refuse_immutable(type_, "$meta-add" if add else "$meta-delete")
    change = _meta_parameter(body)

    async def work(tx: Transaction) -> dict:
        current = await tx.read_current(type_, id_)
        if current is None:
            raise not_found(f"{type_}/{id_} is not known")
        target = current
        if version_id is not None:
            target = await crud.vread_in(tx, type_, id_, version_id)
        elif current.deleted:
            target = await crud.read_in(tx, type_, id_)  # raises 410
        assert target.body is not None
        resource = loads(target.body, max_depth=10_000)
        resource["meta"] = _merged(resource.get("meta") or {}, change, add)
        rewritten = ResourceVersion(target.type, target.id, target.version, target.last_updated, target.method,
                                    dumps(resource))  # fmt: skip
        await tx.rewrite_body(rewritten)
        if target.version == current.version and not current.deleted:
            await tx.replace_entries(rewritten, index_entries(resource))
        return resource["meta"]

    return await crud._transact(ctx, work)


def _meta_parameter(body: object) -> dict:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("$meta-add / $meta-delete take a Parameters resource with a 'meta' part")
    part = parameter(body, "meta")
    if part is None or not isinstance(part.get("valueMeta"), dict):
        raise bad_request("The Parameters need a 'meta' part with a valueMeta")
    meta = part["valueMeta"]
    for tag in meta.get("tag") or ():
        if isinstance(tag, dict) and tag.get("system") in origin.SERVER_TAG_SYSTEMS:
            raise forbidden(f"Tags of {tag['system']} are written by the server: $meta-add/-delete cannot change them")
    return meta


def _coding_key(coding: dict) -> tuple:
    return coding.get("system"), coding.get("code")


def _merged(meta: dict, change: dict, add: bool) -> dict:
    """Profiles, tags and security labels are sets: identity is system+code (tags) or the URL (profiles)."""
    out = dict(meta)
    for element, key in (("profile", lambda p: p), ("tag", _coding_key), ("security", _coding_key)):
        existing = list(meta.get(element) or [])
        given = change.get(element) or []
        if add:
            known = {key(item) for item in existing}
            existing += [item for item in given if key(item) not in known]
        else:
            removed = {key(item) for item in given}
            existing = [item for item in existing if key(item) not in removed]
        if existing:
            out[element] = existing
        else:
            out.pop(element, None)
    return out


def meta_parameters(meta_value: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta_value}]}

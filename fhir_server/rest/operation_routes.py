"""Operation endpoints: ``$validate``, ``$meta``, ``$meta-add``, ``$meta-delete``, ``Patient/$everything``,
``Patient/$mask-documents``, ``Patient/$activity``, ``Patient/$notification-preferences``,
``Communication/$mark-read`` and ``$mark-unread``."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ..audit import activity
from ..errors import FhirError, Issue, bad_request, forbidden, operation_outcome
from ..fhirjson import dumps, loads
from ..interactions import crud, operations
from ..interactions import everything as everything_interaction
from ..interactions import search as search_interaction
from ..notify import centre, preferences
from ..policy.masking import mask_documents
from .body import read_resource
from .responses import base_url, bundle, bundle_entry, fhir_response
from .routes import context, criteria, resource_type, route
from .searchset import searchset


@route("/{type_name:type}/$validate", "POST")
async def validate_type(request: Request, type_name: str) -> Response:
    return await _validate(request, type_name, None)


@route("/{type_name:type}/{resource_id:id}/$validate", "POST")
async def validate_instance(request: Request, type_name: str, resource_id: str) -> Response:
    return await _validate(request, type_name, resource_id)


async def _validate(request: Request, type_name: str, id_: str | None) -> Response:
    type_ = resource_type(type_name)
    body = await read_resource(request)
    query = request.query_params
    issues = await operations.validate(context(request), type_, id_, body, query.get("mode"), query.get("profile"))
    if not issues:
        issues = [Issue("informational", "No issues found: the resource is valid", severity="information")]
    # 200 whatever the verdict: the validation itself succeeded; the outcome carries it.
    return fhir_response(request, dumps(operation_outcome(issues)))


@route("/{type_name:type}/{resource_id:id}/$meta", "GET")
async def meta(request: Request, type_name: str, resource_id: str) -> Response:
    value = await operations.meta(context(request), resource_type(type_name), resource_id)
    return fhir_response(request, dumps(operations.meta_parameters(value)))


@route("/{type_name:type}/{resource_id:id}/_history/{version_id:id}/$meta", "GET")
async def meta_version(request: Request, type_name: str, resource_id: str, version_id: str) -> Response:
    value = await operations.meta(context(request), resource_type(type_name), resource_id, version_id)
    return fhir_response(request, dumps(operations.meta_parameters(value)))


@route("/{type_name:type}/{resource_id:id}/$meta-add", "POST")
async def meta_add(request: Request, type_name: str, resource_id: str) -> Response:
    return await _change_meta(request, type_name, resource_id, None, add=True)


@route("/{type_name:type}/{resource_id:id}/$meta-delete", "POST")
async def meta_delete(request: Request, type_name: str, resource_id: str) -> Response:
    return await _change_meta(request, type_name, resource_id, None, add=False)


@route("/{type_name:type}/{resource_id:id}/_history/{version_id:id}/$meta-add", "POST")
async def meta_add_version(request: Request, type_name: str, resource_id: str, version_id: str) -> Response:
    return await _change_meta(request, type_name, resource_id, version_id, add=True)


@route("/{type_name:type}/{resource_id:id}/_history/{version_id:id}/$meta-delete", "POST")
async def meta_delete_version(request: Request, type_name: str, resource_id: str, version_id: str) -> Response:
    return await _change_meta(request, type_name, resource_id, version_id, add=False)


async def _change_meta(request: Request, type_name: str, id_: str, version_id: str | None, *, add: bool) -> Response:
    type_ = resource_type(type_name)
    body = await read_resource(request)
    value = await operations.change_meta(context(request), type_, id_, body, add=add, version_id=version_id)
    return fhir_response(request, dumps(operations.meta_parameters(value)))


@route("/Patient/{resource_id:id}/$everything", "GET")
async def everything(request: Request, resource_id: str) -> Response:
    params = criteria(request)
    page = await everything_interaction.everything(context(request), resource_id, params)
    base = base_url(request)
    url = f"{base}/Patient/{resource_id}/$everything"
    kept = [(k, v) for k, v in params if k != "_cursor"]
    links = [("self", url + (f"?{urlencode(kept)}" if kept else ""))]
    if page.next_cursor:
        links.append(("next", f"{url}?{urlencode([*kept, ('_cursor', page.next_cursor)])}"))
    entries = [{**bundle_entry(base, v), "search": {"mode": "match"}} for v in page.matches]
    entries += [{**bundle_entry(base, v), "search": {"mode": "include"}} for v in page.included]
    return fhir_response(request, bundle("searchset", entries, total=None, links=links))


@route("/Patient/{resource_id:id}/$mask-documents", "POST")
async def mask_all_documents(request: Request, resource_id: str) -> Response:
    """Body: an optional Parameters with ``mask`` (valueBoolean, default true; false unmasks)."""
    body = await request.body()
    mask = True
    if body.strip():
        parameters = await read_resource(request)
        found = operations.parameter(parameters, "mask") if isinstance(parameters, dict) else None
        if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
            raise bad_request("$mask-documents takes a Parameters body (or none)")
        if found is not None:
            if not isinstance(found.get("valueBoolean"), bool):
                raise bad_request("$mask-documents: the 'mask' parameter is a valueBoolean")
            mask = found["valueBoolean"]
    changed = await mask_documents(context(request), resource_id, mask)
    verb = "masked" if mask else "unmasked"
    issue = Issue("informational", f"{changed} document(s) {verb}", severity="information")
    return fhir_response(request, dumps(operation_outcome([issue])))


@route("/Patient/{resource_id:id}/$activity", "GET")
async def patient_activity(request: Request, resource_id: str) -> Response:
    """The patient's activity history (audit/activity.py): their AuditEvents, newest first, labelled."""
    ctx = context(request)
    principal = getattr(ctx.access, "principal", None)
    if principal is not None and principal.professional is not None:
        raise forbidden("The activity history is the patient's: professionals do not read it")
    await crud.read(ctx, "Patient", resource_id)  # a record the caller cannot see is unknown (404)
    lang = activity.language(request.query_params.get("lang"), request.headers.get("accept-language"))
    base = base_url(request)
    compartment = search_interaction.compartment("Patient", resource_id, "AuditEvent")
    parsed = await search_interaction.parse_request(
        ctx, "AuditEvent", activity.search_parameters(criteria(request)), base=base, constraints=(compartment,)
    )
    page = await search_interaction.search(ctx, parsed)
    answer = loads(searchset(base, f"Patient/{resource_id}/$activity", parsed, page))
    for entry in answer.get("entry", ()):
        if entry.get("search", {}).get("mode") == "match":
            entry["resource"] = activity.decorate(entry["resource"], lang)
    if "lang" in request.query_params:
        for link in answer.get("link", ()):
            link["url"] += ("&" if "?" in link["url"] else "?") + urlencode({"lang": lang})
    return fhir_response(request, dumps(answer))


@route("/Patient/{resource_id:id}/$notification-preferences", "GET")
async def notification_preferences(request: Request, resource_id: str) -> Response:
    """Which events notify the patient (notify/preferences.py); defaults when none were set."""
    return fhir_response(request, dumps(preferences.as_parameters(await _preferences(request, resource_id))))


@route("/Patient/{resource_id:id}/$notification-preferences", "POST")
async def set_notification_preferences(request: Request, resource_id: str) -> Response:
    ctx = context(request)
    current = await _preferences(request, resource_id)
    basic = preferences.from_parameters(resource_id, await read_resource(request), current)
    await crud.update(ctx, "Basic", basic["id"], basic)
    return fhir_response(request, dumps(preferences.as_parameters(preferences.choices(basic))))


async def _preferences(request: Request, patient: str) -> dict[str, bool]:
    ctx = context(request)
    await crud.read(ctx, "Patient", patient)  # a record the caller cannot see is unknown (404)
    try:
        stored = await crud.read(ctx, "Basic", preferences.resource_id(patient))
    except FhirError as exc:
        if exc.status not in (404, 410):
            raise
        return preferences.choices(None)
    return preferences.choices(loads(stored.body or b"{}"))


@route("/Communication/{resource_id:id}/$mark-read", "POST")
async def mark_read(request: Request, resource_id: str) -> Response:
    found = await centre.mark(context(request), resource_id, read=True)
    return fhir_response(request, found.body)


@route("/Communication/{resource_id:id}/$mark-unread", "POST")
async def mark_unread(request: Request, resource_id: str) -> Response:
    found = await centre.mark(context(request), resource_id, read=False)
    return fhir_response(request, found.body)

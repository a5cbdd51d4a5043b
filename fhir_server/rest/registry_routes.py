"""``POST [base]/Patient/$registry-import``: the insurer's registry feed over the FHIR API (a backend with a
``system/`` token that may create and update Patient); fhir_server.space.registry, docs/lifecycle.md.

Body: a Bundle of Patients (``application/fhir+json``) or NDJSON (``application/fhir+ndjson``). Every entry is
checked first: one bad entry → 400 OperationOutcome naming each bad entry, nothing imported. Answer: a
Parameters with the counts ``created``, ``updated``, ``unchanged``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..audit.events import Actor
from ..errors import FhirError, Issue, bad_request, forbidden, unsupported_media_type
from ..fhirjson import dumps
from ..space.enrolment import Enrolment
from ..space.registry import Importer, RegistryInputError, read_entries
from .body import read_limited
from .responses import base_url, fhir_response
from .routes import context, route

NDJSON_TYPES = ("application/fhir+ndjson", "application/ndjson", "application/x-ndjson")
JSON_TYPES = ("application/fhir+json", "application/json")


@route("/Patient/$registry-import", "POST")
async def registry_import(request: Request) -> Response:
    ctx = context(request)
    auth = request.app.state.auth
    if auth is None:  # the codes live in the authorization server's state; without it nobody could activate
        raise bad_request("$registry-import needs the authorization server (auth on): enrolment codes live in it")
    actor = _registry_feeder(ctx.access)
    form = _form(request.headers.get("content-type", ""))
    data = await read_limited(request, request.app.state.settings.max_body_bytes)
    try:
        entries, errors = read_entries(data, form)
    except RegistryInputError as exc:
        raise bad_request(str(exc)) from None
    if errors:
        issues = [Issue("invalid", message, expression=_where(message)) for message in errors]
        raise FhirError(400, issues)
    enrolment = Enrolment(auth.state, ctx.settings.enrolment_code_days)
    importer = Importer(ctx.store, enrolment, ctx.settings, base_url(request), actor, ctx.observers)
    result = await importer.run(entries)
    if result.emails:
        request.app.state.deliverer.wake()
    if result.errors:  # a write failed (a duplicate INS in the store): the others are imported
        issues = [Issue("processing", message, expression=_where(message)) for message in result.errors]
        raise FhirError(422, issues)
    counts = [{"name": name, "valueInteger": getattr(result, name)} for name in ("created", "updated", "unchanged")]
    return fhir_response(request, dumps({"resourceType": "Parameters", "parameter": counts}))


def _registry_feeder(access) -> Actor:
    """Who may feed the registry: a ``system/`` token that may create and update Patient (auth off: anyone,
    the development mode)."""
    principal = getattr(access, "principal", None)
    if not access.restricted or principal is None:
        return Actor(client_id="unauthenticated")
    system = [g for g in principal.grants if g.context == "system"]
    if not (any(g.covers("Patient", "c") for g in system) and any(g.covers("Patient", "u") for g in system)):
        raise forbidden("$registry-import needs a system/ token that may create and update Patient (system/Patient.cu)")
    return Actor.from_principal(principal)


def _form(content_type: str) -> str:
    mime = content_type.split(";")[0].strip().lower()
    if mime in NDJSON_TYPES:
        return "ndjson"
    if mime in JSON_TYPES:
        return "bundle"
    raise unsupported_media_type(
        "$registry-import takes a Bundle of Patients (application/fhir+json) or NDJSON (application/fhir+ndjson)"
    )


def _where(message: str) -> tuple[str, ...]:
    """``entry[2]: …`` → ``Bundle.entry[2]`` (a FHIRPath); an NDJSON line is named in the message only."""
    label = message.split(":", 1)[0]
    return (f"Bundle.{label}",) if label.startswith("entry[") else ()

"""``GET Patient/[id]/$summary`` (IPS, http://hl7.org/fhir/uv/ips/OperationDefinition/summary): the medical
synthesis as a FHIR document Bundle, or as a PDF in French with ``Accept: application/pdf`` or ``_format=pdf``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..audit.middleware import DISCLOSED_KEY
from ..errors import bad_request, not_supported
from ..fhirjson import dumps
from ..record.summary import IPS_BUNDLE, document_bundle, summarize
from ..record.summary_pdf import summary_pdf
from .responses import base_url, fhir_response
from .routes import context, criteria, route

PDF = "application/pdf"
_JSON = {"application/fhir+json", "application/json", "application/json+fhir", "text/json", "*/*", "application/*"}


def _mime(value: str) -> str:
    return value.split(";", 1)[0].strip().lower().replace(" ", "+")  # an unescaped '+' arrives as a space


def wants_pdf(request: Request) -> bool:
    """``_format`` wins (as for every interaction); else the Accept range of highest quality, PDF or JSON."""
    fmt = request.query_params.get("_format")
    if fmt:
        return _mime(fmt) in ("pdf", PDF)
    ranges = []
    for position, part in enumerate(request.headers.get("accept", "").split(",")):
        _, *params = part.split(";")
        q = next((_quality(p) for p in params if p.strip().startswith("q=")), 1.0)
        if q > 0 and _mime(part) in (PDF, *_JSON):
            ranges.append((-q, position, _mime(part)))
    return bool(ranges) and min(ranges)[2] == PDF


def _quality(param: str) -> float:
    try:
        return float(param.strip()[2:])
    except ValueError:
        return 0.0


def _check(params: list[tuple[str, str]]) -> None:
    for name, value in params:
        if name == "profile":
            if value != IPS_BUNDLE:
                raise not_supported(f"$summary: only the IPS profile ({IPS_BUNDLE}) is supported")
        elif name == "identifier":
            raise bad_request("$summary: 'identifier' selects the patient on Patient/$summary, not on an instance")
        else:
            raise bad_request(f"$summary does not take {name!r} (supported: profile, _format)")


@route("/Patient/{resource_id:id}/$summary", "GET")
async def patient_summary(request: Request, resource_id: str) -> Response:
    _check(criteria(request))
    pdf = wants_pdf(request)
    summary = await summarize(context(request), resource_id)
    request.scope[DISCLOSED_KEY] = summary.disclosed()  # the audit trail names what the answer shows
    headers = {"Cache-Control": "no-store"}  # health data: never kept by a shared cache
    if pdf:
        headers["Content-Disposition"] = f'inline; filename="synthese-medicale-{resource_id}.pdf"'
        return Response(summary_pdf(summary), media_type=PDF, headers=headers)
    return fhir_response(request, dumps(document_bundle(summary, base_url(request))), headers=headers)

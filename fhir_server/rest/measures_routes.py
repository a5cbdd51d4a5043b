"""``GET [base]/Observation/$lastn``: the last measures per code (``record/measures_lastn.py``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..record.measures_lastn import lastn
from .responses import base_url, fhir_response
from .routes import context, criteria, route
from .searchset import searchset


@route("/Observation/$lastn", "GET")
async def observation_lastn(request: Request) -> Response:
    base = base_url(request)
    shown, page = await lastn(context(request), criteria(request), base)
    return fhir_response(request, searchset(base, "Observation/$lastn", shown, page))

"""Baseline of ``rest_throughput.py``: a bare Starlette app answering ``GET /Patient/{id}`` with fixed bytes.

It does what the FHIR server's read does at the HTTP level (same framework stack below FastAPI, same
content type, same body) with none of the work (no routing through FastAPI, no store, no headers
computed), so the ratio ours/bare shows what the server's own code costs per request.

The body is read once at start-up from the file named by ``BENCH_BARE_BODY_FILE`` (the exact bytes of a
Patient fetched from the real server). Served by uvicorn with the server's options, e.g.::

    BENCH_BARE_BODY_FILE=/tmp/patient.json python -m uvicorn --app-dir bench bare_app:app \
        --workers 1 --no-access-log --loop auto --http httptools --port 8081
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MEDIA_TYPE = "application/fhir+json; charset=utf-8"
_BODY_FILE = os.environ.get("BENCH_BARE_BODY_FILE")
BODY = Path(_BODY_FILE).read_bytes() if _BODY_FILE else b"{}"


async def read_patient(request: Request) -> Response:
    return Response(BODY, media_type=MEDIA_TYPE)


async def metadata(request: Request) -> Response:
    return Response(b'{"resourceType":"CapabilityStatement"}', media_type=MEDIA_TYPE)


app = Starlette(routes=[Route("/Patient/{id}", read_patient), Route("/metadata", metadata)])

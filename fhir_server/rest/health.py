"""Liveness and readiness probes for deployments (Kubernetes, compose healthchecks, load balancers).

Unauthenticated and data-free: they answer whether this process runs and whether its store answers,
nothing about what the store holds.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

#: How long readiness waits for the store before calling it unavailable.
STORE_TIMEOUT_SECONDS = 2.0

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"


async def liveness(request: Request) -> Response:
    """The process serves requests (restart it when this fails)."""
    return JSONResponse({"status": "pass"}, headers={"Cache-Control": "no-store"})


async def readiness(request: Request) -> Response:
    """The store answers a lookup within the timeout (route traffic here only then)."""
    store = request.app.state.context.store
    try:
        # A real round trip through the store's read path; the id is one no resource can have.
        await asyncio.wait_for(store.read_current("Patient", "-readiness-probe-"), STORE_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure means "not ready"; its type says why, never data
        detail = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return JSONResponse(
            {"status": "fail", "checks": {"store": detail}}, status_code=503, headers={"Cache-Control": "no-store"}
        )
    return JSONResponse({"status": "pass", "checks": {"store": "pass"}}, headers={"Cache-Control": "no-store"})


routes = [
    Route(LIVENESS_PATH, liveness, methods=["GET", "HEAD"], name="liveness"),
    Route(READINESS_PATH, readiness, methods=["GET", "HEAD"], name="readiness"),
]

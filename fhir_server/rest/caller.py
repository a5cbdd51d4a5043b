"""The interaction context of one request: the app's store and settings with the caller's access."""

from __future__ import annotations

from dataclasses import replace

from starlette.requests import Request

from ..audit.middleware import TRACE_KEY
from ..interactions import Context
from ..security.authenticate import ACCESS_KEY

_CONTEXT_KEY = "fhir.context"


def context(request: Request) -> Context:
    ctx = request.scope.get(_CONTEXT_KEY)
    if ctx is None:
        ctx = request.app.state.context
        access = request.scope.get(ACCESS_KEY)
        if access is not None:
            ctx = replace(ctx, constraints=access.constraints, access=access)
        trace = request.scope.get(TRACE_KEY)
        if trace is not None:  # its writes are traced in their own unit of work
            ctx = replace(ctx, observers=(*ctx.observers, trace))
        request.scope[_CONTEXT_KEY] = ctx
    return ctx

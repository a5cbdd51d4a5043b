"""The hot path: ``GET [base]/[type]/[id]`` answered in plain ASGI, before FastAPI's routing.

A read is a B-tree lookup plus the stored bytes; FastAPI's per-request machinery (routing, dependency
solving, middleware stack) would cost several times that. Only the plain case is served here: no query
string, no conditional or negotiation headers beyond a JSON ``Accept``, a live resource. Anything else
(404/410, ``_format``, ``If-None-Match``, …) falls through to the full routes, which own the semantics.
Access: a caller without read permission on the type, or confined to part of its data (patient
context, granular scopes), falls through to the full route, which applies the rules.
"""

from __future__ import annotations

from functools import lru_cache

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from ..instant import to_http_date
from ..interactions import Context
from ..interactions.access import within
from ..security.authenticate import ACCESS_KEY
from ..validation import R4_RESOURCE_TYPES

_SIMPLE_ACCEPT = {b"*/*", b"application/fhir+json", b"application/json", b"application/json, */*"}
_FALLBACK_HEADERS = {b"if-none-match", b"if-modified-since", b"prefer"}
_CONTENT_TYPE = b"application/fhir+json; charset=utf-8"


@lru_cache(maxsize=4096)
def _http_date(seconds: int) -> bytes:
    return to_http_date(seconds * 1_000_000).encode()


class ReadFastPath:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self._state = state  # read per request: the context may be replaced (tests, reconfiguration)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            target = _read_target(scope)
            if target is not None and await self._serve(target, scope, send):
                return
        await self.app(scope, receive, send)

    async def _serve(self, target: tuple[str, str], scope: Scope, send: Send) -> bool:
        for name, value in scope["headers"]:
            if name in _FALLBACK_HEADERS or (name == b"accept" and value not in _SIMPLE_ACCEPT):
                return False
        access = scope.get(ACCESS_KEY)
        if access is not None and not access.may(target[0], "r"):
            return False  # refused: the full route answers 403
        where = access.constraints(target[0]) if access is not None else ()
        context: Context = self._state.context
        version = await context.store.read_current(*target)
        if version is None or version.body is None:
            return False
        # Confined callers are served here too, after the same visibility query as crud.read.
        if where and not await within(context.store, *target, where):
            return False  # outside: the full route answers the 404
        body = version.body
        headers = [
            (b"content-type", _CONTENT_TYPE),
            (b"content-length", str(len(body)).encode()),
            (b"etag", b'W/"%d"' % version.version),
            (b"last-modified", _http_date(version.last_updated // 1_000_000)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True


def _read_target(scope: Scope) -> tuple[str, str] | None:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not parts[2] or parts[2][0] == "_" or parts[1] not in R4_RESOURCE_TYPES:
        return None
    return parts[1], parts[2]

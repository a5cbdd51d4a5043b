"""HTTP rest-hook delivery (httpx): the sender of the outbox's ``rest-hook`` channel.

Payload: ``url`` (http or https), ``headers`` (a list of ``"Name: value"`` strings, as R4
``Subscription.channel.header``), ``body`` (bytes, str, or None for an empty notification) and
``content_type`` (default ``application/fhir+json``; no Content-Type without a body). A 2xx answer is a
delivery; any other status, a timeout or a connection failure is a ``DeliveryError`` naming the status or
the kind of failure — never the answer's body, the URL or a header (they may carry tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from .. import __version__
from .delivery import DeliveryError

DEFAULT_CONTENT_TYPE = "application/fhir+json"


def parse_headers(lines: object) -> list[tuple[str, str]]:
    """``["Authorization: Bearer x", …]`` → ``[("Authorization", "Bearer x"), …]``; ``DeliveryError``
    (permanent) for a line that is no header."""
    if lines is None:
        return []
    if not isinstance(lines, list | tuple):
        raise DeliveryError("rest-hook headers: a list of 'Name: value' strings expected", permanent=True)
    headers = []
    for n, line in enumerate(lines):
        name, colon, value = line.partition(":") if isinstance(line, str) else ("", "", "")
        name = name.strip()
        if not colon or not name or any(c in name for c in " \t\r\n") or any(c in value for c in "\r\n"):
            raise DeliveryError(f"rest-hook header {n + 1} is not 'Name: value'", permanent=True)
        headers.append((name, value.strip()))
    return headers


class HookSender:
    """POSTs one outbox rest-hook per call, on one pooled ``httpx.AsyncClient`` (made on first use)."""

    def __init__(self, *, timeout: float = 10.0, client: httpx.AsyncClient | None = None) -> None:
        self.timeout = timeout
        self._client = client
        self._own_client = client is None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,  # a redirect is no delivery (and may leak the headers elsewhere)
                headers={"User-Agent": f"fhir-server/{__version__}"},
            )
        return self._client

    async def __call__(self, payload: Mapping[str, Any]) -> None:
        url = payload.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise DeliveryError("rest-hook payload without an http(s) URL", permanent=True)
        method = payload.get("method") or "POST"
        if method not in ("POST", "PUT"):  # R4 rest-hook: a POST, or a PUT of the resource when it has a payload
            raise DeliveryError("rest-hook method: POST or PUT expected", permanent=True)
        headers = parse_headers(payload.get("headers"))
        body = payload.get("body")
        if isinstance(body, str):
            body = body.encode()
        elif body is not None and not isinstance(body, bytes):
            raise DeliveryError("rest-hook body: bytes, a string or nothing expected", permanent=True)
        if body is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            headers.append(("Content-Type", str(payload.get("content_type") or DEFAULT_CONTENT_TYPE)))
        try:
            # Streamed and never read: only the status matters (a large or slow answer body costs nothing).
            async with self._http().stream(method, url, content=body or b"", headers=headers) as response:
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"rest-hook: no answer within {self.timeout:g} s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"rest-hook: request failed ({type(exc).__name__})") from exc
        except ValueError as exc:  # a header value httpx cannot encode
            raise DeliveryError("rest-hook: request refused by the HTTP client", permanent=True) from exc
        if not 200 <= status < 300:
            raise DeliveryError(f"rest-hook: HTTP {status} {httpx.codes.get_reason_phrase(status)}".rstrip())

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._own_client:
            await client.aclose()

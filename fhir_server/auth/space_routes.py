"""The person's own steps before they have an account (public, under ``/auth/space/``): activation,
a new enrolment code, opposition and its proof (fhir_server.space.lifecycle; docs/lifecycle.md)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def space_routes() -> list[BaseRoute]:
    return []

"""An invitation to become a delegate (aidant), answered by the invitee before they have a token (public,
under ``/auth/space/invitations``): accept or decline (fhir_server.space.representatives)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def invitation_routes() -> list[BaseRoute]:
    return []

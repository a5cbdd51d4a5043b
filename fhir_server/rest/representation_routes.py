"""The operations of representatives and delegates (fhir_server.space.delegation; docs/lifecycle.md):

* ``POST [base]/Patient/[id]/$invite-delegate`` (Parameters: ``email``, ``name``, ``rights`` read | manage,
  ``kind`` delegate | legal-representative): the person, or their legal representative, invites someone; 201
  with the pending RelatedPerson;
* ``POST [base]/RelatedPerson/[id]/$revoke``: the person (or their legal representative) ends a
  representation or withdraws an invitation; 200 with the RelatedPerson.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from ..errors import bad_request, not_supported
from ..fhirjson import dumps
from ..interactions import operations
from ..security.principal import Principal
from ..space import delegation
from ..space import representatives as rep
from .body import read_resource
from .responses import base_url, fhir_response
from .routes import context, route

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
_INVITABLE = (rep.DELEGATE, rep.LEGAL)


def _caller(request: Request) -> Principal:
    principal = getattr(context(request).access, "principal", None)
    auth = request.app.state.auth
    if principal is None or not hasattr(auth, "state"):
        raise not_supported("Representatives are invited and revoked with the authorization server on (auth on)")
    return principal


def _services(request: Request) -> delegation.Services:
    state = request.app.state
    return delegation.Services(state.context.store, state.auth.state, getattr(state, "audit", None),
                               base_url(request), state.settings.invitation_days)  # fmt: skip


def _string(parameters: dict, name: str) -> str | None:
    found = operations.parameter(parameters, name)
    if found is None:
        return None
    value = next((v for k, v in found.items() if k.startswith("value")), None)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"$invite-delegate: '{name}' is a non-empty string (valueString or valueCode)")
    return value.strip()


async def _invite(request: Request, patient: str) -> delegation.Invite:
    parameters = await read_resource(request)
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise bad_request("$invite-delegate takes a Parameters body (email, name, rights, kind)")
    email = _string(parameters, "email")
    if email is None or not _EMAIL.match(email):
        raise bad_request("$invite-delegate: 'email' is the invitee's email address")
    rights = _string(parameters, "rights") or rep.READ
    kind = _string(parameters, "kind") or rep.DELEGATE
    if rights not in rep.RIGHTS:
        raise bad_request(f"$invite-delegate: 'rights' is one of {', '.join(rep.RIGHTS)}")
    if kind not in _INVITABLE:
        raise bad_request(f"$invite-delegate: 'kind' is one of {', '.join(_INVITABLE)} (tutors come from the court)")
    name = _string(parameters, "name")
    return delegation.Invite(patient, email, name[:200] if name else None, rights, kind)


@route("/Patient/{resource_id:id}/$invite-delegate", "POST")
async def invite_delegate(request: Request, resource_id: str) -> Response:
    principal = _caller(request)
    invite = await _invite(request, resource_id)
    created, _ = await delegation.invite(_services(request), principal, invite)
    deliverer = getattr(request.app.state, "deliverer", None)
    if deliverer is not None:
        deliverer.wake()
    location = f"{base_url(request)}/RelatedPerson/{created['id']}/_history/{created['meta']['versionId']}"
    return fhir_response(request, dumps(created), 201, {"Location": location})


@route("/RelatedPerson/{resource_id:id}/$revoke", "POST")
async def revoke(request: Request, resource_id: str) -> Response:
    principal = _caller(request)
    revoked = await delegation.revoke(_services(request), principal, resource_id)
    return fhir_response(request, dumps(revoked))

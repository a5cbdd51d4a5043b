"""``Patient/[id]/$close`` and ``Patient/[id]/$reopen``: the person closes their space, or reopens it before
its destruction (fhir_server.space.closure; docs/lifecycle.md).

Both take a Parameters body with ``password`` (valueString: the person signs in again) and are the person's
own: their token's ``fhirUser`` is the Patient, its ``sub`` their account. ``$close`` also takes ``reason``
(valueCode ``patient-request`` or ``patient-deletion``) and ``deletion`` (valueBoolean: destroy at once).
The Patient is written as a versioned update through the interactions (the request's audit trace records
it); the server writes it, not the caller's scopes: the re-entered password is the authority here.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..audit.events import Actor
from ..auth.state import AuthState
from ..errors import FhirError, Issue, bad_request, conflict, forbidden, operation_outcome
from ..fhirjson import dumps, loads
from ..interactions import Context, crud, operations
from ..interactions.access import UNRESTRICTED
from ..interactions.context import no_constraints
from ..security.principal import Principal
from ..space import closure, status
from ..space.clock import CLOCK
from .body import read_resource
from .responses import base_url, fhir_response, version_headers
from .routes import context, route

_REFUSED = "The password is not correct"  # the same whatever was wrong (no account, another person's…)


@route("/Patient/{resource_id:id}/$close", "POST")
async def close(request: Request, resource_id: str) -> Response:
    parameters = await _parameters(request)
    deletion = _deletion(parameters)
    principal, accounts, patient, version = await _the_person(request, resource_id, parameters)
    now = CLOCK.now()
    space = status.read(patient)
    current = space.effective(now) if space is not None else None
    if deletion:
        marked = closure.marked_for_deletion(current, now)
        await _write(request, resource_id, status.write(patient, marked), version)
        # linked first: a destruction that stops half-way is finished by the sweep, account included
        await run_in_threadpool(closure.remember_account, accounts, resource_id, principal.subject, now.date())
        total = await closure.destroy(
            _context(request).store,
            resource_id,
            cause=closure.DELETION,
            actor=Actor(client_id=principal.client_id),  # the app: naming the person would keep them
            base=base_url(request),
            accounts=accounts,
            usernames=(principal.subject,),
        )
        text = f"The space and all its data were destroyed ({total} resource(s)); nothing of it can be restored"
        return fhir_response(request, dumps(operation_outcome([Issue("informational", text, "information")])))
    if current is not None and not current.open:
        raise conflict(f"The space is {current.status}: only a created or active space is closed")
    days = request.app.state.settings.space_retention_days
    shut = closure.closed(current, now, days)
    written = await _write(request, resource_id, status.write(patient, shut), version)
    assert shut.retain_until is not None
    until = date.fromisoformat(shut.retain_until)
    await run_in_threadpool(closure.remember_account, accounts, resource_id, principal.subject, until)
    return fhir_response(request, written.body, headers=version_headers(written))


@route("/Patient/{resource_id:id}/$reopen", "POST")
async def reopen(request: Request, resource_id: str) -> Response:
    parameters = await _parameters(request)
    _, accounts, patient, version = await _the_person(request, resource_id, parameters)
    space = status.read(patient)
    current = space.effective(CLOCK.now()) if space is not None else None
    if current is None or not closure.reopenable(current):
        state = current.status if current is not None else "open"
        raise conflict(f"The space is {state}: only a space its person closed is reopened")
    written = await _write(request, resource_id, status.write(patient, closure.reopened(current)), version)
    await run_in_threadpool(closure.forget_link, accounts, resource_id)
    return fhir_response(request, written.body, headers=version_headers(written))


async def _parameters(request: Request) -> dict:
    body = await read_resource(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("This operation takes a Parameters body (password)")
    return body


def _deletion(parameters: dict) -> bool:
    found = operations.parameter(parameters, "deletion")
    deletion = found.get("valueBoolean") if found is not None else False
    if not isinstance(deletion, bool):
        raise bad_request("$close: 'deletion' is a valueBoolean")
    reason = operations.parameter(parameters, "reason")
    code = reason.get("valueCode") if reason is not None else None
    if reason is not None and code not in (closure.REQUEST, closure.DELETION):
        raise bad_request(f"$close: 'reason' is a valueCode, {closure.REQUEST} or {closure.DELETION}")
    if code == closure.DELETION and found is not None and not deletion:
        raise bad_request(f"$close: reason {closure.DELETION} asks for deletion, 'deletion' says false")
    return deletion or code == closure.DELETION


async def _the_person(request: Request, patient_id: str, parameters: dict) -> tuple[Principal, AuthState, dict, int]:
    """The caller, once known to be the person with their password: their account's state, the Patient, its
    version. A record the caller cannot see is unknown (404); someone else's, forbidden (403)."""
    ctx = context(request)
    stored = await crud.read(ctx, "Patient", patient_id)
    principal: Principal | None = getattr(ctx.access, "principal", None)
    if principal is None or principal.professional is not None or principal.fhir_user != f"Patient/{patient_id}":
        raise forbidden("Only the person themselves closes or reopens their space (their own sign-in)")
    accounts: AuthState | None = getattr(request.app.state.auth, "state", None)
    if accounts is None:
        raise forbidden("Closing or reopening a space needs the authorization server (the person's account)")
    found = operations.parameter(parameters, "password")
    password = found.get("valueString") if found is not None else None
    if not isinstance(password, str) or not password:
        raise bad_request("The person's password is required (parameter 'password', valueString)")
    verdict = await run_in_threadpool(
        closure.check_password, accounts, principal.subject, principal.fhir_user, password
    )
    if verdict == closure.LOCKED:
        raise FhirError(429, [Issue("throttled", "Too many wrong passwords: try again later")],
                        {"Retry-After": str(closure.throttle.WINDOW)})  # fmt: skip
    if verdict != closure.OK:
        raise forbidden(_REFUSED)
    return principal, accounts, loads(stored.body or b"{}", max_depth=1 << 20), stored.version


def _context(request: Request) -> Context:
    """The server's own access (the decision was made here), with the request's observers (its audit trace)."""
    return replace(context(request), access=UNRESTRICTED, constraints=no_constraints)


async def _write(request: Request, patient_id: str, patient: dict, version: int):
    """A versioned update (412 if the Patient changed since it was read)."""
    result = await crud.update(_context(request), "Patient", patient_id, patient, if_match=f'W/"{version}"')
    return result.version

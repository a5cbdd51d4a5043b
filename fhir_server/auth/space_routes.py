"""The person's steps before they have an account (public, under ``/auth/space/``): activation, a new
enrolment code, opposition and its proof (fhir_server.space.lifecycle; docs/lifecycle.md).

Bodies are forms (``application/x-www-form-urlencoded``) or JSON objects of strings. Wrong identifiers get
one refusal, the same bytes whatever was wrong (``REFUSAL``); past the throttle's limits for a NIR or an
address, 429 whatever the request carries. Nothing here logs what was sent.
"""

from __future__ import annotations

import json
from html import escape

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..space import lifecycle, proof
from ..space.enrolment import WINDOW, Enrolment
from . import totp
from .pages import SECURITY_HEADERS, layout
from .routes import MAX_FORM_BYTES, FormError, issuer, read_form
from .users import UserError, new_user

PREFIX = "/auth/space"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: The one answer to wrong identifiers (unknown NIR, wrong card, wrong/expired/used code, wrong birth date, a
#: space that does not allow the step): nothing tells which.
REFUSAL = {
    "error": "invalid_identifiers",
    "error_description": "Les informations saisies ne permettent pas de donner suite à votre demande. Vérifiez "
    "votre numéro de sécurité sociale, le numéro de série de votre carte Vitale et votre code ou votre date de "
    "naissance. (The details given do not allow this request.)",
}
TOO_MANY = {
    "error": "too_many_attempts",
    "error_description": "Trop de tentatives : réessayez plus tard. (Too many attempts: try again later.)",
}
RENEWAL = {
    "message": "Si ces informations correspondent à un espace santé en attente d'activation, un nouveau code "
    "provisoire vient d'être envoyé ; le précédent n'est plus valable. (If these details match a space "
    "waiting for activation, a new code was sent and the previous one revoked.)"
}


class FieldError(Exception):
    pass


def _json(body: dict, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


def refusal() -> JSONResponse:
    return _json(REFUSAL, 400)


async def _fields(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """The named fields of a form or JSON body, each a non-empty string."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/json", "application/fhir+json"):
        raw = await _bounded(request)
        try:
            document = json.loads(raw)
        except ValueError:
            raise FieldError("The body is not JSON") from None
        if not isinstance(document, dict):
            raise FieldError("The body must be a JSON object")
        values = {k: v for k, v in document.items() if isinstance(v, str)}
    else:
        try:
            values = {k: v[0] for k, v in (await read_form(request)).items()}
        except FormError as exc:
            raise FieldError(f"{exc} (or application/json)") from None
    missing = [n for n in names if not values.get(n, "").strip()]
    if missing:
        raise FieldError(f"Missing field(s): {', '.join(missing)}")
    return {n: values[n] if n == "password" else values[n].strip() for n in names}


async def _bounded(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FieldError("The request body is too large")
    return bytes(body)


def _nir(value: str) -> str:
    return "".join(value.split()).upper()


def _enrolment(request: Request) -> Enrolment:
    return Enrolment(request.app.state.auth.state, request.app.state.settings.enrolment_code_days)


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _step(request: Request, names: tuple[str, ...], run, *, count_every: bool = False) -> Response:
    """Read the fields, refuse a locked NIR or address (429), run the step; a refusal counts as a failure
    (``count_every``: every request counts, so new codes cannot be asked for in a loop)."""
    try:
        fields = await _fields(request, names)
    except FieldError as exc:
        return _json({"error": "invalid_request", "error_description": str(exc)}, 400)
    enrolment, address = _enrolment(request), _address(request)
    nir = _nir(fields["nir"])
    if await run_in_threadpool(enrolment.locked, nir, address):
        return _json(TOO_MANY, 429, {"Retry-After": str(WINDOW)})
    try:
        response = await run(enrolment, nir, fields)
    except lifecycle.Refused:
        await run_in_threadpool(enrolment.failure, nir, address)
        return refusal()
    if count_every:
        await run_in_threadpool(enrolment.failure, nir, address)
    return response


def _pdf(opposition: proof.Opposition) -> Response:
    reference = lifecycle.opposition_reference(opposition)
    state = "closed" if opposition.closure else "opposed"
    headers = {
        **NO_STORE,
        "Content-Disposition": f'attachment; filename="attestation-{reference}.pdf"',
        "X-Space-Status": state,  # opposed: the space will not exist; closed: it existed and is now closed
        "X-Proof-Reference": reference,
    }
    return Response(proof.opposition_pdf(opposition, reference), media_type="application/pdf", headers=headers)


async def _pdf_response(opposition: proof.Opposition) -> Response:
    return await run_in_threadpool(_pdf, opposition)


# --- the endpoints ----------------------------------------------------------------------------------------
async def oppose(request: Request) -> Response:
    """nir, vitale_serial, code → the proof of opposition (PDF); after the deadline, the space is closed."""
    store, settings, base = request.app.state.context.store, request.app.state.settings, issuer(request)

    async def run(enrolment: Enrolment, nir: str, f: dict[str, str]) -> Response:
        opposition = await lifecycle.oppose(
            store, enrolment, nir, f["vitale_serial"], f["code"], settings=settings, base=base
        )
        return await _pdf_response(opposition)

    return await _step(request, ("nir", "vitale_serial", "code"), run)


async def opposition_proof(request: Request) -> Response:
    """nir, vitale_serial, birth_date → the proof of opposition again (PDF)."""
    store, base = request.app.state.context.store, issuer(request)

    async def run(enrolment: Enrolment, nir: str, f: dict[str, str]) -> Response:
        opposition = await lifecycle.opposition_proof(
            store, enrolment, nir, f["vitale_serial"], f["birth_date"], base=base
        )
        return await _pdf_response(opposition)

    return await _step(request, ("nir", "vitale_serial", "birth_date"), run)


async def activate(request: Request) -> Response:
    """nir, vitale_serial, code, username, password → the account (201) with its TOTP secret to enrol in an
    authenticator app; 409 when the username is taken."""
    store, base = request.app.state.context.store, issuer(request)
    names = ("nir", "vitale_serial", "code", "username", "password")

    async def run(enrolment: Enrolment, nir: str, f: dict[str, str]) -> Response:
        try:  # the account's own rules first: a bad password costs no identifier check, nor the code
            user = await run_in_threadpool(new_user, f["username"], f["password"], fhir_user=None, with_totp=True)
        except UserError as exc:
            return _json({"error": "invalid_request", "error_description": str(exc)}, 400)
        try:
            patient_id = await lifecycle.activate(store, enrolment, nir, f["vitale_serial"], f["code"], user, base=base)
        except lifecycle.UsernameTaken:
            description = "Cet identifiant est déjà pris : choisissez-en un autre. (This username is taken.)"
            return _json({"error": "username_taken", "error_description": description}, 409)
        assert user.totp_secret is not None
        return _json(
            {
                "username": user.username,
                "patient": f"Patient/{patient_id}",
                "space": "active",
                "totp_secret": user.totp_secret,
                "otpauth_uri": totp.provisioning_uri(user.totp_secret, user.username, "Mon espace santé"),
                "message": "Votre espace santé est activé. Enregistrez ce secret dans votre application "
                "d'authentification : il vous sera demandé à chaque connexion. (Your space is active; add the "
                "secret to your authenticator app.)",
            },
            201,
        )

    return await _step(request, names, run)


async def enrolment_code(request: Request) -> Response:
    """nir, vitale_serial, birth_date → always 202; a new code is sent when they match a space waiting for
    activation."""
    store, base = request.app.state.context.store, issuer(request)

    async def run(enrolment: Enrolment, nir: str, f: dict[str, str]) -> Response:
        channel = await lifecycle.renew_code(store, enrolment, nir, f["vitale_serial"], f["birth_date"], base=base)
        if channel == "email":
            request.app.state.deliverer.wake()
        return _json(RENEWAL, 202)

    return await _step(request, ("nir", "vitale_serial", "birth_date"), run, count_every=True)


# --- the pages the letters and emails link to: a form posting to the same address -----------------------------
_LABELS = {
    "nir": ("Numéro de sécurité sociale (NIR, 15 caractères)", "text", "off"),
    "vitale_serial": ("Numéro de série de votre carte Vitale", "text", "off"),
    "code": ("Code provisoire reçu par courrier ou courriel", "text", "one-time-code"),
    "birth_date": ("Date de naissance (AAAA-MM-JJ)", "text", "bday"),
    "username": ("Identifiant de votre compte (choisi maintenant)", "text", "username"),
    "password": ("Mot de passe (8 caractères au moins)", "password", "new-password"),
}
_PAGES = {
    "activate": ("Activer mon espace santé", ("nir", "vitale_serial", "code", "username", "password"),
                 "Après l'activation, enregistrez le secret affiché dans votre application d'authentification."),
    "oppose": ("M'opposer à la création de mon espace santé", ("nir", "vitale_serial", "code"),
               "Vous recevrez une attestation d'opposition (PDF)."),
    "opposition-proof": ("Télécharger mon attestation d'opposition", ("nir", "vitale_serial", "birth_date"), ""),
    "enrolment-code": ("Recevoir un nouveau code provisoire", ("nir", "vitale_serial", "birth_date"),
                       "Le code précédent ne sera plus valable."),
}  # fmt: skip


def _page(step: str):
    title, names, note = _PAGES[step]
    fields = "".join(
        f'<label for="{name}">{escape(_LABELS[name][0])}</label><input type="{_LABELS[name][1]}" id="{name}" '
        f'name="{name}" autocomplete="{_LABELS[name][2]}" required>'
        for name in names
    )
    form = f'<form method="post" action="{PREFIX}/{step}">{fields}<button type="submit">Valider</button></form>'
    html = layout("fr", title, (f"<p>{escape(note)}</p>" if note else "") + form)

    async def page(request: Request) -> Response:
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    return page


def space_routes() -> list[BaseRoute]:
    steps = {"activate": activate, "oppose": oppose, "opposition-proof": opposition_proof,
             "enrolment-code": enrolment_code}  # fmt: skip
    return [
        *(Route(f"{PREFIX}/{step}", handler, methods=["POST"]) for step, handler in steps.items()),
        *(Route(f"{PREFIX}/{step}", _page(step), methods=["GET"], name=f"page:{step}") for step in steps),
    ]

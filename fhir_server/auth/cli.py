"""``fhir-server users|clients|token|launch|keys``: administering the authorization server.

Each command opens the auth state (``FHIR_SERVER_AUTH_STATE``, else beside ``--store``), does one thing
and prints its result on stdout (secrets only there, once); messages go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import load_settings
from ..policy.codes import ACCESS_MODES, NORMAL
from ..policy.professional import UnknownProfessional
from . import scopes as smart
from .clients import CLIENT_TYPES, ClientError
from .directory import ResolvedProfessional, lookup
from .professional_scopes import (
    ModeError,
    ScopeError,
    check_justification,
    check_regulation,
    has_data,
    professional_token,
)
from .server import AuthServer, create_auth_server
from .totp import provisioning_uri
from .users import UserError

STORE_HELP = "store URL (default sqlite:///./data/fhir.db; env FHIR_SERVER_STORE); the auth state lives beside it"


def _server(args: argparse.Namespace) -> AuthServer:
    settings = load_settings(store=args.store) if args.store else load_settings()
    auth = create_auth_server(settings, settings.store)
    auth.start_sync(create=args.init)  # never a new key store by accident (wrong directory)
    return auth


def _run(action: Callable[[AuthServer, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        auth = _server(args)
        try:
            return action(auth, args)
        except (ClientError, UserError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            auth.close_sync()

    return command


def _store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help=STORE_HELP)
    parser.add_argument(
        "--init",
        action="store_true",
        help="create the auth state (and its signing keys) if there is none; without it a missing state is an "
        "error, so a command run from the wrong directory cannot mint tokens the server rejects",
    )


# --- users ------------------------------------------------------------------------------------------
def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValueError("no terminal to prompt for the password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        raise ValueError("the passwords differ")
    return first


def users_add(auth: AuthServer, args: argparse.Namespace) -> int:
    password = _read_password(args)
    user = auth.add_user(
        args.username, password, fhir_user=args.fhir_user, patients=args.patients, with_totp=args.totp, name=args.name
    )
    print(f"user {user.username} saved", file=sys.stderr)
    if user.totp_secret:
        print(provisioning_uri(user.totp_secret, user.username))
    return 0


# --- clients ----------------------------------------------------------------------------------------
def clients_add(auth: AuthServer, args: argparse.Namespace) -> int:
    jwks = json.loads(Path(args.jwks).read_text()) if args.jwks else None
    secret = auth.add_client(
        args.client_id,
        args.type,
        redirect_uris=args.redirect_uris,
        scope=args.scope,
        jwks=jwks,
        jwks_url=args.jwks_url,
        name=args.name,
    )
    print(f"client {args.client_id} ({args.type}) saved", file=sys.stderr)
    if secret:
        print(secret)
        print("the client secret is shown once: keep it now", file=sys.stderr)
    return 0


# --- token, launch, keys -----------------------------------------------------------------------------
def token(auth: AuthServer, args: argparse.Namespace) -> int:
    if auth.client(args.client) is None:
        print(f"warning: client {args.client!r} is not registered", file=sys.stderr)
    if args.user is not None:
        if args.ps or args.sub or args.fhir_user or args.managed_patients:
            raise ValueError("--user gives the subject, fhirUser and patients: not with --sub, --fhir-user, "
                             "--managed-patient or --ps")  # fmt: skip
        print(_user_token(auth, args))
        return 0
    if args.ps is None:
        if args.ps_role or args.access_mode or args.justification is not None:
            raise ValueError("--ps-role, --access-mode and --justification go with --ps IDNATPS")
        print(
            auth.mint_access_token(
                client_id=args.client,
                scope=args.scope,
                sub=args.sub,
                patient=args.patient,
                encounter=args.encounter,
                fhir_user=args.fhir_user,
                managed_patients=args.managed_patients,
                audience=args.aud,
                lifetime=args.lifetime,
            )
        )
        return 0
    mode = args.access_mode or NORMAL
    try:
        justification = check_justification(mode, args.justification)
        resolved = _resolve_professional(auth, args.ps, args.ps_role)
        check_regulation(mode, resolved)
        granted = professional_token(
            args.scope,
            resolved,
            auth.professionals.matrix,
            lifetime=args.lifetime or auth.settings.access_token_lifetime,
            mode=mode,
            justification=justification,
            contexts=smart.USER_CONTEXTS,  # an operator may mint patient/ scopes with --patient
        )
    except (ModeError, ScopeError, UnknownProfessional) as exc:
        raise ValueError(str(exc)) from None
    if not has_data(granted.scope):
        raise ValueError(f"none of the requested data scopes is open to this professional ({args.scope})")
    professional = resolved.professional
    print(
        auth.mint_access_token(
            client_id=args.client,
            scope=granted.scope,
            sub=args.sub or professional.id_nat_ps,
            patient=args.patient,
            encounter=args.encounter,
            fhir_user=args.fhir_user or professional.role or professional.practitioner,
            audience=args.aud,
            lifetime=granted.lifetime,
            purpose_of_use=granted.purpose_of_use,
            extra=granted.extra,
        )
    )
    print(f"granted scope: {granted.scope}", file=sys.stderr)
    return 0


def _user_token(auth: AuthServer, args: argparse.Namespace) -> str:
    """What the sign-in of ``args.user`` would issue (auth/issuance.py computes the same patients)."""
    from ..space import representatives
    from ..space.clock import CLOCK
    from ..store import open_store

    user = auth.user(args.user)
    if user is None:
        raise ValueError(f"no user {args.user!r}")
    managed = user.managed_patients

    async def held() -> list[str]:
        async with open_store(auth.settings.store, write_concern=auth.settings.mongo_write_concern) as store:
            links = await representatives.links_of(store, user.username, user.own_patient)
            return [h.patient for h in await representatives.held_by(store, links, CLOCK.now())]

    represented = [p for p in asyncio.run(held()) if p not in (managed or ())] if managed is not None else []
    return auth.mint_access_token(
        client_id=args.client,
        scope=args.scope,
        sub=user.username,
        patient=args.patient,
        fhir_user=user.fhir_user,
        managed_patients=[*managed, *represented] if managed is not None else None,
        audience=args.aud,
        lifetime=args.lifetime,
        extra={"represented": represented} if represented else None,
    )


def _resolve_professional(auth: AuthServer, id_nat_ps: str, role: str | None) -> ResolvedProfessional:
    """The PS from the store's directory data (opened like ``fhir-server reindex`` does)."""
    from ..store import open_store, sqlite_path

    url = auth.settings.store
    if url.startswith("sqlite:") and not Path(sqlite_path(url)).is_file():
        raise ValueError(f"no database at {Path(sqlite_path(url)).resolve()} to look the professional up in")
    if role is not None and not role.startswith("PractitionerRole/"):
        raise ValueError("--ps-role must be PractitionerRole/<id>")

    async def main() -> ResolvedProfessional:
        store = open_store(url, write_concern=auth.settings.mongo_write_concern)
        async with store:
            if role is None:
                return await lookup(store, id_nat_ps=id_nat_ps)
            return await lookup(store, fhir_user=role)

    resolved = asyncio.run(main())
    if resolved.professional.id_nat_ps != id_nat_ps:
        raise ValueError(f"{role} is not a role of the professional {id_nat_ps}")
    return resolved


def launch(auth: AuthServer, args: argparse.Namespace) -> int:
    print(auth.create_launch(args.patient, args.encounter, args.user))
    return 0


def keys_rotate(auth: AuthServer, args: argparse.Namespace) -> int:
    kid = auth.rotate_keys(0 if args.now else None)
    when = "now" if args.now else "in 60 s (once every server process has loaded it)"
    print(kid)
    print(f"new signing key {kid}: signs {when}; the previous key stays published until its tokens expire",
          file=sys.stderr)  # fmt: skip
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the authorization server's subcommands on the ``fhir-server`` parser."""
    users = sub.add_parser("users", help="manage users who sign in (SMART authorization)")
    users_sub = users.add_subparsers(title="users commands", metavar="ACTION", required=True)
    p = users_sub.add_parser("add", help="create or replace a user", description="Create or replace a user.")
    p.add_argument("username")
    p.add_argument("--fhir-user", required=True, help="the user's own resource: Patient/123, Practitioner/9, …")
    p.add_argument("--patient", action="append", dest="patients", metavar="ID", help="a Patient the user acts for")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    p.add_argument("--totp", action="store_true", help="require a TOTP code (prints the otpauth:// URI)")
    p.add_argument("--name", help="display name (id_token/userinfo 'name')")
    _store(p)
    p.set_defaults(func=_run(users_add))

    clients = sub.add_parser("clients", help="manage client applications (SMART authorization)")
    clients_sub = clients.add_subparsers(title="clients commands", metavar="ACTION", required=True)
    p = clients_sub.add_parser("add", help="register or replace a client", description="Register or replace a client.")
    p.add_argument("client_id")
    p.add_argument("--type", required=True, choices=CLIENT_TYPES)
    p.add_argument("--redirect-uri", action="append", dest="redirect_uris", metavar="URL", help="repeatable")
    p.add_argument("--scope", help="the scopes it may request (wildcards allowed, e.g. 'patient/*.rs')")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--jwks", metavar="FILE", help="its public keys (JWKS JSON file): private_key_jwt")
    keys.add_argument("--jwks-url", metavar="URL", help="where its public keys are published: private_key_jwt")
    p.add_argument("--name", help="name shown on the consent page")
    _store(p)
    p.set_defaults(func=_run(clients_add))

    p = sub.add_parser("token", help="mint an access token", description="Print a signed access token.")
    p.add_argument("--client", required=True, metavar="CLIENT_ID")
    p.add_argument("--scope", required=True)
    p.add_argument("--patient", metavar="ID", help="patient in context")
    p.add_argument("--encounter", metavar="ID", help="encounter in context")
    p.add_argument("--sub", help="subject (default: the client id)")
    p.add_argument("--fhir-user", help="e.g. Practitioner/9")
    p.add_argument("--managed-patient", action="append", dest="managed_patients", metavar="ID")
    p.add_argument(
        "--user",
        metavar="USERNAME",
        help="a user account's token, as its sign-in would give it: its fhirUser, and the patients it may act for "
        "now (its own, and those its RelatedPersons give it, checked again on every request)",
    )
    p.add_argument("--lifetime", type=int, metavar="S", help="seconds (default: access_token_lifetime)")
    p.add_argument("--aud", metavar="URL", help="FHIR base URL (default: FHIR_SERVER_BASE_URL or http://host:port)")
    ps = p.add_argument_group(
        "a health professional's token",
        "As the RFC 7523 grant of professional software: the PS is looked up in the store, the document scopes are "
        "narrowed to the habilitation matrix, the granted scope is printed on stderr.",
    )
    ps.add_argument("--ps", metavar="IDNATPS", help="the professional's idNatPs (Practitioner.identifier)")
    ps.add_argument("--ps-role", metavar="PractitionerRole/ID", help="the role, when the PS has several")
    ps.add_argument("--access-mode", choices=ACCESS_MODES, help="emergency modes read only, for at most an hour")
    ps.add_argument("--justification", metavar="TEXT", help="why (required for bris_de_glace, refused otherwise)")
    _store(p)
    p.set_defaults(func=_run(token))

    p = sub.add_parser("launch", help="create an EHR launch context", description="Print a launch id.")
    p.add_argument("--patient", metavar="ID")
    p.add_argument("--encounter", metavar="ID")
    p.add_argument("--user", metavar="USERNAME", help="only this user may sign in with it")
    _store(p)
    p.set_defaults(func=_run(launch))

    keys_parser = sub.add_parser("keys", help="manage the token signing keys")
    keys_sub = keys_parser.add_subparsers(title="keys commands", metavar="ACTION", required=True)
    p = keys_sub.add_parser("rotate", help="make a new signing key", description="Rotate the token signing key.")
    p.add_argument("--now", action="store_true", help="sign with it at once (single-process deployments, tests)")
    _store(p)
    p.set_defaults(func=_run(keys_rotate))

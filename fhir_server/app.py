"""create_app(settings): wires settings, store, interactions and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .audit.middleware import AuditMiddleware
from .audit.trace import AuditTrail
from .auth import auth_routes, create_auth_server
from .auth.invitation_routes import invitation_routes
from .auth.space_routes import space_routes
from .config import Settings
from .interactions import Context
from .interactions.definitions import load_search_parameters
from .interactions.export import ExportManager
from .notify.delivery import build_deliverer
from .notify.patient import PatientNotifier
from .notify.subscriptions import Subscriptions
from .rest import (  # noqa: F401 (operation, closure, registry and representation routes register their routes)
    closure_routes,
    document_routes,
    errors,
    health,
    measures_routes,
    messaging_routes,
    openapi,
    operation_routes,
    registry_routes,
    representation_routes,
    routes,
    summary_routes,
)
from .rest.fastpath import ReadFastPath
from .search.indexing import use_content_search
from .security.authenticate import Authenticate
from .space.sweep import Sweeper
from .store import open_store
from .validation import warm_up
from .validation.remote import validators

#: Libraries whose DEBUG/INFO logs quote what they carry (pymongo: the commands, hence the documents): held at
#: WARNING whatever the server's log level, so health data never reaches the logs.
QUIET_LOGGERS = ("pymongo",)


def create_app(settings: Settings | None = None) -> ASGIApp:
    settings = settings or Settings()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    store = open_store(
        settings.store, write_concern=settings.mongo_write_concern, read_cache_entries=settings.read_cache_entries
    )
    # --- SMART authorization server (fhir_server.auth): None when auth is off
    auth = create_auth_server(settings, settings.store) if settings.auth else None
    use_content_search(settings.content_search)
    validator = validators(settings.validation_helpers(), settings.content_search)
    deliverer = build_deliverer(store, settings)  # the outbox's worker: emails, rest-hooks (fhir_server.notify)
    # creates the due spaces, destroys the expired ones with their accounts (fhir_server.space.sweep)
    sweeper = Sweeper(store, settings, auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.start()
        if auth is not None:
            await auth.start()
        await validator.start()  # helpers warm up in the background; until then validation is in-process
        warm_up()
        if settings.load_definitions:
            await load_search_parameters(store)
        app.state.exports = ExportManager(settings)
        await app.state.exports.start()
        await deliverer.start()
        await sweeper.start()
        try:
            yield
        finally:
            await sweeper.stop()
            await deliverer.stop()
            await app.state.exports.stop()
            await validator.close()
            if auth is not None:
                await auth.close()
            await store.close()

    # No FastAPI-generated docs: the URL space belongs to FHIR ([base]/[type]/…); rest.openapi serves an
    # OpenAPI document made from the CapabilityStatement (/openapi.json) and Swagger UI (/docs) instead.
    app = FastAPI(
        title="fhir-server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.deliverer = deliverer
    # R4 Subscriptions: every write evaluated in its unit of work; delivery results update Subscription.status
    subscriptions = Subscriptions(store, settings, deliverer)
    app.state.context = Context(store=store, settings=settings, validator=validator, observers=(subscriptions,))
    errors.install(app)
    # --- SMART authorization server: its endpoints first (/.well-known/…, /auth/…)
    app.state.auth = auth
    # --- the audit trail (fhir_server.audit): every access of an authenticated caller is traced
    app.state.audit = AuditTrail(store) if settings.audit else None
    if app.state.audit is not None:  # the patient's notifications are derived from the trail (fhir_server.notify)
        app.state.audit.listeners.append(PatientNotifier(settings, wake=deliverer.wake))
    if auth is not None:
        auth.directory = store  # professionals are looked up in the server's own directory data
        app.router.routes.extend([*auth_routes(), *space_routes(), *invitation_routes()])
    # ---
    app.router.routes.extend([*health.routes, *routes.routes, *openapi.routes, routes.INVALID_ID])
    fhir_app = FhirApp(app)
    if auth is not None:
        auth.on_revoked(fhir_app.authenticate.forget)  # revoked here → dropped from the token cache at once
    return fhir_app


class FhirApp:
    """Authentication, then the audit trace, then the read fast path, then the FastAPI app (``.state`` and
    ``.router`` reach it)."""

    def __init__(self, app: FastAPI) -> None:
        self.fastapi = app
        self.authenticate = Authenticate(AuditMiddleware(ReadFastPath(app, app.state), app.state), app.state)
        self._entry: ASGIApp = with_cors(self.authenticate, app.state.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    @property
    def state(self):  # tests and tools reach settings/context through app.state
        return self.fastapi.state

    @property
    def router(self):
        return self.fastapi.router


def app_from_env() -> ASGIApp:
    """Factory for uvicorn workers: settings come from FHIR_SERVER_* variables."""
    return create_app(Settings())


def with_cors(app: ASGIApp, settings: Settings) -> ASGIApp:
    """CORS outermost, so browser preflights (which carry no token) are answered before authentication."""
    origins = [o.strip() for o in settings.cors_allow_origins.split(",") if o.strip()]
    if not origins:
        return app
    cors = CORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"),
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_RESPONSE_HEADERS,
        max_age=3600,
    )

    async def entry(scope: Scope, receive: Receive, send: Send) -> None:
        # Only browser requests carry Origin: the others skip the middleware's header parsing (hot path).
        if scope["type"] == "http" and any(name == b"origin" for name, _ in scope["headers"]):
            await cors(scope, receive, send)
        else:
            await app(scope, receive, send)

    return entry


CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept", "Prefer", "If-Match", "If-None-Match",
                        "If-None-Exist", "If-Modified-Since", "X-Requested-With")  # fmt: skip
CORS_RESPONSE_HEADERS = ("Location", "Content-Location", "ETag", "Last-Modified", "X-Progress", "Retry-After",
                         "WWW-Authenticate", "Expires")  # fmt: skip

"""One typed settings object: environment variables (``FHIR_SERVER_*``) overridden by CLI flags."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = "sqlite:///./data/fhir.db"
STORE_URL_FORMS = "sqlite:///relative/path.db, sqlite:////absolute/path.db, mongodb://host/db or mongodb+srv://host/db"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def check_store_url(url: str) -> str:
    """A store (or auth state) URL the server can open; the message names the accepted forms."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ValueError(f"a SQLite URL needs a path; accepted: {STORE_URL_FORMS}")
    elif scheme not in ("mongodb", "mongodb+srv"):
        raise ValueError(f"unsupported scheme {scheme or url!r}; accepted: {STORE_URL_FORMS}")
    return url


class Settings(BaseSettings):
    def validation_helpers(self) -> int:
        if self.validation_processes >= 0:
            return self.validation_processes
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    model_config = SettingsConfigDict(env_prefix="FHIR_SERVER_", extra="ignore")

    store: str = Field(DEFAULT_STORE, description="Store URL: sqlite:///rel.db, sqlite:////abs.db, mongodb://…")
    host: str = Field("127.0.0.1", description="Interface to listen on")
    port: int = Field(8080, ge=1, le=65535, description="TCP port")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    base_url: str | None = Field(
        None, description="Public base URL (e.g. https://fhir.example.org/fhir); default: from the request"
    )
    # 15 MiB: a stored version must fit MongoDB's 16 MiB document limit with its metadata.
    max_body_bytes: int = Field(15 * 1024 * 1024, ge=1024, description="Largest accepted request body (413)")
    # 10 MiB of bytes: base64 in a Binary (4/3 as large) still fits max_body_bytes and MongoDB's 16 MiB document limit.
    patient_document_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest document a patient uploads, in bytes once decoded (413)"
    )
    message_attachment_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest attachment of a message, in bytes once decoded (413)"
    )
    message_max_attachments: int = Field(10, ge=0, description="Most attachments a message carries (422)")
    max_json_depth: int = Field(64, ge=8, description="Deepest accepted JSON nesting (400)")
    default_page_size: int = Field(50, ge=1, description="_count when the client gives none")
    max_page_size: int = Field(1000, ge=1, description="Largest _count honoured")
    max_bundle_entries: int = Field(10_000, ge=1, description="Most entries in a batch/transaction Bundle (413)")
    mongo_write_concern: str = Field("majority", description="MongoDB write concern w= (majority by default)")
    load_definitions: bool = Field(
        True,
        description="Store the official SearchParameters at start-up (kept in line with the registry) so "
        "GET /SearchParameter lists them",
    )
    export_dir: str = Field("./data/export", description="Directory of the $export jobs' state and NDJSON files")
    export_expiry_seconds: int = Field(
        3600, ge=1, description="Seconds an $export job and its files are kept after it finishes"
    )
    log_level: str = Field("info", description="Log level")
    read_cache_entries: int = Field(
        10_000,
        ge=0,
        description="SQLite: current versions kept in memory for reads, checked against PRAGMA data_version on "
        "every read (exact; 0 = off)",
    )
    audit: bool = Field(
        True,
        description="Trace every access of an authenticated caller as AuditEvents, committed before the answer "
        "(needs auth: without it there is no one to trace); docs/audit.md",
    )
    content_search: bool = Field(
        False,
        description="Index every string of every resource for _content searches (writes about 2x costlier; "
        "fhir-server reindex after a change)",
    )
    validation_processes: int = Field(
        -1,
        ge=-1,
        description="Helper processes validating incoming resources (R4B models are CPU-bound under the GIL): "
        "0 = validate in the server process; -1 = one per CPU core beyond the first, at most 4",
    )
    # --- SMART on FHIR authorization (fhir_server.auth = authorization server, fhir_server.security = enforcement)
    auth: bool = Field(
        True, description="Require SMART/OAuth2 bearer tokens (off: unauthenticated, loopback-only, for development)"
    )
    auth_state: str | None = Field(
        None,
        description="Where OAuth state lives (clients, users, codes, refresh tokens, keys): sqlite:///… or "
        "mongodb://…; default: beside the store (auth.db next to the SQLite file, auth_* collections in the "
        "MongoDB database)",
    )
    cors_allow_origins: str = Field(
        "*",
        description="Origins allowed to call the API from a browser (CORS), comma-separated; '*' = any "
        "(bearer tokens, no cookies: SMART apps run on their own origins); empty = CORS off",
    )
    access_token_lifetime: int = Field(300, ge=10, description="Seconds an access token is valid")
    refresh_token_lifetime: int = Field(30 * 24 * 3600, ge=60, description="Seconds an offline refresh token is valid")
    authorization_code_lifetime: int = Field(60, ge=5, description="Seconds an authorization code is valid")
    habilitation_matrix: str | None = Field(
        None,
        description="The DMP habilitation matrix file (TSV, docs/policy.md) replacing the shipped one; check it with "
        "`fhir-server matrix check`",
    )
    portal_url: str | None = Field(
        None,
        description="The patients' portal: notification emails link to [portal_url]/Communication/[id] "
        "(default: the FHIR base URL)",
    )
    # --- notifications: the outbox's delivery worker (fhir_server.notify.delivery), email over SMTP
    smtp_host: str | None = Field(
        None, description="SMTP server for email notifications; unset: email disabled (emails stay in the outbox)"
    )
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP server port (587 for starttls, 465 for tls)")
    smtp_tls: str = Field(
        "none", description="SMTP transport security: none, starttls (required upgrade) or tls (implicit TLS)"
    )
    smtp_username: str | None = Field(None, description="SMTP login (AUTH); unset: no authentication")
    smtp_password: SecretStr | None = Field(None, description="SMTP password (never logged nor echoed)")
    smtp_from: str = Field("Mon espace santé <no-reply@localhost>", description="From of the notification emails")
    smtp_timeout_seconds: float = Field(30.0, gt=0, description="Seconds an SMTP connection or command may take")
    outbox_poll_seconds: float = Field(
        5.0, gt=0, description="Seconds between the delivery worker's passes over the outbox (writes wake it too)"
    )
    outbox_max_attempts: int = Field(
        8, ge=1, description="Delivery attempts of a notification (backoff 30 s, 1 min, 2 min… ≤ 1 h) before it fails"
    )

    # --- the person's space (fhir_server.space, docs/lifecycle.md)
    space_opposition_days: int = Field(
        42,
        ge=0,
        description="Days after the registry notification during which the person may object before "
        "their space is created automatically (6 weeks in Mon espace santé)",
    )
    space_retention_days: int = Field(
        3653,
        ge=0,
        description="Days a closed space is kept (reopenable) before its destruction (10 years: CSP R.1111-45)",
    )
    enrolment_code_days: int = Field(
        90, ge=1, description="Days a provisional enrolment code (activation, opposition) stays valid"
    )
    invitation_days: int = Field(14, ge=1, description="Days an invitation to become a delegate (aidant) stays valid")
    space_sweep_seconds: float = Field(
        3600.0,
        gt=0,
        description="Seconds between the server's passes that create due spaces and destroy closed "
        "spaces past their retention (fhir-server space sweep does one pass)",
    )

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        return check_store_url(value)

    @field_validator("auth_state")
    @classmethod
    def _auth_state_url(cls, value: str | None) -> str | None:
        return None if value is None else check_store_url(value)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"accepted: {', '.join(LOG_LEVELS)}")
        return value.lower()

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc):
            raise ValueError("accepted: an absolute http:// or https:// URL, e.g. https://fhir.example.org/fhir")
        return value

    @field_validator("smtp_tls")
    @classmethod
    def _smtp_tls(cls, value: str) -> str:
        if value.lower() not in ("none", "starttls", "tls"):
            raise ValueError("accepted: none, starttls or tls")
        return value.lower()

    @field_validator("mongo_write_concern")
    @classmethod
    def _write_concern(cls, value: str) -> str:
        if value != "majority" and not value.isdigit():
            raise ValueError("accepted: majority or a number of nodes (1, 2, …)")
        return value


class SettingsError(ValueError):
    """Settings that cannot be used: one line per problem, naming the setting and what is accepted."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_settings(**overrides: object) -> Settings:
    """``Settings(**overrides)``, with every invalid value reported as one readable line (no traceback)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError([_problem(error) for error in exc.errors()]) from None


def _problem(error: dict) -> str:
    name = str(error["loc"][0]) if error["loc"] else "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if name == "store" and isinstance(given, str) and "@" in given:  # never echo credentials
        given = given.split("://", 1)[0] + "://***@" + given.rsplit("@", 1)[1]
    shown = f" {given!r}:" if isinstance(given, str | int | float) else ":"
    where = f"{FLAGS[name]} or FHIR_SERVER_{name.upper()}" if name in FLAGS else f"FHIR_SERVER_{name.upper()}"
    return f"invalid setting {name} ({where}){shown} {message}"


#: Settings that ``fhir-server serve`` (and the administration commands, for ``store``) also take as flags.
FLAGS = {"store": "--store", "host": "--host", "port": "--port", "workers": "--workers", "base_url": "--base-url",
         "log_level": "--log-level", "auth": "--auth"}  # fmt: skip

"""One typed settings object: environment variables (``FHIR_SERVER_*``) overridden by CLI flags."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = "sqlite:///./data/fhir.db"


class Settings(BaseSettings):
    def validation_helpers(self) -> int:
        if self.validation_processes >= 0:
            return self.validation_processes
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    model_config = SettingsConfigDict(env_prefix="FHIR_SERVER_", extra="ignore")

    store: str = Field(DEFAULT_STORE, description="Store URL: sqlite:///rel.db, sqlite:////abs.db, mongodb://…")
    host: str = Field("127.0.0.1", description="Interface to listen on")
    port: int = Field(8080, description="TCP port")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    base_url: str | None = Field(
        None, description="Public base URL (e.g. https://fhir.example.org/fhir); default: from the request"
    )
    # 15 MiB: a stored version must fit MongoDB's 16 MiB document limit with its metadata.
    max_body_bytes: int = Field(15 * 1024 * 1024, ge=1024, description="Largest accepted request body (413)")
    max_json_depth: int = Field(64, ge=8, description="Deepest accepted JSON nesting (400)")
    default_page_size: int = Field(50, ge=1, description="_count when the client gives none")
    max_page_size: int = Field(1000, ge=1, description="Largest _count honoured")
    max_bundle_entries: int = Field(10_000, ge=1, description="Most entries in a batch/transaction Bundle (413)")
    mongo_write_concern: str = Field("majority", description="MongoDB write concern w= (majority by default)")
    load_definitions: bool = Field(
        True, description="Store the official SearchParameters at start-up (once) so GET /SearchParameter lists them"
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

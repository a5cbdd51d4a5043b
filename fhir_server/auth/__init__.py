"""The OAuth 2.0 / SMART App Launch 2.2 authorization server (see docs/auth.md).

``create_auth_server(settings, store_url)`` builds it; the app starts it in its lifespan and keeps it at
``app.state.auth``; ``auth_routes()`` are its HTTP endpoints. Enforcement on the FHIR API (checking
bearer tokens against scopes) is ``fhir_server.security``'s, through ``AuthServer.verify_access_token``
and ``AuthServer.is_revoked``.
"""

from .routes import auth_routes
from .server import AuthServer, create_auth_server
from .tokens import InvalidToken

__all__ = ["AuthServer", "InvalidToken", "auth_routes", "create_auth_server"]

"""The resource server's security layer: who is calling (Principal, from a SMART access token) and
what they may do (ScopedAccess, from their scopes). Interactions enforce it through ``Context.access``."""

from .principal import Principal
from .scopes import ScopeGrant, parse_scopes

__all__ = ["Principal", "ScopeGrant", "parse_scopes"]

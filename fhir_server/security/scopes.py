"""SMART clinical-data scopes (http://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

v2: ``<patient|user|system>/<Type|*>.<c r u d s, in that order>[?param=value&…]`` (granular scopes);
v1: ``.read`` (= rs), ``.write`` (= cud), ``.*`` (= cruds). Other scopes (openid, fhirUser, launch,
offline_access, …) are not data grants and are skipped here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

# FHIR interactions as SMART v2 permission letters.
CREATE, READ, UPDATE, DELETE, SEARCH = "c", "r", "u", "d", "s"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(?:\?(.*))?$")
_ORDER = "cruds"


@dataclass(frozen=True, slots=True)
class ScopeGrant:
    """One clinical scope: whose data (context), which type ("*" = all), which interactions, and the
    granular search criteria narrowing it (empty = the whole type)."""

    context: str
    type: str
    permissions: frozenset[str]
    criteria: tuple[tuple[str, str], ...] = ()
    text: str = ""
    query: str | None = None  # the granular criteria as written

    def covers(self, type_: str, permission: str) -> bool:
        return permission in self.permissions and self.type in ("*", type_)

    def includes(self, other: ScopeGrant) -> bool:
        """Does this grant allow everything ``other`` does (a client registered with it may get ``other``;
        a refresh may narrow a grant to ``other``)?"""
        return (
            self.context == other.context
            and self.type in ("*", other.type)
            and other.permissions <= self.permissions
            and (self.query is None or self.query == other.query)
        )


def parse_scope(text: str) -> ScopeGrant | None:
    """The grant ``text`` expresses, or None for non-data scopes and malformed ones (never a grant)."""
    match = _SCOPE.match(text)
    if match is None:
        return None
    context, type_, letters, query = match.groups()
    if letters in V1:
        if query is not None:  # granular criteria exist only in v2 syntax
            return None
        letters = V1[letters]
    elif not _in_order(letters):
        return None
    criteria = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else ()
    if query is not None and not criteria:
        return None
    return ScopeGrant(context, type_, frozenset(letters), criteria, text, query)


def _in_order(letters: str) -> bool:
    """v2 letters are a non-empty subsequence of ``cruds`` (``rs``, ``cu``, ``cruds``; not ``sr``)."""
    position = 0
    for letter in letters:
        found = _ORDER.find(letter, position)
        if found < 0:
            return False
        position = found + 1
    return bool(letters)


def parse_scopes(scope: str) -> tuple[ScopeGrant, ...]:
    return tuple(g for g in map(parse_scope, scope.split()) if g is not None)

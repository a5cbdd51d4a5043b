"""ValueSet expansion for ``:in`` / ``:not-in`` from the ValueSets stored on this server.

No terminology server is behind this: a ValueSet is usable when it enumerates its codes (an
``expansion``, or ``compose.include`` with ``concept`` lists or whole code systems). Filters and
imported ValueSets need a terminology service and are refused with a clear 400, never guessed.
"""

from __future__ import annotations

from ..errors import bad_request, not_supported

# (system, code); code None = every code of the system
Code = tuple[str | None, str | None]


def expand(valueset: dict) -> tuple[Code, ...]:
    url = valueset.get("url", "?")
    expansion = valueset.get("expansion")
    if isinstance(expansion, dict) and expansion.get("contains"):
        return tuple(_contains(expansion["contains"]))
    compose = valueset.get("compose")
    if not isinstance(compose, dict) or not compose.get("include"):
        raise bad_request(f"ValueSet {url} has neither an expansion nor a compose.include to expand")
    included = [code for part in compose["include"] for code in _part(url, part)]
    excluded = {code for part in compose.get("exclude", ()) for code in _part(url, part)}
    if any(code is None for _, code in excluded):
        raise not_supported(f"ValueSet {url} excludes whole code systems: a terminology server is needed")
    return tuple(c for c in included if c not in excluded)


def _contains(items: list) -> list[Code]:
    codes: list[Code] = []
    for item in items:
        if isinstance(item, dict):
            if item.get("code") and not item.get("abstract"):
                codes.append((item.get("system"), item["code"]))
            codes += _contains(item.get("contains", []))
    return codes


def _part(url: str, part: dict) -> list[Code]:
    if part.get("filter") or part.get("valueSet"):
        raise not_supported(f"ValueSet {url} uses filters or imports: expanding it needs a terminology server")
    system = part.get("system")
    concepts = part.get("concept")
    if concepts:
        return [(system, c["code"]) for c in concepts if isinstance(c, dict) and c.get("code")]
    if system:
        return [(system, None)]
    return []

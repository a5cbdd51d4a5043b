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


# --- code system hierarchies, for token :below / :above ---------------------------------------------

Hierarchy = dict[str, frozenset[str]]  # code → its parents


def hierarchy(codesystem: dict) -> Hierarchy:
    """The is-a hierarchy of a stored CodeSystem: nested ``concept`` lists and ``parent``/``child`` properties."""
    parents: dict[str, set[str]] = {}

    def walk(concepts: object, parent: str | None) -> None:
        for concept in concepts if isinstance(concepts, list) else ():
            code = concept.get("code") if isinstance(concept, dict) else None
            if not isinstance(code, str):
                continue
            found = parents.setdefault(code, set())
            if parent is not None:
                found.add(parent)
            for prop in concept.get("property") or ():
                value = prop.get("valueCode") if isinstance(prop, dict) else None
                if isinstance(value, str) and prop.get("code") == "parent":
                    found.add(value)
                elif isinstance(value, str) and prop.get("code") == "child":
                    parents.setdefault(value, set()).add(code)
            walk(concept.get("concept"), code)

    walk(codesystem.get("concept"), None)
    return {code: frozenset(found) for code, found in parents.items()}


def subsumed(tree: Hierarchy, code: str, below: bool) -> set[str]:
    """``code`` and what it subsumes (``below``), or ``code`` and what subsumes it."""
    links: dict[str, set[str]] = {}
    if below:
        for child, found in tree.items():
            for parent in found:
                links.setdefault(parent, set()).add(child)
    else:
        links = {child: set(found) for child, found in tree.items()}
    seen, frontier = {code}, [code]
    while frontier:
        nxt = [c for current in frontier for c in links.get(current, ()) if c not in seen]
        seen.update(nxt)
        frontier = nxt
    return seen

"""The searchset Bundle of a search page (also used for GET entries of batch/transaction Bundles)."""

from __future__ import annotations

from urllib.parse import urlencode

from orjson import Fragment

from ..interactions import search as search_interaction
from ..store import ResourceVersion
from .responses import bundle, bundle_entry


def searchset(
    base: str, path: str, request: search_interaction.SearchRequest, page: search_interaction.SearchPage
) -> bytes:
    url = f"{base}/{path}"
    kept = list(request.link_params)
    links = [("self", url + (f"?{urlencode(kept)}" if kept else ""))]
    for relation, cursor in (("next", page.next_cursor), ("previous", page.previous_cursor)):
        if cursor:
            links.append((relation, f"{url}?{urlencode([*kept, ('_cursor', cursor)])}"))
    entries = [_entry(base, v, "match", page) for v in page.matches]
    entries += [_entry(base, v, "include", page) for v in page.included]
    if page.warnings:
        outcome = {"resourceType": "OperationOutcome", "issue": [w.to_fhir() for w in page.warnings]}
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    return bundle("searchset", entries, total=page.total, links=links, total_method=page.total_method)


def _entry(base: str, version: ResourceVersion, mode: str, page: search_interaction.SearchPage) -> dict:
    entry = bundle_entry(base, version)
    elements = page.elements if mode == "match" else None  # _elements does not apply to includes
    if page.summary != "false" or elements is not None:
        assert version.body is not None
        entry["resource"] = Fragment(search_interaction.shape(version.body, page.summary, elements))
    entry["search"] = {"mode": mode}
    return entry

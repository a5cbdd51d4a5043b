"""Extract the official R4 SearchParameter definitions the server uses into capability/.

Usage: python tools/build_search_parameters.py [../shared/data/hl7.fhir.r4.examples-4.0.1.tgz]
Reads ``package/Bundle-searchParams.json`` of the package: the R4 specification's ``search-parameters.json``
(1,375 SearchParameters), and nothing else. The package's ``SearchParameter-*.json`` files are not used:
they also hold examples (``SearchParameter/example-reference`` redefines ``Condition?subject`` with target
Organization, ``SearchParameter/example`` redefines ``_id``, ``example-extension`` adds ``Patient?part-agree``)
and extension-page parameters that ``search-parameters.json`` does not define.
Writes capability/search-parameters-r4.json: a Bundle-like list of the SearchParameters, with the
elements the engine needs (url, code, base, type, expression, target, modifier, comparator, component…).
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "capability" / "search-parameters-r4.json"
DEFAULT_TGZ = ROOT.parent / "shared" / "data" / "hl7.fhir.r4.examples-4.0.1.tgz"
SOURCE = "package/Bundle-searchParams.json"

KEEP = (
    "resourceType", "id", "url", "version", "name", "status", "code", "base", "type", "expression",
    "xpathUsage", "target", "multipleOr", "multipleAnd", "comparator", "modifier", "chain", "component",
    "description",
)  # fmt: skip


def official(tgz: str | Path) -> list[dict]:
    """The SearchParameters of the specification's ``search-parameters.json`` Bundle, as published."""
    with tarfile.open(tgz) as archive:
        bundle = json.load(archive.extractfile(SOURCE))  # type: ignore[arg-type]
    found = [entry["resource"] for entry in bundle["entry"]]
    if any(r["resourceType"] != "SearchParameter" for r in found):
        raise SystemExit(f"{SOURCE}: not a Bundle of SearchParameters")
    return found


def build(tgz: str | Path) -> list[dict]:
    params = [{k: doc[k] for k in KEEP if k in doc} for doc in official(tgz)]
    params.sort(key=lambda p: p["url"])
    seen: dict[tuple[str, str], str] = {}
    for p in params:  # the registry is keyed by (base, code): one definition each
        for base in p.get("base", ()):
            if (base, p["code"]) in seen:
                raise SystemExit(f"{base}?{p['code']}: defined by {seen[base, p['code']]} and {p['url']}")
            seen[base, p["code"]] = p["url"]
    return params


def main(tgz: str | Path = DEFAULT_TGZ) -> None:
    params = build(tgz)
    OUT.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "parameters": params}, indent=0))
    print(f"{len(params)} SearchParameters → {OUT.relative_to(ROOT)} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(*sys.argv[1:2])

"""Extract the official R4 SearchParameter definitions the server uses into capability/.

Usage: python tools/build_search_parameters.py ../shared/data/hl7.fhir.r4.examples-4.0.1.tgz
Writes capability/search-parameters-r4.json: a Bundle-like list of the SearchParameters, with the
elements the engine needs (url, code, base, type, expression, target, modifier, comparator, component…).
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

KEEP = (
    "resourceType", "id", "url", "version", "name", "status", "code", "base", "type", "expression",
    "xpathUsage", "target", "multipleOr", "multipleAnd", "comparator", "modifier", "chain", "component",
    "description",
)  # fmt: skip


def main(tgz: str) -> None:
    params = []
    with tarfile.open(tgz) as archive:
        for member in archive.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not (name.startswith("SearchParameter-") and name.endswith(".json")):
                continue
            doc = json.load(archive.extractfile(member))
            params.append({k: doc[k] for k in KEEP if k in doc})
    params.sort(key=lambda p: p["url"])
    out = Path(__file__).resolve().parents[1] / "capability" / "search-parameters-r4.json"
    out.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "parameters": params}, indent=0))
    print(f"{len(params)} SearchParameters → {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(sys.argv[1])

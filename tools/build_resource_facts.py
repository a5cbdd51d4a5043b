"""Extract from the official R4 package the per-type facts the server needs at run time.

Usage: python tools/build_resource_facts.py ../shared/data/hl7.fhir.r4.examples-4.0.1.tgz
Writes capability/resource-elements-r4.json: for each resource type, its top-level elements that are
``isSummary`` (for ``_summary=true``) and those with ``min >= 1`` (kept by ``_summary=text`` and
``_elements``), choice elements listed by their ``[x]`` stem; and capability/compartments-r4.json: the
CompartmentDefinitions (Patient, Encounter, RelatedPerson, Practitioner, Device) as type → parameters.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "capability"


def _elements(sd: dict) -> dict:
    summary, mandatory = [], []
    type_ = sd["type"]
    for element in sd["snapshot"]["element"]:
        path = element["path"]
        if path.count(".") != 1 or not path.startswith(type_ + "."):
            continue
        name = path.split(".", 1)[1]
        if element.get("isSummary"):
            summary.append(name)
        if element.get("min", 0) >= 1:
            mandatory.append(name)
    return {"summary": summary, "mandatory": mandatory}


def main(tgz: str) -> None:
    elements, compartments = {}, {}
    with tarfile.open(tgz) as archive:
        for member in archive.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if name.startswith("StructureDefinition-") and name.endswith(".json"):
                sd = json.load(archive.extractfile(member))
                if sd.get("kind") == "resource" and sd.get("derivation") == "specialization":
                    elements[sd["type"]] = _elements(sd)
            elif name.startswith("CompartmentDefinition-") and name != "CompartmentDefinition-example.json":
                cd = json.load(archive.extractfile(member))
                compartments[cd["code"]] = {r["code"]: r["param"] for r in cd["resource"] if r.get("param")}
    (OUT / "resource-elements-r4.json").write_text(json.dumps(elements, sort_keys=True, indent=0))
    (OUT / "compartments-r4.json").write_text(json.dumps(compartments, sort_keys=True, indent=0))
    print(f"{len(elements)} resource types, compartments: {sorted(compartments)}")


if __name__ == "__main__":
    main(sys.argv[1])

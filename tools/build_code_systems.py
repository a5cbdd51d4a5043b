"""Extract from the official R4 package the code system implied by each required ``code`` binding.

Usage: python tools/build_code_systems.py [../shared/data/hl7.fhir.r4.examples-4.0.1.tgz]
Writes capability/code-systems-r4.json: element path (``Patient.gender``, ``Address.use``,
``Patient.contact.gender``; the path of the type that defines the element) → CodeSystem url
(``http://hl7.org/fhir/administrative-gender``).

A FHIR ``code`` carries no system: it is implied by the element's binding. An element is kept when it is
of type ``code`` only, owned by a base resource or data type (``derivation = specialization``; inherited
elements are listed under their owner), bound with strength ``required`` to a ValueSet whose
``compose.include`` all name one and the same ``system`` (no ``valueSet`` imports). Anything else
(several systems, imports, an unknown ValueSet) is left out: its codes stay indexed without a system.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "capability" / "code-systems-r4.json"
DEFAULT_TGZ = ROOT.parent / "shared" / "data" / "hl7.fhir.r4.examples-4.0.1.tgz"


def single_system(valueset: dict) -> str | None:
    """The one CodeSystem a ValueSet draws all its codes from, else None."""
    includes = (valueset.get("compose") or {}).get("include") or ()
    systems = {include.get("system") for include in includes}
    if len(systems) != 1 or any(include.get("valueSet") for include in includes):
        return None
    return systems.pop()


def required_code_bindings(sd: dict) -> dict[str, str]:
    """Owned element path → bound ValueSet url (without ``|version``) for required ``code`` elements."""
    found = {}
    for element in sd.get("snapshot", {}).get("element", ()):
        path = element["path"]
        if (element.get("base") or {}).get("path", path) != path:
            continue  # inherited: listed under the type that defines it
        types = [t.get("code") for t in element.get("type") or ()]
        binding = element.get("binding") or {}
        if types == ["code"] and binding.get("strength") == "required" and binding.get("valueSet"):
            found[path] = binding["valueSet"].split("|", 1)[0]
    return found


def build(tgz: str | Path) -> dict[str, str]:
    bindings: dict[str, str] = {}
    systems: dict[str, str | None] = {}
    with tarfile.open(tgz) as archive:
        for member in archive.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if name.startswith("StructureDefinition-") and name.endswith(".json"):
                sd = json.load(archive.extractfile(member))  # type: ignore[arg-type]
                if sd.get("derivation") == "specialization" and sd.get("kind") in ("resource", "complex-type"):
                    bindings.update(required_code_bindings(sd))
            elif name.startswith("ValueSet-") and name.endswith(".json"):
                vs = json.load(archive.extractfile(member))  # type: ignore[arg-type]
                if vs.get("url"):
                    systems[vs["url"]] = single_system(vs)
    return {path: system for path, vs in sorted(bindings.items()) if (system := systems.get(vs))}


def main(tgz: str | Path = DEFAULT_TGZ) -> None:
    mapping = build(tgz)
    OUT.write_text(json.dumps(mapping, indent=0) + "\n")
    print(f"{len(mapping)} required code bindings with a single code system → {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main(*sys.argv[1:2])

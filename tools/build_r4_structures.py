"""Generate ``fhir_server/validation/r4_structures.json`` from the official R4 StructureDefinitions.

The R4B pydantic models validate most resources; the types listed in ``R4_ONLY`` have no R4B model or
changed incompatibly between R4 and R4B (see ``tools/compare_r4_r4b.py``), so they are checked by the
structural validator in ``fhir_server/validation/r4.py``, driven by the file this script writes. Only those
types and the datatypes they reach are written, which keeps the file small.

Usage: python tools/build_r4_structures.py [path/to/hl7.fhir.r4.examples-4.0.1.tgz]

Also imported by ``tools/compare_r4_r4b.py`` for ``load_definitions`` and ``element_tree``.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TGZ = ROOT.parent / "shared" / "data" / "hl7.fhir.r4.examples-4.0.1.tgz"
OUTPUT = ROOT / "fhir_server" / "validation" / "r4_structures.json"

# Conclusion of tools/compare_r4_r4b.py (fhir.resources 8.3.0): 18 types have no R4B model, and Evidence and
# EvidenceVariable were rewritten in R4B (R4 elements missing, others added or newly required). Every other
# type validates with its R4B model plus the fix-ups in fhir_server/validation/r4b.py.
R4_ONLY: tuple[str, ...] = (
    "EffectEvidenceSynthesis",
    "Evidence",
    "EvidenceVariable",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "RiskEvidenceSynthesis",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
)

_FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
_REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
# JSON type of each primitive (R4 JSON format, 2.6.2.1). Not read from the SDs: their ``value`` element says
# System.String for unsignedInt and positiveInt, which JSON still writes as numbers.
_JSON_KIND = {
    "boolean": "boolean",
    "integer": "integer",
    "unsignedInt": "integer",
    "positiveInt": "integer",
    "decimal": "decimal",
}
_BACKBONE_TYPES = {"BackboneElement", "Element"}

# An element: [type, min, max (-1 = unbounded), choice group ("" if none), 1 if it is a JSON attribute
# that cannot carry a ``_name`` extension sibling (Element.id, Extension.url, Resource.id)].
Elem = list


def load_definitions(tgz: Path) -> dict[str, dict]:
    """Base (non-profile) StructureDefinitions by type name: resources, datatypes and primitives."""
    sds: dict[str, dict] = {}
    with tarfile.open(tgz) as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if not (name.startswith("StructureDefinition-") and name.endswith(".json")):
                continue
            sd = json.load(tar.extractfile(member))  # type: ignore[arg-type]
            if sd.get("kind") in ("resource", "complex-type", "primitive-type") and (
                sd.get("derivation") != "constraint"
            ):
                sds[sd["type"]] = sd
    return sds


def _ext(obj: dict, url: str) -> str | None:
    for ext in obj.get("extension", ()):
        if ext.get("url") == url:
            return ext.get("valueUrl") or ext.get("valueString")
    return None


def _max(value: str) -> int:
    return -1 if value == "*" else int(value)


def _element_types(el: dict, is_resource_id: bool) -> tuple[list[str], bool]:
    """FHIR type codes of an element, and whether it is an attribute-like System-typed element."""
    if is_resource_id:
        return ["id"], True
    codes, attr = [], False
    for t in el.get("type", ()):
        code = t["code"]
        if code.startswith("http://hl7.org/fhirpath/System."):
            code, attr = _ext(t, _FHIR_TYPE_EXT) or "string", True
        codes.append(code)
    return codes, attr


def element_tree(sd: dict) -> dict[str, dict[str, Elem]]:
    """{type or backbone path: {JSON name: Elem}} for one StructureDefinition snapshot.

    Backbone elements get their path as type name (``Questionnaire.item``); ``contentReference`` points at
    such a path; ``value[x]`` is expanded to one JSON name per allowed type.
    """
    elements = sd["snapshot"]["element"]
    root = sd["type"]
    paths = {e["path"] for e in elements}
    tree: dict[str, dict[str, Elem]] = {root: {}}
    for el in elements[1:]:
        path = el["path"]
        parent, name = path.rsplit(".", 1)
        if el.get("max") == "0":
            continue
        node = tree.setdefault(parent, {})
        lo, hi = el.get("min", 0), _max(el.get("max", "1"))
        if "contentReference" in el:
            node[name] = [el["contentReference"].lstrip("#"), lo, hi, "", 0]
            continue
        codes, attr = _element_types(el, is_resource_id=sd["kind"] == "resource" and path == f"{root}.id")
        if any(p.startswith(path + ".") for p in paths) and set(codes) <= _BACKBONE_TYPES:
            tree.setdefault(path, {})
            node[name] = [path, lo, hi, "", 0]
        elif name.endswith("[x]"):
            base = name[:-3]
            for code in codes:
                node[base + code[0].upper() + code[1:]] = [code, lo, hi, base, 0]
        else:
            # xhtml cannot be extended (xhtml.extension is 0..0): no ``_div`` either
            node[name] = [codes[0], lo, hi, "", 1 if attr or codes[0] == "xhtml" else 0]
    return tree


def primitive_info(sd: dict) -> list:
    """[JSON kind, R4 regex or ""] of a primitive type, from its ``value`` element."""
    value = next(e for e in sd["snapshot"]["element"] if e["path"] == sd["type"] + ".value")
    t = value["type"][0]
    return [_JSON_KIND.get(sd["type"], "string"), _ext(t, _REGEX_EXT) or ""]


def build(tgz: Path, roots: tuple[str, ...] = R4_ONLY) -> dict:
    sds = load_definitions(tgz)
    primitives = {n: primitive_info(sd) for n, sd in sds.items() if sd["kind"] == "primitive-type"}
    types: dict[str, dict[str, Elem]] = {}
    pending, done = [*roots, "Element"], set()  # Element: the content of ``_x`` primitive siblings
    while pending:
        name = pending.pop()
        if name in done or name in primitives or name == "Resource":
            continue
        done.add(name)
        tree = element_tree(sds[name])
        types.update(tree)
        for node in tree.values():
            pending.extend(e[0] for e in node.values() if e[0] not in tree and e[0] not in done)
    return {
        "fhirVersion": "4.0.1",
        "resources": sorted(roots),
        "primitives": dict(sorted(primitives.items())),
        "types": dict(sorted(types.items())),
    }


def main() -> None:
    tgz = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TGZ
    data = build(tgz)
    OUTPUT.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes, {len(data['types'])} types)")


if __name__ == "__main__":
    main()

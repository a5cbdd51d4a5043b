"""Generate ``fhir_server/validation/required_bindings.json``: the codes every R4 ``required`` binding allows.

Usage: python tools/build_required_bindings.py [path/to/hl7.fhir.r4.examples-4.0.1.tgz]

Reads, from the official R4 package: ``Bundle-resources.json`` and ``Bundle-types.json`` (snapshots of the
resource and datatype StructureDefinitions: ``binding.strength == "required"``, ``binding.valueSet``) and
``Bundle-valuesets.json``, ``Bundle-v3-valuesets.json``, ``Bundle-v2-valuesets.json`` (ValueSets and
CodeSystems), and writes, for ``fhir_server/validation/bindings.py``:

* ``valueSets``: ValueSet url → {CodeSystem url → [codes]}, expanded from ``compose``: whole CodeSystems
  (nested concepts included), explicit concept lists, the filters ``is-a``, ``descendent-of``, ``is-not-a``
  and ``=`` on a concept property, ``valueSet`` imports (intersected with the rest of their include, as
  R4 says), and excludes;
* ``caseInsensitive``: CodeSystems whose codes compare case-insensitively (``caseSensitive`` not true: R4
  says to accept any case when it is not stated);
* ``unchecked``: ValueSet url → why it cannot be expanded from these sources (UCUM, BCP-13 mime types,
  ISO 4217, a LOINC answer list...). Elements bound to them are not checked: no guessing;
* ``types``: the walk, per resource type, datatype and backbone element (``Patient.contact``):
  JSON name (choices expanded: ``valueQuantity``; ``_x`` siblings of primitives: ``Element``) → the node to
  walk into, or [type, bound ValueSet url] for a checked element.
  Only what leads to a checked binding is kept; datatypes reach each other through ``Extension.value[x]``,
  so in practice every complex element is walked. Elements of type ``Resource`` (contained, Bundle entries,
  Parameters) are left out: the validator checks each nested resource on its own.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TGZ = ROOT.parent / "shared" / "data" / "hl7.fhir.r4.examples-4.0.1.tgz"
OUTPUT = ROOT / "fhir_server" / "validation" / "required_bindings.json"

_DEFINITIONS = ("Bundle-resources.json", "Bundle-types.json")
_TERMINOLOGY = ("Bundle-valuesets.json", "Bundle-v3-valuesets.json", "Bundle-v2-valuesets.json")
_BACKBONE_TYPES = {"BackboneElement", "Element"}

# Code systems that are not (and cannot be) in the package; a ValueSet including all of one, or filtering it,
# is unchecked. Listed to give the reason; any other missing or incomplete CodeSystem is unchecked as well.
_EXTERNAL = {
    "http://unitsofmeasure.org": "UCUM is a grammar of unit expressions, not an enumerable list",
    "urn:ietf:bcp:13": "BCP-13 mime types are not in the R4 package (IANA registry)",
    "urn:ietf:bcp:47": "BCP-47 language tags are a grammar, not an enumerable list",
    "urn:iso:std:iso:4217": "ISO 4217 currencies are not in the R4 package",
    "http://loinc.org": "LOINC is not in the R4 package",
    "http://snomed.info/sct": "SNOMED CT is not in the R4 package",
}
# ValueSets a required binding names that the package does not contain.
_MISSING_VALUE_SETS = {
    "http://loinc.org/vs/LL379-9": "LOINC answer list, not in the R4 package",
}


class Unexpandable(Exception):
    """A ValueSet whose expansion these sources cannot give: its bindings stay unchecked."""


def _resources(archive: tarfile.TarFile, name: str) -> Iterable[dict]:
    bundle = json.load(archive.extractfile(f"package/{name}"))  # type: ignore[arg-type]
    return (entry["resource"] for entry in bundle.get("entry", ()))


def load(tgz: Path) -> tuple[dict[str, dict], dict[str, dict], dict[str, dict]]:
    """Base StructureDefinitions by type, ValueSets and CodeSystems by url."""
    sds: dict[str, dict] = {}
    valuesets: dict[str, dict] = {}
    codesystems: dict[str, dict] = {}
    with tarfile.open(tgz) as archive:
        for name in _DEFINITIONS:
            for res in _resources(archive, name):
                if res["resourceType"] != "StructureDefinition" or res.get("derivation") == "constraint":
                    continue  # profiles (SimpleQuantity...): their elements are walked as the base type
                if res.get("kind") in ("resource", "complex-type"):
                    sds[res["type"]] = res
        for name in _TERMINOLOGY:
            for res in _resources(archive, name):
                if res["resourceType"] == "ValueSet":
                    valuesets[res["url"]] = res
                elif res["resourceType"] == "CodeSystem":
                    codesystems[res["url"]] = res
    return sds, valuesets, codesystems


# --- ValueSet expansion ----------------------------------------------------------------------------------


class Expander:
    def __init__(self, valuesets: dict[str, dict], codesystems: dict[str, dict]) -> None:
        self.valuesets = valuesets
        self.codesystems = codesystems
        self.done: dict[str, dict[str, list[str]]] = {}

    def expand(self, url: str, _seen: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """{system: [codes]} of the ValueSet ``url`` (without ``|version``), or raise Unexpandable."""
        if url in self.done:
            return self.done[url]
        if url in _seen:
            raise Unexpandable(f"ValueSet {url} imports itself")
        vs = self.valuesets.get(url)
        if vs is None:
            raise Unexpandable(_MISSING_VALUE_SETS.get(url, f"ValueSet {url} is not in the R4 package"))
        compose = vs.get("compose")
        if not compose:
            raise Unexpandable(f"ValueSet {url} has no compose")
        result: dict[str, list[str]] = {}
        for include in compose.get("include", ()):
            for system, codes in self._select(include, (*_seen, url)).items():
                known = result.setdefault(system, [])
                known.extend(c for c in dict.fromkeys(codes) if c not in known)  # in order, once
        for exclude in compose.get("exclude", ()):
            for system, codes in self._select(exclude, (*_seen, url)).items():
                drop = set(codes)
                result[system] = [c for c in result.get(system, ()) if c not in drop]
        result = {system: codes for system, codes in result.items() if codes}
        if not result:
            raise Unexpandable(f"ValueSet {url} expands to no code")
        self.done[url] = result
        return result

    def _select(self, include: dict, seen: tuple[str, ...]) -> dict[str, list[str]]:
        """The codes one ``include`` (or ``exclude``) names: its system part ∩ each imported ValueSet."""
        parts: list[dict[str, list[str]]] = []
        system = include.get("system")
        if system:
            parts.append({system: self._from_system(system, include)})
        parts.extend(self.expand(vs.split("|", 1)[0], seen) for vs in include.get("valueSet", ()))
        if not parts:
            raise Unexpandable("an include with neither system nor valueSet")
        selected = parts[0]
        for other in parts[1:]:  # R4: the codes must be in all of them
            selected = {s: [c for c in codes if c in other.get(s, ())] for s, codes in selected.items()}
        return selected

    def _from_system(self, system: str, include: dict) -> list[str]:
        if "concept" in include:  # an explicit list: valid even when the CodeSystem itself is not at hand
            if "filter" in include:
                raise Unexpandable(f"concepts and filters together on {system}")
            return [c["code"] for c in include["concept"]]
        cs = self.codesystems.get(system)
        if cs is None:
            raise Unexpandable(_EXTERNAL.get(system, f"CodeSystem {system} is not in the R4 package"))
        if cs.get("content") != "complete":
            raise Unexpandable(f"CodeSystem {system} is not complete in the R4 package ({cs.get('content')})")
        concepts = _flatten(cs.get("concept", ()), None)
        codes = [code for code, _parent, _props in concepts]
        for flt in include.get("filter", ()):
            keep = _filter(flt, concepts, system)
            codes = [c for c in codes if c in keep]
        return codes


def _flatten(concepts: Iterable[dict], parent: str | None) -> list[tuple[str, str | None, dict]]:
    """(code, parent code, {property: values}) of every concept, nested ones included."""
    flat = []
    for concept in concepts:
        props: dict[str, list] = {}
        for prop in concept.get("property", ()):
            value = next((v for k, v in prop.items() if k.startswith("value")), None)
            props.setdefault(prop["code"], []).append(value)
        flat.append((concept["code"], parent, props))
        flat.extend(_flatten(concept.get("concept", ()), concept["code"]))
    return flat


def _filter(flt: dict, concepts: list[tuple[str, str | None, dict]], system: str) -> set[str]:
    op, prop, value = flt.get("op"), flt.get("property"), flt.get("value")
    if op in ("is-a", "descendent-of", "is-not-a") and prop == "concept":
        children: dict[str, list[str]] = {}
        for code, parent, props in concepts:
            for up in [parent, *props.get("parent", ()), *props.get("subsumedBy", ())]:
                if up:
                    children.setdefault(up, []).append(code)
        below, stack = set(), list(children.get(value, ()))
        while stack:
            code = stack.pop()
            if code not in below:
                below.add(code)
                stack.extend(children.get(code, ()))
        if op == "descendent-of":
            return below
        subtree = below | {value}
        return subtree if op == "is-a" else {code for code, _, _ in concepts} - subtree
    if op == "=" and prop:
        return {code for code, _, props in concepts if value in map(_text, props.get(prop, ()))}
    raise Unexpandable(f"filter {prop} {op} {value} on {system} is not supported")


def _text(value: object) -> str:
    """A property value as a filter writes it (``true``, not ``True``)."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


# --- element walk ------------------------------------------------------------------------------------------


def _type_codes(element: dict) -> list[str]:
    """FHIR type codes of an element; ``System.String`` (Element.id, Extension.url...) is no FHIR type."""
    return [t["code"] for t in element.get("type", ()) if not t["code"].startswith("http://hl7.org/fhirpath/")]


def element_nodes(sd: dict) -> dict[str, dict[str, list]]:
    """{type or backbone path: {JSON name: [type or backbone path, required ValueSet url or None]}}."""
    elements = sd["snapshot"]["element"]
    paths = {e["path"] for e in elements}
    nodes: dict[str, dict[str, list]] = {sd["type"]: {}}
    for el in elements[1:]:
        path = el["path"]
        if el.get("max") == "0":
            continue
        parent, name = path.rsplit(".", 1)
        node = nodes.setdefault(parent, {})
        binding = el.get("binding") or {}
        bound = binding["valueSet"].split("|", 1)[0] if binding.get("strength") == "required" else None
        if "contentReference" in el:
            node[name] = [el["contentReference"].lstrip("#"), None]
            continue
        codes = _type_codes(el)
        if codes == ["Resource"]:
            continue  # a nested resource (contained, Bundle.entry.resource...): checked on its own
        if any(p.startswith(path + ".") for p in paths) and set(codes) <= _BACKBONE_TYPES:
            nodes.setdefault(path, {})
            node[name] = [path, bound]
        else:
            choice = name.endswith("[x]")
            for code in codes if choice else codes[:1]:
                key = name[:-3] + code[0].upper() + code[1:] if choice else name
                node[key] = [code, bound]
                if code[0].islower() and code != "xhtml":  # a primitive: its ``_x`` sibling is an Element
                    node["_" + key] = ["Element", None]
    return nodes


def build(tgz: Path) -> dict:
    sds, valuesets, codesystems = load(tgz)
    nodes: dict[str, dict[str, list]] = {}
    for sd in sds.values():
        nodes.update(element_nodes(sd))
    expander = Expander(valuesets, codesystems)
    expanded: dict[str, dict[str, list[str]]] = {}
    unchecked: dict[str, str] = {}
    for node in nodes.values():
        for _child, vs in node.values():
            if vs and vs not in expanded and vs not in unchecked:
                try:
                    expanded[vs] = expander.expand(vs)
                except Unexpandable as exc:
                    unchecked[vs] = str(exc)
    # Keep what leads to a checked binding (fixed point: the type graph has cycles, e.g. Extension.extension).
    walkable = {name for name, node in nodes.items() if any(vs in expanded for _, vs in node.values())}
    while True:
        more = {n for n, node in nodes.items() if n not in walkable and any(c in walkable for c, _ in node.values())}
        if not more:
            break
        walkable |= more
    types = {}
    for name in sorted(walkable):
        keep = {}
        for key, (child, vs) in nodes[name].items():
            # a bound element keeps its type (code, CodeableConcept...): it says how to read the value
            child = child if child in walkable or vs in expanded else None
            vs = vs if vs in expanded else None
            if vs:
                keep[key] = [child, vs]
            elif child:
                keep[key] = child
        types[name] = keep
    systems = {s for codes in expanded.values() for s in codes}
    return {
        "fhirVersion": "4.0.1",
        "caseInsensitive": sorted(
            s for s in systems if s in codesystems and codesystems[s].get("caseSensitive") is not True
        ),
        "unchecked": dict(sorted(unchecked.items())),
        "valueSets": dict(sorted(expanded.items())),
        "types": types,
    }


def main() -> None:
    tgz = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TGZ
    data = build(tgz)
    OUTPUT.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n")
    bound = sum(1 for node in data["types"].values() for spec in node.values() if type(spec) is list)
    print(
        f"wrote {OUTPUT.relative_to(ROOT)} ({OUTPUT.stat().st_size} bytes): {bound} (type, path) required bindings"
        f" checked, {len(data['valueSets'])} value sets, {len(data['unchecked'])} unchecked"
    )
    for url, reason in data["unchecked"].items():
        print(f"  unchecked {url}: {reason}")


if __name__ == "__main__":
    main()

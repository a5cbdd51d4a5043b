"""One-off: which R4 (4.0.1) resource types can be validated with the ``fhir.resources.R4B`` models?

For every concrete R4 resource type, walk the R4 StructureDefinition snapshot (nested datatypes and backbone
elements included) next to the R4B model and report, per element:

* incompatible - valid R4 content the R4B model rejects: element missing in R4B, array vs single value,
  required in R4B only, different datatype / JSON type, no ``_x`` extension sibling for a primitive;
* lenient      - R4B accepts what R4 does not: element only in R4B, required in R4 only, a primitive
  subtype with the same JSON type (``string`` vs ``markdown``...).

Usage: python tools/compare_r4_r4b.py [path/to/hl7.fhir.r4.examples-4.0.1.tgz] [-v]

The second pass applies the fix-ups of ``fhir_server/validation/r4b.py``; what remains incompatible is the
``R4_ONLY`` list of ``tools/build_r4_structures.py`` (the script exits 1 if they disagree).
"""

from __future__ import annotations

import sys
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from build_r4_structures import DEFAULT_TGZ, R4_ONLY, element_tree, load_definitions
from fhir.resources.R4B import get_fhir_model_class

from fhir_server.validation.r4b import ELEM, PEXT, REJECT, RES, SKIP, UUID, _specs, raw_specs, unwrap

# Conclusion (fhir.resources 8.3.0):
# * no R4B model (18): EffectEvidenceSynthesis, MedicinalProduct + its 10 MedicinalProduct* siblings,
#   RiskEvidenceSynthesis, SubstanceNucleicAcid, SubstancePolymer, SubstanceProtein,
#   SubstanceReferenceInformation, SubstanceSourceMaterial, SubstanceSpecification;
# * incompatible own elements (2): Evidence and EvidenceVariable, rewritten in R4B;
# * datatypes reached by every type: Extension (no ``_valueX`` primitive-extension siblings, no valueMeta,
#   valueUuid is a python UUID4 that rejects non-v4 and accepts bare uuids; valueCodeableReference and
#   valueRatioRange are R4B-only) and ElementDefinition (same for defaultValue/fixed/pattern/example);
#   valueUuid of Parameters.parameter, Task.input/output, StructureMap...source.defaultValue; R4B-only
#   subjectCanonical of ActivityDefinition/PlanDefinition. These are narrow: fixed up in
#   fhir_server/validation/r4b.py (``_r4_fixes``) instead of giving up the R4B models for all types.
# So the R4 structural validator handles exactly the 20 types of build_r4_structures.R4_ONLY.
# Not structural, so not found here but fixed in r4b.py too: R4B ids may be 255 characters (R4: 64), and the
# R4B ``code`` pattern treats U+00A0 as whitespace (XML Schema regexes do not).

_META_PRIMITIVE = {
    "String": "string",
    "Code": "code",
    "Id": "id",
    "Uri": "uri",
    "Url": "url",
    "Canonical": "canonical",
    "Oid": "oid",
    "Uuid": "uuid",
    "Markdown": "markdown",
    "Date": "date",
    "DateTime": "dateTime",
    "Instant": "instant",
    "Time": "time",
    "Base64Binary": "base64Binary",
    "Integer": "integer",
    "Integer64": "integer64",
    "UnsignedInt": "unsignedInt",
    "PositiveInt": "positiveInt",
    "Decimal": "decimal",
    "Xhtml": "xhtml",
}
_JSON_KIND = {
    "boolean": "boolean",
    "integer": "number",
    "unsignedInt": "number",
    "positiveInt": "number",
    "decimal": "number",
}


def r4b_primitive(model, alias: str) -> str:
    name = next(n for n, f in model.model_fields.items() if (f.alias or n) == alias)
    _, inner, meta = unwrap(model.model_fields[name].annotation)
    if inner is bool:
        return "boolean"
    if inner is uuid.UUID:
        return "uuid4"
    for m in meta:
        if type(m).__name__ in _META_PRIMITIVE:
            return _META_PRIMITIVE[type(m).__name__]
    return "string"


def r4b_required(model) -> set[str]:
    required = {(f.alias or n) for n, f in model.model_fields.items() if f.is_required()}
    required |= {name for name, _ in model.get_required_fields(None)}
    for names in model.get_one_of_many_fields(None).values():
        first = next(f for n, f in model.model_fields.items() if n == names[0])
        if first.json_schema_extra.get("one_of_many_required"):
            required |= set(names)
    return required


class Comparer:
    def __init__(self, sds: dict[str, dict], specs) -> None:
        self.sds = sds
        self.specs = specs  # raw R4B model fields, or with validation/r4b.py's fix-ups
        self.primitives = {n for n, sd in self.sds.items() if sd["kind"] == "primitive-type"}
        self.trees: dict[str, dict] = {}
        self.done: set[tuple[str, type]] = set()
        self.diffs: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # owner -> (sev, path, text)
        self.uses: dict[str, set[str]] = defaultdict(set)  # owner -> datatypes it reaches

    def node(self, type_name: str) -> dict:
        owner = type_name.split(".")[0]
        if owner not in self.trees:
            self.trees.update(element_tree(self.sds[owner]))
        return self.trees[type_name]

    def compare(self, owner: str, r4_type: str, model, path: str) -> None:
        if (r4_type, model) in self.done:
            return
        self.done.add((r4_type, model))
        node, specs = self.node(r4_type), self.specs(model)
        required = r4b_required(model)
        for name, (typ, lo, hi, group, attr) in node.items():
            where = f"{path}.{name}"
            field = specs.get(name)
            if field is None or field.kind == REJECT:
                self.diffs[owner].append(("incompatible", where, f"missing in R4B ({typ})"))
                continue
            if (hi != 1) != field.is_list:
                self.diffs[owner].append(("incompatible", where, f"R4 max {hi}, R4B list={field.is_list}"))
            if name in required and lo == 0 and not group:
                self.diffs[owner].append(("incompatible", where, "required in R4B only"))
            elif lo > 0 and name not in required and not group:
                self.diffs[owner].append(("lenient", where, "required in R4 only"))
            self.compare_type(owner, where, name, typ, attr, field, model, specs)
        for key, field in specs.items():
            if field.kind not in (PEXT, SKIP, REJECT) and key not in node:
                self.diffs[owner].append(("lenient", f"{path}.{key}", "only in R4B"))

    def compare_type(self, owner, where, name, typ, attr, field, model, specs) -> None:
        if typ in self.primitives:
            if field.kind >= ELEM:
                self.diffs[owner].append(("incompatible", where, f"R4 {typ}, R4B complex"))
                return
            other = "uuid" if field.kind == UUID else r4b_primitive(model, name)
            if other == "uuid4":
                self.diffs[owner].append(("incompatible", where, "R4 uuid, R4B python UUID4"))
            elif other != typ:
                same_json = _JSON_KIND.get(typ, "string") == _JSON_KIND.get(other, "string")
                sev = "lenient" if same_json else "incompatible"
                self.diffs[owner].append((sev, where, f"R4 {typ}, R4B {other}"))
            if not attr and "_" + name not in specs:
                self.diffs[owner].append(("incompatible", where, "no _x extension sibling in R4B"))
        elif typ == "Resource":
            if field.kind != RES:
                self.diffs[owner].append(("incompatible", where, "R4 Resource, R4B not a resource"))
        elif field.kind != ELEM:
            self.diffs[owner].append(("incompatible", where, f"R4 {typ}, R4B primitive"))
        elif "." in typ:  # backbone element: compared as part of its owner
            self.compare(owner, typ, field.model, where)
        else:
            if field.model.__name__ != typ:
                self.diffs[owner].append(("incompatible", where, f"R4 {typ}, R4B {field.model.__name__}"))
                return
            self.uses[owner].add(typ)
            self.compare(typ, typ, field.model, typ)

    def reached(self, owner: str) -> set[str]:
        seen, stack = set(), [owner]
        while stack:
            for t in self.uses[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return seen


def run(comparer: Comparer, resources: list[str], verbose: bool) -> list[str]:
    """Compare every resource type; print the differences; return the types R4B cannot validate."""
    no_model, incompatible = [], {}
    for name in resources:
        try:
            model = get_fhir_model_class(name)
        except ValueError:
            no_model.append(name)
            continue
        comparer.compare(name, name, model, name)
    for name in resources:
        if name in no_model:
            continue
        own = [d for d in comparer.diffs[name] if d[0] == "incompatible"]
        via = sorted(t for t in comparer.reached(name) if any(d[0] == "incompatible" for d in comparer.diffs[t]))
        if own or via:
            incompatible[name] = (own, via)
    print(f"No R4B model ({len(no_model)}): {', '.join(no_model)}")
    print(f"Incompatible R4B models ({len(incompatible)}):")
    for name, (own, via) in incompatible.items():
        print(f"  {name}: {len(own)} own differences" + (f"; through datatypes {via}" if via else ""))
        for _, where, text in own[: None if verbose else 5]:
            print(f"      {where}: {text}")
    print("Datatype differences:")
    for t in sorted(t for t in comparer.diffs if t not in resources):
        for sev, where, text in comparer.diffs[t]:
            print(f"  {sev:12} {where}: {text}")
    lenient = [d for n in resources if n not in no_model for d in comparer.diffs[n] if d[0] == "lenient"]
    print(f"Lenient differences in resources ({len(lenient)}):")
    for _, where, text in lenient[: None if verbose else 12]:
        print(f"  {where}: {text}")
    return sorted({*no_model, *incompatible})


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "-v"]
    verbose = "-v" in sys.argv
    sds = load_definitions(Path(args[0]) if args else DEFAULT_TGZ)
    resources = sorted(n for n, sd in sds.items() if sd["kind"] == "resource" and not sd.get("abstract"))
    print(f"{len(resources)} R4 resource types\n\n=== Raw R4B models")
    run(Comparer(sds, raw_specs), resources, verbose)
    print("\n=== R4B models with the fix-ups of fhir_server/validation/r4b.py")
    needed = run(Comparer(sds, _specs), resources, verbose)
    print("\nR4 structural validator needed for:", needed)
    if tuple(needed) != R4_ONLY:
        print("MISMATCH with build_r4_structures.R4_ONLY:", R4_ONLY)
        sys.exit(1)


if __name__ == "__main__":
    main()

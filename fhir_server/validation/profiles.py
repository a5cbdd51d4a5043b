"""This server's own profiles (``profiles/*.json``) and a small engine that checks instances against them.

``profiles/`` holds constraint StructureDefinitions (their ``differential``), the ValueSets their required
bindings name and the CodeSystems those ValueSets draw whole (a copy of the codes: no terminology server).
It sits at the repository root beside ``capability/`` and is found the same way, relative to this package
(editable install; the Docker image copies both).

What the engine checks, element by element of a differential (elements are found by ``id``, so
``Patient.identifier:ins.system`` is the ``system`` of the identifiers in the ``ins`` slice):

* cardinality: ``min`` / ``max`` on every path, nested ones included (``DocumentReference.content.
  attachment.contentType``), counted per parent element;
* ``fixed[x]`` (exact JSON equality) and ``pattern[x]`` (the instance holds at least what the pattern holds:
  objects key by key, arrays item by item in any order);
* required bindings (``binding.strength = required``), expanded from the ValueSets and CodeSystems of
  ``profiles/``: a code, a Coding or Quantity (system + code), a CodeableConcept (one of its codings);
* the ``regex`` extension on an element's type (``http://hl7.org/fhir/StructureDefinition/regex``);
* reference targets (``type.targetProfile`` of a Reference: the referenced resource type);
* slicing with ``value`` or ``pattern`` discriminators (a path such as ``system``, ``coding.system`` or
  ``$this``), each slice's cardinality and its own rules, and ``rules = closed``.

Not (yet): invariants (FHIRPath ``constraint``), ``maxLength``, type choice narrowing, extensible bindings,
profiles of nested or contained resources, snapshots, ``ordered`` slicing, ``exists``/``type``/``profile``
discriminators. A profile using one of the unsupported slicing or ValueSet features is refused when
``profiles/`` is loaded (``ProfileError``), not silently half-checked. See docs/profiles.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import FhirError, Issue
from ._common import MAX_ISSUES

__all__ = [
    "PROFILES_DIR", "Profile", "ProfileError", "Registry", "check", "declared", "load_registry", "registry", "resolve",
    "supported_profiles",
]  # fmt: skip

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
CORE = "http://hl7.org/fhir/StructureDefinition/"
REGEX = "http://hl7.org/fhir/StructureDefinition/regex"
DISCRIMINATORS = ("value", "pattern")
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")

log = logging.getLogger(__name__)


class ProfileError(ValueError):
    """``profiles/`` holds something the engine cannot use (raised when it is loaded)."""


# --- the differential as a tree ---------------------------------------------------------------------------


@dataclass(eq=False)
class Element:
    """One element of a differential, with the elements below it and, if it is sliced, its slices."""

    id: str
    name: str  # the JSON name: "identifier", "value[x]"
    slice_name: str | None = None
    min: int = 0
    max: int | None = None  # None: not constrained
    fixed: tuple[str, Any] | None = None  # ("fixedUri", "urn:…")
    pattern: tuple[str, Any] | None = None
    binding: str | None = None  # the ValueSet of a required binding
    regex: re.Pattern[str] | None = None
    targets: tuple[str, ...] = ()  # targetProfile canonicals of a Reference
    discriminators: tuple[tuple[str, str], ...] = ()  # (type, path): set when sliced
    closed: bool = False
    children: dict[str, Element] = field(default_factory=dict)
    slices: list[Element] = field(default_factory=list)
    # slice → [(type, path, expected value)], computed once the whole differential is read
    keys: list[tuple[str, str, Any]] = field(default_factory=list)


@dataclass(eq=False)
class Profile:
    url: str
    version: str | None
    name: str
    type: str
    root: Element
    resource: dict


def _segments(element_id: str) -> list[tuple[str, str | None]]:
    out = []
    for part in element_id.split("."):
        name, _, slice_name = part.partition(":")
        out.append((name, slice_name or None))
    return out


def _tree(sd: dict) -> Element:
    type_ = sd["type"]
    root = Element(id=type_, name=type_)
    for definition in (sd.get("differential") or {}).get("element") or ():
        element_id = definition.get("id")
        if not isinstance(element_id, str):
            raise ProfileError(f"{sd['url']}: every differential element needs an id ({definition.get('path')})")
        segments = _segments(element_id)
        if segments[0] != (type_, None):
            raise ProfileError(f"{sd['url']}: element {element_id} is not under {type_}")
        node, key = root, type_
        for name, slice_name in segments[1:]:
            key = f"{key}.{name}"
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Element(id=key, name=name)
            if slice_name is None:
                node = child
                continue
            key = f"{key}:{slice_name}"
            found = next((s for s in child.slices if s.slice_name == slice_name), None)
            if found is None:
                found = Element(id=key, name=name, slice_name=slice_name)
                child.slices.append(found)
            node = found
        _apply(sd["url"], node, definition)
    _prepare_slices(sd["url"], root)
    return root


def _apply(url: str, node: Element, definition: dict) -> None:
    if "min" in definition:
        node.min = int(definition["min"])
    if "max" in definition:
        node.max = None if definition["max"] == "*" else int(definition["max"])
    for key, value in definition.items():
        if key.startswith("fixed"):
            node.fixed = (key, value)
        elif key.startswith("pattern"):
            node.pattern = (key, value)
    binding = definition.get("binding") or {}
    if binding.get("strength") == "required":
        if not binding.get("valueSet"):
            raise ProfileError(f"{url}: {node.id} has a required binding without a valueSet")
        node.binding = binding["valueSet"].split("|")[0]
    for type_ in definition.get("type") or ():
        for extension in type_.get("extension") or ():
            if extension.get("url") == REGEX:
                node.regex = re.compile(extension["valueString"])
        node.targets += tuple(type_.get("targetProfile") or ())
    slicing = definition.get("slicing")
    if slicing:
        discriminators = tuple((d.get("type"), d.get("path")) for d in slicing.get("discriminator") or ())
        unsupported = [t for t, _ in discriminators if t not in DISCRIMINATORS]
        if not discriminators or unsupported:
            raise ProfileError(f"{url}: {node.id}: slicing needs value or pattern discriminators, not {unsupported}")
        node.discriminators = discriminators
        node.closed = slicing.get("rules") == "closed"


def _prepare_slices(url: str, node: Element) -> None:
    for child in node.children.values():
        if child.slices and not child.discriminators:
            raise ProfileError(f"{url}: {child.id} has slices but no slicing")
        for slice_ in child.slices:
            slice_.keys = [(kind, path, _slice_value(url, slice_, kind, path)) for kind, path in child.discriminators]
            _prepare_slices(url, slice_)
        _prepare_slices(url, child)


def _slice_value(url: str, slice_: Element, kind: str, path: str) -> Any:
    """What a slice fixes at a discriminator path: on the element at that path, or inside the slice's own
    fixed/pattern value."""
    own = slice_.fixed or slice_.pattern
    if path == "$this":
        if own is None:
            raise ProfileError(f"{url}: slice {slice_.id} needs a fixed or pattern value (discriminator $this)")
        return own[1]
    node: Element | None = slice_
    for name in path.split("."):
        node = node.children.get(name) if node is not None else None
    if node is not None and (node.fixed or node.pattern):
        return (node.fixed or node.pattern)[1]  # type: ignore[index]
    if own is not None:
        found = list(_at(own[1], path))
        if len(found) == 1:
            return found[0]
    raise ProfileError(f"{url}: slice {slice_.id} fixes no value at the discriminator path {path!r}")


# --- JSON helpers --------------------------------------------------------------------------------------------


def _at(value: Any, path: str) -> Iterator[Any]:
    """The values at a dotted path below ``value`` (arrays flattened), as FHIRPath navigates."""
    if path == "$this":
        yield value
        return
    current = [value]
    for name in path.split("."):
        following = []
        for item in current:
            if isinstance(item, dict) and name in item:
                found = item[name]
                following += found if isinstance(found, list) else [found]
        current = following
    yield from current


def _number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return Decimal(str(a)) == Decimal(str(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _contains(value: Any, pattern: Any) -> bool:
    """FHIR pattern matching: ``value`` holds at least what ``pattern`` holds."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _contains(value[k], p) for k, p in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(v, p) for v in value) for p in pattern)
    return _equal(value, pattern)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _values(item: dict, name: str, parent: str) -> list[tuple[str, Any]]:
    """(FHIRPath, value) of each occurrence of ``name`` in ``item``; a primitive carried only by its
    ``_name`` extensions counts as present, with the value None."""
    if name.endswith("[x]"):
        stem = name[:-3]
        name = next((k for k in item if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()), name)
    raw, extra = item.get(name), item.get(f"_{name}")
    if raw is None and extra is None:
        return []
    if isinstance(raw, list) or isinstance(extra, list):
        raw_list = raw if isinstance(raw, list) else []
        extra_list = extra if isinstance(extra, list) else []
        count = max(len(raw_list), len(extra_list))
        return [(f"{parent}.{name}[{i}]", raw_list[i] if i < len(raw_list) else None) for i in range(count)]
    return [(f"{parent}.{name}", raw)]


# --- the registry ---------------------------------------------------------------------------------------------


class Registry:
    """The profiles, ValueSets and CodeSystems of one ``profiles/`` folder, checked and indexed."""

    def __init__(self, resources: Iterable[dict]) -> None:
        self.resources: list[dict] = []
        self.profiles: dict[str, Profile] = {}
        #: Extension definitions (``type`` Extension): loaded and checked like profiles, never a resource's profile.
        self.extensions: dict[str, Profile] = {}
        self.value_sets: dict[str, dict] = {}
        self.code_systems: dict[str, dict] = {}
        for resource in resources:
            kind, url = resource.get("resourceType"), resource.get("url")
            table = {"StructureDefinition": self.profiles, "ValueSet": self.value_sets,
                     "CodeSystem": self.code_systems}.get(kind)  # fmt: skip
            if kind == "StructureDefinition" and resource.get("type") == "Extension":
                table = self.extensions
            if table is None or not isinstance(url, str):
                raise ProfileError(f"{kind}/{resource.get('id')}: profiles/ holds StructureDefinitions, ValueSets "
                                   "and CodeSystems, each with a url")  # fmt: skip
            if url in table:
                raise ProfileError(f"two {kind} resources have the url {url}")
            self.resources.append(resource)
            table[url] = resource  # type: ignore[assignment]
        self._expansions: dict[str, tuple[frozenset[tuple[str | None, str]], frozenset[str]]] = {}
        for url, sd in list(self.profiles.items()):
            self.profiles[url] = self._profile(sd)  # type: ignore[arg-type]
        for url, sd in list(self.extensions.items()):
            self.extensions[url] = self._profile(sd, kind="complex-type")  # type: ignore[arg-type]
        for profile in [*self.profiles.values(), *self.extensions.values()]:
            for element in _walk(profile.root):
                if element.binding:
                    self.expansion(element.binding)  # every required binding must expand, now

    def _profile(self, sd: dict, kind: str = "resource") -> Profile:
        if sd.get("derivation") != "constraint" or sd.get("kind") != kind or not sd.get("type"):
            raise ProfileError(f"{sd['url']}: only constraints on a resource type (or Extension) are supported")
        if sd.get("baseDefinition") != CORE + sd["type"]:
            raise ProfileError(f"{sd['url']}: the base must be the R4 {sd['type']} (profiles of profiles come later)")
        return Profile(sd["url"], sd.get("version"), sd.get("name") or sd["id"], sd["type"], _tree(sd), sd)

    # look-ups

    def get(self, canonical: str) -> Profile | None:
        """A profile by canonical (``url`` or ``url|version``)."""
        url, _, version = canonical.partition("|")
        profile = self.profiles.get(url)
        if profile is None or (version and version != profile.version):
            return None
        return profile

    def for_type(self, type_: str) -> list[Profile]:
        return [p for p in self.profiles.values() if p.type == type_]

    # terminology

    def expansion(self, url: str, seen: tuple[str, ...] = ()) -> tuple[frozenset, frozenset[str]]:
        """The (system, code) pairs of a ValueSet, and its bare codes."""
        if url in self._expansions:
            return self._expansions[url]
        if url in seen:
            raise ProfileError(f"ValueSet {url} includes itself")
        value_set = self.value_sets.get(url)
        if value_set is None:
            raise ProfileError(f"ValueSet {url} is bound by a profile but not in profiles/")
        compose = value_set.get("compose")
        if compose:
            codes: set = set()
            for include in compose.get("include") or ():
                codes |= self._part(url, include, (*seen, url))
            for exclude in compose.get("exclude") or ():
                codes -= self._part(url, exclude, (*seen, url))
        else:
            contains = (value_set.get("expansion") or {}).get("contains")
            if contains is None:
                raise ProfileError(f"ValueSet {url} has neither compose nor expansion")
            codes = {(c.get("system"), c["code"]) for c in _flatten(contains) if c.get("code")}
        found = (frozenset(codes), frozenset(code for _, code in codes))
        self._expansions[url] = found
        return found

    def _part(self, url: str, part: dict, seen: tuple[str, ...]) -> set:
        if part.get("filter"):
            raise ProfileError(f"ValueSet {url}: filters are not supported (list the concepts)")
        sets: list[set] = []
        system = part.get("system")
        if system:
            if part.get("concept"):
                sets.append({(system, c["code"]) for c in part["concept"]})
            else:
                code_system = self.code_systems.get(system)
                if code_system is None:
                    raise ProfileError(f"ValueSet {url} includes all of {system}, which is not in profiles/")
                sets.append({(system, c["code"]) for c in _flatten(code_system.get("concept") or ())})
        for other in part.get("valueSet") or ():
            sets.append(set(self.expansion(other.split("|")[0], seen)[0]))
        if not sets:
            raise ProfileError(f"ValueSet {url}: an include names neither a system nor a valueSet")
        result = sets[0]
        for more in sets[1:]:
            result &= more  # FHIR: the parts of one include are intersected
        return result

    # checking

    def check(self, resource: dict, profile: Profile) -> list[Issue]:
        """What is wrong with ``resource`` against ``profile`` (nothing: it conforms), at most MAX_ISSUES."""
        if resource.get("resourceType") != profile.type:
            found = resource.get("resourceType")
            return [Issue("invalid", f"Profile {profile.url} constrains {profile.type}, not {found}")]
        run = _Run(self, profile, resource)
        run.children(profile.root, [(profile.type, resource)])
        return run.issues[:MAX_ISSUES]


def _flatten(concepts: Iterable[dict]) -> Iterator[dict]:
    for c in concepts:
        yield c
        yield from _flatten(c.get("concept") or c.get("contains") or ())


def _walk(element: Element) -> Iterator[Element]:
    yield element
    for child in element.children.values():
        yield from _walk(child)
    for slice_ in element.slices:
        yield from _walk(slice_)


class _Run:
    """One check of one resource: walks the differential tree over the instance, collecting issues."""

    def __init__(self, registry: Registry, profile: Profile, resource: dict) -> None:
        self.registry = registry
        self.profile = profile
        self.resource = resource
        self.issues: list[Issue] = []

    def issue(self, code: str, path: str, text: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(Issue(code, f"{text} (profile {self.profile.url})", expression=(path,)))

    def children(self, node: Element, items: list[tuple[str, Any]]) -> None:
        for child in node.children.values():
            for path, item in items:
                if isinstance(item, dict):
                    self.element(child, path, _values(item, child.name, path))

    def element(self, element: Element, parent: str, values: list[tuple[str, Any]]) -> None:
        where = f"{parent}.{element.name}"
        named = where if element.slice_name is None else f"{where} (slice {element.slice_name!r})"
        if len(values) < element.min:
            self.issue("required", where, f"{named}: at least {element.min} required, {len(values)} found")
        if element.max is not None and len(values) > element.max:
            self.issue("structure", where, f"{named}: at most {element.max} allowed, {len(values)} found")
        for path, value in values:
            if value is not None:
                self.value(element, path, value)
        if element.slices:
            self.slices(element, parent, values)
        if element.children:
            self.children(element, values)

    def slices(self, element: Element, parent: str, values: list[tuple[str, Any]]) -> None:
        matched: dict[int, list[tuple[str, Any]]] = {i: [] for i in range(len(element.slices))}
        for path, value in values:
            index = next((i for i, s in enumerate(element.slices) if _in_slice(value, s)), None)
            if index is not None:
                matched[index].append((path, value))
            elif element.closed:
                names = ", ".join(s.slice_name or "" for s in element.slices)
                self.issue("structure", path, f"{path} matches none of the slices of {element.id} ({names}), "
                                              "and the slicing is closed")  # fmt: skip
        for index, slice_ in enumerate(element.slices):
            self.element(slice_, parent, matched[index])

    def value(self, element: Element, path: str, value: Any) -> None:
        if element.fixed is not None and not _equal(value, element.fixed[1]):
            self.issue("value", path, f"{path} must be exactly {_show(element.fixed[1])} ({element.fixed[0]}), "
                                      f"not {_show(value)}")  # fmt: skip
        if element.pattern is not None and not _contains(value, element.pattern[1]):
            self.issue("value", path, f"{path} does not match the pattern {_show(element.pattern[1])} "
                                      f"({element.pattern[0]}): {_show(value)}")  # fmt: skip
        if element.regex is not None and isinstance(value, str) and not element.regex.fullmatch(value):
            self.issue("value", path, f"{path} {value!r} does not match the regular expression "
                                      f"{element.regex.pattern!r}")  # fmt: skip
        if element.binding is not None:
            self.binding(element.binding, path, value)
        if element.targets and isinstance(value, dict):
            self.target(element.targets, path, value)

    def binding(self, url: str, path: str, value: Any) -> None:
        pairs, codes = self.registry.expansion(url)
        if isinstance(value, str):
            ok, shown = value in codes, repr(value)
        elif isinstance(value, dict) and "code" in value:  # Coding, Quantity
            ok, shown = (value.get("system"), value["code"]) in pairs, f"{value.get('system')}|{value['code']}"
        elif isinstance(value, dict):  # CodeableConcept
            codings = [c for c in value.get("coding") or () if isinstance(c, dict)]
            ok = any((c.get("system"), c.get("code")) in pairs for c in codings)
            shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings) or "no coding"
        else:
            return
        if not ok:
            self.issue("code-invalid", path, f"{path}: {shown} is not in the value set {url} (required binding)")

    def target(self, targets: tuple[str, ...], path: str, value: dict) -> None:
        found = _reference_type(value, self.resource)
        if found is None:
            return
        allowed = set()
        for canonical in targets:
            url = canonical.split("|")[0]
            if url.startswith(CORE):
                allowed.add(url[len(CORE) :])
            elif (profile := self.registry.profiles.get(url)) is not None:
                allowed.add(profile.type)
        if allowed and found not in allowed and "Resource" not in allowed:
            self.issue("value", path, f"{path} refers to a {found}; allowed: {', '.join(sorted(allowed))}")


def _in_slice(value: Any, slice_: Element) -> bool:
    for kind, path, expected in slice_.keys:
        found = list(_at(value, path))
        test = _equal if kind == "value" else _contains
        if not any(test(v, expected) for v in found):
            return False
    return True


def _reference_type(value: dict, resource: dict) -> str | None:
    """The type a Reference points to, when it can be told: its ``type``, a literal or conditional reference,
    a contained resource (``#id``); None for urn:uuid / urn:oid and identifier-only references."""
    if isinstance(value.get("type"), str):
        return value["type"]
    reference = value.get("reference")
    if not isinstance(reference, str):
        return None
    if reference.startswith("#"):
        for contained in resource.get("contained") or ():
            if isinstance(contained, dict) and contained.get("id") == reference[1:]:
                return contained.get("resourceType")
        return None
    head, query, _ = reference.partition("?")
    if query and re.fullmatch(r"[A-Z][A-Za-z]+", head):
        return head
    match = _REFERENCE.search(head)
    return match.group(1) if match else None


# --- the folder --------------------------------------------------------------------------------------------


def load_registry(directory: Path) -> Registry:
    """The registry of ``directory``'s ``*.json`` files (in name order)."""
    resources = []
    for path in sorted(directory.glob("*.json")):
        try:
            resources.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ProfileError(f"{path}: {exc}") from exc
    return Registry(resources)


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The server's profiles (``profiles/`` at the repository root), loaded once."""
    if not PROFILES_DIR.is_dir():
        log.warning("no profiles directory at %s: $validate knows only the R4 base profiles", PROFILES_DIR)
        return Registry(())
    return load_registry(PROFILES_DIR)


def resolve(canonical: str, type_: str) -> Profile | None:
    """The profile a ``$validate`` names for ``type_``: None for the R4 base profile of the type; a 400
    OperationOutcome for an unknown canonical or a profile of another type."""
    if canonical.split("|")[0] == CORE + type_:
        return None
    profile = registry().get(canonical)
    if profile is None:
        known = ", ".join(p.url for p in registry().for_type(type_)) or "none"
        raise FhirError(400, [Issue("not-found", f"Unknown profile {canonical!r}: this server validates {type_} "
                                                 f"against {CORE}{type_} and its own profiles ({known})")])  # fmt: skip
    if profile.type != type_:
        raise FhirError(400, [Issue("invalid", f"Profile {profile.url} constrains {profile.type}, not {type_}")])
    return profile


def declared(resource: dict) -> list[Profile]:
    """The profiles of this server that ``resource`` claims in ``meta.profile`` (others are not known here)."""
    meta = resource.get("meta")
    claimed = meta.get("profile") if isinstance(meta, dict) else None
    if not isinstance(claimed, list):
        return []
    found = (registry().get(c) for c in claimed if isinstance(c, str))
    return [p for p in found if p is not None and p.type == resource.get("resourceType")]


def check(resource: dict, profiles: Iterable[Profile]) -> list[Issue]:
    """Issues of ``resource`` against each of ``profiles`` (each profile once)."""
    issues: list[Issue] = []
    for profile in dict.fromkeys(profiles):
        issues += registry().check(resource, profile)
    return issues[:MAX_ISSUES]


def supported_profiles(type_: str) -> list[str]:
    """The canonicals of this server's profiles of ``type_`` (CapabilityStatement ``supportedProfile``)."""
    return sorted(p.url for p in registry().for_type(type_))

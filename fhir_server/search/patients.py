"""Whose record a resource belongs to: the patients its Patient-compartment parameters name
(http://hl7.org/fhir/R4/compartmentdefinition-patient.html), from its content or from its index entries.

The audit trace names these patients on every access (one AuditEvent per patient, as IHE BALP asks), and
the patient's notifications are addressed to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from ..store import IndexEntry
from .compartments import definitions
from .indexing import plan


@lru_cache(maxsize=512)
def compartment_params(type_: str) -> frozenset[str]:
    """The parameters linking ``type_`` to the Patient compartment ("{def}" and the Patient's own link aside)."""
    if type_ == "Patient":
        return frozenset()
    return frozenset(p for p in definitions()["Patient"].get(type_, ()) if p != "{def}")


@lru_cache(maxsize=512)
def _extractors(type_: str, only: str | None = None) -> tuple[tuple[str | None, str, object, object], ...]:
    """The compiled extractors of the compartment parameters (or of the parameter ``only``): (top-level key or
    None, code, fn, emit)."""
    wanted = compartment_params(type_) if only is None else frozenset({only})
    by_head, headless, _ = plan(type_)
    found = [(head, code, fn, emit) for head, steps in by_head.items() for code, fn, emit in steps if code in wanted]
    found += [(None, code, fn, emit) for code, fn, emit in headless if code in wanted]
    return tuple(found)


def _patient_id(reference: str, base: str | None) -> str | None:
    if base and reference.startswith(base):
        reference = reference[len(base) :].lstrip("/")
    if reference.startswith("Patient/"):
        id_ = reference[8:]
        return id_ if id_ and "/" not in id_ else None
    return None


def patients_of(resource: dict, base: str | None = None) -> list[str]:
    """The ids of the patients ``resource`` belongs to (a Patient: itself), in document order."""
    type_ = resource.get("resourceType")
    if type_ == "Patient":
        return [resource["id"]] if resource.get("id") else []
    if not isinstance(type_, str) or not compartment_params(type_):
        return []
    return _named(resource, _extractors(type_), base)


def patients_named_by(resource: dict, param: str, base: str | None = None) -> list[str]:
    """The ids of the patients one reference parameter of ``resource`` names (``subject``, a Binary's
    ``securitycontext``…), evaluating that parameter only."""
    type_ = resource.get("resourceType")
    return _named(resource, _extractors(type_, param), base) if isinstance(type_, str) else []


def _named(resource: dict, extractors: tuple, base: str | None) -> list[str]:
    focus = [resource]
    found: dict[str, None] = {}
    for head, code, fn, emit in extractors:
        if head is not None and head not in resource:
            continue
        for value in fn(focus, resource):  # type: ignore[operator]
            for row in emit(code, value):  # type: ignore[operator]
                patient = _patient_id(row[1], base) if row[1] else None
                if patient:
                    found[patient] = None
    return list(found)


def patients_in(type_: str, id_: str, entries: Iterable[IndexEntry]) -> list[str]:
    """The same, from a version's index entries (what a write has at hand)."""
    if type_ == "Patient":
        return [id_]
    params = compartment_params(type_)
    found: dict[str, None] = {}
    for entry in entries:  # IndexEntry, or the plain rows a prepared write carries: (param, value, …)
        param, value = entry[0], entry[1]
        if param in params and value and value.startswith("Patient/"):
            found[value[8:]] = None
    return list(found)

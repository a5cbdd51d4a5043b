"""The medical synthesis: ``Patient/[id]/$summary`` of the International Patient Summary IG
(http://hl7.org/fhir/uv/ips/OperationDefinition/summary), as a FHIR ``document`` Bundle.

Every section is a search of the patient's compartment through the normal search machinery, so the caller's
SMART scopes and the Mon espace santé policy (policy/rules.py) are ANDed into each store query: an emergency
token reaches only the emergency types, masked or invisible documents never come back, another patient's
record is unknown (404). Nothing is read around the policy, so the summary cannot disclose more than the
caller could search for themselves.

The lines each section shows (French, for the PDF and the sections' narrative) are built here once.
"""

from __future__ import annotations

import dataclasses
import html
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from .. import __version__
from ..fhirjson import loads
from ..interactions import crud
from ..interactions import search as search_interaction
from ..interactions.access import NOTHING
from ..interactions.context import Context
from ..policy import codes
from ..search.compartments import compartment_condition
from ..store.query import IdIn, Search

LOINC = "http://loinc.org"
VITAL_SIGNS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
#: Sections the IPS does not define (médecin traitant, entourage): this server's own codes.
SECTION_SYSTEM = "https://github.com/fhir-server/fhir-server/CodeSystem/summary-section"
IPS_BUNDLE = "http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips"
#: One section holds at most this many entries: a summary, not an export (the rest is one search away).
MAX_ENTRIES = 1000
_ERRORS = frozenset({"entered-in-error"})


@dataclass(frozen=True, slots=True)
class SectionSpec:
    key: str
    code: tuple[str, str, str]  # system, code, display
    title: str  # French: the document is the patient's, in their language
    type: str | None  # the compartment type searched (None: read from the Patient's references)
    criteria: tuple[tuple[str, str], ...] = ()
    sort: str | None = None
    one_per_code: bool = False  # "last measures": the newest of each code


SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("allergies", (LOINC, "48765-2", "Allergies and adverse reactions Document"), "Allergies",
                "AllergyIntolerance"),
    SectionSpec("problems", (LOINC, "11450-4", "Problem list - Reported"), "Problèmes de santé", "Condition"),
    SectionSpec("medications", (LOINC, "10160-0", "History of Medication use Narrative"), "Traitements",
                "MedicationStatement"),
    SectionSpec("immunizations", (LOINC, "11369-6", "History of Immunization Narrative"), "Vaccinations",
                "Immunization", sort="-date"),
    SectionSpec("vital-signs", (LOINC, "8716-3", "Vital signs"), "Dernières mesures", "Observation",
                (("category", VITAL_SIGNS),), sort="-date", one_per_code=True),
    SectionSpec("advance-directives", (LOINC, "42348-3", "Advance directives"), "Directives anticipées", "Consent",
                (("scope", f"{codes.CONSENT_SCOPE}|{codes.ADVANCE_DIRECTIVE}"), ("status", "active"))),
    SectionSpec("general-practitioner", (SECTION_SYSTEM, "medecin-traitant", "Médecin traitant"),
                "Médecin traitant", None),
    SectionSpec("entourage", (SECTION_SYSTEM, "entourage", "Entourage"), "Entourage", "RelatedPerson"),
)  # fmt: skip


@dataclass(slots=True)
class Section:
    spec: SectionSpec
    resources: list[dict] = field(default_factory=list)  # the section's entries, then what they reference
    lines: list[str] = field(default_factory=list)  # what a reader sees, one line per entry
    withheld: bool = False  # the caller's access does not reach this kind of data at all


@dataclass(frozen=True, slots=True)
class Summary:
    patient: dict
    sections: list[Section]
    generated: datetime

    def disclosed(self) -> list[dict]:
        """Every stored resource the summary shows: what the audit trail names."""
        return [self.patient, *(r for s in self.sections for r in s.resources)]


# --- reading, under the caller's access ----------------------------------------------------------------------------
def _reachable(ctx: Context, type_: str) -> bool:
    return ctx.access.may(type_, "s") and ctx.constraints(type_) != NOTHING


async def _search(ctx: Context, patient_id: str, spec: SectionSpec) -> list[dict]:
    assert spec.type is not None
    params = [*spec.criteria, ("_count", str(ctx.settings.max_page_size)), ("_total", "none")]
    if spec.sort:
        params.append(("_sort", spec.sort))
    where = (compartment_condition("Patient", patient_id, spec.type),)
    request = await search_interaction.parse_request(ctx, spec.type, params, constraints=where)
    found: list[dict] = []
    while True:
        page = await search_interaction.search(ctx, request)
        found += [loads(v.body) for v in page.matches if v.body is not None]
        if not page.next_cursor or len(found) >= MAX_ENTRIES:
            return found[:MAX_ENTRIES]
        request = dataclasses.replace(request, cursor=page.next_cursor)


async def _by_reference(ctx: Context, references: list[str]) -> list[dict]:
    """The resources ``Type/id`` references name, each read under the caller's constraints for its type."""
    wanted: dict[str, list[str]] = {}
    for reference in references:
        type_, _, id_ = reference.partition("/")
        if id_ and "/" not in id_ and (ctx.access.may(type_, "r") or ctx.access.may(type_, "s")):
            wanted.setdefault(type_, []).append(id_)
    out: list[dict] = []
    for type_, ids in wanted.items():
        query = Search(type_, (IdIn(tuple(dict.fromkeys(ids))), *ctx.constraints(type_)))
        out += [loads(m.version.body) for m in await ctx.store.search_page(query, len(ids)) if m.version.body]
    return out


def _reference(value: object) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else None


def _kept(spec: SectionSpec, resources: list[dict]) -> list[dict]:
    kept = [r for r in resources if r.get("status") not in _ERRORS and not _refuted(r)]
    if not spec.one_per_code:
        return kept
    newest: dict[str, dict] = {}
    for resource in kept:  # sorted newest first: the first of each code wins
        newest.setdefault(_code_key(resource.get("code")), resource)
    return list(newest.values())


def _refuted(resource: dict) -> bool:
    status = resource.get("verificationStatus")
    return isinstance(status, dict) and any(c.get("code") in _ERRORS for c in status.get("coding") or ())


def _code_key(concept: object) -> str:
    if not isinstance(concept, dict):
        return ""
    for coding in concept.get("coding") or ():
        return f"{coding.get('system', '')}|{coding.get('code', '')}"
    return str(concept.get("text", ""))


async def _section(ctx: Context, patient: dict, spec: SectionSpec) -> Section:
    if spec.type is None:  # the médecin traitant: Patient.generalPractitioner
        refs = [r for g in patient.get("generalPractitioner") or () if (r := _reference(g))]
        found = await _by_reference(ctx, refs)
        practitioners = [r for p in found if (r := _reference(p.get("practitioner")))]
        extra = await _by_reference(ctx, [r for r in practitioners if r not in _keys(found)])
        resources = found + extra
        return Section(spec, resources, _gp_lines(refs, {_key(r): r for r in resources}))
    if not _reachable(ctx, spec.type):
        return Section(spec, withheld=True)
    resources = _kept(spec, await _search(ctx, patient["id"], spec))
    lines = [describe(r) for r in resources]
    if spec.type == "Consent":  # the signed documents, where the caller may see them (never a masked one)
        documents = await _by_reference(ctx, [r for c in resources if (r := _reference(c.get("sourceReference")))])
        index = {_key(d): d for d in documents}
        lines = [_directive_line(c, index) for c in resources]
        resources += documents
    return Section(spec, resources, lines)


def _key(resource: dict) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _keys(resources: list[dict]) -> set[str]:
    return {_key(r) for r in resources}


async def summarize(ctx: Context, patient_id: str, now: datetime | None = None) -> Summary:
    """The summary of ``patient_id`` as the caller may see it (404 when the Patient is out of their reach)."""
    patient = loads((await crud.read(ctx, "Patient", patient_id)).body or b"{}")
    sections = [await _section(ctx, patient, spec) for spec in SECTIONS]
    return Summary(patient, sections, now or datetime.now(UTC))


# --- the document Bundle ---------------------------------------------------------------------------------------------
def document_bundle(summary: Summary, base: str) -> dict:
    """The IPS document: the Composition first, then the Patient, its author and every entry."""
    stamp = summary.generated.isoformat(timespec="seconds").replace("+00:00", "Z")
    composition_id, device_id = str(uuid.uuid4()), str(uuid.uuid5(uuid.NAMESPACE_URL, f"{base}/$summary#author"))
    patient_ref = f"Patient/{summary.patient['id']}"
    composition = {
        "resourceType": "Composition", "id": composition_id, "language": "fr-FR", "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": patient_ref}, "date": stamp,
        "author": [{"reference": f"urn:uuid:{device_id}"}], "title": "Synthèse médicale",
        "section": [_composition_section(s) for s in summary.sections],
    }  # fmt: skip
    device = {"resourceType": "Device", "id": device_id, "version": [{"value": __version__}],
              "deviceName": [{"name": "fhir-server (Mon espace santé)", "type": "user-friendly-name"}]}  # fmt: skip
    entries = [{"fullUrl": f"urn:uuid:{composition_id}", "resource": composition},
               {"fullUrl": f"{base}/{patient_ref}", "resource": summary.patient},
               {"fullUrl": f"urn:uuid:{device_id}", "resource": device}]  # fmt: skip
    seen = {patient_ref}
    for resource in (r for s in summary.sections for r in s.resources):
        if _key(resource) not in seen:  # a resource two sections name is in the document once
            seen.add(_key(resource))
            entries.append({"fullUrl": f"{base}/{_key(resource)}", "resource": resource})
    identifier = {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"}  # bdl-9: a document has one
    return {"resourceType": "Bundle", "identifier": identifier, "type": "document", "timestamp": stamp,
            "entry": entries}  # fmt: skip


def _composition_section(section: Section) -> dict:
    system, code, display = section.spec.code
    out: dict = {"title": section.spec.title,
                 "code": {"coding": [{"system": system, "code": code, "display": display}]},
                 "text": {"status": "generated", "div": _narrative(section)}}  # fmt: skip
    if section.resources:
        out["entry"] = [{"reference": _key(r)} for r in section.resources]
    else:  # R4 cmp-2: an empty section says why (withheld: this access does not reach it)
        reason = "withheld" if section.withheld else "unavailable"
        out["emptyReason"] = {"coding": [{"system": EMPTY_REASON, "code": reason}]}
    return out


def _narrative(section: Section) -> str:
    if not section.lines:
        body = f"<p>{html.escape(empty_text(section))}</p>"
    else:
        body = "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in section.lines) + "</ul>"
    return f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'


def empty_text(section: Section) -> str:
    if section.withheld:
        return "Non accessible avec les droits d'accès utilisés."
    return "Aucune information accessible."


# --- the French lines ------------------------------------------------------------------------------------------------
#: Labels of the measures of the ANS "Mesures de santé" IG, for codings that carry no display.
MEASURES = {"29463-7": "Poids", "8302-2": "Taille", "39156-5": "IMC", "85354-9": "Pression artérielle",
            "8480-6": "systolique", "8462-4": "diastolique", "8867-4": "Fréquence cardiaque",
            "8310-5": "Température", "59408-5": "Saturation en oxygène", "2708-6": "Saturation en oxygène",
            "4548-4": "HbA1c", "2339-0": "Glycémie", "72514-3": "Douleur", "55423-8": "Nombre de pas",
            "8280-0": "Tour de taille", "8287-5": "Périmètre crânien", "9843-4": "Périmètre crânien"}  # fmt: skip
RELATIONSHIPS = {"MTH": "mère", "FTH": "père", "SPS": "conjoint(e)", "CHILD": "enfant", "SIS": "sœur", "BRO": "frère",
                 "FAMMEMB": "famille", "FRND": "ami(e)", "GRPRN": "grand-parent", "GUARD": "tuteur",
                 "C": "contact d'urgence", "N": "proche à prévenir"}  # fmt: skip
CLINICAL = {"active": "actif", "recurrence": "récidive", "relapse": "rechute", "inactive": "inactif",
            "remission": "en rémission", "resolved": "résolu"}  # fmt: skip


def french_date(value: object) -> str:
    """A FHIR date or dateTime as 31/12/2024 (or 12/2024, 2024 at that precision)."""
    if not isinstance(value, str) or len(value) < 4:
        return ""
    parts = value[:10].split("-")
    return "/".join(reversed(parts))


def concept(value: object) -> str:
    if not isinstance(value, dict):
        return ""
    if value.get("text"):
        return str(value["text"])
    for coding in value.get("coding") or ():
        label = coding.get("display") or MEASURES.get(coding.get("code", "")) or coding.get("code")
        if label:
            return str(label)
    return ""


def human_name(names: object) -> str:
    for name in names if isinstance(names, list) else ():
        if name.get("text"):
            return str(name["text"])
        parts = [*name.get("prefix", ()), *name.get("given", ()), name.get("family", "")]
        if text := " ".join(p for p in parts if p):
            return text
    return ""


def _quantity(value: object) -> str:
    if not isinstance(value, dict) or value.get("value") is None:
        return ""
    unit = value.get("unit") or value.get("code") or ""
    return f"{value['value']} {unit}".strip()


def _joined(*parts: str) -> str:
    return " — ".join(p for p in parts if p)


def _allergy(r: dict) -> str:
    high = "criticité élevée" if r.get("criticality") == "high" else ""
    reactions = ", ".join(concept(m) for x in r.get("reaction") or () for m in x.get("manifestation") or ())
    return _joined(concept(r.get("code")) or "Allergie", reactions, high)


def _condition(r: dict) -> str:
    status = CLINICAL.get(_code_key(r.get("clinicalStatus")).rpartition("|")[2], "")
    onset = french_date(r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start"))
    return _joined(concept(r.get("code")) or "Problème de santé", f"depuis le {onset}" if onset else "", status)


def _medication(r: dict) -> str:
    name = concept(r.get("medicationCodeableConcept")) or (r.get("medicationReference") or {}).get("display", "")
    dosage = "; ".join(d["text"] for d in r.get("dosage") or () if d.get("text"))
    start = french_date(r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start"))
    return _joined(name or "Traitement", dosage, f"depuis le {start}" if start else "")


def _immunization(r: dict) -> str:
    when = french_date(r.get("occurrenceDateTime") or r.get("occurrenceString"))
    not_done = "non faite" if r.get("status") == "not-done" else ""
    return _joined(concept(r.get("vaccineCode")) or "Vaccin", f"le {when}" if when else "", not_done)


def _observation(r: dict) -> str:
    value = _quantity(r.get("valueQuantity")) or concept(r.get("valueCodeableConcept")) or r.get("valueString", "")
    parts = [f"{concept(c.get('code'))} {_quantity(c.get('valueQuantity'))}" for c in r.get("component") or ()]
    when = french_date(r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start"))
    return _joined(concept(r.get("code")) or "Mesure", value or ", ".join(parts), f"le {when}" if when else "")


def _related(r: dict) -> str:
    relation = ", ".join(
        concept(x) if x.get("text") else RELATIONSHIPS.get(_code_key(x).rpartition("|")[2], concept(x))
        for x in r.get("relationship") or ()
    )
    phones = ", ".join(t["value"] for t in r.get("telecom") or () if t.get("system") == "phone" and t.get("value"))
    return _joined(human_name(r.get("name")) or "Proche", relation, phones)


def _consent(r: dict) -> str:
    when = french_date(r.get("dateTime"))
    return _joined(concept(r.get("category", [{}])[0]) if r.get("category") else "Directives anticipées",
                   f"du {when}" if when else "")  # fmt: skip


DESCRIBE: dict[str, Callable[[dict], str]] = {
    "AllergyIntolerance": _allergy, "Condition": _condition, "MedicationStatement": _medication,
    "Immunization": _immunization, "Observation": _observation, "RelatedPerson": _related, "Consent": _consent,
}  # fmt: skip


def describe(resource: dict) -> str:
    return DESCRIBE[resource["resourceType"]](resource)


def _directive_line(consent: dict, documents: dict[str, dict]) -> str:
    document = documents.get(_reference(consent.get("sourceReference")) or "")
    if document is None:
        return _consent(consent)
    titles = [a["attachment"]["title"] for a in document.get("content") or () if a.get("attachment", {}).get("title")]
    return _joined(_consent(consent), document.get("description") or ", ".join(titles))


def _gp_lines(refs: list[str], index: dict[str, dict]) -> list[str]:
    lines = []
    for ref in refs:
        found = index.get(ref)
        if found is None:
            continue  # out of the caller's reach: not named
        if found["resourceType"] == "PractitionerRole":
            person = index.get(_reference(found.get("practitioner")) or "", {})
            organization = (found.get("organization") or {}).get("display", "")
            lines.append(_joined(human_name(person.get("name")) or "Médecin traitant", organization, _phones(found)))
        elif found["resourceType"] == "Practitioner":
            lines.append(_joined(human_name(found.get("name")) or "Médecin traitant", _phones(found)))
        else:
            lines.append(_joined(str(found.get("name") or "Médecin traitant"), _phones(found)))
    return lines


def _phones(resource: dict) -> str:
    return ", ".join(t["value"] for t in resource.get("telecom") or () if t.get("system") == "phone" and t.get("value"))


def birth_date(patient: dict) -> str:
    value = patient.get("birthDate")
    try:
        return date.fromisoformat(value).strftime("%d/%m/%Y") if isinstance(value, str) else ""
    except ValueError:
        return french_date(value)

"""Who entered an entry of the medical profile: stamped by the server on every version it stores.

Mon espace santé shows, for each entry of the medical profile, whether the person declared it or a
professional entered it. The client cannot be trusted to say so, so the server writes it from the verified
token, on every version of the profile's types (docs/medical-record.md "Origin of an entry"):

* ``meta.tag`` ``mes-origin``: ``patient-declared`` (the patient, a representative or delegate, or an app acting
  for the patient), ``professional`` (a professional's token) or ``service`` (a ``system/`` backend: a device
  feed, a hospital's system); ``server-computed`` on what the server derives (the BMI). Searchable as ``_tag``.
* the extension ``mes-entered-by`` (complex): ``enterer``, a Reference to the user (``Patient``,
  ``RelatedPerson``, ``PractitionerRole``/``Practitioner``; the launch patient for an app with no user) and
  ``application``, the OAuth client that wrote it.

Whatever the client sent under these two names is replaced. The history keeps each version's origin: an entry a
professional created and the patient corrected shows both. Writes without a token (``fhir-server load``, a server
run without auth) are the operator's and keep what they carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..fhirjson import dumps, loads
from ..search.indexing import IndexEntry, index_entries
from ..security.principal import Principal
from ..space import representatives
from ..store import ResourceVersion

BASE = "https://github.com/fhir-server/fhir-server"
ORIGIN = f"{BASE}/CodeSystem/mes-origin"
ENTERED_BY = f"{BASE}/StructureDefinition/mes-entered-by"
CLIENT_ID = "urn:ietf:params:oauth:client-id"  # RFC 7591's client identifier, as an Identifier system
PATIENT_DECLARED, PROFESSIONAL, SERVICE = "patient-declared", "professional", "service"
SERVER_COMPUTED = "server-computed"  # what the server derives itself (the BMI, record/measures_bmi.py)
#: The medical profile's types (docs/medical-record.md): an origin on each of their versions.
PROFILE_TYPES = frozenset({
    "AllergyIntolerance", "Condition", "FamilyMemberHistory", "Encounter", "MedicationStatement",
    "Immunization", "Observation", "Goal", "RelatedPerson", "Consent", "Procedure",
})  # fmt: skip
#: Tags only the server writes: ``$meta-add``/``$meta-delete`` may not touch them.
SERVER_TAG_SYSTEMS = frozenset({ORIGIN})


def origin_of(principal: Principal) -> str:
    if principal.professional is not None:
        return PROFESSIONAL
    if principal.fhir_user_type in ("Patient", "RelatedPerson") or principal.patient:
        return PATIENT_DECLARED
    return SERVICE


def enterer_of(principal: Principal) -> str | None:
    """The user who entered it: the token's fhirUser, else the patient an app was launched for."""
    if principal.fhir_user:
        return principal.fhir_user
    return f"Patient/{principal.patient}" if principal.patient else None


def stamp(
    principal: Principal, version: ResourceVersion, entries: Sequence[IndexEntry]
) -> tuple[ResourceVersion, Sequence[IndexEntry]]:
    if version.type not in PROFILE_TYPES or version.body is None:
        return version, entries
    resource = loads(version.body, max_depth=1 << 20)
    if version.type == "RelatedPerson" and representatives.grants_access(resource):
        return version, entries  # a representation is no profile entry: the server's (docs/lifecycle.md)
    code = origin_of(principal)
    meta = resource.setdefault("meta", {})
    tags = [t for t in meta.get("tag") or () if not (isinstance(t, dict) and t.get("system") == ORIGIN)]
    forged = len(tags) != len(meta.get("tag") or ())
    meta["tag"] = [*tags, {"system": ORIGIN, "code": code}]
    details: list[dict] = []
    if enterer := enterer_of(principal):
        details.append({"url": "enterer", "valueReference": {"reference": enterer}})
    if principal.client_id:
        details.append({"url": "application", "valueIdentifier": {"system": CLIENT_ID, "value": principal.client_id}})
    kept = [e for e in resource.get("extension") or () if not (isinstance(e, dict) and e.get("url") == ENTERED_BY)]
    resource["extension"] = [*kept, {"url": ENTERED_BY, "extension": details}] if details else kept
    if not resource["extension"]:
        del resource["extension"]
    # What a client's own origin tag indexed goes too (rare: re-index the whole resource then).
    entries = index_entries(resource) if forged else [*entries, IndexEntry("_tag", code, ORIGIN)]
    return replace(version, body=dumps(resource)), entries

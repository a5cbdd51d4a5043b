"""One access → one R4 ``AuditEvent``, shaped like the ANS "Traçabilité des événements" profile (TdE,
``tde-auditevent``) and IHE BALP (Basic Audit Log Patterns). A pure function: no I/O, no clock unless none
is given.

What the TdE profile constrains (StructureDefinition TDEAuditEvent, parent R4 AuditEvent), and how we meet it:

* ``subtype`` at most one: the FHIR restful interaction (``http://hl7.org/fhir/restful-interaction``);
* ``period.start`` required: when the access started;
* ``agent`` at most two, each with ``who``: the person (the professional, the patient, a representative or
  the operator) and the client application. The patient of a professional's access is an ``entity`` (role 1
  Patient), as BALP does, not a third agent; the server itself is ``source``, not an agent;
* ``source.observer``: this server, named by its base URL (an identifier: no Device resource is needed).

Never the content of a resource: entities are references (``Type/id/_history/n``), and the bris-de-glace
justification is the only free text (``purposeOfEvent.text``), which the professional wrote for the patient
to read. ``docs/audit.md`` shows the whole shape.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..instant import now_us, to_instant
from ..policy.codes import (
    ACCESS_MODES,
    BRIS_DE_GLACE,
    ID_NAT_PS,
    NORMAL,
    PURPOSE_OF_MODE,
    TRE_G15,
    TRE_R248,
    V3_ACT_REASON,
)
from ..policy.professional import Professional

TDE_PROFILE = "https://interop.esante.gouv.fr/ig/fhir/tde/StructureDefinition/tde-auditevent"

# --- code systems
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
AUDIT_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
NETWORK_TYPE = "http://hl7.org/fhir/network-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
#: Identifier systems of this project for what has no national identifier.
OS_USER = "https://github.com/fhir-server/fhir-server/NamingSystem/os-user"  # an operator's account
CLIENT_ID_PATH = "/auth/clients"  # [base]/auth/clients: the client ids this server's authorization server issued

# --- the event type: rest (every FHIR interaction), or DICOM for what is not one
REST = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
PATIENT_RECORD = {"system": DICOM, "code": "110110", "display": "Patient Record"}
AUDIT_LOG_USED = {"system": DICOM, "code": "110101", "display": "Audit Log Used"}
USER_AUTHENTICATION = {"system": DICOM, "code": "110114", "display": "User Authentication"}
LOGIN = {"system": DICOM, "code": "110122", "display": "Login"}  # its subtype: a token issued or refused

#: restful-interaction code → AuditEvent.action (R4: C create, R read/view, U update, D delete, E execute).
#: A search or an operation executes a query (E), as BALP's Query pattern says; reading history is a read.
ACTIONS = {
    "read": "R", "vread": "R", "history-instance": "R", "history-type": "R", "history-system": "R",
    "search-type": "E", "search-system": "E", "search-compartment": "E", "capabilities": "R",
    "create": "C", "update": "U", "patch": "U", "delete": "D",
    "transaction": "E", "batch": "E", "operation": "E",
}  # fmt: skip
INTERACTIONS = frozenset(ACTIONS)

#: AuditEvent.outcome (R4 audit-event-outcome).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"
_OUTCOMES = frozenset({SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE})

_PURPOSE_DISPLAY = {"TREAT": "treatment", "ETREAT": "Emergency Treatment", "BTG": "break the glass"}
_MODE_DISPLAY = {"normal": "Accès normal", "centre_15": "Accès en mode centre de régulation (Centre 15)",
                 "bris_de_glace": "Accès en mode bris de glace"}  # fmt: skip
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?$")
#: fhirUser types that name a person: the patient, a representative or delegate, a professional.
_USER_TYPES = ("Patient", "RelatedPerson", "Person", "Practitioner", "PractitionerRole")


def outcome_of_status(status: int) -> str:
    """An HTTP status as AuditEvent.outcome: 2xx/3xx success, 4xx a minor failure (the request was refused or
    wrong), 5xx a serious one (the server failed)."""
    if status < 400:
        return SUCCESS
    return MINOR_FAILURE if status < 500 else SERIOUS_FAILURE


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: the fields of ``security.principal.Principal`` the trace needs, or an operator's account.

    ``professional``: the PS (idNatPs, profession) signed into the token; ``fhir_user`` the patient or
    representative (``Patient/…``, ``RelatedPerson/…``) or the professional's own reference; ``client_id`` the
    application (empty for an operator at the command line).
    """

    client_id: str = ""
    subject: str = ""
    fhir_user: str | None = None
    professional: Professional | None = None
    access_mode: str = NORMAL
    justification: str | None = None
    token_id: str = ""
    purpose_of_use: tuple[str, ...] = ()
    operator: str | None = None  # an OS account (``fhir-server audit purge``): no token, no app

    @classmethod
    def from_principal(cls, principal) -> Actor:  # security.principal.Principal (not imported: no cycle)
        return cls(
            client_id=principal.client_id,
            subject=principal.subject,
            fhir_user=principal.fhir_user,
            professional=principal.professional,
            access_mode=principal.access_mode,
            justification=principal.justification,
            token_id=principal.token_id,
            purpose_of_use=tuple(principal.purpose_of_use),
        )

    @classmethod
    def os_operator(cls, account: str) -> Actor:
        return cls(operator=account)


@dataclass(frozen=True, slots=True)
class Access:
    """One access to trace.

    ``interaction``: a restful-interaction code (``read``, ``search-type``, ``create``, ``operation``…);
    ``operation``: the operation's name when it is one (``everything``, ``export``, ``purge``); ``patients``:
    the ids of the patients whose data was touched; ``resources``: ``Type/id`` or ``Type/id/_history/n`` of
    what was read or written (references only); ``base``: this server's base URL; times in µs since the epoch
    (``recorded`` defaults to now, ``started`` to ``recorded``).
    """

    actor: Actor
    interaction: str
    base: str
    outcome: str = SUCCESS
    patients: Sequence[str] = ()
    resources: Sequence[str] = ()
    operation: str | None = None
    event_type: dict | None = None  # a Coding; default: rest (PATIENT_RECORD, AUDIT_LOG_USED for others)
    started: int | None = None
    ended: int | None = None
    recorded: int | None = None
    description: str | None = None  # outcomeDesc: what happened, never health data
    address: str | None = None  # the client's network address, when known
    details: Sequence[tuple[str, str]] = ()  # (type, value) facts of an operation (e.g. ("purged", "12"))
    action: str | None = None  # default: the interaction's (ACTIONS); an operation that deletes says "D"
    query: str | None = None  # a search's query string (BALP Query entity, base64), never logged
    request_id: str | None = None  # the client's X-Request-Id (BALP XrequestId entity)
    subtype: dict | None = None  # a Coding other than the restful interaction (token issuance: DICOM Login)


def build_audit_event(access: Access) -> dict:
    """The AuditEvent (no id, no meta.versionId: the store assigns them) tracing ``access``."""
    if access.interaction not in INTERACTIONS:
        raise ValueError(f"unknown restful interaction {access.interaction!r}")
    if access.outcome not in _OUTCOMES:
        raise ValueError(f"AuditEvent.outcome must be one of 0, 4, 8, 12, not {access.outcome!r}")
    if access.operation and access.interaction != "operation":
        raise ValueError("an operation name goes with the interaction 'operation'")
    if access.action is not None and access.action not in ("C", "R", "U", "D", "E"):
        raise ValueError(f"AuditEvent.action must be one of C, R, U, D, E, not {access.action!r}")
    recorded = now_us() if access.recorded is None else access.recorded
    started = recorded if access.started is None else access.started
    period = {"start": to_instant(started)}
    if access.ended is not None:
        period["end"] = to_instant(access.ended)
    event: dict = {
        "resourceType": "AuditEvent",
        "meta": {"profile": [TDE_PROFILE]},
        "type": dict(access.event_type or REST),
        "subtype": [dict(access.subtype) if access.subtype else _subtype(access.interaction)],
        "action": access.action or ACTIONS[access.interaction],
        "period": period,
        "recorded": to_instant(recorded),
        "outcome": access.outcome,
    }
    if access.description:
        event["outcomeDesc"] = access.description
    purpose = _purpose(access.actor)
    if purpose:
        event["purposeOfEvent"] = [purpose]
    event["agent"] = _agents(access)
    event["source"] = _source(access.base)
    entities = _entities(access)
    if entities:
        event["entity"] = entities
    return event


def _subtype(interaction: str) -> dict:
    return {"system": RESTFUL_INTERACTION, "code": interaction, "display": interaction}


def _purpose(actor: Actor) -> dict | None:
    """A professional acts for care: TREAT, or ETREAT / BTG in an emergency mode (TRE_R248 coding beside the
    v3 one); a bris de glace carries the professional's justification as the concept's text. Others: the
    purposes of use their token names (v3 ActReason), if any."""
    mode = actor.access_mode if actor.access_mode in ACCESS_MODES else NORMAL
    if actor.professional is not None or mode != NORMAL:
        code = PURPOSE_OF_MODE[mode]
        concept: dict = {
            "coding": [
                {"system": V3_ACT_REASON, "code": code, "display": _PURPOSE_DISPLAY[code]},
                {"system": TRE_R248, "code": mode, "display": _MODE_DISPLAY[mode]},
            ]
        }
        if mode == BRIS_DE_GLACE and actor.justification:
            concept["text"] = actor.justification
        return concept
    codes = [c for c in actor.purpose_of_use if isinstance(c, str) and c]
    if codes:
        return {"coding": [{"system": V3_ACT_REASON, "code": c} for c in codes]}
    return None


def _agents(access: Access) -> list[dict]:
    """At most two (TdE): the person, requestor when there is one, and the application."""
    actor = access.actor
    agents: list[dict] = []
    person = _person(actor)
    if person is not None:
        agents.append(person)
    if actor.client_id:
        app: dict = {
            "type": {"coding": [{"system": DICOM, "code": "110150", "display": "Application"}]},
            "who": {
                "identifier": {"system": access.base.rstrip("/") + CLIENT_ID_PATH, "value": actor.client_id},
                "display": actor.client_id,
            },
            "requestor": person is None,  # a backend service (system/ token) acts on its own behalf
        }
        if access.address:
            app["network"] = {"address": access.address, "type": "2"}  # 2: IP address
        agents.append(app)
    if not agents:
        raise ValueError("an AuditEvent needs an agent: a person or a client application")
    return agents


def _person(actor: Actor) -> dict | None:
    human = {"coding": [{"system": SECURITY_ROLE_TYPE, "code": "humanuser", "display": "human user"}]}
    if actor.operator is not None:
        who = {"identifier": {"system": OS_USER, "value": actor.operator}, "display": actor.operator}
        return {"type": human, "who": who, "requestor": True}
    ps = actor.professional
    if ps is not None:
        who: dict = {}
        reference = ps.practitioner or ps.role or _professional_user(actor.fhir_user)
        if reference:
            who["reference"] = reference
        if ps.id_nat_ps:
            who["identifier"] = {"system": ID_NAT_PS, "value": ps.id_nat_ps}
        if not who:
            who["display"] = actor.subject or "unknown professional"
        agent: dict = {"type": human}
        if ps.profession:
            agent["role"] = [{"coding": [{"system": TRE_G15, "code": ps.profession}]}]
        agent["who"] = who
        if actor.subject:
            agent["altId"] = actor.subject
        agent["requestor"] = True
        if actor.token_id:
            agent["policy"] = [actor.token_id]  # the access token's jti (BALP), never the token itself
        return agent
    if actor.fhir_user and actor.fhir_user.split("/", 1)[0] in _USER_TYPES:
        agent = {"type": human, "who": {"reference": actor.fhir_user}}
        if actor.subject:
            agent["altId"] = actor.subject
        agent["requestor"] = True
        if actor.token_id:
            agent["policy"] = [actor.token_id]
        return agent
    return None  # a backend service: the application is the only agent


def _professional_user(fhir_user: str | None) -> str | None:
    if fhir_user and fhir_user.split("/", 1)[0] in ("Practitioner", "PractitionerRole"):
        return fhir_user
    return None


def _source(base: str) -> dict:
    return {
        "site": base,
        "observer": {"identifier": {"system": "urn:ietf:rfc:3986", "value": base}, "display": "fhir-server"},
        "type": [{"system": AUDIT_SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }


def _entity(reference: str, kind: tuple[str, str], role: tuple[str, str]) -> dict:
    """An entity by reference only (never the content): its audit-entity-type and object-role codes."""
    return {
        "what": {"reference": reference},
        "type": {"system": AUDIT_ENTITY_TYPE, "code": kind[0], "display": kind[1]},
        "role": {"system": OBJECT_ROLE, "code": role[0], "display": role[1]},
    }


def _entities(access: Access) -> list[dict]:
    """The patients (role 1), then what was touched (role 4), by reference; an operation's facts as details
    of a System Object entity named after it."""
    entities: list[dict] = []
    for patient in dict.fromkeys(f"Patient/{p}" for p in access.patients):
        entities.append(_entity(patient, ("1", "Person"), ("1", "Patient")))
    seen = {e["what"]["reference"] for e in entities}
    for resource in dict.fromkeys(access.resources):
        if _REFERENCE.match(resource) is None:
            raise ValueError(f"not a relative reference Type/id[/_history/n]: {resource!r}")
        if resource not in seen:  # the patient itself, unversioned: already there
            entities.append(_entity(resource, ("2", "System Object"), ("4", "Domain Resource")))
    if access.operation or access.details or access.query is not None:
        entity: dict = {
            "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "13" if access.event_type == AUDIT_LOG_USED else "24",
                     "display": "Security Resource" if access.event_type == AUDIT_LOG_USED else "Query"},
        }  # fmt: skip
        if access.operation:
            entity["name"] = access.operation
        if access.query is not None:
            entity["query"] = base64.b64encode(access.query.encode()).decode("ascii")
        if access.details:
            entity["detail"] = [{"type": t, "valueString": v} for t, v in access.details]
        entities.append(entity)
    if access.request_id:
        kind = {"system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "X-Request-Id"}
        entities.append({"what": {"identifier": {"value": access.request_id}}, "type": kind})
    return entities

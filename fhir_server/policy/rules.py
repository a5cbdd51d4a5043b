"""Mon espace santé access rules as store conditions (docs/policy.md has them as tables).

Every rule is a condition on index entries, ANDed into the store query like the SMART scope confinement,
so totals, paging, includes, chains, ``_has``, history and exports obey it by construction. The patient's
choices are data (Consent, ``Patient.generalPractitioner``, ``DocumentReference.securityLabel``): the
conditions refer to them, so a choice takes effect on the next request whatever the token says.

Two families of callers:

* a **professional** (``Professional`` in the token): the record of a patient who blocked them (or their
  organisation) is out of reach in every mode; in normal mode they read a patient's record only when the
  patient authorised them (permit Consent) or they are the médecin traitant, plus the documents they
  authored; a ``MASQUE_PS`` document only as author, médecin traitant or administrateur; they may deposit
  documents for any patient who did not block them. In an emergency mode (centre_15, bris_de_glace) they
  read (never write) the emergency sections, unless the patient refused that mode in advance; masked
  documents unless the patient refused them in emergencies.
* the **patient side** (the patient, representatives, delegates, their apps): never an ``INVISIBLE_PATIENT``
  document; ``INVISIBLE_REPRESENTANTS_LEGAUX`` documents only when they are the caller's own record.
"""

from __future__ import annotations

from functools import cache

from ..messaging import codes as messaging_codes
from ..search.compartments import definitions
from ..search.parameters import parse
from ..space import status as space_status
from ..store.query import AllOf, AnyOf, Chain, Condition, Entry, Has, Not, Search
from . import codes
from .professional import Professional

Filter = tuple[Condition, ...]

#: What an emergency access reaches (CSP L.1111-17 and the real service's emergency sections): documents,
#: vaccinations, care history, entourage and wishes; the patient and the directory to make sense of them.
EMERGENCY_TYPES = frozenset({
    "Patient", "DocumentReference", "Binary", "Immunization", "Encounter", "Condition", "Procedure",
    "RelatedPerson", "Consent",
})  # fmt: skip
#: Directory data: written by the registry feeds (system tokens), never by a professional's token, since
#: the profession a token carries is read from it.
DIRECTORY_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization"})
DOCUMENT_TYPES = frozenset({"DocumentReference", "Binary"})
#: A message of the messaging (docs/messaging.md): not a document, not a notification.
MESSAGE: Condition = Entry("category", system=messaging_codes.CATEGORY)


def owner_param(type_: str) -> str | None:
    """The reference naming the patient whose record a resource belongs to (its first Patient-compartment
    parameter: ``subject``, ``patient``…); None outside the compartment."""
    params = definitions()["Patient"].get(type_)
    return params[0] if params and type_ != "Patient" else None


def _where(type_: str, *pairs: tuple[str, str]) -> Filter:
    return parse(type_, list(pairs)).where


@cache
def _label(code: str) -> Condition:
    """The document carries this TRE_A07 visibility code (whatever the form of its system)."""
    return Entry("security-label", value=code)


def _consents(*pairs: tuple[str, str]) -> Search:
    """Active patient-privacy Consents matching ``pairs``."""
    base = (("status", "active"), ("scope", f"{codes.CONSENT_SCOPE}|{codes.PATIENT_PRIVACY}"))
    return Search("Consent", _where("Consent", *base, *pairs))


def _patient_has(*pairs: tuple[str, str]) -> Condition:
    """A Patient condition: an active patient-privacy Consent of theirs matches ``pairs``."""
    return Has("patient", _consents(*pairs))


class ProfessionalRules:
    """The conditions on a professional's access, per type and SMART permission letter."""

    def __init__(self, professional: Professional, mode: str) -> None:
        self.mode = mode
        refs = ",".join(professional.refs)
        self._author = refs
        self._refs = tuple(professional.refs)
        self._mailboxes = tuple(professional.refs_with_organization)  # the mailboxes they read (docs/messaging.md)
        blockers = ",".join(professional.refs_with_organization)
        self.not_blocked: Condition = Not(_patient_has(("provision-type", "deny"), ("actor", blockers)))
        # a closed space, or one the person refused, is out of every professional's reach (docs/lifecycle.md)
        self.space_exists: Condition = Not(
            Entry(space_status.STATUS_PARAM, value_in=(space_status.OPPOSED, space_status.CLOSED))
        )
        # médecin traitant, or a professional the patient made an "administrateur"
        self.privileged: Condition = AnyOf((
            *_where("Patient", ("general-practitioner", refs)),
            _patient_has(("provision-type", "permit"), ("actor", refs),
                         ("actor-role", f"{codes.ACTOR_ROLE}|{codes.ADMINISTRATEUR}")),
        ))  # fmt: skip
        authorised = _patient_has(("provision-type", "permit"), ("actor", blockers))
        self.authorised: Condition = AnyOf((self.privileged, authorised))
        if mode != codes.NORMAL:
            purpose = f"{codes.V3_ACT_REASON}|{codes.PURPOSE_OF_MODE[mode]}"
            # a refusal of the mode itself; one naming a security label refuses only those documents
            self.emergency_refused: Condition = _patient_has(
                ("provision-type", "deny"), ("purpose", purpose), ("security-label:missing", "true")
            )
            self.masked_refused: Condition = _patient_has(
                ("provision-type", "deny"), ("purpose", purpose), ("security-label", codes.MASQUE_PS)
            )

    # --- the patient a resource belongs to
    def owner(self, type_: str, *patient: Condition) -> Condition:
        """``type_`` resources of a patient satisfying ``patient``."""
        param = owner_param(type_)
        assert param is not None
        return Chain(param, Search("Patient", tuple(patient)))

    def reach(self) -> tuple[Condition, ...]:
        """The Patient conditions under which their record is readable in this mode."""
        if self.mode == codes.NORMAL:
            return (self.not_blocked, self.space_exists, self.authorised)
        return (self.not_blocked, self.space_exists, Not(self.emergency_refused))

    # --- per type and letter
    def read(self, type_: str) -> Filter | None:
        if self.mode != codes.NORMAL and type_ not in EMERGENCY_TYPES and owner_param(type_) is not None:
            return None
        if type_ == "Patient":
            # The identity (and the Mon espace santé status) of any patient who did not block them: a
            # professional needs it to deposit a document, authorised or not (PDSm4DMP).
            return (self.not_blocked,)
        if owner_param(type_) is None:
            return ()  # reference data (Practitioner, Medication…); Binary is ruled by its document
        if type_ == "AuditEvent":
            return None  # the trail is the patient's and the auditors' (other professionals' accesses, reasons)
        if type_ == "DocumentReference":
            return (self._document(),)
        if type_ == "Consent":
            return (self._consent(),)
        if type_ == "Communication":
            # the patient's notifications and letters (an enrolment code): only a copy addressed to this
            # professional (the médecin traitant's emergency notification); messages: their own mailbox's
            # copies only, whoever else the patient authorised (docs/messaging.md)
            not_a_notification = Not(AnyOf(tuple(Entry("category", system=s) for s in codes.SERVER_MESSAGES)))
            addressed = Entry("recipient", value_in=self._refs)
            record = AllOf((Not(MESSAGE), self.owner(type_, *self.reach()), AnyOf((not_a_notification, addressed))))
            mailbox = AllOf((
                Entry("_tag", value=messaging_codes.PROFESSIONAL_COPY, system=messaging_codes.MAILBOX),
                Entry("_tag", value_in=self._mailboxes, system=messaging_codes.MAILBOX_OWNER),
                self.owner(type_, self.not_blocked, self.space_exists),
            ))  # fmt: skip
            return (AnyOf((record, mailbox)),)
        return (self.owner(type_, *self.reach()),)

    def _document(self) -> Condition:
        own = AllOf((
            *_where("DocumentReference", ("author", self._author)),
            self.owner("DocumentReference", self.not_blocked, self.space_exists),
        ))  # fmt: skip
        unmasked = Not(_label(codes.MASQUE_PS))
        masked_ok = [self.owner("DocumentReference", self.privileged)]
        if self.mode != codes.NORMAL:
            masked_ok.append(self.owner("DocumentReference", Not(self.masked_refused)))
        shared = AllOf((self.owner("DocumentReference", *self.reach()), AnyOf((unmasked, *masked_ok))))
        return AnyOf((own, shared))

    def _consent(self) -> Condition:
        """Advance directives and other non-privacy Consents with the record; a patient's privacy choices
        only to the professionals they name, the médecin traitant and the administrateurs."""
        privacy = _where("Consent", ("scope", f"{codes.CONSENT_SCOPE}|{codes.PATIENT_PRIVACY}"))[0]
        if self.mode != codes.NORMAL:
            directives = _where("Consent", ("scope", f"{codes.CONSENT_SCOPE}|{codes.ADVANCE_DIRECTIVE}"))
            return AllOf((*directives, self.owner("Consent", *self.reach())))
        others = AllOf((Not(privacy), self.owner("Consent", *self.reach())))
        exists = self.space_exists
        named = AllOf((*_where("Consent", ("actor", self._author)), self.owner("Consent", self.not_blocked, exists)))
        managed = self.owner("Consent", self.not_blocked, exists, self.privileged)
        return AnyOf((others, named, managed))

    def create(self, type_: str) -> Filter | None:
        """A deposit needs no authorisation (the DMP lets any professional feed it), only no block."""
        if self.mode != codes.NORMAL or type_ in DIRECTORY_TYPES or type_ == "Patient":
            return None
        if owner_param(type_) is None:
            return ()
        return (self.owner(type_, self.not_blocked),)

    def change(self, type_: str) -> Filter | None:
        """Update and delete: a document by its author only; other record data as for reading."""
        if self.mode != codes.NORMAL or type_ in DIRECTORY_TYPES or type_ == "Patient":
            return None
        if type_ == "DocumentReference":
            own = _where("DocumentReference", ("author", self._author))
            return (*own, self.owner("DocumentReference", self.not_blocked, self.space_exists))
        return self.read(type_)


class PatientSideRules:
    """The patient, their representatives and delegates, and the apps acting for them."""

    def __init__(self, own_patient: str | None, messaging: bool = False) -> None:
        self.own = own_patient  # the caller's own Patient id (None: a representative or delegate only)
        self.messaging = messaging  # a grant names Communication: messages are reachable

    def document(self) -> Condition:
        hidden_from_patient = Not(_label(codes.INVISIBLE_PATIENT))
        from_representatives = _label(codes.INVISIBLE_REPRESENTANTS_LEGAUX)
        if self.own is None:
            return AllOf((hidden_from_patient, Not(from_representatives)))
        own = _where("DocumentReference", ("subject", f"Patient/{self.own}"))[0]
        return AllOf((hidden_from_patient, AnyOf((Not(from_representatives), own))))

    def read(self, type_: str) -> Filter:
        if type_ == "Communication":
            return (self.messages(),)
        return (self.document(),) if type_ == "DocumentReference" else ()

    def messages(self) -> Condition:
        """Messages: the patient's mailbox's copies, and only through a grant naming Communication (an app's
        ``patient/*.rs`` does not reach them); a representative not those the sender kept from them."""
        if not self.messaging:
            return Not(MESSAGE)
        mine = [Entry("_tag", value=messaging_codes.PATIENT_COPY, system=messaging_codes.MAILBOX)]
        if self.own is None:
            mine.append(Not(Entry("_security", value=codes.INVISIBLE_REPRESENTANTS_LEGAUX)))
        return AnyOf((Not(MESSAGE), AllOf(tuple(mine))))

    def delete(self, type_: str) -> Filter:
        """A document the patient side deposited (authored by a Patient or RelatedPerson), not a professional's;
        a message of the patient's mailbox (deleted for good from it: the sender keeps theirs)."""
        if type_ == "Communication":
            return (self.messages(),)
        if type_ != "DocumentReference":
            return ()
        by_patient_side = AnyOf((
            Entry("author", value_prefix="Patient/"),
            Entry("author", value_prefix="RelatedPerson/"),
            Entry("_tag", value="filed", system=messaging_codes.MAILBOX),  # filed from a message by the patient
        ))  # fmt: skip
        return (self.document(), by_patient_side)

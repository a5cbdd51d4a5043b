"""The codes the Mon espace santé policy reads in stored resources (ANS nomenclatures, HL7 terminologies).

Codes are matched without their system where the ANS publishes two forms of the same code system (the
``https://mos.esante.gouv.fr/NOS/…`` canonical and the ``urn:oid:…`` form): a document carrying
``MASQUE_PS`` is masked whichever form its producer used. That only ever hides more, never less.
"""

from __future__ import annotations

# --- TRE_A07 StatutVisibiliteDocument: DocumentReference.securityLabel
TRE_A07 = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
TRE_A07_OID = "urn:oid:1.2.250.1.213.1.1.4.13"
MASQUE_PS = "MASQUE_PS"  # masked to professionals (author, médecin traitant, administrateurs still see it)
INVISIBLE_PATIENT = "INVISIBLE_PATIENT"  # hidden from the patient (and their apps) until the author lifts it
INVISIBLE_REPRESENTANTS_LEGAUX = "INVISIBLE_REPRESENTANTS_LEGAUX"  # hidden from a minor's legal representatives

# --- TRE_G15 ProfessionSante: PractitionerRole.code
TRE_G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
TRE_G15_OID = "urn:oid:1.2.250.1.71.1.2.7"
PROFESSION_SYSTEMS = (TRE_G15, TRE_G15_OID)

# --- national identifiers
ID_NAT_PS = "urn:oid:1.2.250.1.71.4.2.1"  # idNatPs of a professional (Annuaire Santé)
INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"  # INS of a patient

# --- TRE_R248 ModeAcces and their HL7 v3 ActReason purposes of use
NORMAL, CENTRE_15, BRIS_DE_GLACE = "normal", "centre_15", "bris_de_glace"
ACCESS_MODES = (NORMAL, CENTRE_15, BRIS_DE_GLACE)
TRE_R248 = "https://mos.esante.gouv.fr/NOS/TRE_R248-ModeAcces/FHIR/TRE-R248-ModeAcces"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PURPOSE_OF_MODE = {NORMAL: "TREAT", CENTRE_15: "ETREAT", BRIS_DE_GLACE: "BTG"}

# --- Consent (http://hl7.org/fhir/R4/consent.html)
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
PATIENT_PRIVACY = "patient-privacy"  # who may reach the record: authorisations, blocks, emergency settings
ADVANCE_DIRECTIVE = "adr"  # advance directives, organ donation wishes: part of the emergency sections
#: Consent.provision.actor.role of an "administrateur": a professional the patient gave the médecin
#: traitant's rights (sees masked documents, may block others). Other actors carry v3 IRCP.
ACTOR_ROLE = "https://github.com/fhir-server/fhir-server/CodeSystem/mes-consent-actor-role"
ADMINISTRATEUR = "administrateur"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
INFORMATION_RECIPIENT = "IRCP"

#: The patient's notifications (notify/patient.py): Communications of this category are the patient's own and
#: the server's to write; a professional reads one only when it is addressed to them.
NOTIFICATION_EVENT = "https://github.com/fhir-server/fhir-server/CodeSystem/notification-event"
#: The insurer's letters to the person (their provisional enrolment code when they have no email): space/lifecycle.py.
SPACE_LETTER = "https://github.com/fhir-server/fhir-server/CodeSystem/mes-space-letter"
#: Communications the server writes to the person only: a professional reads none but a copy addressed to them.
SERVER_MESSAGES = (NOTIFICATION_EVENT, SPACE_LETTER)

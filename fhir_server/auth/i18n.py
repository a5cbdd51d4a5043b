"""The words of the login and consent pages: French by default, English on request.

Language choice, first match wins: ``lang`` parameter (kept in the forms), OpenID ``ui_locales``,
``Accept-Language``; anything else is French (the service's users are French).
"""

from __future__ import annotations

from .scopes import (
    FHIR_USER,
    LAUNCH,
    LAUNCH_ENCOUNTER,
    LAUNCH_PATIENT,
    OFFLINE,
    ONLINE,
    OPENID,
    PROFILE,
    parse_clinical,
)

LANGUAGES = ("fr", "en")
DEFAULT = "fr"


def choose(lang: str | None, ui_locales: str | None, accept_language: str | None) -> str:
    for candidate in (lang, *(ui_locales or "").split()):
        if candidate and candidate[:2].lower() in LANGUAGES:
            return candidate[:2].lower()
    ranked = []
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag[:2].lower() in LANGUAGES and q > 0:
            ranked.append((q, tag[:2].lower()))
    return max(ranked, key=lambda r: r[0])[1] if ranked else DEFAULT


TEXT = {
    "fr": {
        "login_title": "Connexion",
        "login_intro": "L'application « {client} » demande l'accès à vos données de santé. "
        "Connectez-vous pour continuer.",
        "username": "Identifiant",
        "password": "Mot de passe",
        "sign_in": "Se connecter",
        "bad_credentials": "Identifiant ou mot de passe incorrect.",
        "throttled": "Trop de tentatives échouées. Réessayez dans {minutes} minutes.",
        "totp_title": "Vérification en deux étapes",
        "totp_intro": "Saisissez le code à 6 chiffres affiché par votre application d'authentification.",
        "totp_code": "Code de vérification",
        "verify": "Vérifier",
        "bad_totp": "Code incorrect ou expiré.",
        "picker_title": "Choix du dossier",
        "picker_intro": "Pour quel dossier l'application « {client} » doit-elle accéder aux données ?",
        "picker_self": "Mon dossier",
        "picker_other": "Dossier du patient {id}",
        "picker_id": "Identifiant du patient",
        "picker_unknown": "Ce patient n'existe pas ou ne vous est pas accessible.",
        "continue": "Continuer",
        "consent_title": "Autorisation",
        "consent_intro": "L'application « {client} » demande les autorisations suivantes :",
        "consent_patient": "Dossier concerné : patient {id}.",
        "consent_optional": "Vous pouvez décocher les autorisations facultatives.",
        "required": "(nécessaire)",
        "allow": "Autoriser",
        "deny": "Refuser",
        "error_title": "Erreur",
        "expired": "Cette demande a expiré ou n'est plus valable. Retournez à l'application et recommencez.",
        "csrf": "Le formulaire a expiré. Rechargez la page et recommencez.",
        "logout_title": "Déconnexion",
        "logged_out": "Vous êtes déconnecté(e).",
    },
    "en": {
        "login_title": "Sign in",
        "login_intro": "The application “{client}” asks to access your health data. Sign in to continue.",
        "username": "Username",
        "password": "Password",
        "sign_in": "Sign in",
        "bad_credentials": "Wrong username or password.",
        "throttled": "Too many failed attempts. Try again in {minutes} minutes.",
        "totp_title": "Two-step verification",
        "totp_intro": "Enter the 6-digit code shown by your authenticator app.",
        "totp_code": "Verification code",
        "verify": "Verify",
        "bad_totp": "Wrong or expired code.",
        "picker_title": "Choose a record",
        "picker_intro": "Whose record should the application “{client}” access?",
        "picker_self": "My record",
        "picker_other": "Record of patient {id}",
        "picker_id": "Patient id",
        "picker_unknown": "This patient does not exist or is not accessible to you.",
        "continue": "Continue",
        "consent_title": "Authorization",
        "consent_intro": "The application “{client}” asks for the following permissions:",
        "consent_patient": "Record concerned: patient {id}.",
        "consent_optional": "You may untick the optional permissions.",
        "required": "(required)",
        "allow": "Allow",
        "deny": "Deny",
        "error_title": "Error",
        "expired": "This request has expired or is no longer valid. Go back to the application and start again.",
        "csrf": "The form has expired. Reload the page and try again.",
        "logout_title": "Sign out",
        "logged_out": "You are signed out.",
    },
}

_IDENTITY_WORDS = {
    "fr": {
        OPENID: "Confirmer votre identité à l'application",
        FHIR_USER: "Connaître votre profil (patient, professionnel de santé, proche aidant)",
        PROFILE: "Connaître votre nom",
        LAUNCH: "Recevoir le contexte de lancement (patient, consultation) du logiciel qui l'ouvre",
        LAUNCH_PATIENT: "Savoir quel dossier patient est sélectionné",
        LAUNCH_ENCOUNTER: "Savoir quelle consultation ou quel séjour est en cours",
        OFFLINE: "Garder l'accès même quand vous n'êtes plus connecté(e), jusqu'à ce que vous le retiriez",
        ONLINE: "Garder l'accès tant que vous restez connecté(e)",
    },
    "en": {
        OPENID: "Confirm your identity to the application",
        FHIR_USER: "Know your profile (patient, practitioner, caregiver)",
        PROFILE: "Know your name",
        LAUNCH: "Receive the launch context (patient, encounter) from the software opening it",
        LAUNCH_PATIENT: "Know which patient record is selected",
        LAUNCH_ENCOUNTER: "Know the current encounter",
        OFFLINE: "Keep access even when you are signed out, until you withdraw it",
        ONLINE: "Keep access while you stay signed in",
    },
}

_VERBS = {
    "fr": {"c": "créer", "r": "lire", "u": "modifier", "d": "supprimer", "s": "rechercher"},
    "en": {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"},
}
_AND = {"fr": "et", "en": "and"}
_WHOSE = {
    "fr": {"patient": "du dossier choisi", "user": "auxquelles vous avez accès", "system": "de tous les patients"},
    "en": {"patient": "of the chosen record", "user": "you have access to", "system": "of every patient"},
}
_FILTER = {"fr": "filtre", "en": "filter"}
_ALL = {"fr": "toutes les données de santé", "en": "all health data"}
_TYPES = {
    "AllergyIntolerance": ("allergies et intolérances", "allergies and intolerances"),
    "Appointment": ("rendez-vous", "appointments"),
    "Binary": ("fichiers des documents", "document files"),
    "CarePlan": ("plans de soins", "care plans"),
    "CareTeam": ("équipes de soins", "care teams"),
    "Communication": ("messages", "messages"),
    "Composition": ("comptes rendus structurés", "structured reports"),
    "Condition": ("problèmes de santé et antécédents", "conditions and history"),
    "Consent": ("consentements", "consents"),
    "Coverage": ("couvertures d'assurance maladie", "insurance coverage"),
    "Device": ("dispositifs médicaux", "medical devices"),
    "DiagnosticReport": ("résultats d'examens", "diagnostic reports"),
    "DocumentReference": ("documents médicaux", "medical documents"),
    "Encounter": ("consultations et séjours", "encounters"),
    "FamilyMemberHistory": ("antécédents familiaux", "family history"),
    "Goal": ("objectifs de soins", "care goals"),
    "Immunization": ("vaccinations", "immunizations"),
    "List": ("listes", "lists"),
    "Location": ("lieux de soins", "locations"),
    "Medication": ("médicaments", "medications"),
    "MedicationRequest": ("prescriptions de médicaments", "medication prescriptions"),
    "MedicationStatement": ("traitements en cours", "current treatments"),
    "Observation": ("observations (mesures, résultats)", "observations (measurements, results)"),
    "Organization": ("établissements et organisations", "organizations"),
    "Patient": ("informations administratives du patient", "patient demographics"),
    "Practitioner": ("professionnels de santé", "practitioners"),
    "PractitionerRole": ("rôles des professionnels de santé", "practitioner roles"),
    "Procedure": ("actes et interventions", "procedures"),
    "Provenance": ("origine des données", "provenance"),
    "Questionnaire": ("questionnaires", "questionnaires"),
    "QuestionnaireResponse": ("réponses aux questionnaires", "questionnaire answers"),
    "RelatedPerson": ("proches", "related persons"),
    "Schedule": ("agendas", "schedules"),
    "ServiceRequest": ("demandes d'examens et de soins", "service requests"),
    "Slot": ("créneaux", "slots"),
}


def text(lang: str, key: str, **values: str) -> str:
    return TEXT[lang][key].format(**values)


def describe_scope(scope: str, lang: str) -> str:
    """One scope in plain words, e.g. ``patient/Observation.rs`` → "Lire et rechercher : observations…"."""
    if scope in _IDENTITY_WORDS[lang]:
        return _IDENTITY_WORDS[lang][scope]
    parsed = parse_clinical(scope)
    if parsed is None:
        return scope
    verbs = [_VERBS[lang][p] for p in "cruds" if p in parsed.permissions]
    said = verbs[0] if len(verbs) == 1 else f"{', '.join(verbs[:-1])} {_AND[lang]} {verbs[-1]}"
    index = 0 if lang == "fr" else 1
    what = _ALL[lang] if parsed.type == "*" else _TYPES.get(parsed.type, (None, None))[index]
    what = what or parsed.type
    sentence = f"{said.capitalize()} : {what} {_WHOSE[lang][parsed.context]}"
    if lang == "en":
        sentence = sentence.replace(" : ", ": ", 1)
    if parsed.query:
        sentence += f" ({_FILTER[lang]} : {parsed.query})" if lang == "fr" else f" ({_FILTER[lang]}: {parsed.query})"
    return sentence

"""The patient's activity history (``GET [base]/Patient/[id]/$activity``): their trail, newest first, each
AuditEvent labelled the way the real service groups it, in French or English.

The query is the compartment search ``Patient/[id]/AuditEvent`` (``_sort=-date`` unless given), so paging,
``_count``, ``date``, ``subtype``, ``agent``, ``purpose``… and the caller's confinement are the search
engine's: a patient or representative sees their own record's events only. Each entry's AuditEvent gains a
generated narrative (``text``, the readable line) and the ``activity-category`` extension (the group).

Groups (the real service's history): ``professional-access`` (a professional consulted the record; mode),
``document`` (a document added, changed or masked), ``app-exchange`` (an application exchanged data),
``account`` (the person's own sign-ins and settings: tokens issued, sharing choices).
"""

from __future__ import annotations

from html import escape

from ..policy.matrix import PROFESSIONS
from . import reading
from .events import DICOM

CATEGORY_URL = "https://github.com/fhir-server/fhir-server/StructureDefinition/activity-category"
CATEGORY_SYSTEM = "https://github.com/fhir-server/fhir-server/CodeSystem/activity-category"
LANGUAGES = ("fr", "en")
_ACTIVITY_PARAMETERS = ("lang",)  # the operation's own; every other parameter is the search's

CATEGORIES = {
    "professional-access": {"fr": "Accès d'un professionnel de santé", "en": "Access by a health professional"},
    "document": {"fr": "Documents", "en": "Documents"},
    "app-exchange": {"fr": "Échanges avec les applications", "en": "Exchanges with applications"},
    "account": {"fr": "Mon compte", "en": "My account"},
}
_MODES = {
    "normal": {"fr": "", "en": ""},
    "centre_15": {"fr": " en mode régulation (Centre 15)", "en": " in emergency regulation mode (Centre 15)"},
    "bris_de_glace": {"fr": " en mode bris de glace", "en": " in break-the-glass mode"},
}
_VERBS = {
    "read": ("a consulté", "viewed"), "vread": ("a consulté", "viewed"), "search": ("a consulté", "viewed"),
    "history": ("a consulté l'historique de", "viewed the history of"), "operation": ("a consulté", "viewed"),
    "create": ("a ajouté", "added"), "update": ("a modifié", "changed"), "patch": ("a modifié", "changed"),
    "delete": ("a supprimé", "deleted"), "transaction": ("a déposé", "submitted"), "batch": ("a consulté", "viewed"),
}  # fmt: skip
_DOCUMENT_TYPES = ("DocumentReference", "Binary")


def language(requested: str | None, accept_language: str | None) -> str:
    """``lang`` if given (fr|en), else the first of Accept-Language that is one of them, else French."""
    if requested in LANGUAGES:
        return requested
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGUAGES:
            return tag
    return "fr"


def _code(event: dict) -> str:
    return (event.get("subtype") or [{}])[0].get("code", "")


def category(event: dict) -> str:
    person = reading.requestor(event)
    professional = person is not None and (reading.profession(person) or "identifier" in person.get("who", {}))
    code = _code(event)
    if (event.get("type") or {}).get("system") == DICOM or code == "110122":
        return "account"
    documents = any(r.split("/")[0] in _DOCUMENT_TYPES for r in reading.touched(event))
    if documents and (code in ("create", "update", "patch", "delete", "transaction") or code == "operation"):
        return "document"
    if professional:
        return "professional-access"
    if any(r.startswith("Consent/") for r in reading.touched(event)):
        return "account"
    return "app-exchange"


def _who(event: dict, lang: str) -> str:
    person = reading.requestor(event)
    app = next((a for a in event.get("agent") or () if a is not person), None)
    app_who = (app or {}).get("who", {})
    app_name = app_who.get("display") or app_who.get("identifier", {}).get("value")
    if person is not None:
        profession = reading.profession(person)
        if profession or person.get("who", {}).get("identifier"):
            unknown = "Professionnel de santé" if lang == "fr" else "Health professional"
            label = PROFESSIONS.get(profession or "", unknown)
            number = person.get("who", {}).get("identifier", {}).get("value")
            return f"{label} ({'n° RPPS' if lang == 'fr' else 'RPPS no.'} {number})" if number else label
        reference = person.get("who", {}).get("reference", "")
        if reference.startswith("RelatedPerson/"):
            return "Votre représentant" if lang == "fr" else "Your representative"
        you = "Vous" if lang == "fr" else "You"
        return f"{you} ({app_name})" if app_name else you
    if app_name:
        application = "L'application" if lang == "fr" else "The application"
        return f"{application} {app_name}"
    return "Le service" if lang == "fr" else "The service"


def label(event: dict, lang: str) -> str:
    """One readable line: who did what to which part of the record, in which mode, with what result."""
    code = _code(event)
    fr = lang == "fr"
    if code == "110122":
        ok = event.get("outcome") == "0"
        what = ("a obtenu un accès à votre dossier" if ok else "s'est vu refuser un accès") if fr else (
            "was granted access to your record" if ok else "was refused access")  # fmt: skip
        return f"{_who(event, lang)} {what}{_MODES[reading.access_mode(event)][lang]}."
    kind = code.split("-")[0]
    verb = _VERBS.get(kind, ("a consulté", "viewed"))[0 if fr else 1]
    touched = [r for r in reading.touched(event) if not r.startswith("Patient/") or "/_history/" in r]
    documents = sum(1 for r in touched if r.split("/")[0] == "DocumentReference")
    if documents:
        noun = f"{documents} document(s)"
    elif touched:
        noun = f"{len(touched)} élément(s) de votre dossier" if fr else f"{len(touched)} item(s) of your record"
    else:
        noun = "votre dossier" if fr else "your record"
    line = f"{_who(event, lang)} {verb} {noun}{_MODES[reading.access_mode(event)][lang]}"
    if event.get("outcome") not in (None, "0"):
        line += " (refusé)" if fr else " (refused)"
    justification = next((p.get("text") for p in event.get("purposeOfEvent") or () if p.get("text")), None)
    if justification:
        line += f" — motif : {justification}" if fr else f" — reason: {justification}"
    return line + "."


def decorate(event: dict, lang: str) -> dict:
    """The AuditEvent with its readable line (narrative) and its group (extension)."""
    group = category(event)
    line = label(event, lang)
    extension = {"url": CATEGORY_URL, "valueCoding": {"system": CATEGORY_SYSTEM, "code": group,
                                                       "display": CATEGORIES[group][lang]}}  # fmt: skip
    decorated = dict(event)
    div = f'<div xmlns="http://www.w3.org/1999/xhtml" lang="{lang}">{escape(line)}</div>'
    decorated["text"] = {"status": "generated", "div": div}
    decorated["extension"] = [*event.get("extension", ()), extension]
    return decorated


def search_parameters(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The search the history runs: the caller's parameters, newest first unless they sort otherwise."""
    kept = [(k, v) for k, v in params if k not in _ACTIVITY_PARAMETERS]
    if not any(k == "_sort" for k, _ in kept):
        kept.append(("_sort", "-date"))
    return kept

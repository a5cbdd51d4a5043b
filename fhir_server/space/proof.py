"""The proof of opposition (attestation d'opposition) as a PDF, in French, written with fpdf2.

The same person and the same opposition always give the same reference number (a hash of the Patient id and
the date of opposition), so a proof downloaded again later names the same reference. An opposition made
after the space was created closes it: the proof then says so and gives the end of the retention period.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime

from fpdf import FPDF

ISSUER = "Mon espace santé - Assurance Maladie"
# fpdf2's core fonts are Latin-1: a few common characters outside it, spelled the French way.
_OUTSIDE_LATIN1 = str.maketrans({"\u2019": "'", "œ": "oe", "Œ": "OE", "\u2013": "-", "\u2014": "-", "€": "EUR",
                                 "\u201c": '"', "\u201d": '"'})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Opposition:
    patient_id: str
    name: str
    ins: str
    birth_date: str | None
    when: datetime  # the opposition (or the closure it became)
    closure: bool = False  # made after the creation: the space was closed
    retain_until: str | None = None  # a closure: the end of the retention period (FHIR date)


def reference(patient_id: str, when: str) -> str:
    """The proof's reference number: stable for one opposition, meaningless to anyone else."""
    return "MES-OPP-" + hashlib.sha256(f"{patient_id}|{when}".encode()).hexdigest()[:12].upper()


def _latin1(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_OUTSIDE_LATIN1)
    return text.encode("latin-1", "replace").decode("latin-1")


def _french_date(value: date) -> str:
    return value.strftime("%d/%m/%Y")


def _lines(o: Opposition, ref: str) -> list[tuple[str, str]]:
    when = f"{_french_date(o.when.date())} à {o.when.strftime('%H:%M')} (UTC)"
    born = _french_date(date.fromisoformat(o.birth_date)) if o.birth_date else "non renseignée"
    rows = [("Nom", o.name), ("Date de naissance", born), ("INS (NIR)", o.ins),
            ("Date de l'opposition", when), ("Référence", ref)]  # fmt: skip
    if o.closure and o.retain_until:
        rows.append(("Données conservées jusqu'au", _french_date(date.fromisoformat(o.retain_until))))
    return rows


def _statement(o: Opposition) -> str:
    if o.closure:
        return ("Votre opposition a été enregistrée après la création automatique de votre espace santé : votre "
                "espace Mon espace santé est fermé. Les professionnels de santé n'y ont plus accès et aucun "
                "document ne peut plus y être déposé. Son contenu est conservé pendant la durée légale, puis "
                "détruit.")  # fmt: skip
    return ("Vous vous êtes opposé(e) à la création de votre espace Mon espace santé. Votre espace santé ne sera "
            "pas créé et aucun document ne pourra y être déposé par les professionnels de santé.")  # fmt: skip


def opposition_pdf(o: Opposition, ref: str) -> bytes:
    """The PDF of the proof (bytes starting with ``%PDF``)."""
    title = "Attestation de fermeture de Mon espace santé" if o.closure else "Attestation d'opposition"
    pdf = FPDF(format="A4")
    pdf.set_title(_latin1(title))
    pdf.set_author(_latin1(ISSUER))
    pdf.set_creator("fhir-server")
    pdf.set_creation_date(o.when)  # the same proof each time it is downloaded
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 10, _latin1(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 11)
    subtitle = "à la création de Mon espace santé" if not o.closure else "suite à une opposition après sa création"
    pdf.multi_cell(0, 7, _latin1(subtitle), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    for label, value in _lines(o, ref):
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(60, 8, _latin1(label + " :"))
        pdf.set_font("Helvetica", "", 11)
        pdf.multi_cell(0, 8, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.multi_cell(0, 6, _latin1(_statement(o)), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.multi_cell(0, 6, _latin1("Conservez cette attestation. Vous pouvez la télécharger à nouveau avec votre "
                                 "numéro de sécurité sociale, le numéro de série de votre carte Vitale et votre "
                                 "date de naissance."), new_x="LMARGIN", new_y="NEXT")  # fmt: skip
    pdf.ln(8)
    pdf.set_font("Helvetica", "I", 9)
    pdf.multi_cell(0, 5, _latin1(f"Délivrée par {ISSUER}."), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())

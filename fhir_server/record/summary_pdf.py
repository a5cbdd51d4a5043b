"""The medical synthesis as a PDF in French, for the patient to hand to a professional (fpdf2).

Text is real text (extractable, searchable), in DejaVu Sans: a Unicode TrueType font, so every French
character comes out right (é, è, ç, œ…); the Debian package ``fonts-dejavu-core`` provides it (.ci/run
installs it). Without it the PDF falls back to the built-in Helvetica, whose Latin-1 still covers the
accented letters, spelling the few others the ASCII way. fpdf2 breaks pages by itself on long lists.
"""

from __future__ import annotations

import unicodedata
from functools import cache
from pathlib import Path

from fpdf import FPDF

from ..policy import codes
from .summary import Section, Summary, birth_date, empty_text, human_name

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"), Path("/usr/local/share/fonts"))
ISSUER = "Mon espace santé"
_GENDER = {"female": "Femme", "male": "Homme", "other": "Autre", "unknown": "Inconnu"}
_OUTSIDE_LATIN1 = str.maketrans({"\u2019": "'", "œ": "oe", "Œ": "OE", "\u2013": "-", "\u2014": "-", "•": "-",
                                 "€": "EUR"})  # fmt: skip


@cache
def _dejavu() -> tuple[Path, Path] | None:
    for folder in FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


class _Document(FPDF):
    def __init__(self) -> None:
        super().__init__(format="A4")
        fonts = _dejavu()
        self.unicode = fonts is not None
        if fonts is not None:
            self.add_font("DejaVu", "", str(fonts[0]))
            self.add_font("DejaVu", "B", str(fonts[1]))
        self.family = "DejaVu" if self.unicode else "Helvetica"
        self.set_auto_page_break(True, margin=18)

    def text_of(self, value: str) -> str:
        value = unicodedata.normalize("NFC", value)
        if self.unicode:
            return value
        return value.translate(_OUTSIDE_LATIN1).encode("latin-1", "replace").decode("latin-1")

    def write_line(self, text: str, size: float = 10, style: str = "", height: float = 5.5) -> None:
        self.set_font(self.family, style, size)
        self.multi_cell(0, height, self.text_of(text), new_x="LMARGIN", new_y="NEXT")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(self.family, "", 8)
        self.cell(0, 6, self.text_of(f"Synthèse médicale — page {self.page_no()}/{{nb}}"), align="C")


def _identity(patient: dict) -> list[str]:
    rows = [f"Nom : {human_name(patient.get('name')) or 'non renseigné'}"]
    if born := birth_date(patient):
        rows.append(f"Date de naissance : {born}")
    if gender := _GENDER.get(patient.get("gender", "")):
        rows.append(f"Sexe : {gender}")
    for identifier in patient.get("identifier") or ():
        if identifier.get("system") == codes.INS_NIR and identifier.get("value"):
            rows.append(f"INS : {identifier['value']}")
    return rows


def _section(pdf: _Document, section: Section) -> None:
    pdf.ln(3)
    pdf.write_line(section.spec.title, size=13, style="B", height=8)
    if not section.lines:
        pdf.write_line(empty_text(section))
        return
    bullet = "•" if pdf.unicode else "-"
    for line in section.lines:
        pdf.write_line(f"{bullet} {line}")


def summary_pdf(summary: Summary) -> bytes:
    """The PDF (bytes starting with ``%PDF``) of the summary as the caller could see it."""
    pdf = _Document()
    pdf.set_title("Synthèse médicale")
    pdf.set_author(ISSUER)
    pdf.set_creator("fhir-server")
    pdf.set_lang("fr-FR")
    pdf.set_creation_date(summary.generated)
    pdf.add_page()
    pdf.write_line("Synthèse médicale", size=18, style="B", height=10)
    when = summary.generated.strftime("%d/%m/%Y à %H:%M (UTC)")
    pdf.write_line(f"Établie le {when} par {ISSUER}, avec les droits d'accès de la personne qui l'a demandée.",
                   size=9)  # fmt: skip
    pdf.ln(2)
    for row in _identity(summary.patient):
        pdf.write_line(row, size=11)
    for section in summary.sections:
        _section(pdf, section)
    return bytes(pdf.output())

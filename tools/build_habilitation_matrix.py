"""Build fhir_server/policy/habilitation_matrix.tsv, the DMP habilitation matrix the server ships.

Usage: python tools/build_habilitation_matrix.py [--shared ../shared/data] [--output PATH] [--check]

Reads (from the shared data directory):
- habilitation/JDV_J07-XdsTypeCode-CISIS.tsv: the 122 DMP document types (one matrix row each);
- ASS_X16_type_to_class_DMP.tsv: type → TRE_A03 class (types it does not map get class '?');
- habilitation/known_rules.tsv: the cells a cited source states outright (médecin, chirurgien-dentiste);
- terminology/TRE_G15-ProfessionSante.tsv: the profession columns.
Adds the cells public summaries of the Arrêté of 26/10/2023 state in prose (pharmacien, infirmier: ``PROSE_RULES``)
and fills every other cell with the documented least-privilege choices below (lower case in the file). The server
reads only the TSV; docs/policy.md, "The habilitation matrix", explains the choices. ``--check`` verifies that the
shipped file is what this script builds (the generation date aside) and exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhir_server.policy.matrix import (  # noqa: E402  (the rules the loader applies, shared with it)
    UNKNOWN_CLASS,
    Cell,
    MatrixRow,
    class_rules,
    most_restricted,
)

SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "fhir_server" / "policy" / "habilitation_matrix.tsv"
LOINC = "http://loinc.org"
TRE_A05 = "https://mos.esante.gouv.fr/NOS/TRE_A05-TypeDocComplementaire/FHIR/TRE-A05-TypeDocComplementaire"

INFODENTAIRE = "infodentaire"
ARRETE_SUMMARY = "arrete-summary"
SOURCES = {
    INFODENTAIRE: "https://information-dentaire.fr/actualites/publication-des-regles-d-acces-aux-dmp-des-professionnels"
    "-de-sante (summary of the Arrêté of 26 October 2023 fixing the access rules to the DMP, JORF 29/10/2023): "
    "médecins see every type except ATTEST-RESID; chirurgiens-dentistes are denied, among others, 80788-3, 75496-0, "
    "83981-1, 83901-9, 68599-0",
    ARRETE_SUMMARY: "public summaries of the same Arrêté of 26 October 2023 (JORF 29/10/2023): pharmaciens and "
    "infirmiers are denied 75496-0, 68599-0, 83901-9, 68817-6, 89601-9; pharmaciens also 34842-5 and advance "
    "directives (EXPPAT_3, Directives anticipées)",
}
#: The source URL as known_rules.tsv writes it → the id the matrix file declares.
SOURCE_IDS = {"information-dentaire.fr/actualites/publication-des-regles-d-acces-aux-dmp": INFODENTAIRE}

#: Denials the summaries state in prose (known_rules.tsv lists only médecin and chirurgien-dentiste cells).
_COMMON = ((LOINC, "75496-0"), (LOINC, "68599-0"), (LOINC, "83901-9"), (LOINC, "68817-6"), (LOINC, "89601-9"))
PROSE_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "21": (*_COMMON, (LOINC, "34842-5"), (TRE_A05, "EXPPAT_3")),
    "60": _COMMON,
}

# --- least privilege, for the cells no source states (lower case in the file) ----------------------------------
Y, N = True, False
#: Per profession, per TRE_A03 class: may it consult that class's types? (Médecin: every cell is stated.)
#: Classes: 10 Compte rendu, 11 Synthèse, 31 Imagerie, 42 Prescription, 43 Dispensation, 44 Plan de soins,
#: 45 Traitement administré, 52 Certificat, 60 Remboursement, 90 Patient (expression personnelle), 95 Gestion,
#: 99 Technique.
CLASS_DEFAULTS: dict[str, dict[str, bool]] = {
    # Pharmacien: analyses and dispenses prescriptions, reconciles and reviews medication, vaccinates, runs TROD
    # tests: reports (biology for dose adjustment, discharge letters for reconciliation), syntheses, prescriptions,
    # dispensations, care plans (e.g. oral chemotherapy schedules), administered treatments, certificates
    # (vaccination records). Not imaging, reimbursement, management, the patient's own expression.
    "21": {"10": Y, "11": Y, "31": N, "42": Y, "43": Y, "44": Y, "45": Y, "52": Y, "60": N, "90": N, "95": N, "99": N},
    # Chirurgien-dentiste: oral care, dental imaging, prescribes; must know current medication (anticoagulants,
    # antiresorptives), care plans and administered treatments before an extraction. Not certificates,
    # reimbursement, management, the patient's own expression.
    "40": {"10": Y, "11": Y, "31": Y, "42": Y, "43": Y, "44": Y, "45": Y, "52": N, "60": N, "90": N, "95": N, "99": N},
    # Sage-femme: pregnancy, birth, post-partum, newborns, gynaecological follow-up; ultrasound, prescriptions,
    # vaccination of mother, newborn and entourage (certificates), the patient's own documents (a birth plan).
    "50": {"10": Y, "11": Y, "31": Y, "42": Y, "43": Y, "44": Y, "45": Y, "52": Y, "60": N, "90": Y, "95": N, "99": N},
    # Infirmier: carries out prescriptions, administers and prepares treatments, follows care plans, vaccinates,
    # accompanies the end of life (advance directives, the patient's wishes). Not imaging (interpreted by the
    # médecin), reimbursement, management.
    "60": {"10": Y, "11": Y, "31": N, "42": Y, "43": Y, "44": Y, "45": Y, "52": Y, "60": N, "90": Y, "95": N, "99": N},
    # Masseur-kinésithérapeute: reports, syntheses, imaging, prescriptions (of kinésithérapie), care plans. Not
    # dispensations or administered treatments, certificates, reimbursement, management, the patient's expression.
    "70": {"10": Y, "11": Y, "31": Y, "42": Y, "43": N, "44": Y, "45": N, "52": N, "60": N, "90": N, "95": N, "99": N},
}
#: Social and médico-social documents: the sources deny some of them to the chirurgien-dentiste (80788-3, 83981-1)
#: and the pharmacien (34842-5); least privilege extends that to the whole group and to the professions no source
#: names, except the infirmier (care with SSIAD, EHPAD and other médico-social services).
SOCIAL = ((LOINC, "28653-4"), (LOINC, "34842-5"), (LOINC, "80788-3"), (LOINC, "83981-1"), (LOINC, "88348-8"))
SOCIAL_ALLOWED = frozenset({"60"})
#: Single types whose class default would give too much: (system, code) → the professions still allowed it.
#: Sick-leave prescriptions tell an employment fact that no profession but the médecin needs to read for care.
TYPE_EXCEPTIONS: dict[tuple[str, str], frozenset[str]] = {(TRE_A05, "PRESC-AAT"): frozenset()}
#: Types that the sources deny to at least this many of the restricted professions they name are "sensitive"
#: (psychiatric and psychological syntheses, telemedicine requests, child health checks, medical certificates):
#: denied to every profession but the médecin.
SENSITIVE_MIN = 2


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def source_id(text: str, previous: str | None) -> str:
    if text.strip() == "same" and previous:
        return previous
    for fragment, ident in SOURCE_IDS.items():
        if fragment in text:
            return ident
    raise SystemExit(f"known_rules.tsv: no source id for {text!r}: add it to SOURCES and SOURCE_IDS")


def stated_rules(shared: Path, types: list[tuple[str, str]]) -> dict[tuple[str, str, str], Cell]:
    """(profession, system, code) → the stated cell: known_rules.tsv, then ``PROSE_RULES``."""
    stated: dict[tuple[str, str, str], Cell] = {}
    wildcards: list[tuple[str, Cell]] = []
    previous = None
    for rule in read_tsv(shared / "habilitation" / "known_rules.tsv"):
        profession = rule["TRE_G15_code"].strip()
        if not profession.isdigit():
            continue  # médecin traitant / administrateur: a role the patient gives, not a profession column
        source = previous = source_id(rule["source"], previous)
        cell = Cell(rule["access"].strip().upper().startswith("Y"), True, source)
        if rule["type_code"].strip() == "*":
            wildcards.append((profession, cell))
        else:
            stated[profession, rule["type_system"].strip(), rule["type_code"].strip()] = cell
    for profession, cell in wildcards:  # "all types" stands for every type without a row of its own
        for system, code in types:
            stated.setdefault((profession, system, code), cell)
    for profession, denied in PROSE_RULES.items():
        for system, code in denied:
            if (system, code) not in types:
                raise SystemExit(f"PROSE_RULES: {system}|{code} is not a JDV_J07 type")
            stated.setdefault((profession, system, code), Cell(False, True, ARRETE_SUMMARY))
    return stated


def sensitive_types(stated: dict[tuple[str, str, str], Cell]) -> set[tuple[str, str]]:
    counts: dict[tuple[str, str], set[str]] = {}
    for (profession, system, code), cell in stated.items():
        if profession != "10" and not cell.allowed:
            counts.setdefault((system, code), set()).add(profession)
    return {t for t, professions in counts.items() if len(professions) >= SENSITIVE_MIN}


def least_privilege(profession: str, class_code: str, type_: tuple[str, str], sensitive: set) -> bool:
    if type_ in sensitive:
        return False
    if type_ in TYPE_EXCEPTIONS:
        return profession in TYPE_EXCEPTIONS[type_]
    if type_ in SOCIAL:
        return profession in SOCIAL_ALLOWED
    return CLASS_DEFAULTS[profession][class_code]


def _code_key(code: str) -> tuple[int, int, str]:
    """LOINC codes in numeric order, then the ANS codes alphabetically."""
    match = re.match(r"^(\d+)-\d$", code)
    return (0, int(match.group(1)), code) if match else (1, 0, code)


def _class_key(code: str) -> tuple[int, int]:
    return (0, int(code)) if code.isdigit() else (1, 0)


def build(shared: Path) -> tuple[list[str], list[MatrixRow]]:
    types_tsv = read_tsv(shared / "habilitation" / "JDV_J07-XdsTypeCode-CISIS.tsv")
    classes = {
        (r["typeCode_system"], r["typeCode"]): r["classCode(TRE_A03)"]
        for r in read_tsv(shared / "ASS_X16_type_to_class_DMP.tsv")
    }
    professions = [r["code"] for r in read_tsv(shared / "terminology" / "TRE_G15-ProfessionSante.tsv")]
    missing = set(professions) - set(CLASS_DEFAULTS) - {"10"}
    if missing:
        raise SystemExit(f"no least-privilege defaults for profession(s) {sorted(missing)}: add CLASS_DEFAULTS")
    types = [(r["system"], r["code"]) for r in types_tsv]
    stated = stated_rules(shared, types)
    sensitive = sensitive_types(stated)

    def row(entry: dict[str, str], class_code: str, unknown_rule: dict[str, bool] | None) -> MatrixRow:
        type_ = (entry["system"], entry["code"])
        cells = []
        for profession in professions:
            cell = stated.get((profession, *type_))
            if cell is None:
                if profession == "10":
                    raise SystemExit(f"médecin, {type_}: every médecin cell should be stated")
                if unknown_rule is not None:  # no class: the most restricted class's rule
                    allowed = unknown_rule[profession] and type_ not in sensitive
                else:
                    allowed = least_privilege(profession, class_code, type_, sensitive)
                cell = Cell(allowed, False)
            cells.append(cell)
        return MatrixRow(0, class_code, entry["system"], entry["code"], entry["display_fr"], tuple(cells))

    known = [row(e, classes[e["system"], e["code"]], None) for e in types_tsv if (e["system"], e["code"]) in classes]
    restricted = most_restricted(tuple(known), len(professions))
    rule = dict(
        zip(professions, class_rules(tuple(known), restricted, len(professions)) if restricted else (), strict=False)
    )
    rule = {p: rule.get(p, False) for p in professions}
    unknown = [row(e, UNKNOWN_CLASS, rule) for e in types_tsv if (e["system"], e["code"]) not in classes]
    rows = sorted(known, key=lambda r: (_class_key(r.class_code), _code_key(r.code))) + sorted(
        unknown, key=lambda r: _code_key(r.code)
    )
    return professions, rows


def render(professions: list[str], rows: list[MatrixRow], today: str) -> str:
    unmapped = sum(1 for r in rows if r.class_code == UNKNOWN_CLASS)
    head = [
        "# DMP habilitation matrix: which document types (DocumentReference.type, JDV_J07-XdsTypeCode-CISIS) each",
        "# health profession (TRE_G15-ProfessionSante code, one column each) may consult, grouped by document class",
        "# (TRE_A03-ClasseDocument, from the DMP map ASS_X16). Read by fhir_server/policy/matrix.py; an operator",
        "# may replace it (FHIR_SERVER_HABILITATION_MATRIX=/path, then `fhir-server matrix check`). Format:",
        "# docs/policy.md, section 'The matrix file'.",
        "#",
        "# Legend (one cell per profession x type):",
        "#   Y:<source>  allowed, stated by the declared source      N:<source>  denied, stated by the declared source",
        "#   y           allowed, least-privilege choice: no source states this cell",
        "#   n           denied, least-privilege choice: no source states this cell",
        "# class: a TRE_A03 code, or ? when no class maps the type: such rows and types absent from this file follow",
        "#   the most restricted class (the class whose rule denies the most professions; the rule of a class for",
        "#   a profession is what most of its types say), so a '?' row may not carry a 'y' that rule denies.",
        "# Columns other than the TRE_G15 codes 10, 21, 40, 50, 60, 70 need a declaration line of the form",
        "#   '# profession <code>: <label>' (the profession's TRE_G15 code).",
        "#",
    ]
    head += [f"# source {ident}: {citation}" for ident, citation in SOURCES.items()]
    head += [
        "#",
        "# types: JDV_J07-XdsTypeCode-CISIS (OID 1.2.250.1.213.1.1.5.471, version 20260629), "
        f"{len(rows)} types, {unmapped} of which ASS_X16 maps to no class",
        "# least-privilege choices: tools/build_habilitation_matrix.py (CLASS_DEFAULTS, SOCIAL, SENSITIVE_MIN,",
        "#   TYPE_EXCEPTIONS), explained per profession in docs/policy.md",
        f"# generated {today} by tools/build_habilitation_matrix.py",
    ]
    lines = [*head, "\t".join(("class", "type_system", "type_code", "type_display", *professions))]
    for r in rows:
        lines.append("\t".join((r.class_code, r.system, r.code, r.display, *(c.text for c in r.cells))))
    return "\n".join(lines) + "\n"


def _without_date(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("# generated "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED, help=f"shared data directory (default {SHARED})")
    parser.add_argument("--output", type=Path, default=OUT, help=f"file to write (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--check", action="store_true", help="compare with the output file instead of writing it")
    args = parser.parse_args(argv)
    professions, rows = build(args.shared)
    text = render(professions, rows, datetime.date.today().isoformat())
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if _without_date(current) != _without_date(text):
            print(f"{args.output} is not what {Path(__file__).name} builds: run it again", file=sys.stderr)
            return 1
        print(f"{args.output}: up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    stated = sum(c.stated for r in rows for c in r.cells)
    total = len(rows) * len(professions)
    print(f"{len(rows)} types x {len(professions)} professions → {args.output}: {stated} stated, "
          f"{total - stated} least-privilege cells")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

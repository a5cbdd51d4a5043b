"""The DMP habilitation matrix: the shipped file, its loader and checks, its scopes, ``fhir-server matrix``."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest

from fhir_server.cli import main
from fhir_server.config import Settings
from fhir_server.policy.matrix import (
    SHIPPED,
    HabilitationMatrix,
    MatrixError,
    NoDocumentAccess,
    from_settings,
    load,
)
from fhir_server.search.indexing import index_entries
from fhir_server.search.parameters import parse
from fhir_server.security.scopes import parse_scope
from fhir_server.store import ResourceVersion, open_store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LOINC = "http://loinc.org"
A05 = "https://mos.esante.gouv.fr/NOS/TRE_A05-TypeDocComplementaire/FHIR/TRE-A05-TypeDocComplementaire"
MEDECIN, PHARMACIEN, DENTISTE, SAGE_FEMME, INFIRMIER, KINE = "10", "21", "40", "50", "60", "70"
RESTRICTED = (PHARMACIEN, DENTISTE, SAGE_FEMME, INFIRMIER, KINE)
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not there")


@pytest.fixture(scope="module")
def matrix() -> HabilitationMatrix:
    return load()


def tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# --- the shipped file -------------------------------------------------------------------------------------------


def test_shipped_file_loads_and_checks_clean(matrix: HabilitationMatrix) -> None:
    assert matrix.check() == []
    assert matrix.professions() == (MEDECIN, PHARMACIEN, DENTISTE, SAGE_FEMME, INFIRMIER, KINE)
    assert len(matrix.rows) == 122
    assert matrix.most_restricted_class == "95"
    assert set(matrix.sources) == {"infodentaire", "arrete-summary"}
    stated, chosen = matrix.counts()
    assert (stated, chosen) == (139, 122 * 6 - 139)
    assert matrix.counts(MEDECIN) == (122, 0)  # every médecin cell is stated
    codes = [(r.class_code, r.code) for r in matrix.rows]
    assert codes.index(("10", "11488-4")) < codes.index(("11", "18761-7")) < codes.index(("?", "28617-9"))


@needs_shared
def test_shipped_file_has_every_jdv_j07_type_with_its_ass_x16_class(matrix: HabilitationMatrix) -> None:
    types = {
        (r["system"], r["code"]): r["display_fr"] for r in tsv(SHARED / "habilitation/JDV_J07-XdsTypeCode-CISIS.tsv")
    }
    classes = {(r["typeCode_system"], r["typeCode"]): r["classCode(TRE_A03)"]
               for r in tsv(SHARED / "ASS_X16_type_to_class_DMP.tsv")}  # fmt: skip
    assert {(r.system, r.code): r.display for r in matrix.rows} == types
    for row in matrix.rows:
        assert row.class_code == classes.get((row.system, row.code), "?")
    assert sum(1 for r in matrix.rows if r.class_code == "?") == 21


@needs_shared
def test_shipped_file_is_what_the_build_script_builds() -> None:
    spec = importlib.util.spec_from_file_location("build_matrix", ROOT / "tools" / "build_habilitation_matrix.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert module.main(["--check"]) == 0


def test_medecin_allows_every_type_but_attest_resid(matrix: HabilitationMatrix) -> None:
    denied = matrix.denied_types(MEDECIN)
    assert denied == ((A05, "ATTEST-RESID"),)
    assert len(matrix.allowed_types(MEDECIN)) == 121
    assert all(matrix.allows(MEDECIN, s, c) for s, c in matrix.allowed_types(MEDECIN))
    assert not matrix.allows(MEDECIN, A05, "ATTEST-RESID")


def test_chirurgien_dentiste_denies_the_stated_codes(matrix: HabilitationMatrix) -> None:
    for code in ("80788-3", "75496-0", "83981-1", "83901-9", "68599-0"):
        assert not matrix.allows(DENTISTE, LOINC, code), code
    assert matrix.allows(DENTISTE, LOINC, "11488-4")  # a consultation report: care needs it


def test_pharmacien_and_infirmier_deny_the_stated_codes(matrix: HabilitationMatrix) -> None:
    for profession in (PHARMACIEN, INFIRMIER):
        for code in ("75496-0", "68599-0", "83901-9", "68817-6", "89601-9"):
            assert not matrix.allows(profession, LOINC, code), (profession, code)
    assert not matrix.allows(PHARMACIEN, LOINC, "34842-5")
    assert not matrix.allows(PHARMACIEN, A05, "EXPPAT_3")  # advance directives
    assert matrix.allows(INFIRMIER, A05, "EXPPAT_3")  # not stated for infirmiers: end-of-life care needs them
    assert matrix.allows(PHARMACIEN, LOINC, "60593-1")  # dispensation
    assert matrix.allows(PHARMACIEN, LOINC, "11502-2")  # biology


def test_least_privilege_choices_are_flagged_and_sensible(matrix: HabilitationMatrix) -> None:
    by_code = {r.code: r for r in matrix.rows}
    kine = matrix.professions().index(KINE)
    assert by_code["18748-4"].cells[kine].text == "y"  # imaging
    assert by_code["PRESC-KINE"].cells[kine].text == "y"
    assert by_code["REMB"].cells[kine].text == "n"
    for profession in RESTRICTED:
        assert not matrix.allows(profession, A05, "REMB")
        assert not matrix.allows(profession, A05, "ATTEST-DROITS-AM")
        assert matrix.allows(profession, LOINC, "57833-6")  # prescription of health products
    for row in matrix.rows:
        for cell in row.cells:
            assert cell.stated == (cell.source is not None) and cell.text[0] in "YNyn"


@needs_shared
def test_every_stated_cell_of_the_sources_is_honoured(matrix: HabilitationMatrix) -> None:
    types = [(r.system, r.code) for r in matrix.rows]
    seen = 0
    for rule in tsv(SHARED / "habilitation" / "known_rules.tsv"):
        profession = rule["TRE_G15_code"]
        if not profession.isdigit():
            continue  # médecin traitant / administrateur: not a matrix column
        allowed = rule["access"].startswith("Y")
        targets = types if rule["type_code"] == "*" else [(rule["type_system"], rule["type_code"])]
        for system, code in targets:
            if rule["type_code"] == "*" and code == "ATTEST-RESID":
                continue  # the row after the wildcard
            assert matrix.allows(profession, system, code) is allowed, (profession, code)
            seen += 1
    assert seen == 121 + 1 + 5
    readme = (SHARED / "terminology" / "README.md").read_text(encoding="utf-8")
    prose = " ".join(readme.split())
    found = {
        PHARMACIEN: re.search(r"pharmaciens are denied e\.g\. ([^;]*);", prose),
        INFIRMIER: re.search(r"infirmiers denied ([^;]*);", prose),
        DENTISTE: re.search(r"chirurgiens-dentistes denied ([^.]*)\.", prose),
    }
    for profession, match in found.items():
        assert match, profession
        codes = re.findall(r"\d+-\d", match.group(1))
        assert len(codes) >= 5
        for code in codes:
            assert not matrix.allows(profession, LOINC, code), (profession, code)
        if "advance directives" in match.group(1):
            assert not matrix.allows(profession, A05, "EXPPAT_3")
    assert "médecins see all types except residence attestations" in prose
    assert matrix.denied_types(MEDECIN) == ((A05, "ATTEST-RESID"),)


def test_unknown_profession_gets_nothing(matrix: HabilitationMatrix) -> None:
    assert not matrix.allows("99", LOINC, "11488-4")
    assert not matrix.allows("", LOINC, "11488-4")
    assert matrix.allowed_types("99") == ()
    assert len(matrix.denied_types("99")) == 122
    assert not matrix.allows_absent_types("99")
    assert matrix.document_scope("99", "user", "rs") is None
    with pytest.raises(NoDocumentAccess):
        matrix.document_criteria("99")


def test_unknown_class_and_absent_types_follow_the_most_restricted_class(matrix: HabilitationMatrix) -> None:
    assert matrix.class_of(LOINC, "11488-4") == "10"
    assert matrix.class_of(A05, "PIECE-IDENTITE") == "95"  # '?' row: the most restricted class
    assert matrix.class_of(LOINC, "00000-0") is None  # not in the file
    assert matrix.class_rule("95", MEDECIN) is True and matrix.class_rule("95", DENTISTE) is False
    assert matrix.class_rule("99", MEDECIN) is None  # no row
    assert matrix.allows(MEDECIN, LOINC, "00000-0")  # "all types but ATTEST-RESID"
    assert not matrix.allows(MEDECIN, "urn:oid:1.2.250.1.213.1.1.4.12", "ATTEST-RESID")  # the OID form of TRE_A05
    for profession in RESTRICTED:
        assert not matrix.allows(profession, LOINC, "00000-0")
        assert not matrix.allows(profession, "urn:oid:2.16.840.1.113883.6.1", "11488-4")  # absent system form
        assert not matrix.allows(profession, A05, "PIECE-IDENTITE")


def test_matrix_is_immutable(matrix: HabilitationMatrix) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        matrix.rows = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        matrix.sources["x"] = "y"  # type: ignore[index]
    assert isinstance(matrix.rows, tuple) and isinstance(matrix.rows[0].cells, tuple)


# --- as scopes --------------------------------------------------------------------------------------------------


def test_medecin_scope_is_a_deny_list(matrix: HabilitationMatrix) -> None:
    assert matrix.document_criteria(MEDECIN) == (("type:not", "ATTEST-RESID"),)
    assert matrix.document_scope(MEDECIN, "user", "rs") == "user/DocumentReference.rs?type:not=ATTEST-RESID"


@pytest.mark.parametrize("profession", [MEDECIN, *RESTRICTED])
def test_criteria_parse_and_scopes_round_trip(matrix: HabilitationMatrix, profession: str) -> None:
    criteria = matrix.document_criteria(profession)
    parse("DocumentReference", list(criteria))  # the search engine accepts them
    scope = matrix.document_scope(profession, "user", "rs")
    assert scope is not None and " " not in scope
    grant = parse_scope(scope)
    assert grant is not None and grant.type == "DocumentReference" and grant.permissions == {"r", "s"}
    assert grant.criteria == criteria
    if profession != MEDECIN:  # absent types are denied to them: only an allow-list keeps them denied
        assert len(criteria) == 1 and criteria[0][0] == "type"
        values = criteria[0][1].split(",")
        assert values == [f"{s}|{c}" for s, c in matrix.allowed_types(profession)]
    assert matrix.document_scope(profession, "patient", "r").startswith("patient/DocumentReference.r")
    with pytest.raises(ValueError):
        matrix.document_scope(profession, "user", "sr")


async def test_criteria_select_the_right_documents_in_a_store(matrix: HabilitationMatrix, tmp_path: Path) -> None:
    """The criteria, run by the search engine on a real store, find exactly the allowed documents."""
    store = open_store(f"sqlite:///{tmp_path / 'fhir.db'}")
    await store.start()
    try:
        documents = {
            "consult": (LOINC, "11488-4"),
            "psy": (LOINC, "68599-0"),
            "resid": (A05, "ATTEST-RESID"),
            "resid-oid": ("urn:oid:1.2.250.1.213.1.1.4.12", "ATTEST-RESID"),
            "identity": (A05, "PIECE-IDENTITE"),
            "absent": (LOINC, "00000-0"),
            "imaging": (LOINC, "18748-4"),
        }
        for version, (id_, (system, code)) in enumerate(documents.items(), start=1):
            coding = {"system": system, "code": code}
            body = {"resourceType": "DocumentReference", "id": id_, "status": "current",
                    "type": {"coding": [coding]}, "content": [{"attachment": {}}]}  # fmt: skip

            async def work(tx, body=body, version=version):
                raw = json.dumps(body).encode()
                await tx.put(ResourceVersion("DocumentReference", body["id"], 1, version, "PUT", raw),
                             index_entries(body))  # fmt: skip

            await store.transact(work)

        async def visible(profession: str) -> set[str]:
            search = parse("DocumentReference", list(matrix.document_criteria(profession)))
            return {v.id for v in await store.search(search, 100)}

        assert await visible(MEDECIN) == set(documents) - {"resid", "resid-oid"}
        assert await visible(DENTISTE) == {"consult", "imaging"}
        assert await visible(INFIRMIER) == {"consult"}
        assert await visible(KINE) == {"consult", "imaging"}
    finally:
        await store.close()


# --- operators' files -------------------------------------------------------------------------------------------

HEADER = "class\ttype_system\ttype_code\ttype_display\t10\t21"


def write(tmp_path: Path, *lines: str, name: str = "matrix.tsv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good_lines() -> list[str]:
    return [
        "# an operator's matrix",
        "# source local: decision of the operator's medical board, 2024-05-01",
        HEADER,
        f"10\t{LOINC}\t11488-4\tCR de consultation\tY:local\ty",
        f"10\t{LOINC}\t11502-2\tCR de biologie\tY:local\ty",
        f"95\t{A05}\tATTEST-RESID\tAttestation de résidence\tN:local\tn",
        f"95\t{A05}\tREMB\tRemboursement\tY:local\tn",
        f"95\t{A05}\tAUTRE\tAutre\tY:local\tn",
        f"?\t{LOINC}\t99999-9\tInconnu\tY:local\tn",
    ]


def test_an_operator_file_loads(tmp_path: Path) -> None:
    matrix = load(write(tmp_path, *good_lines()))
    assert matrix.check() == [] and matrix.professions() == ("10", "21")
    assert matrix.allows("21", LOINC, "11488-4") and not matrix.allows("21", LOINC, "99999-9")
    assert matrix.document_criteria("21") == (("type", f"{LOINC}|11488-4,{LOINC}|11502-2"),)
    matrix = from_settings(Settings(habilitation_matrix=str(tmp_path / "matrix.tsv")))
    assert matrix.professions() == ("10", "21")
    assert from_settings(Settings()).path == str(SHIPPED)


def test_a_declared_profession_column(tmp_path: Path) -> None:
    lines = good_lines()
    lines.insert(1, "# profession 91: Orthophoniste")
    lines[3] += "\t91"
    lines[4:] = [line + "\tn" for line in lines[4:]]
    lines[4] = lines[4][:-1] + "y"
    matrix = load(write(tmp_path, *lines))
    assert matrix.professions() == ("10", "21", "91") and matrix.profession_label("91") == "Orthophoniste"
    assert matrix.allowed_types("91") == ((LOINC, "11488-4"),)
    undeclared = [line for line in lines if not line.startswith("# profession")]
    with pytest.raises(MatrixError, match=r"matrix\.tsv:3: profession column '91' is not a known TRE_G15 code"):
        load(write(tmp_path, *undeclared))


def test_escaped_codes_survive_criteria_and_scope(tmp_path: Path) -> None:
    lines = [*good_lines()[:3], "10\turn:x\ta,b&c d|e\tOdd\tY:local\ty", "95\turn:x\tz\tZ\tN:local\tn",
             "95\turn:x\tw1\tW\tY:local\tn", "95\turn:x\tw2\tW\tY:local\tn"]  # fmt: skip
    matrix = load(write(tmp_path, *lines))
    criteria = matrix.document_criteria("21")
    assert criteria == (("type", "urn:x|a\\,b&c d\\|e"),)
    parse("DocumentReference", list(criteria))
    scope = matrix.document_scope("21", "user", "rs")
    assert "&" not in scope.partition("?")[2] and " " not in scope
    assert parse_scope(scope).criteria == criteria
    assert matrix.document_criteria("10") == (("type:not", "z"),)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda ls: ls.__setitem__(3, ls[3].replace("Y:local", "maybe")), ":4: profession 10, type 11488-4: cell "),
        (lambda ls: ls.__setitem__(3, "12" + ls[3][2:]), ":4: unknown class '12'"),
        (lambda ls: ls.append(ls[4].replace("11502-2\tCR de biologie", "11502-2\tencore")), ":10: duplicate type"),
        (lambda ls: ls.__setitem__(3, ls[3].replace("Y:local", "Y:nowhere")), "source 'nowhere' is not declared"),
        (lambda ls: ls.__setitem__(3, ls[3].replace("Y:local", "Y")), "a stated cell names its source"),
        (lambda ls: ls.__setitem__(3, ls[3].replace("\ty", "\ty:local")), "lower case means no source states it"),
        (lambda ls: ls.__setitem__(3, ls[3] + "\tY"), ":4: 7 tab-separated fields, the header has 6"),
        (lambda ls: ls.__setitem__(2, HEADER.replace("class", "classe")), ":3: the header must start with"),
        (lambda ls: ls.__setitem__(2, HEADER + "\t21"), ":3: profession column '21' appears twice"),
        (lambda ls: ls.__setitem__(1, "# source local: x\n# source local: y"), ":3: source 'local' declared twice"),
        (lambda ls: ls.__setitem__(8, ls[8][:-1] + "y"), ":9: http://loinc.org|99999-9 has no class ('?'), so it"),
        (lambda ls: ls.__delitem__(slice(3, None)), "no document type rows"),
    ],
)
def test_broken_operator_files(tmp_path: Path, change, expected: str) -> None:
    lines = good_lines()
    change(lines)
    path = write(tmp_path, *lines)
    problems = HabilitationMatrix.read(path).check()
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(str(path)) for p in problems)
    with pytest.raises(MatrixError) as caught:
        load(path)
    assert caught.value.problems == problems


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="no such file"):
        load(tmp_path / "missing.tsv")
    (tmp_path / "latin1.tsv").write_bytes("classe é".encode("latin-1"))
    with pytest.raises(MatrixError, match="UTF-8"):
        load(tmp_path / "latin1.tsv")
    with pytest.raises(MatrixError, match="no header line"):
        load(write(tmp_path, "# only comments"))


# --- fhir-server matrix show | check ----------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_operator_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FHIR_SERVER_HABILITATION_MATRIX", raising=False)


def test_cli_check(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, "matrix", "check")
    assert code == 0
    assert out.startswith(f"ok: {SHIPPED}: 122 types in 11 classes x 6 professions: 139 stated cells (Y/N), 593 ")
    lines = good_lines()
    lines[3] = lines[3].replace("Y:local", "Q")
    lines[5] = "77" + lines[5][2:]
    broken = write(tmp_path, *lines)
    code, out, err = run(capsys, "matrix", "check", "--file", str(broken))
    assert code == 2 and "2 problem(s)" in err
    assert out.splitlines() == [
        f"{broken}:4: profession 10, type 11488-4: cell 'Q' is not Y, N (with ':<source id>'), y or n",
        f"{broken}:6: unknown class '77' (a TRE_A03 code: 10, 11, 31, 42, 43, 44, 45, 52, 60, 90, 95, 99; or '?' "
        "for none)",
    ]
    code, out, _ = run(capsys, "matrix", "check", "--file", str(tmp_path / "missing.tsv"))
    assert code == 2 and "no such file" in out
    monkeypatch.setenv("FHIR_SERVER_HABILITATION_MATRIX", str(broken))  # what the server would use
    assert run(capsys, "matrix", "check")[0] == 2


def test_cli_show(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "matrix", "show")
    assert code == 0
    assert "Legend: Y/N allowed/denied as a source states it; y/n allowed/denied by a least-privilege" in out
    assert "\n10 Compte rendu\n" in out and "\n95 Gestion\n" in out
    assert "\n? no class maps these types: they follow the most restricted class, 95 Gestion\n" in out
    row = next(line for line in out.splitlines() if " ATTEST-RESID " in line)
    assert row.split()[-7:] == ["N", "n", "n", "n", "n", "n", "infodentaire"]
    assert "Professions: 10 Médecin, 21 Pharmacien, 40 Chirurgien-dentiste, 50 Sage-femme" in out
    assert "Types absent from the file follow the most restricted class, 95 Gestion: 10:Y 21:N" in out
    broken = write(tmp_path, *good_lines()[:3], f"10\t{LOINC}\t1-1\tx\tY:local\tbad")
    code, _, err = run(capsys, "matrix", "show", "--file", str(broken))
    assert code == 2 and f"{broken}:4: profession 21" in err


def test_cli_show_profession(capsys, matrix: HabilitationMatrix) -> None:
    code, out, _ = run(capsys, "matrix", "show", "--profession", "10")
    assert code == 0
    assert "Profession 10 Médecin: 121 of 122 types allowed (122 cells stated by a source" in out
    assert out.rstrip().endswith("Scope (deny-list, 47 characters):\nuser/DocumentReference.rs?type:not=ATTEST-RESID")
    code, out, _ = run(capsys, "matrix", "show", "--profession", "70")
    assert code == 0 and "Types absent from the file: denied" in out
    scope = matrix.document_scope(KINE, "user", "rs")
    assert f"Scope (allow-list, {len(scope)} characters):\n{scope}\n" in out
    denied = out.split("\nDenied:\n", 1)[1]
    assert f"    {'n':<18} TRE_A05 REMB Données de remboursement" in denied
    code, _, err = run(capsys, "matrix", "show", "--profession", "99")
    assert code == 2 and "'99' is not in the matrix" in err
    assert run(capsys, "matrix")[0] == 2

"""The DMP habilitation matrix: which document types (DocumentReference.type, JDV_J07) each profession may consult.

The matrix is data: ``habilitation_matrix.tsv`` beside this module (built by ``tools/build_habilitation_matrix.py``),
or an operator's file of the same shape (``FHIR_SERVER_HABILITATION_MATRIX``). docs/policy.md, "The habilitation
matrix", describes the format; in short: ``#`` comment lines (``# source <id>: <citation>`` and
``# profession <code>: <label>`` are declarations), then a TSV header ``class type_system type_code type_display``
followed by one column per TRE_G15 profession code, then one row per document type. A cell is ``Y``/``N`` (stated by
a source, written ``Y:<source id>``) or ``y``/``n`` (a least-privilege choice: no source states it).

Types of unknown class (``?``) and types absent from the file follow *the most restricted class*: for each profession
a class has a rule, what the profession's cells say for most of the class's types (a tie denies); the most restricted
class is the one whose rule denies the most professions (ties: the larger share of denied cells, then the lower
class code). A ``?`` row may not allow by a least-privilege choice (``y``) what that rule denies; a type absent from
the file is allowed to a profession only if that rule allows it and the profession is denied no listed type with the
same code (whatever its system: the ANS publishes its code systems under two URIs).

Nothing here trusts the caller: ``allows`` of an unknown profession is False for every type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import parse_qsl, quote

SHIPPED = Path(__file__).with_name("habilitation_matrix.tsv")

#: TRE_A03-ClasseDocument (urn:oid:1.2.250.1.213.1.1.4.1): the DMP document classes (DocumentReference.category).
CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "10": "Compte rendu",
        "11": "Synthèse",
        "31": "Imagerie",
        "42": "Prescription",
        "43": "Dispensation",
        "44": "Plan de soins",
        "45": "Traitement administré",
        "52": "Certificat",
        "60": "Remboursement",
        "90": "Patient (expression personnelle)",
        "95": "Gestion",
        "99": "Technique",
    }
)
UNKNOWN_CLASS = "?"

#: TRE_G15-ProfessionSante (urn:oid:1.2.250.1.71.1.2.7): the professions a matrix column may name without
#: declaring them (others need a ``# profession <code>: <label>`` line).
PROFESSIONS: Mapping[str, str] = MappingProxyType(
    {
        "10": "Médecin",
        "21": "Pharmacien",
        "40": "Chirurgien-dentiste",
        "50": "Sage-femme",
        "60": "Infirmier",
        "70": "Masseur-kinésithérapeute",
    }
)

FIXED_COLUMNS = ("class", "type_system", "type_code", "type_display")
_CELL = re.compile(r"^([YNyn])(?::(.*))?$")
_SOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SOURCE_LINE = re.compile(r"^#\s*source\s+([^\s:]+)\s*:\s*(.*)$")
_PROFESSION_LINE = re.compile(r"^#\s*profession\s+([^\s:]+)\s*:\s*(.*)$")
_PROFESSION_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTEXTS = ("patient", "user", "system")
_SCOPE_LETTERS = re.compile(r"^c?r?u?d?s?$")


class MatrixError(ValueError):
    """A matrix file that cannot be used: one line per problem, each naming the file and line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class NoDocumentAccess(LookupError):
    """The profession may consult no document type (or is unknown): no scope can express that, grant none."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One profession x type decision: ``allowed``, whether a source ``stated`` it (upper case) and which one."""

    allowed: bool
    stated: bool
    source: str | None = None

    @property
    def text(self) -> str:
        letter = ("Y" if self.allowed else "N") if self.stated else ("y" if self.allowed else "n")
        return f"{letter}:{self.source}" if self.source else letter


@dataclass(frozen=True, slots=True)
class MatrixRow:
    line: int
    class_code: str  # a TRE_A03 code, or "?" (no class maps the type)
    system: str
    code: str
    display: str
    cells: tuple[Cell, ...]  # in the order of HabilitationMatrix.professions()


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one loaded file, used as is
class HabilitationMatrix:
    """A loaded matrix, immutable. Build it with ``load`` (raises on problems) or ``read`` (keeps them)."""

    path: str
    rows: tuple[MatrixRow, ...] = field(repr=False)
    columns: tuple[str, ...]
    sources: Mapping[str, str] = field(repr=False)
    profession_labels: Mapping[str, str] = field(repr=False)
    problems: tuple[str, ...] = ()
    most_restricted_class: str | None = field(init=False)
    _index: Mapping[tuple[str, str], int] = field(init=False, repr=False)
    _class_rules: Mapping[str, Mapping[str, bool]] = field(init=False, repr=False)
    _allowed: Mapping[str, frozenset[tuple[str, str]]] = field(init=False, repr=False)
    _denied_codes: Mapping[str, frozenset[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], int] = {}
        for position, row in enumerate(self.rows):
            index.setdefault((row.system, row.code), position)
        rules = {code: class_rules(self.rows, code, len(self.columns)) for code in _classes_in(self.rows)}
        restricted = most_restricted(self.rows, len(self.columns))
        allowed = {
            p: frozenset((r.system, r.code) for r in self.rows if r.cells[i].allowed)
            for i, p in enumerate(self.columns)
        }
        denied = {p: frozenset(r.code for r in self.rows if not r.cells[i].allowed) for i, p in enumerate(self.columns)}
        setattr_ = object.__setattr__
        setattr_(self, "most_restricted_class", restricted)
        setattr_(self, "_index", MappingProxyType(index))
        by_class = {k: MappingProxyType(dict(zip(self.columns, v, strict=True))) for k, v in rules.items()}
        setattr_(self, "_class_rules", MappingProxyType(by_class))
        setattr_(self, "_allowed", MappingProxyType(allowed))
        setattr_(self, "_denied_codes", MappingProxyType(denied))

    # --- loading -----------------------------------------------------------------------------------------------

    @classmethod
    def read(cls, path: Path | str | None = None) -> HabilitationMatrix:
        """The matrix of ``path`` (default: the shipped file) with every problem found kept in ``problems``:
        rows or cells that are wrong are left out (a bad cell denies), so ``check()`` can list them all."""
        where = Path(path) if path is not None else SHIPPED
        try:
            text = where.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MatrixError([f"{where}: no such file"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MatrixError([f"{where}: cannot be read as UTF-8 text: {exc}"]) from None
        return parse_matrix(text, str(where))

    @classmethod
    def load(cls, path: Path | str | None = None) -> HabilitationMatrix:
        """The matrix of ``path`` (default: the shipped file); ``MatrixError`` naming each bad line otherwise."""
        matrix = cls.read(path)
        problems = matrix.check()
        if problems:
            raise MatrixError(problems)
        return matrix

    def check(self) -> list[str]:
        """Every problem of the file, one line each (``path:line: message``); empty when it is usable."""
        problems = list(self.problems)
        if not self.columns:
            return problems
        restricted = self.most_restricted_class
        for row in self.rows:
            if row.class_code != UNKNOWN_CLASS:
                continue
            for profession, cell in zip(self.columns, row.cells, strict=True):
                if cell.allowed and not cell.stated and not self._class_allows(restricted, profession):
                    problems.append(
                        f"{self.path}:{row.line}: {row.system}|{row.code} has no class ('?'), so it follows the "
                        f"most restricted class ({restricted or 'none'}), which denies profession {profession}: "
                        f"write 'n', give the row its class, or state a source ('Y:<source id>')"
                    )
        return problems

    # --- questions -----------------------------------------------------------------------------------------------

    def professions(self) -> tuple[str, ...]:
        return self.columns

    def profession_label(self, profession: str) -> str:
        return self.profession_labels.get(profession, profession)

    def class_of(self, system: str, code: str) -> str | None:
        """The type's TRE_A03 class; for a row of unknown class, the most restricted class; None if absent."""
        position = self._index.get((system, code))
        if position is None:
            return None
        found = self.rows[position].class_code
        return self.most_restricted_class if found == UNKNOWN_CLASS else found

    def allows(self, profession: str, system: str, code: str) -> bool:
        if profession not in self._allowed:
            return False
        if (system, code) in self._index:
            return (system, code) in self._allowed[profession]
        return self.allows_absent_types(profession) and code not in self._denied_codes[profession]

    def allows_absent_types(self, profession: str) -> bool:
        """The rule for a type the file does not list: the most restricted class's rule for this profession."""
        return profession in self._allowed and self._class_allows(self.most_restricted_class, profession)

    def allowed_types(self, profession: str) -> tuple[tuple[str, str], ...]:
        allowed = self._allowed.get(profession, frozenset())
        return tuple((r.system, r.code) for r in self.rows if (r.system, r.code) in allowed)

    def denied_types(self, profession: str) -> tuple[tuple[str, str], ...]:
        allowed = self._allowed.get(profession, frozenset())
        return tuple((r.system, r.code) for r in self.rows if (r.system, r.code) not in allowed)

    def class_rule(self, class_code: str, profession: str) -> bool | None:
        """The rule of a class for a profession (most of its types allowed), None for a class without rows."""
        rules = self._class_rules.get(class_code)
        return None if rules is None else rules.get(profession, False)

    def _class_allows(self, class_code: str | None, profession: str) -> bool:
        return class_code is not None and bool(self.class_rule(class_code, profession))

    # --- as SMART v2 granular scopes -----------------------------------------------------------------------------

    def document_criteria(self, profession: str) -> tuple[tuple[str, str], ...]:
        """The search criteria (name, value) that confine DocumentReference to what ``profession`` may consult.

        - A profession that the rule for absent types denies gets the allow-list ``(("type", "sys|a,sys|b,…"),)``:
          one ``type`` parameter whose comma-separated values OR, so a type the file does not list stays denied.
        - A profession allowed absent types gets the shorter of the deny-list ``(("type:not", "x"), …)`` (repeated
          parameters AND; each value a bare code, which denies that code in every system: the ANS code systems have
          two URIs, and a bare code only ever hides more; ``sys|code`` only when the same code is allowed in another
          listed system) and the allow-list (stricter: it also denies absent types); a tie keeps the deny-list.
        - ``()``: every type, absent ones included (nothing to deny).
        Raises ``NoDocumentAccess`` for an unknown profession or one allowed no type: no criteria express "nothing".
        """
        if profession not in self._allowed:
            raise NoDocumentAccess(f"profession {profession!r} is not in the habilitation matrix")
        allowed, denied = self.allowed_types(profession), self.denied_types(profession)
        allow_list = (("type", ",".join(f"{_escape(s)}|{_escape(c)}" for s, c in allowed)),) if allowed else None
        if not self.allows_absent_types(profession):
            if allow_list is None:
                raise NoDocumentAccess(f"profession {profession!r} may consult no document type")
            return allow_list
        if not denied:
            return ()
        allowed_codes = {c for _, c in allowed}
        deny_list = tuple(
            ("type:not", f"{_escape(s)}|{_escape(c)}" if c in allowed_codes else _escape(c))  # code in 2 systems
            for s, c in dict.fromkeys(denied)
        )
        if allow_list is not None and len(_query(allow_list)) < len(_query(deny_list)):
            return allow_list
        return deny_list

    def document_scope(self, profession: str, context: str = "user", letters: str = "rs") -> str | None:
        """The SMART v2 scope granting ``letters`` on the DocumentReferences ``profession`` may consult
        (``user/DocumentReference.rs?type:not=ATTEST-RESID``), or None when it may consult none."""
        if context not in _CONTEXTS or not letters or not _SCOPE_LETTERS.match(letters):
            raise ValueError(f"not a SMART v2 scope context/permissions: {context!r}, {letters!r}")
        try:
            criteria = self.document_criteria(profession)
        except NoDocumentAccess:
            return None
        scope = f"{context}/DocumentReference.{letters}"
        if not criteria:
            return scope
        query = _query(criteria)
        if list(parse_qsl(query, keep_blank_values=True)) != list(criteria):  # never grant what we did not mean
            raise ValueError(f"criteria do not survive URL encoding: {criteria!r}")
        return f"{scope}?{query}"

    # --- counts --------------------------------------------------------------------------------------------------

    def counts(self, profession: str | None = None) -> tuple[int, int]:
        """(stated cells, least-privilege cells), for one profession or all."""
        indexes = range(len(self.columns)) if profession is None else (self.columns.index(profession),)
        cells = [row.cells[i] for row in self.rows for i in indexes]
        stated = sum(1 for c in cells if c.stated)
        return stated, len(cells) - stated


def _escape(part: str) -> str:
    """A system or code as a token search value: ``\\``, ``,`` and ``|`` escaped (search.html#escaping)."""
    return part.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|")


def _query(criteria: tuple[tuple[str, str], ...]) -> str:
    """``name=value&…`` with only what must be encoded encoded (``|``, ``,``, ``:`` and ``/`` stay readable)."""
    return "&".join(f"{quote(name, safe=':')}={quote(value, safe='|,:/')}" for name, value in criteria)


# --- the class rules ---------------------------------------------------------------------------------------------


def _classes_in(rows: tuple[MatrixRow, ...]) -> list[str]:
    return sorted({r.class_code for r in rows if r.class_code != UNKNOWN_CLASS}, key=_class_key)


def _class_key(code: str) -> tuple[int, str]:
    return (int(code), code) if code.isdigit() else (1 << 30, code)


def class_rules(rows: tuple[MatrixRow, ...], class_code: str, width: int) -> tuple[bool, ...]:
    """Per profession column: does the class allow it? Yes when the profession is allowed most of the class's
    types (a strict majority: a tie denies)."""
    members = [r for r in rows if r.class_code == class_code]
    return tuple(2 * sum(r.cells[i].allowed for r in members) > len(members) for i in range(width))


def most_restricted(rows: tuple[MatrixRow, ...], width: int) -> str | None:
    """The class whose rule denies the most professions; ties: the larger share of denied cells, then the lower
    class code. None when no row has a class (then unknown and absent types are denied to everyone)."""
    best: tuple[int, float] | None = None
    chosen = None
    for code in _classes_in(rows):  # ascending: a later class must score strictly higher to win a tie
        members = [r for r in rows if r.class_code == code]
        denied_professions = sum(1 for allowed in class_rules(rows, code, width) if not allowed)
        cells = [c for r in members for c in r.cells]
        share = sum(1 for c in cells if not c.allowed) / len(cells) if cells else 0.0
        score = (denied_professions, share)
        if best is None or score > best:
            best, chosen = score, code
    return chosen


# --- parsing -----------------------------------------------------------------------------------------------------


def parse_matrix(text: str, path: str = "<matrix>") -> HabilitationMatrix:
    """Parse a matrix file's text; every problem is kept (``path:line: message``), bad rows left out."""
    problems: list[str] = []
    sources: dict[str, str] = {}
    declared: dict[str, str] = {}
    header: tuple[str, ...] | None = None
    header_line = 0
    raw_rows: list[tuple[int, list[str]]] = []

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            _directive(line, number, path, sources, declared, problems)
            continue
        fields = line.split("\t")
        if header is None:
            header, header_line = tuple(f.strip() for f in fields), number
            continue
        raw_rows.append((number, fields))

    if header is None:
        problems.append(f"{path}: no header line ({chr(9).join((*FIXED_COLUMNS, '<profession codes>…'))})")
        return HabilitationMatrix(path, (), (), MappingProxyType(sources), MappingProxyType({}), tuple(problems))
    columns = _columns(header, header_line, path, declared, problems)
    labels = {code: declared.get(code) or PROFESSIONS.get(code, code) for code in columns}
    if not columns:  # the header's problem is reported: its rows cannot be read
        return HabilitationMatrix(path, (), (), MappingProxyType(sources), MappingProxyType(labels), tuple(problems))

    rows: list[MatrixRow] = []
    seen: dict[tuple[str, str], int] = {}
    for number, fields in raw_rows:
        where = f"{path}:{number}"
        if len(fields) != len(header):
            problems.append(f"{where}: {len(fields)} tab-separated fields, the header has {len(header)}")
            continue
        class_code, system, code, display = (f.strip() for f in fields[: len(FIXED_COLUMNS)])
        row_ok = True
        if class_code != UNKNOWN_CLASS and class_code not in CLASSES:
            problems.append(
                f"{where}: unknown class {class_code!r} (a TRE_A03 code: {', '.join(CLASSES)}; or '?' for none)"
            )
            row_ok = False
        if not system or not code:
            problems.append(f"{where}: type_system and type_code are required")
            row_ok = False
        elif (system, code) in seen:
            problems.append(f"{where}: duplicate type {system}|{code} (first at line {seen[system, code]})")
            row_ok = False
        else:
            seen[system, code] = number
        cells = []
        for profession, value in zip(columns, fields[len(FIXED_COLUMNS) :], strict=True):
            cell, problem = _cell(value.strip(), sources)
            if problem:
                problems.append(f"{where}: profession {profession}, type {code or '?'}: {problem}")
            cells.append(cell)
        if row_ok:
            rows.append(MatrixRow(number, class_code, system, code, display, tuple(cells)))

    if not raw_rows:
        problems.append(f"{path}: no document type rows after the header")
    return HabilitationMatrix(
        path, tuple(rows), columns, MappingProxyType(sources), MappingProxyType(labels), tuple(problems)
    )


def _directive(
    line: str, number: int, path: str, sources: dict[str, str], declared: dict[str, str], problems: list[str]
) -> None:
    """``# source <id>: <citation>`` and ``# profession <code>: <label>`` declare; other ``#`` lines are comments."""
    where = f"{path}:{number}"
    if match := _SOURCE_LINE.match(line):
        ident, citation = match.groups()
        if not _SOURCE_ID.match(ident):
            problems.append(f"{where}: source id {ident!r}: letters, digits, '.', '_' and '-' only")
        elif ident in sources:
            problems.append(f"{where}: source {ident!r} declared twice")
        elif not citation.strip():
            problems.append(f"{where}: source {ident!r} needs a citation or URL after the colon")
        else:
            sources[ident] = citation.strip()
    elif match := _PROFESSION_LINE.match(line):
        code, label = match.groups()
        if not _PROFESSION_CODE.match(code) or not label.strip():
            problems.append(f"{where}: expected '# profession <code>: <label>'")
        elif code in declared:
            problems.append(f"{where}: profession {code!r} declared twice")
        else:
            declared[code] = label.strip()


def _columns(
    header: tuple[str, ...], number: int, path: str, declared: dict[str, str], problems: list[str]
) -> tuple[str, ...]:
    where = f"{path}:{number}"
    if header[: len(FIXED_COLUMNS)] != FIXED_COLUMNS:
        problems.append(f"{where}: the header must start with {chr(9).join(FIXED_COLUMNS)} (tab-separated)")
        return ()
    columns = header[len(FIXED_COLUMNS) :]
    if not columns:
        problems.append(f"{where}: no profession column after {FIXED_COLUMNS[-1]}")
    seen: set[str] = set()
    for code in columns:
        if code in seen:
            problems.append(f"{where}: profession column {code!r} appears twice")
        elif code not in PROFESSIONS and code not in declared:
            problems.append(
                f"{where}: profession column {code!r} is not a known TRE_G15 code ({', '.join(PROFESSIONS)}): "
                f"declare it with '# profession {code}: <label>'"
            )
        seen.add(code)
    bad = len(seen) != len(columns) or any(c not in PROFESSIONS and c not in declared for c in columns)
    return () if bad else columns


def _cell(value: str, sources: Mapping[str, str]) -> tuple[Cell, str | None]:
    """The cell ``value`` means and the problem with it (a bad cell denies)."""
    denied = Cell(False, False)
    match = _CELL.match(value)
    if match is None:
        return denied, f"cell {value!r} is not Y, N (with ':<source id>'), y or n"
    letter, source = match.groups()
    stated = letter.isupper()
    if stated and not source:
        return denied, f"cell {value!r}: a stated cell names its source ('{letter}:<source id>'); y/n if none does"
    if not stated and source is not None:
        return denied, f"cell {value!r}: lower case means no source states it; write '{letter.upper()}:{source}'"
    if source is not None and source not in sources:
        return denied, f"cell {value!r}: source {source!r} is not declared ('# source {source}: <citation>')"
    return Cell(letter in "Yy", stated, source), None


def from_settings(settings: object) -> HabilitationMatrix:
    """The matrix a server with these settings uses: ``habilitation_matrix`` (an operator's file) or the shipped one."""
    path = getattr(settings, "habilitation_matrix", None)
    return HabilitationMatrix.load(Path(path) if path else None)


load = HabilitationMatrix.load

"""Errors are values: one small hierarchy, mapped once to HTTP status + OperationOutcome.

Every layer below HTTP raises these; ``rest.errors`` turns them into responses.
Issue codes come from http://hl7.org/fhir/R4/valueset-issue-type.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def to_fhir(self) -> dict:
        issue: dict = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


@dataclass
class FhirError(Exception):
    """Base error: an HTTP status plus the issues explaining it."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues)

    def outcome(self) -> dict:
        return operation_outcome(self.issues)


def _error(status: int, code: str):
    def make(diagnostics: str, *, expression: tuple[str, ...] = (), headers=None) -> FhirError:
        return FhirError(status, [Issue(code, diagnostics, expression=expression)], dict(headers or {}))

    return make


bad_request = _error(400, "invalid")
not_supported = _error(400, "not-supported")
unauthorized = _error(401, "login")
forbidden = _error(403, "forbidden")
not_found = _error(404, "not-found")
method_not_allowed = _error(405, "not-supported")
not_acceptable = _error(406, "not-supported")
conflict = _error(409, "conflict")
gone = _error(410, "deleted")
precondition_failed = _error(412, "conflict")
too_large = _error(413, "too-costly")
unsupported_media_type = _error(415, "not-supported")
unprocessable = _error(422, "processing")


def invalid_resource(issues: list[Issue], status: int = 400) -> FhirError:
    """Content that fails validation: one issue per failing element."""
    return FhirError(status, list(issues))

"""What a document the patient side deposits must be (docs/medical-record.md, "The patient's own documents").

Checked in the unit of work of the write (``policy/writes.py`` calls these), so a transaction (ITI-65: List,
DocumentReference, Binary) and the PDSm simplified publish (ITI-105: the bytes inline in ``attachment.data``)
follow the same rules:

* the bytes are a PDF, a JPEG or a PNG, told by their magic numbers, never by the client's ``contentType``;
  a declared type that is not what the bytes are is refused (422) rather than re-typed: the check runs on
  the version as written, and a refusal tells the app its file picker lied;
* at most ``patient_document_max_bytes`` once decoded (413);
* ``type`` from the DMP list (JDV_J07, the habilitation matrix's rows) and ``category`` its TRE_A03 class
  (ASS_X16), 422 otherwise;
* ``author`` is the patient, or the RelatedPerson writing for them (422 otherwise);
* ``context.encounter`` is a hospitalisation (Encounter of class IMP) of the same patient (422 otherwise).
"""

from __future__ import annotations

import base64
import binascii
from functools import cache

import orjson

from ..config import Settings
from ..errors import forbidden, too_large, unprocessable
from ..policy.matrix import SHIPPED, UNKNOWN_CLASS, HabilitationMatrix
from ..security.principal import Principal
from ..store import ResourceVersion, Transaction

#: Magic numbers of the accepted formats (ISO 32000 "%PDF-", JFIF/Exif SOI marker, PNG signature).
_MAGIC = ((b"%PDF-", "application/pdf"), (b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))
ACCEPTED = tuple(kind for _, kind in _MAGIC)
TRE_A03_SYSTEMS = (
    "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument",
    "urn:oid:1.2.250.1.213.1.1.4.1",
)
#: The patient's read state of a document: a meta.tag, changed by $mark-read / $mark-unread without a new version.
READ_STATE = "https://github.com/fhir-server/fhir-server/CodeSystem/mes-document-read-state"
READ = "read"
IMP = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP")


@cache
def max_bytes() -> int:
    """``patient_document_max_bytes`` from the environment (FHIR_SERVER_PATIENT_DOCUMENT_MAX_BYTES): the write
    guard has no request settings at hand; read once, ``max_bytes.cache_clear()`` to read again."""
    return Settings().patient_document_max_bytes


@cache
def _dmp_classes() -> dict[tuple[str, str], str]:
    """(system, code) of each DMP type → its TRE_A03 class: the shipped matrix rows are JDV_J07 classed by ASS_X16
    (the operator's replacement matrix decides access, not which types exist)."""
    return {(row.system, row.code): row.class_code for row in HabilitationMatrix.read(SHIPPED).rows}


def dmp_class(coding: dict) -> dict | None:
    """The TRE_A03 class coding of a DMP document type coding (None: not a DMP type, or unclassed)."""
    found = _dmp_classes().get((coding.get("system", ""), coding.get("code", "")))
    return None if found in (None, UNKNOWN_CLASS) else {"system": TRE_A03_SYSTEMS[0], "code": found}


def sniff(data: bytes) -> str | None:
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def decoded(data: object, where: str) -> bytes:
    try:
        raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError):
        raise unprocessable("The document's data is not base64", expression=(where,)) from None
    limit = max_bytes()
    if len(raw) > limit:
        raise too_large(f"The document is {len(raw)} bytes; a patient's document is at most {limit} bytes")
    return raw


def checked_type(data: object, declared: object, where: str) -> str:
    """The format the bytes are, if accepted and as declared (413 too big, 422 otherwise)."""
    raw = decoded(data, f"{where}.data")
    kind = sniff(raw)
    if kind is None:
        raise unprocessable(
            f"A patient's document is a PDF, a JPEG or a PNG ({', '.join(ACCEPTED)}): these bytes are none of them",
            expression=(f"{where}.data",),
        )
    if declared != kind:
        raise unprocessable(
            f"The bytes are {kind} but contentType says {declared!r}: declare {kind}",
            expression=(f"{where}.contentType",),
        )
    return kind


# --- the Binary -------------------------------------------------------------------------------------------------
async def check_binary(tx: Transaction, version: ResourceVersion) -> None:
    binary = _body(version)
    if binary is None:
        return
    kind = checked_type(binary.get("data"), binary.get("contentType"), "Binary")
    context = (binary.get("securityContext") or {}).get("reference") or ""
    if context.startswith("DocumentReference/"):  # the document came first in the transaction
        document = _body(await tx.read_current("DocumentReference", context.split("/", 1)[1]))
        for attachment in _attachments(document or {}):
            if attachment.get("url") == f"Binary/{version.id}" and attachment.get("contentType") != kind:
                raise unprocessable(
                    f"The Binary is {kind}, its DocumentReference says {attachment.get('contentType')!r}"
                )


# --- the DocumentReference -----------------------------------------------------------------------------------------
async def check_document(principal: Principal, tx: Transaction, version: ResourceVersion) -> None:
    """A document the patient side deposits or changes (its own: a professional's is ruled by writes.py)."""
    document = _body(version)
    if document is None:
        return
    subject = (document.get("subject") or {}).get("reference") or ""
    if not subject.startswith("Patient/"):
        raise unprocessable("A patient's document has a Patient subject", expression=("DocumentReference.subject",))
    _type_and_class(document)
    _author(principal, document, subject)
    await _content(tx, document)
    await _encounters(tx, document, subject)


def _type_and_class(document: dict) -> None:
    codings = (document.get("type") or {}).get("coding") or ()
    found = [_dmp_classes().get((c.get("system", ""), c.get("code", ""))) for c in codings]
    if len(found) != 1 or found[0] is None:
        raise unprocessable(
            "DocumentReference.type is one coding of the DMP document types (JDV_J07-XdsTypeCode-CISIS)",
            expression=("DocumentReference.type",),
        )
    if found[0] == UNKNOWN_CLASS:
        raise unprocessable(
            "This type has no DMP class (ASS_X16): choose a type the DMP classes",
            expression=("DocumentReference.type",),
        )
    classes = [
        c.get("code")
        for concept in document.get("category") or ()
        for c in concept.get("coding") or ()
        if c.get("system") in TRE_A03_SYSTEMS
    ]
    if classes != [found[0]]:
        raise unprocessable(
            f"DocumentReference.category is the type's DMP class: TRE_A03 {found[0]} (ASS_X16)",
            expression=("DocumentReference.category",),
        )


def _author(principal: Principal, document: dict, subject: str) -> None:
    allowed = {subject}
    if principal.fhir_user_type == "RelatedPerson" and principal.fhir_user:
        allowed.add(principal.fhir_user)  # a representative or delegate depositing for the patient
    authors = [(a.get("reference") or "") for a in document.get("author") or ()]
    if not authors or not set(authors) <= allowed:
        raise unprocessable(
            f"A document the patient side deposits is authored by the patient ({' or '.join(sorted(allowed))})",
            expression=("DocumentReference.author",),
        )


async def _content(tx: Transaction, document: dict) -> None:
    for n, attachment in enumerate(_attachments(document)):
        where = f"DocumentReference.content[{n}].attachment"
        url = attachment.get("url") or ""
        if "data" in attachment:  # ITI-105: the bytes inline
            checked_type(attachment["data"], attachment.get("contentType"), where)
        elif url.startswith("Binary/"):
            binary = _body(await tx.read_current("Binary", url.split("/", 1)[1]))
            if binary is not None and binary.get("contentType") != attachment.get("contentType"):
                raise unprocessable(
                    f"{url} is {binary.get('contentType')!r}: contentType says otherwise", expression=(where,)
                )
            # a Binary later in the transaction is checked when written (check_binary)
        else:
            raise unprocessable(
                "A patient's document carries its bytes: attachment.data, or attachment.url to a Binary",
                expression=(where,),
            )


async def _encounters(tx: Transaction, document: dict, subject: str) -> None:
    for reference in (document.get("context") or {}).get("encounter") or ():
        ref = reference.get("reference") or ""
        encounter = (
            _body(await tx.read_current("Encounter", ref.split("/", 1)[1])) if ref.startswith("Encounter/") else None
        )
        # another patient's Encounter answers like a missing one: the refusal tells nothing about it
        if (
            encounter is None
            or (encounter.get("subject") or {}).get("reference") != subject
            or not _inpatient(encounter)
        ):
            raise unprocessable(
                "context.encounter is a hospitalisation (Encounter of class IMP) of the document's patient",
                expression=("DocumentReference.context.encounter",),
            )


def _inpatient(encounter: dict) -> bool:
    class_ = encounter.get("class") or {}
    return (class_.get("system"), class_.get("code")) == IMP


# --- the read state ---------------------------------------------------------------------------------------------
def is_read(document: dict | None) -> bool:
    tags = ((document or {}).get("meta") or {}).get("tag") or ()
    return any(t.get("system") == READ_STATE and t.get("code") == READ for t in tags)


def check_read_state_kept(before: dict | None, after: dict | None) -> None:
    """A professional's write never marks a document read for the patient (a new version may drop the mark:
    the document changed, it is news again)."""
    if is_read(after) and not is_read(before):
        raise forbidden("Only the patient side marks a document read ($mark-read)")


def _attachments(document: dict) -> list[dict]:
    return [c.get("attachment") or {} for c in document.get("content") or () if isinstance(c, dict)]


def _body(version: ResourceVersion | None) -> dict | None:
    if version is None or version.body is None or version.deleted:
        return None
    return orjson.loads(version.body)

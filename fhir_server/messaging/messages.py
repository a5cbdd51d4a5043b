"""Messages between professionals and the patient: what a write may be, and its delivery (docs/messaging.md).

A message is a ``Communication`` of category ``mes-message-category#message``. Like an email, each mailbox
holds **its own copy**: the sender's write is their copy, and the server delivers the other in the same unit of
work — the patient's copy (``meta.tag`` ``mes-mailbox#patient``) or a professional mailbox's copy
(``mes-mailbox#professional`` plus ``mes-mailbox-owner``, the Organization of the role). Both share the
``mes-message-id`` identifier; each copy's ``partOf`` (the thread's first message) and ``inResponseTo`` point
at copies of the same mailbox; each copy's attachments are its own Binaries (``securityContext`` the copy). So
what one side does to its mailbox (read marks, trash, deleting for good) never shows on the other, and the
policy (``policy/rules.py``) can give each side its copies only.

* A thread is started by a professional only; the patient side replies inside a thread unless it is closed.
* A sent message does not change: the professional only closes a thread (``$close-thread``) or marks what it
  received read; the patient side marks read/unread and moves to or out of the trash (``messaging/mailbox.py``);
  a draft (``status`` ``preparation``) of the patient side changes until it is sent (``completed``).
* The read receipt: the patient's first ``received`` on a message whose sender asked for one
  (``mes-read-receipt``) is copied to the sender's copy.
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Sequence
from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING

import orjson

from ..config import Settings
from ..errors import forbidden, too_large, unprocessable
from ..fhirjson import dumps
from ..instant import new_id, now_us, to_instant
from ..interactions.access import within
from ..interactions.crud import create_in, delete_in, update_in
from ..policy.codes import INS_NIR, INVISIBLE_PATIENT
from ..record.documents import ACCEPTED, sniff
from ..search.criteria import parse_criteria
from ..search.indexing import IndexEntry, index_entries
from ..store import ResourceVersion, Transaction
from . import codes

if TYPE_CHECKING:
    from ..policy.access import PolicyAccess

_SERVER_TAGS = codes.SERVER_TAG_SYSTEMS
_CLIENT_IGNORED = ("meta", "received", "sent", "text")  # what a mailbox action may change on a sent message


# --- reading a message -----------------------------------------------------------------------------------------
def body_of(version: ResourceVersion | None) -> dict | None:
    if version is None or version.body is None or version.deleted:
        return None
    return orjson.loads(version.body)


def is_message(body: dict | None) -> bool:
    for concept in (body or {}).get("category") or ():
        for coding in (concept.get("coding") or ()) if isinstance(concept, dict) else ():
            if (
                isinstance(coding, dict)
                and coding.get("system") == codes.CATEGORY
                and coding.get("code") == codes.MESSAGE
            ):
                return True
    return False


def tag(body: dict | None, system: str) -> str | None:
    for t in ((body or {}).get("meta") or {}).get("tag") or ():
        if isinstance(t, dict) and t.get("system") == system:
            return t.get("code")
    return None


def message_id(body: dict | None) -> str | None:
    for identifier in (body or {}).get("identifier") or ():
        if isinstance(identifier, dict) and identifier.get("system") == codes.MESSAGE_ID:
            return identifier.get("value")
    return None


def ref(value: object) -> str:
    return (value.get("reference") or "") if isinstance(value, dict) else ""


def refs(values: object) -> list[str]:
    return [ref(v) for v in values] if isinstance(values, list) else []


def _extension(body: dict, url: str) -> dict | None:
    return next((e for e in body.get("extension") or () if isinstance(e, dict) and e.get("url") == url), None)


def receipt_asked(body: dict) -> bool:
    return bool((_extension(body, codes.READ_RECEIPT) or {}).get("valueBoolean"))


def closed(body: dict | None) -> bool:
    return _extension(body or {}, codes.REPLIES_CLOSED) is not None


def patient_of(body: dict) -> str:
    subject = ref(body.get("subject"))
    if not subject.startswith("Patient/") or subject.count("/") != 1:
        raise unprocessable(
            "A message's subject is the patient (a Patient reference)", expression=("Communication.subject",)
        )
    return subject


def _without_server_tags(tags: object) -> list:
    return [t for t in tags or () if not (isinstance(t, dict) and t.get("system") in _SERVER_TAGS)]


# --- prepare: the server's fields -----------------------------------------------------------------------------------
async def prepare(
    access: PolicyAccess, tx: Transaction, version: ResourceVersion, entries: Sequence[IndexEntry]
) -> tuple[ResourceVersion, Sequence[IndexEntry]]:
    """Set what the server owns on a message the caller writes: its mailbox tags, its identifier, ``sent``,
    and the defaults (sender, recipient of a reply, the thread); carried unchanged from the stored version on
    an update (only the trash tag is the patient side's to change)."""
    if version.type != "Communication" or version.body is None:
        return version, entries
    body = orjson.loads(version.body)
    before = body_of(await tx.read_current("Communication", version.id)) if version.version > 1 else None
    if not is_message(body) and not is_message(before):
        return version, entries
    meta = body.setdefault("meta", {})
    given = meta.get("tag") or ()
    trash = [
        t for t in given if isinstance(t, dict) and t.get("system") == codes.MAILBOX and t.get("code") == codes.TRASH
    ]
    if before is None:
        body["identifier"] = [
            *(
                i
                for i in body.get("identifier") or ()
                if not (isinstance(i, dict) and i.get("system") == codes.MESSAGE_ID)
            ),
            {"system": codes.MESSAGE_ID, "value": new_id()},
        ]
        body.setdefault("status", "completed")
        await _defaults(access, tx, body)
        meta["tag"] = [*_without_server_tags(given), *_own_tags(access, body)]
    else:
        kept = [
            t
            for t in (before.get("meta") or {}).get("tag") or ()
            if t.get("system") in _SERVER_TAGS and t.get("code") != codes.TRASH
        ]
        meta["tag"] = [*_without_server_tags(given), *kept, *(trash[:1] if access.patient_side is not None else ())]
        body["identifier"] = before.get("identifier") or []
        if "sent" in before:
            body["sent"] = before["sent"]
        else:
            body.pop("sent", None)
    if body.get("status") == "completed" and "sent" not in body:
        body["sent"] = to_instant(now_us())
    if not meta["tag"]:
        del meta["tag"]
    return replace(version, body=dumps(body)), index_entries(body)


def _own_tags(access: PolicyAccess, body: dict) -> list[dict]:
    if access.professional is not None:
        professional = access.principal.professional
        assert professional is not None
        owner = professional.organization or professional.role or professional.practitioner
        return [
            {"system": codes.MAILBOX, "code": codes.PROFESSIONAL_COPY},
            {"system": codes.MAILBOX_OWNER, "code": owner},
        ]
    return [{"system": codes.MAILBOX, "code": codes.PATIENT_COPY}]


async def _defaults(access: PolicyAccess, tx: Transaction, body: dict) -> None:
    principal = access.principal
    if "sender" not in body:
        if access.professional is not None:
            professional = principal.professional
            assert professional is not None
            body["sender"] = {"reference": professional.role or professional.practitioner}
        elif principal.fhir_user_type == "RelatedPerson":
            body["sender"] = {"reference": principal.fhir_user}
        elif isinstance(body.get("subject"), dict):
            body["sender"] = {"reference": ref(body["subject"])}
    answered = await _answered(tx, body)
    if answered is not None:
        if "partOf" not in body:
            body["partOf"] = answered.get("partOf") or [{"reference": f"Communication/{answered['id']}"}]
        if "recipient" not in body and access.patient_side is not None and answered.get("sender"):
            body["recipient"] = [{"reference": ref(answered["sender"])}]
    await _addresses(tx, body)


async def _addresses(tx: Transaction, body: dict) -> None:
    """The patient's messaging address on the patient's side of the exchange (sender or recipient), as an
    email carries its To: and From: — derived from the INS, so there is nothing to create at activation."""
    parties = [body.get("sender"), *(body.get("recipient") or ())]
    for party in parties:
        reference = ref(party)
        if not reference.startswith("Patient/") or "identifier" in party:  # type: ignore[operator]
            continue
        patient = body_of(await tx.read_current("Patient", reference.split("/", 1)[1])) or {}
        ins = next((i.get("value") for i in patient.get("identifier") or () if i.get("system") == INS_NIR), None)
        if ins:
            party["identifier"] = {"system": codes.ADDRESS_SYSTEM, "value": address(ins)}  # type: ignore[index]


async def _answered(tx: Transaction, body: dict) -> dict | None:
    """The message ``inResponseTo`` names (None: none named or not a message)."""
    named = refs(body.get("inResponseTo"))
    if len(named) != 1 or not named[0].startswith("Communication/"):
        return None
    found = body_of(await tx.read_current("Communication", named[0].split("/", 1)[1]))
    return found if is_message(found) else None


# --- check: what a write may be -------------------------------------------------------------------------------------
async def check(access: PolicyAccess, tx: Transaction, version: ResourceVersion) -> None:
    """Called by the policy's write check for every Communication a professional or the patient side writes."""
    before = body_of(await tx.read_current("Communication", version.id))
    after = body_of(version)
    if not is_message(before) and not is_message(after):
        return
    if after is None:
        await _drop_attachments(
            tx, version.id
        )  # deleting one's copy deletes its attachments (the other copy keeps its own)
        return
    if before is not None and is_message(before) != is_message(after):
        raise unprocessable(
            "A message stays a message, and nothing else becomes one", expression=("Communication.category",)
        )
    sending = after.get("status") == "completed" and (before is None or before.get("status") == "preparation")
    if access.professional is not None:
        if before is None:
            await _professional_send(access, tx, version.id, after)
        else:
            await _professional_change(access, tx, before, after)
    elif before is None or before.get("status") == "preparation":
        await _patient_send(access, tx, version.id, after)
    else:
        await _patient_change(tx, before, after)
    if sending:
        await _deliver(tx, version.id, after)


def _one_of(value: object, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise unprocessable(f"{where} is one of {', '.join(allowed)}", expression=(where,))


async def _professional_send(access: PolicyAccess, tx: Transaction, id_: str, body: dict) -> None:
    professional = access.principal.professional
    assert professional is not None
    patient = patient_of(body)
    _one_of(body.get("status"), ("completed",), "Communication.status")
    if ref(body.get("sender")) not in professional.refs_with_organization:
        raise forbidden(
            "A professional sends a message as themselves: sender is their PractitionerRole, Practitioner or "
            "Organization"
        )
    if refs(body.get("recipient")) != [patient]:
        raise unprocessable(
            "A professional's message goes to the patient it is about: recipient is the subject",
            expression=("Communication.recipient",),
        )
    answered = await _answered(tx, body)
    if body.get("inResponseTo"):
        if (
            answered is None
            or tag(answered, codes.MAILBOX) != codes.PROFESSIONAL_COPY
            or tag(answered, codes.MAILBOX_OWNER) not in professional.refs_with_organization
        ):
            raise unprocessable(
                "inResponseTo names a message of this professional's mailbox",
                expression=("Communication.inResponseTo",),
            )
        _same_thread(body, answered, patient)
    elif body.get("partOf"):
        raise unprocessable(
            "A new thread has no partOf; a reply names the message it answers (inResponseTo)",
            expression=("Communication.partOf",),
        )
    elif not (body.get("topic") or {}).get("text"):
        raise unprocessable("A new thread has a subject line (topic.text)", expression=("Communication.topic",))
    await _payload(access, tx, id_, body, patient)


async def _patient_send(access: PolicyAccess, tx: Transaction, id_: str, body: dict) -> None:
    patient = patient_of(body)
    if not body.get("inResponseTo"):
        raise forbidden(
            "A patient cannot start a conversation with a professional: threads are started by professionals; "
            "reply to one of their messages (inResponseTo)"
        )
    answered = await _answered(tx, body)
    named = refs(body.get("inResponseTo"))
    reachable = answered is not None and await within(
        tx, "Communication", named[0].split("/", 1)[1], access.lookup_constraints("Communication")
    )
    if not reachable or tag(answered, codes.MAILBOX) != codes.PATIENT_COPY:
        raise unprocessable(
            "inResponseTo names a message of the patient's mailbox", expression=("Communication.inResponseTo",)
        )
    assert answered is not None
    _one_of(body.get("status"), ("completed", "preparation"), "Communication.status")
    _same_thread(body, answered, patient)
    root = await _root(tx, answered)
    if closed(root):
        raise forbidden("The professional closed this thread to replies")
    principal = access.principal
    senders = {patient, *((principal.fhir_user,) if principal.fhir_user_type == "RelatedPerson" else ())}
    if ref(body.get("sender")) not in senders:
        raise forbidden("The patient side replies as the patient, or as the representative the token names")
    professional_side = {
        ref(answered.get("sender")),
        tag(answered, codes.MAILBOX_OWNER) or "",
        *(await _organization_of(tx, ref(answered.get("sender"))),),
    }
    recipients = refs(body.get("recipient"))
    if len(recipients) != 1 or recipients[0] not in professional_side - {""}:
        raise unprocessable(
            "A reply goes to the professional who wrote the message it answers, or to their organisation",
            expression=("Communication.recipient",),
        )
    await _payload(access, tx, id_, body, patient)


def _same_thread(body: dict, answered: dict, patient: str) -> None:
    if ref(answered.get("subject")) != patient:
        raise unprocessable(
            "A reply is about the same patient as the message it answers", expression=("Communication.subject",)
        )
    thread = refs(answered.get("partOf")) or [f"Communication/{answered['id']}"]
    if refs(body.get("partOf")) != thread:
        raise unprocessable(
            f"A reply is partOf its thread's first message, {thread[0]}", expression=("Communication.partOf",)
        )


async def _root(tx: Transaction, message: dict) -> dict:
    named = refs(message.get("partOf"))
    if not named:
        return message
    return body_of(await tx.read_current("Communication", named[0].split("/", 1)[1])) or message


async def _organization_of(tx: Transaction, reference: str) -> str:
    if not reference.startswith("PractitionerRole/"):
        return ""
    role = body_of(await tx.read_current("PractitionerRole", reference.split("/", 1)[1]))
    return ref((role or {}).get("organization"))


async def _professional_change(access: PolicyAccess, tx: Transaction, before: dict, after: dict) -> None:
    """A professional's copy does not change, but for closing a thread it started and marking a reply read."""
    professional = access.principal.professional
    assert professional is not None
    if _unchanged(before, after, ignored=(*_CLIENT_IGNORED, "extension")) and _extensions_but(
        before, codes.REPLIES_CLOSED
    ) == _extensions_but(after, codes.REPLIES_CLOSED):
        if closed(after) and not closed(before):
            if before.get("partOf") or ref(before.get("sender")) not in professional.refs_with_organization:
                raise forbidden("Only the professional who started a thread closes it")
            await _close_other_copy(tx, before, _extension(after, codes.REPLIES_CLOSED))
        elif closed(before) != closed(after):
            raise unprocessable("A closed thread stays closed", expression=("Communication.extension",))
        if after.get("received") != before.get("received") and not set(refs(before.get("recipient"))) & set(
            professional.refs_with_organization
        ):
            raise forbidden("Only a recipient marks a message read")
        return
    raise unprocessable("A sent message is not changed (a thread is closed with Communication/[id]/$close-thread)")


async def _patient_change(tx: Transaction, before: dict, after: dict) -> None:
    """The patient's copy of a sent message: read marks and the trash only."""
    if not _unchanged(before, after, ignored=_CLIENT_IGNORED):
        raise unprocessable(
            "A sent message is not changed: mark it read or unread ($mark-read, $mark-unread) or move it to the "
            "trash and back ($trash, $restore)"
        )
    if after.get("received") != before.get("received") and tag(before, codes.MAILBOX) == codes.PATIENT_COPY:
        if ref(before.get("sender")).startswith(("Patient/", "RelatedPerson/")):
            raise unprocessable("A message the patient side sent is not marked read by it")
        if after.get("received") and not before.get("received") and receipt_asked(before):
            await _receipt(tx, before, after["received"])


def _unchanged(before: dict, after: dict, ignored: tuple[str, ...]) -> bool:
    keep = ("id", "resourceType")
    strip = lambda d: {k: v for k, v in d.items() if k not in ignored or k in keep}  # noqa: E731
    return strip(before) == strip(after)


def _extensions_but(body: dict, url: str) -> list:
    return [e for e in body.get("extension") or () if not (isinstance(e, dict) and e.get("url") == url)]


# --- attachments and references ------------------------------------------------------------------------------------
@cache
def limits() -> tuple[int, int]:
    """(bytes per attachment, attachments per message) from the environment, read once (``limits.cache_clear()``)."""
    settings = Settings()
    return settings.message_attachment_max_bytes, settings.message_max_attachments


async def _payload(access: PolicyAccess, tx: Transaction, id_: str, body: dict, patient: str) -> None:
    payload = body.get("payload") or []
    if not payload:
        raise unprocessable(
            "A message has a payload: its text, and any attachments", expression=("Communication.payload",)
        )
    max_bytes, max_count = limits()
    attachments = [p for p in payload if isinstance(p, dict) and "contentAttachment" in p]
    if len(attachments) > max_count:
        raise unprocessable(f"A message carries at most {max_count} attachments", expression=("Communication.payload",))
    for n, part in enumerate(payload):
        where = f"Communication.payload[{n}]"
        if not isinstance(part, dict):
            continue
        if "contentAttachment" in part:
            await _attachment(tx, id_, part["contentAttachment"], f"{where}.contentAttachment", max_bytes)
        elif "contentReference" in part:
            await _reference(access, tx, ref(part["contentReference"]), patient, f"{where}.contentReference")


async def _attachment(tx: Transaction, id_: str, attachment: object, where: str, max_bytes: int) -> None:
    """A file: inline or a Binary of this message (``securityContext`` the message, so it is read with it),
    a PDF, JPEG or PNG by its bytes (never trusted from contentType), within the size limit."""
    if not isinstance(attachment, dict):
        raise unprocessable("An attachment is an Attachment", expression=(where,))
    url = attachment.get("url") or ""
    if "data" in attachment:
        data, declared = attachment["data"], attachment.get("contentType")
    elif url.startswith("Binary/") and url.count("/") == 1:
        binary = body_of(await tx.read_current("Binary", url.split("/", 1)[1]))
        if binary is None:
            raise unprocessable(
                f"{url} is not known: send the Binary first in the transaction", expression=(f"{where}.url",)
            )
        if ref(binary.get("securityContext")) != f"Communication/{id_}":
            raise unprocessable(
                f"{url}'s securityContext is the message it is attached to (Communication/{id_})",
                expression=(f"{where}.url",),
            )
        data, declared = binary.get("data"), binary.get("contentType")
    else:
        raise unprocessable(
            "An attachment is inline (data) or a Binary of this message (url Binary/[id])", expression=(where,)
        )
    try:
        raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError):
        raise unprocessable("The attachment's data is not base64", expression=(where,)) from None
    if len(raw) > max_bytes:
        raise too_large(f"The attachment is {len(raw)} bytes; a message's attachment is at most {max_bytes} bytes")
    kind = sniff(raw)
    if kind is None:
        raise unprocessable(
            f"An attachment is a PDF, a JPEG or a PNG ({', '.join(ACCEPTED)}): these bytes are none of them",
            expression=(where,),
        )
    if declared != kind or attachment.get("contentType") not in (None, kind):
        raise unprocessable(f"The bytes are {kind}: declare contentType {kind}", expression=(f"{where}.contentType",))


async def _reference(access: PolicyAccess, tx: Transaction, reference: str, patient: str, where: str) -> None:
    """A document of the record the sender may see (and the patient too), or an appointment proposed to the patient."""
    kind, _, id_ = reference.partition("/")
    if kind == "DocumentReference":
        document = body_of(await tx.read_current(kind, id_))
        visible = document is not None and await within(tx, kind, id_, access.lookup_constraints(kind))
        if not visible or ref(document.get("subject")) != patient:  # type: ignore[union-attr]
            raise unprocessable(
                f"{reference} is not a document of this patient's record you may see", expression=(where,)
            )
        labels = {c.get("code") for label in document.get("securityLabel") or () for c in label.get("coding") or ()}  # type: ignore[union-attr]
        if INVISIBLE_PATIENT in labels:
            raise unprocessable(
                f"{reference} is hidden from the patient: it cannot be sent to them", expression=(where,)
            )
    elif kind == "Appointment":
        appointment = body_of(await tx.read_current(kind, id_))
        actors = {ref(p.get("actor")) for p in (appointment or {}).get("participant") or () if isinstance(p, dict)}
        if appointment is None or patient not in actors or appointment.get("status") != "proposed":
            raise unprocessable(
                f"{reference} is not an appointment proposed to this patient (status proposed)", expression=(where,)
            )
    else:
        raise unprocessable("A message refers to a DocumentReference or an Appointment proposal", expression=(where,))


# --- delivery -------------------------------------------------------------------------------------------------------
async def _deliver(tx: Transaction, id_: str, sent: dict) -> None:
    """The other mailbox's copy, written by the server in the same unit of work."""
    to_patient = tag(sent, codes.MAILBOX) == codes.PROFESSIONAL_COPY
    mailbox = codes.PATIENT_COPY if to_patient else codes.PROFESSIONAL_COPY
    delivered = copy.deepcopy(sent)
    delivered.pop("id", None)
    tags = [{"system": codes.MAILBOX, "code": mailbox}]
    if not to_patient:
        recipient = refs(sent.get("recipient"))[0]
        tags.append({"system": codes.MAILBOX_OWNER, "code": await _organization_of(tx, recipient) or recipient})
    meta = {k: v for k, v in (sent.get("meta") or {}).items() if k in ("profile", "security")}
    delivered["meta"] = {**meta, "tag": [*_without_server_tags((sent.get("meta") or {}).get("tag")), *tags]}
    delivered.pop("received", None)
    for element in ("partOf", "inResponseTo"):
        if element in delivered:
            delivered[element] = [await _counterpart(tx, ref, mailbox) for ref in refs(sent.get(element))]
    copy_id = new_id()
    for part in delivered.get("payload") or ():
        attachment = part.get("contentAttachment") if isinstance(part, dict) else None
        url = (attachment or {}).get("url") or ""
        if url.startswith("Binary/") and "data" not in attachment:  # type: ignore[operator]
            binary = body_of(await tx.read_current("Binary", url.split("/", 1)[1])) or {}
            mine = {k: v for k, v in binary.items() if k in ("resourceType", "contentType", "data")}
            mine["securityContext"] = {"reference": f"Communication/{copy_id}"}
            stored = await create_in(tx, "Binary", mine)
            attachment["url"] = f"Binary/{stored.version.id}"  # type: ignore[index]
    await create_in(tx, "Communication", delivered, id_=copy_id)


async def _counterpart(tx: Transaction, reference: str, mailbox: str) -> dict:
    """The copy in ``mailbox`` of the message ``reference`` names (the same reference if there is none)."""
    found = (
        body_of(await tx.read_current("Communication", reference.split("/", 1)[1]))
        if reference.startswith("Communication/")
        else None
    )
    identifier = message_id(found)
    if identifier is not None:
        query = parse_criteria(
            "Communication",
            [("identifier", f"{codes.MESSAGE_ID}|{identifier}"), ("_tag", f"{codes.MAILBOX}|{mailbox}")],
        )
        ids = await tx.find_ids(query, 1)
        if ids:
            return {"reference": f"Communication/{ids[0]}"}
    return {"reference": reference}


async def _copies(tx: Transaction, body: dict, mailbox: str) -> list[tuple[str, dict]]:
    identifier = message_id(body)
    if identifier is None:
        return []
    query = parse_criteria(
        "Communication", [("identifier", f"{codes.MESSAGE_ID}|{identifier}"), ("_tag", f"{codes.MAILBOX}|{mailbox}")]
    )
    out = []
    for found_id in await tx.find_ids(query, 10):
        found = body_of(await tx.read_current("Communication", found_id))
        if found is not None:
            out.append((found_id, found))
    return out


async def _receipt(tx: Transaction, message: dict, received: str) -> None:
    for id_, sender_copy in await _copies(tx, message, codes.PROFESSIONAL_COPY):
        if not sender_copy.get("received"):
            await update_in(tx, "Communication", id_, {**sender_copy, "received": received}, None)


async def _close_other_copy(tx: Transaction, root: dict, extension: dict | None) -> None:
    for id_, patient_copy in await _copies(tx, root, codes.PATIENT_COPY):
        if not closed(patient_copy) and extension is not None:
            extensions = [*patient_copy.get("extension", []), extension]
            await update_in(tx, "Communication", id_, {**patient_copy, "extension": extensions}, None)


async def _drop_attachments(tx: Transaction, id_: str) -> None:
    query = parse_criteria("Binary", [("securitycontext", f"Communication/{id_}")])
    for binary_id in await tx.find_ids(query, 1000):
        await delete_in(tx, "Binary", binary_id)


def address(ins: str) -> str:
    """The patient's messaging address, derived from their INS: nothing to create at activation."""
    return f"{ins}@{codes.ADDRESS_DOMAIN}"

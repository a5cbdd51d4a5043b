"""The mailbox actions (docs/messaging.md): the trash, closing a thread, filing an attachment into the record,
the patient's address book. Each is an update or a create through the caller's own rights (the policy's write
checks in ``messages.py`` decide what may change); read marks are the notification centre's ``$mark-read`` /
``$mark-unread`` (``notify/centre.py``).
"""

from __future__ import annotations

from dataclasses import replace

import orjson

from ..errors import FhirError, bad_request, unprocessable
from ..instant import new_id, now_us, to_instant
from ..interactions import Context, crud
from ..interactions.access import UNRESTRICTED
from ..policy.access import require_patient_side
from ..record.documents import dmp_class
from ..search.criteria import parse_criteria
from ..store import ResourceVersion
from ..store.query import Search
from . import codes, messages

_TRASH = (codes.MAILBOX, codes.TRASH)
FILED = "filed"  # meta.tag mes-mailbox#filed: a document the patient filed from a message (theirs to delete)


def _principal(ctx: Context):
    return getattr(ctx.access, "principal", None)


async def _message(ctx: Context, id_: str) -> tuple[ResourceVersion, dict]:
    found = await crud.read(ctx, "Communication", id_)
    body = orjson.loads(found.body or b"{}")
    if not messages.is_message(body):
        raise unprocessable(f"Communication/{id_} is not a message of the messaging")
    return found, body


async def trash(ctx: Context, id_: str, into: bool) -> ResourceVersion:
    """``$trash`` / ``$restore``: the patient's copy goes to the trash (a tag) or back to its folder."""
    require_patient_side(ctx.access, "moves a message to the trash")
    found, body = await _message(ctx, id_)
    tags = [t for t in (body.get("meta") or {}).get("tag") or () if (t.get("system"), t.get("code")) != _TRASH]
    if into:
        tags.append({"system": codes.MAILBOX, "code": codes.TRASH})
    body.setdefault("meta", {})["tag"] = tags
    return (await crud.update(ctx, "Communication", id_, body, if_match=f'W/"{found.version}"')).version


async def close_thread(ctx: Context, id_: str) -> ResourceVersion:
    """``$close-thread``: the professional who started a thread closes it to the patient's replies."""
    found, body = await _message(ctx, id_)
    if not messages.closed(body):
        extension = {"url": codes.REPLIES_CLOSED, "valueDateTime": to_instant(now_us())}
        body["extension"] = [*body.get("extension", []), extension]
    return (await crud.update(ctx, "Communication", id_, body, if_match=f'W/"{found.version}"')).version


async def file_attachment(ctx: Context, id_: str, parameters: object) -> ResourceVersion:
    """``$file-attachment``: an attachment of a message the patient received becomes a document of their record:
    the professional who sent it is its author, the patient side the one who filed it (``mes-filed-from-message``),
    with the DMP type the patient chose (its class follows, ASS_X16)."""
    require_patient_side(ctx.access, "files an attachment into the record")
    ctx.access.require("DocumentReference", "c")
    _, message = await _message(ctx, id_)
    if messages.tag(message, codes.MAILBOX) != codes.PATIENT_COPY or not messages.ref(message.get("sender")).startswith(
        ("PractitionerRole/", "Practitioner/", "Organization/")
    ):
        raise unprocessable("Only an attachment of a message a professional sent to the patient is filed")
    index, type_coding, title = _file_parameters(parameters)
    attachments = [p["contentAttachment"] for p in message.get("payload") or () if "contentAttachment" in p]
    if index >= len(attachments):
        raise unprocessable(f"The message has {len(attachments)} attachment(s): 'attachment' {index} is not one")
    attachment = dict(attachments[index])
    data, content_type = attachment.get("data"), attachment.get("contentType")
    if data is None:
        binary = orjson.loads(
            (await crud.read(ctx, "Binary", (attachment.get("url") or "/").split("/", 1)[1])).body or b"{}"
        )
        data, content_type = binary.get("data"), content_type or binary.get("contentType")
    class_code = dmp_class(type_coding)
    if class_code is None:
        raise unprocessable("'type' is a DMP document type (JDV_J07-XdsTypeCode-CISIS)", expression=("type",))
    principal = _principal(ctx)
    filer = message["subject"]["reference"]  # the patient, or the representative the token names
    if principal is not None and principal.fhir_user_type in ("Patient", "RelatedPerson"):
        filer = principal.fhir_user
    document_id, binary_id = new_id(), new_id()
    document = {
        "resourceType": "DocumentReference",
        "meta": {"tag": [{"system": codes.MAILBOX, "code": FILED}]},
        "extension": [
            {
                "url": codes.FILED_FROM,
                "extension": [
                    {"url": "filedBy", "valueReference": {"reference": filer}},
                    {"url": "message", "valueReference": {"reference": f"Communication/{id_}"}},
                ],
            }
        ],
        "status": "current",
        "type": {"coding": [type_coding]},
        "category": [{"coding": [class_code]}],
        "subject": message["subject"],
        "date": message.get("sent") or to_instant(now_us()),
        "author": [message["sender"]],
        **({"description": description} if (description := title or (message.get("topic") or {}).get("text")) else {}),
        "content": [
            {
                "attachment": {
                    "contentType": content_type,
                    "url": f"Binary/{binary_id}",
                    **({"title": attachment["title"]} if attachment.get("title") else {}),
                }
            }
        ],
        "context": {"related": [{"reference": f"Communication/{id_}"}]},
    }
    binary = {
        "resourceType": "Binary",
        "contentType": content_type,
        "securityContext": {"reference": f"DocumentReference/{document_id}"},
        "data": data,
    }

    async def work(tx):
        await crud.create_in(tx, "Binary", binary, id_=binary_id)
        return await crud.create_in(tx, "DocumentReference", document, id_=document_id)

    # The server writes it (a patient's own deposit would have to name the patient as author): what the caller
    # may do was checked above — read the message, create documents in this record.
    server = replace(ctx, access=UNRESTRICTED)
    return (await crud._transact(server, work)).version


def _file_parameters(parameters: object) -> tuple[int, dict, str | None]:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise bad_request("$file-attachment takes a Parameters resource (attachment, type, title)")
    parts = {p.get("name"): p for p in parameters.get("parameter") or () if isinstance(p, dict)}
    index = (parts.get("attachment") or {}).get("valueInteger", 0)
    coding = (parts.get("type") or {}).get("valueCoding")
    if not isinstance(index, int) or index < 0:
        raise bad_request("'attachment' is the attachment's position among the message's attachments (from 0)")
    if not isinstance(coding, dict):
        raise bad_request("'type' (valueCoding) is the document type to file it under (a DMP type, JDV_J07)")
    title = (parts.get("title") or {}).get("valueString")
    return index, coding, title if isinstance(title, str) else None


async def contacts(ctx: Context, patient: str) -> list[dict]:
    """The patient's address book: the professionals and organisations who wrote to the patient (the senders
    of the patient's copies), but those whose messaging mailbox is on the directory's red list."""
    await crud.read(ctx, "Patient", patient)  # a record the caller cannot see is unknown (404)
    query = parse_criteria(
        "Communication",
        [("subject", f"Patient/{patient}"), ("_tag", f"{codes.MAILBOX}|{codes.PATIENT_COPY}")],
    )
    copies = await ctx.store.search(Search("Communication", (*query.where, *ctx.constraints("Communication"))), 10_000)
    senders: dict[str, None] = {}
    for found in copies:
        sender = messages.ref(orjson.loads(found.body or b"{}").get("sender"))
        if sender.startswith(("PractitionerRole/", "Practitioner/", "Organization/")):
            senders[sender] = None
    out = []
    for reference in senders:
        type_, _, id_ = reference.partition("/")
        try:
            found = await crud.read(ctx, type_, id_)
        except FhirError:
            continue
        body = orjson.loads(found.body or b"{}")
        if not _red_listed(body):
            out.append(body)
    return out


def _red_listed(resource: dict) -> bool:
    for telecom in resource.get("telecom") or ():
        for extension in telecom.get("extension") or () if isinstance(telecom, dict) else ():
            if extension.get("url") != codes.MSS_METADATA:
                continue
            for sub in extension.get("extension") or ():
                if sub.get("url") == "listeRouge" and sub.get("valueBoolean") is True:
                    return True
    return False

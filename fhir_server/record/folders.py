"""The patient's folders: a ``List`` coded ``MHDlistTypes#folder`` (IHE MHD, the PDSm folder profile) whose
``subject`` is the patient, ``title`` the folder's name and ``entry.item`` the DocumentReferences it holds.

The patient side creates, renames (PUT with a new ``title``) and deletes them; a professional writes none
(403). Each item is a document of the folder's patient, listed once, and in at most one folder of the patient
(422). ``DocumentReference/[id]/$move`` moves a document between folders in one unit of work.
"""

from __future__ import annotations

import orjson

from ..errors import forbidden, unprocessable
from ..interactions import Context, crud
from ..search.parameters import parse
from ..store import ResourceVersion, Transaction

MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
FOLDER = "folder"


def is_folder(list_: dict | None) -> bool:
    return any(
        c.get("system") == MHD_LIST_TYPES and c.get("code") == FOLDER
        for c in ((list_ or {}).get("code") or {}).get("coding") or ()
    )


async def check(professional: bool, tx: Transaction, version: ResourceVersion) -> None:
    """Called for every List write (deletions too) under the policy."""
    before = _body(await tx.read_current("List", version.id)) if version.version > 1 else None
    after = _body(version)
    if not (is_folder(before) or is_folder(after)):
        return
    if professional:
        raise forbidden("A patient's folders are the patient's: a professional creates, changes or deletes none")
    if after is None:
        return
    if is_folder(before) and (before or {}).get("subject") != after.get("subject"):
        raise unprocessable("A folder stays the folder of its patient", expression=("List.subject",))
    await _items(tx, version.id, after)


async def _items(tx: Transaction, folder_id: str, folder: dict) -> None:
    subject = (folder.get("subject") or {}).get("reference") or ""
    if not subject.startswith("Patient/"):
        raise unprocessable("A folder's subject is the patient", expression=("List.subject",))
    seen: set[str] = set()
    for n, entry in enumerate(folder.get("entry") or ()):
        ref = (entry.get("item") or {}).get("reference") or ""
        where = (f"List.entry[{n}].item",)
        document = (
            _body(await tx.read_current("DocumentReference", ref.split("/", 1)[1]))
            if ref.startswith("DocumentReference/")
            else None
        )
        if document is None or (document.get("subject") or {}).get("reference") != subject:
            raise unprocessable("A folder holds DocumentReferences of its patient", expression=where)
        if ref in seen:
            raise unprocessable(f"{ref} is listed twice", expression=where)
        seen.add(ref)
        others = [i for i in await tx.find_ids(holding(subject, ref), 2) if i != folder_id]
        if others:
            raise unprocessable(
                f"{ref} is already in folder List/{others[0]}: a document is in one folder at most "
                "(DocumentReference/[id]/$move moves it)",
                expression=where,
            )


def holding(subject: str, document: str):
    """The patient's folders listing ``document``."""
    return parse("List", [("subject", subject), ("code", f"{MHD_LIST_TYPES}|{FOLDER}"), ("item", document)])


async def move(ctx: Context, document_id: str, target: str | None) -> list[str]:
    """Take the document out of the folder that holds it and put it in ``target`` (``List/[id]``; None: in no
    folder), in one unit of work through the caller's guard; the folders written, in order."""
    ref = f"DocumentReference/{document_id}"

    async def work(tx: Transaction) -> list[str]:
        found = await crud.read_in(tx, "DocumentReference", document_id)  # 404 when the caller cannot see it
        subject = (orjson.loads(found.body or b"{}").get("subject") or {}).get("reference") or ""
        written = []
        for folder_id in await tx.find_ids(holding(subject, ref), 10):
            if f"List/{folder_id}" == target:
                return [target]  # already there
            folder = orjson.loads((await crud.read_in(tx, "List", folder_id)).body or b"{}")
            kept = [e for e in folder.get("entry") or () if (e.get("item") or {}).get("reference") != ref]
            folder.pop("entry", None)
            if kept:  # FHIR JSON has no empty arrays: a folder without documents has no entry
                folder["entry"] = kept
            await crud.update_in(tx, "List", folder_id, folder, None)
            written.append(f"List/{folder_id}")
        if target is not None:
            folder = orjson.loads((await crud.read_in(tx, "List", target.split("/", 1)[1])).body or b"{}")
            if not is_folder(folder):
                raise unprocessable(f"{target} is not a folder (List.code {MHD_LIST_TYPES}|{FOLDER})")
            folder.setdefault("entry", []).append({"item": {"reference": ref}})
            await crud.update_in(tx, "List", target.split("/", 1)[1], folder, None)
            written.append(target)
        return written

    return await crud._transact(ctx, work)


def _body(version: ResourceVersion | None) -> dict | None:
    if version is None or version.body is None or version.deleted:
        return None
    return orjson.loads(version.body)

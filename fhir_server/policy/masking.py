"""``Patient/[id]/$mask-documents``: the patient masks (or unmasks) every document of their record at once.

Each document the caller may change gets (or loses) the ``MASQUE_PS`` label through an ordinary update inside
one unit of work, so the access guard's rules apply to each (the patient side changes nothing else of a
professional's document) and the whole operation is all or nothing.
"""

from __future__ import annotations

from ..errors import forbidden, too_large
from ..fhirjson import loads
from ..interactions import Context, crud
from ..search.parameters import parse
from ..store import Transaction
from ..store.query import Search
from . import codes
from .deposits import MASQUE_PS_LABEL

#: Most documents one call masks (a record beyond that is masked by several calls of a narrower search).
MAX_DOCUMENTS = 5_000


async def mask_documents(ctx: Context, patient_id: str, mask: bool) -> int:
    """The number of documents changed."""
    if getattr(ctx.access, "professional", None) is not None:
        raise forbidden("Masking every document at once is the patient's choice (or their representative's)")
    ctx.access.require("DocumentReference", "u")
    where = parse("DocumentReference", [("subject", f"Patient/{patient_id}")]).where

    async def work(tx: Transaction) -> int:
        ids = await tx.find_ids(Search("DocumentReference", where), MAX_DOCUMENTS + 1)
        if len(ids) > MAX_DOCUMENTS:
            raise too_large(f"More than {MAX_DOCUMENTS} documents: mask them in several calls")
        changed = 0
        for id_ in ids:
            current = await tx.read_current("DocumentReference", id_)
            if current is None or current.body is None:
                continue
            document = loads(current.body, max_depth=1 << 20)
            labels = [label for label in document.get("securityLabel") or () if not _is_masque_ps(label)]
            if mask:
                labels.append(MASQUE_PS_LABEL)
            if labels == (document.get("securityLabel") or []):
                continue
            if labels:
                document["securityLabel"] = labels
            else:
                document.pop("securityLabel", None)
            await crud.update_in(tx, "DocumentReference", id_, document, current.version)
            changed += 1
        return changed

    return await crud._transact(ctx, work)


def _is_masque_ps(label: dict) -> bool:
    return any(c.get("code") == codes.MASQUE_PS for c in label.get("coding") or ())

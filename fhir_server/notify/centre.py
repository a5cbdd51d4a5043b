"""The notification centre's actions: ``Communication/[id]/$mark-read`` and ``$mark-unread``.

A notification is read when its ``received`` is set (the time the recipient opened it); unread ones are
``Communication?recipient=Patient/[id]&received:missing=true``. Only a recipient marks it (the patient, the
representative acting for them, the professional it was sent to), through an update held to their rights, so
a token that may only read cannot. Deleting is the plain ``DELETE``.
"""

from __future__ import annotations

from ..errors import forbidden
from ..fhirjson import loads
from ..instant import now_us, to_instant
from ..interactions import Context, crud
from ..store import ResourceVersion


def _caller_refs(ctx: Context) -> set[str] | None:
    """Whom the caller speaks for; None: no caller to check (auth off, internal use)."""
    principal = getattr(ctx.access, "principal", None)
    if principal is None:
        return None
    refs = {f"Patient/{p}" for p in (principal.patient, *principal.managed_patients) if p}
    if principal.fhir_user:
        refs.add(principal.fhir_user)
    if principal.professional is not None:
        refs.update(principal.professional.refs_with_organization)  # a message to their organisation too
    return refs


async def mark(ctx: Context, id_: str, read: bool) -> ResourceVersion:
    found = await crud.read(ctx, "Communication", id_)
    body = loads(found.body or b"{}")
    recipients = {r.get("reference") for r in body.get("recipient") or () if isinstance(r, dict)}
    caller = _caller_refs(ctx)
    if caller is not None and not caller & recipients:
        raise forbidden("Only a recipient of this Communication marks it read or unread")
    if read:
        body.setdefault("received", to_instant(now_us()))
    else:
        body.pop("received", None)
    result = await crud.update(ctx, "Communication", id_, body, if_match=f'W/"{found.version}"')
    return result.version

"""No data for a space that does not exist: what is written into a patient's record while their space is
pending, opposed or closed is refused with 422, nothing stored (the DMP's answer to a deposit for a closed
or refused DMP). Patients outside the lifecycle (no ``mes-space`` extension) take data as before.
"""

from __future__ import annotations

from ..errors import unprocessable
from ..fhirjson import loads
from ..search.patients import patients_named_by
from ..space import status
from ..space.clock import CLOCK
from ..store import ResourceVersion, Transaction
from .rules import owner_param

#: What the refusal says, per state (French first: the DMP's wording, for professional software's users).
REFUSALS = {
    status.PENDING: "L'espace santé de ce patient n'est pas encore créé (the patient's space is not created yet: "
    "the opposition period is running)",
    status.OPPOSED: "Le patient s'est opposé à la création de son espace santé (the patient objected to their "
    "space: nothing can be stored for them)",
    status.CLOSED: "L'espace santé de ce patient est fermé (the patient's space is closed: nothing can be stored "
    "in it)",
}


def owners(version: ResourceVersion) -> tuple[str, ...]:
    """The Patient ids whose record ``version`` goes into (its owner reference; a Binary's securityContext)."""
    if version.deleted or version.type == "Patient" or version.body is None:
        return ()
    param = "securitycontext" if version.type == "Binary" else owner_param(version.type)
    if param is None:
        return ()
    return tuple(sorted(patients_named_by(loads(version.body, max_depth=1 << 20), param)))


async def refuse_closed(tx: Transaction, version: ResourceVersion) -> None:
    """422 when the space of the patient ``version`` belongs to does not exist (now, by the lifecycle clock)."""
    for patient_id in owners(version):
        stored = await tx.read_current("Patient", patient_id)
        if stored is None or stored.deleted or stored.body is None:
            continue  # an unknown subject is the reference checks' business, not this one's
        space = status.read(loads(stored.body, max_depth=1 << 20))
        now = space.effective(CLOCK.now()) if space is not None else None
        if now is not None and not now.open:
            raise unprocessable(REFUSALS[now.status])

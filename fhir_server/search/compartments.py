"""Compartments (http://hl7.org/fhir/R4/compartmentdefinition.html): which parameters link a type to
a compartment owner, as a search condition. The same condition confines ``patient/`` tokens later."""

from __future__ import annotations

import json
from functools import lru_cache

from ..errors import bad_request
from ..store.query import AnyOf, Condition, Entry, IdIn
from . import registry


@lru_cache(maxsize=1)
def definitions() -> dict[str, dict[str, list[str]]]:
    with open(registry.CAPABILITY_DIR / "compartments-r4.json", "rb") as f:
        return json.load(f)


def compartment_condition(compartment: str, owner_id: str, type_: str) -> Condition:
    """Resources of ``type_`` in the compartment of ``compartment/owner_id``."""
    table = definitions().get(compartment)
    if table is None:
        raise bad_request(f"{compartment} is not a compartment (known: {', '.join(sorted(definitions()))})")
    params = table.get(type_)
    conditions: list[Condition] = []
    if params:
        ref = f"{compartment}/{owner_id}"
        conditions += [Entry(p, value=ref) for p in params if p != "{def}"]
    if type_ == compartment:  # the owner is in its own compartment
        conditions.append(IdIn((owner_id,)))
    if not conditions:
        raise bad_request(f"{type_} resources are not part of the {compartment} compartment")
    return conditions[0] if len(conditions) == 1 else AnyOf(tuple(conditions))

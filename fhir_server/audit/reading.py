"""Reading what an AuditEvent says (the shapes ``events.py`` builds): who acted, as which profession, in which
access mode, about which patients and resources. Shared by the activity history and the notifications."""

from __future__ import annotations

from ..policy.codes import ID_NAT_PS, TRE_G15, TRE_R248


def requestor(event: dict) -> dict | None:
    """The person who acted (the human requestor agent), if any."""
    for agent in event.get("agent") or ():
        if agent.get("requestor") and (agent.get("type") or {}).get("coding", [{}])[0].get("code") == "humanuser":
            return agent
    return None


def profession(agent: dict | None) -> str | None:
    """The TRE_G15 profession of a professional's agent."""
    for concept in (agent or {}).get("role") or ():
        for coding in concept.get("coding") or ():
            if coding.get("system") == TRE_G15:
                return coding.get("code")
    return None


def id_nat_ps(agent: dict | None) -> str | None:
    identifier = (agent or {}).get("who", {}).get("identifier") or {}
    return identifier.get("value") if identifier.get("system") == ID_NAT_PS else None


def access_mode(event: dict) -> str:
    """The TRE_R248 access mode of the event (``normal`` when none is said)."""
    for concept in event.get("purposeOfEvent") or ():
        for coding in concept.get("coding") or ():
            if coding.get("system") == TRE_R248:
                return coding.get("code", "normal")
    return "normal"


def patients(event: dict) -> list[str]:
    """The ids of the patients the event names (entities of role 1)."""
    return [
        e["what"]["reference"][8:]
        for e in event.get("entity") or ()
        if e.get("role", {}).get("code") == "1" and e.get("what", {}).get("reference", "").startswith("Patient/")
    ]


def touched(event: dict) -> list[str]:
    """Every entity reference (patients and resources)."""
    return [e["what"]["reference"] for e in event.get("entity") or () if "reference" in e.get("what", {})]

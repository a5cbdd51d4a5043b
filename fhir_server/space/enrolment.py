"""Provisional enrolment codes, the person's card check and the throttle against guessing
(docs/lifecycle.md, "Enrolment codes and the notification").

Everything lives in the authorization server's state (``AuthState``), never in the FHIR store, and never in
clear:

* the code (kind ``mes-enrolment``, keyed by Patient id): its SHA-256 salted with the Patient id — 12
  characters of a 31-letter alphabet are 59 bits of randomness, too many to guess online and costly offline;
  single use (``take_temp``), expires after ``enrolment_code_days``; a new code replaces the previous one;
* the Vitale card serial number (kind ``mes-identity``, keyed by Patient id, a very long expiry): a scrypt
  hash, as for passwords (a serial number has little randomness: a fast hash would give it away);
* failure counters per NIR (hashed in the key) and per client address: past the limits within ``WINDOW``,
  every attempt is refused (429) whatever it carries, for a known NIR or not.

The state is synchronous: async code runs these methods in a worker thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from ..auth.passwords import hash_password, verify_password
from ..auth.state import AuthState
from .clock import CLOCK

#: No 0/O, 1/I/L, no lower case: read from a letter or an email and typed without ambiguity.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 12  # 12 * log2(31) ≈ 59 bits
GROUP = 4  # shown as XXXX-XXXX-XXXX
CODE_KIND = "mes-enrolment"
IDENTITY_KIND = "mes-identity"
IDENTITY_SECONDS = 100 * 366 * 86400  # the card's hash lasts as long as the Patient (rewritten by each import)
WINDOW = 3600  # seconds a failure counts
NIR_LIMIT = 5  # failures for one NIR within the window: enough for typing mistakes, far too few to guess
IP_LIMIT = 20  # failures from one address (several people may share it)
USERNAME_HOLD = 86400  # a username being taken by an activation is held this long (then the account exists)


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + GROUP] for i in range(0, CODE_LENGTH, GROUP))


def normalise_code(code: str) -> str:
    """What the person typed, without separators and case (``abcd efgh-jkmn`` = ``ABCD-EFGH-JKMN``)."""
    return "".join(c for c in code.upper() if c.isalnum())


def code_hash(patient_id: str, code: str) -> str:
    return hashlib.sha256(f"{patient_id}:{normalise_code(code)}".encode()).hexdigest()


def nir_key(nir: str) -> str:
    """The counter key of a NIR: a hash, so the state names nobody."""
    return "mes-space:nir:" + hashlib.sha256(nir.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Enrolment:
    """The enrolment codes, card hashes and throttle of one auth state (cheap to build per request)."""

    state: AuthState
    code_days: int

    # --- codes -------------------------------------------------------------------------------------
    def issue(self, patient_id: str) -> str:
        """A new code for this Patient, replacing (revoking) any previous one; the only time it is in clear."""
        code = new_code()
        now = CLOCK.timestamp()
        doc = {"hash": code_hash(patient_id, code), "issued": now}
        self.state.put_temp(CODE_KIND, patient_id, doc, now + self.code_days * 86400)
        return code

    def expires(self, patient_id: str) -> float | None:
        doc = self.state.get_temp(CODE_KIND, patient_id, CLOCK.timestamp())
        return doc["issued"] + self.code_days * 86400 if doc else None

    def check(self, patient_id: str | None, code: str) -> bool:
        """Is ``code`` this Patient's live, unused code? The same work whether there is one or not."""
        doc = self.state.get_temp(CODE_KIND, patient_id, CLOCK.timestamp()) if patient_id else None
        expected = doc["hash"] if doc else "0" * 64
        return hmac.compare_digest(code_hash(patient_id or "", code), expected) and doc is not None

    def consume(self, patient_id: str, code: str) -> bool:
        """Use the code once: True for the first use of a matching code only (a race: one wins)."""
        if not self.check(patient_id, code):
            return False
        doc, first = self.state.take_temp(CODE_KIND, patient_id, CLOCK.timestamp())
        if not first or doc is None or not hmac.compare_digest(doc["hash"], code_hash(patient_id, code)):
            return False
        self.state.delete_temp(CODE_KIND, patient_id)  # used: gone (get_temp would still show it)
        return True

    def revoke(self, patient_id: str) -> None:
        self.state.delete_temp(CODE_KIND, patient_id)

    # --- the Vitale card serial number --------------------------------------------------------------
    def remember_card(self, patient_id: str, serial: str) -> bool:
        """Keep the hash of the card's serial number; False when it is the one already kept (no write)."""
        doc = self.state.get_temp(IDENTITY_KIND, patient_id, CLOCK.timestamp())
        if doc is not None and verify_password(serial, doc.get("vitale")):
            return False
        self.state.put_temp(IDENTITY_KIND, patient_id, {"vitale": hash_password(serial)},
                            CLOCK.timestamp() + IDENTITY_SECONDS)  # fmt: skip
        return True

    def card_matches(self, patient_id: str | None, serial: str) -> bool:
        """The same scrypt work for an unknown person, a person without a card and a wrong serial."""
        doc = self.state.get_temp(IDENTITY_KIND, patient_id, CLOCK.timestamp()) if patient_id else None
        return verify_password(serial, (doc or {}).get("vitale"))

    # --- the throttle ---------------------------------------------------------------------------------
    def _counters(self, nir: str, address: str | None) -> list[tuple[str, int]]:
        counters = [(nir_key(nir), NIR_LIMIT)]
        if address:
            counters.append((f"mes-space:ip:{address}", IP_LIMIT))
        return counters

    def locked(self, nir: str, address: str | None) -> bool:
        now = CLOCK.timestamp()
        return any(self.state.count(key, now) >= limit for key, limit in self._counters(nir, address))

    def failure(self, nir: str, address: str | None) -> None:
        now = CLOCK.timestamp()
        for key, _ in self._counters(nir, address):
            self.state.increment(key, now + WINDOW, now)

    def success(self, nir: str) -> None:
        self.state.reset(nir_key(nir))

    # --- usernames ---------------------------------------------------------------------------------------
    def hold_username(self, username: str) -> bool:
        """Reserve a username atomically (two activations racing for one name: one wins); False if taken."""
        if self.state.get_user(username) is not None:
            return False
        now = CLOCK.timestamp()
        return self.state.remember_assertion(f"mes-space:username:{username}", now + USERNAME_HOLD, now)

"""The server's signing keys: RSA 2048, RS256, generated at first start and kept in the auth state.

RS256 (not RS384) signs our access tokens and id_tokens: OpenID Connect makes RS256 the one algorithm
every relying party verifies, and SMART leaves the choice to the server (RS384/ES384 are what *client*
assertions must use, see ``assertions``).

Rotation (``fhir-server keys rotate``) adds a key that is *published first and used later*
(``KEY_PROPAGATION`` seconds on), so every worker process has reloaded it from the state before any token
signed with it reaches them. The previous key stays published until the last token it signed has expired.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from joserfc.jwk import RSAKey

from .state import AuthState

ALG = "RS256"
KEY_PROPAGATION = 60  # seconds between publishing a new key and signing with it
RELOAD_INTERVAL = 30  # seconds between reloads of the key list from the state (≤ KEY_PROPAGATION / 2)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    seq: int
    key: RSAKey
    activates: float
    retired: float | None  # when the next key took over: tokens signed by this one expire by retired + lifetime


def _generate(seq: int, now: float, activates: float) -> dict:
    key = RSAKey.generate_key(2048, parameters={"alg": ALG, "use": "sig"}, private=True)
    kid = key.thumbprint()  # RFC 7638: stable, derived from the public key
    jwk = {**key.as_dict(private=True), "kid": kid}
    return {"kid": kid, "seq": seq, "jwk": jwk, "created": now, "activates": activates, "retired": None}


class KeyRing:
    """The published keys, in memory for CPU-only verification, reloaded from the state periodically."""

    def __init__(self, state: AuthState, retention: float) -> None:
        self._state = state
        self._retention = retention  # longest lifetime of a token we sign, plus leeway
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def load(self, now: float | None = None) -> None:
        """Read the keys; create the first one if there is none (a concurrent first start keeps one)."""
        now = time.time() if now is None else now
        docs = self._state.list_keys()
        if not docs:
            self._state.add_key(_generate(0, now, now))  # False if another process won: fine, reload
            docs = self._state.list_keys()
        keys = {}
        for doc in docs:
            keys[doc["kid"]] = SigningKey(
                doc["kid"], doc["seq"], RSAKey.import_key(doc["jwk"]), doc["activates"], doc.get("retired")
            )
        with self._lock:
            self._keys, self._loaded_at = keys, now

    def reload_if_stale(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self._loaded_at >= RELOAD_INTERVAL:
            self.load(now)

    def _published(self, now: float) -> list[SigningKey]:
        live = [k for k in self._keys.values() if k.retired is None or k.retired + self._retention > now]
        return sorted(live, key=lambda k: k.seq, reverse=True)

    def current(self, now: float | None = None) -> SigningKey:
        now = time.time() if now is None else now
        active = [k for k in self._published(now) if k.activates <= now]
        if not active:
            raise RuntimeError("no active signing key (call load() first)")
        return active[0]

    def public_key(self, kid: str) -> RSAKey | None:
        found = self._keys.get(kid)
        return found.key if found is not None else None

    def jwks(self, now: float | None = None) -> dict:
        """The JWK Set to publish: current, upcoming and recently retired public keys."""
        now = time.time() if now is None else now
        return {"keys": [k.key.as_dict(private=False) | {"kid": k.kid} for k in self._published(now)]}

    def rotate(self, now: float | None = None, delay: float = KEY_PROPAGATION) -> str:
        """Add a new key that signs from ``now + delay``; retire the others then; drop long-retired ones."""
        now = time.time() if now is None else now
        self.load(now)
        docs = self._state.list_keys()
        new = _generate(max(d["seq"] for d in docs) + 1, now, now + delay)
        if not self._state.add_key(new):
            raise RuntimeError("another key rotation ran at the same time: try again")
        for doc in docs:
            retired = doc.get("retired")
            if retired is None:
                self._state.update_key(doc["kid"], {"retired": new["activates"]})
            elif retired + self._retention <= now:
                self._state.delete_key(doc["kid"])
        self.load(now)
        return new["kid"]

"""TOTP second factor (RFC 6238: HMAC-SHA1, 30-second steps, 6 digits), the authenticator-app default."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote, urlencode

STEP = 30
DIGITS = 6
WINDOW = 1  # accept the previous and next step too: clocks drift and people type slowly


def new_secret() -> str:
    """A 160-bit secret, base32 (what authenticator apps take)."""
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def _hotp(secret: str, counter: int) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def code_at(secret: str, when: float | None = None) -> str:
    return _hotp(secret, int((time.time() if when is None else when) // STEP))


def matching_step(secret: str, code: str, when: float | None = None) -> int | None:
    """The time step a code belongs to (for replay protection), or None if it matches none in the window."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    now_step = int((time.time() if when is None else when) // STEP)
    for step in range(now_step - WINDOW, now_step + WINDOW + 1):
        if hmac.compare_digest(_hotp(secret, step), code):
            return step
    return None


def provisioning_uri(secret: str, username: str, issuer: str = "fhir-server") -> str:
    """``otpauth://`` URI to show as a QR code or paste into an authenticator app."""
    label = quote(f"{issuer}:{username}")
    return f"otpauth://totp/{label}?{urlencode({'secret': secret, 'issuer': issuer, 'digits': DIGITS, 'period': STEP})}"

"""Password hashing with scrypt (memory-hard, in the standard library): ``scrypt$n$r$p$salt$hash``.

The parameters are stored with each hash, so they can be raised later without invalidating old hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# 2**15 * 8 * 128 bytes = 32 MiB per hash, about 0.1 s: costly for a guesser, bearable for a login.
N, R, P = 2**15, 8, 1
_DKLEN = 32
_MAXMEM = 128 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_derive(password, salt, N, R, P))}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check; with ``stored`` None (unknown user) the same work is done, then False."""
    if stored is None:
        _derive(password, b"\0" * 16, N, R, P)  # as slow as a real check: no user enumeration by timing
        return False
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _derive(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, _unb64(expected))


def hash_client_secret(secret: str) -> str:
    """Client secrets are 256-bit random strings: a plain SHA-256 is enough (no dictionary to guess from)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_client_secret(secret: str, stored: str | None) -> bool:
    return stored is not None and hmac.compare_digest(hash_client_secret(secret), stored)

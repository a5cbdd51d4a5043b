"""Login throttling: failed passwords and TOTP codes are counted per username and per client IP.

5 failures for a username, or 20 from one IP address (several people may share it), within
``WINDOW`` seconds of the first → further attempts are refused (HTTP 429) until the window ends.
A successful login clears the username's counter. Counters live in the auth state, so every worker
process (and every server sharing the state) counts together.
"""

from __future__ import annotations

import time

from .state import AuthState

WINDOW = 15 * 60
USER_LIMIT = 5
IP_LIMIT = 20


class LoginThrottle:
    def __init__(self, state: AuthState) -> None:
        self._state = state

    @staticmethod
    def _counters(username: str, ip: str | None) -> list[tuple[str, int]]:
        counters = [(f"login:user:{username.lower()}", USER_LIMIT)]
        if ip:
            counters.append((f"login:ip:{ip}", IP_LIMIT))
        return counters

    def locked(self, username: str, ip: str | None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return any(self._state.count(key, now) >= limit for key, limit in self._counters(username, ip))

    def failure(self, username: str, ip: str | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for key, _ in self._counters(username, ip):
            self._state.increment(key, now + WINDOW, now)

    def success(self, username: str) -> None:
        self._state.reset(self._counters(username, None)[0][0])

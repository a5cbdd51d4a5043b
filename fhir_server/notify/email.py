"""Email over SMTP (aiosmtplib): the sender of the outbox's ``email`` channel.

Payload: ``to`` (an address or a list), ``subject``, ``text`` and optionally ``html`` (sent as an
alternative to the text). The message gets From (``smtp_from``), To, Subject, Date and a Message-ID. A
failure raises ``DeliveryError``, whose message never names a recipient (it is stored in the outbox, may
reach ``Subscription.error`` and the logs): the worker retries, or gives up at once on a permanent one
(the server refused every recipient with a 5xx, a payload that is no email).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from typing import TYPE_CHECKING, Any

import aiosmtplib

from .delivery import DeliveryError

if TYPE_CHECKING:
    from ..config import Settings

TLS_MODES = ("none", "starttls", "tls")
_ADDRESS = re.compile(r"[^\s<>@,;:\"']+@[^\s<>,;:\"']+")


def redact(text: str) -> str:
    """``text`` without the email addresses in it (SMTP replies often quote the recipient)."""
    return _ADDRESS.sub("***", text)


class EmailSender:
    """Sends one outbox email per call (a connection per message: notifications are rare and small)."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        tls: str = "none",
        username: str | None = None,
        password: str | None = None,
        sender: str = "Mon espace santé <no-reply@localhost>",
        timeout: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: none (plain SMTP), starttls (required upgrade), tls (implicit TLS, usually port 465).
        ``tls_context``: certificate checks other than the system's (tests, a private CA)."""
        if tls not in TLS_MODES:
            raise ValueError(f"SMTP TLS mode {tls!r}: accepted {', '.join(TLS_MODES)}")
        self.host, self.port, self.tls = host, port, tls
        self.sender = sender
        self.timeout = timeout
        self._username = username
        self._password = password
        self._tls_context = tls_context
        addresses = getaddresses([sender])
        domain = addresses[0][1].rpartition("@")[2] if addresses and "@" in addresses[0][1] else ""
        self._domain = domain or "localhost"

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailSender | None:
        """The sender the settings describe, or None when ``smtp_host`` is not set (email disabled)."""
        if not settings.smtp_host:
            return None
        password = settings.smtp_password.get_secret_value() if settings.smtp_password is not None else None
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            tls=settings.smtp_tls,
            username=settings.smtp_username,
            password=password,
            sender=settings.smtp_from,
            timeout=settings.smtp_timeout_seconds,
        )

    def message(self, payload: Mapping[str, Any]) -> EmailMessage:
        """The message of an outbox payload; ``DeliveryError`` (permanent) if it is no email."""
        to = payload.get("to")
        recipients = [to] if isinstance(to, str) else list(to) if isinstance(to, list | tuple) else []
        if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
            raise DeliveryError("email payload without a valid recipient", permanent=True)
        text = payload.get("text")
        if not isinstance(text, str):
            raise DeliveryError("email payload without a text body", permanent=True)
        message = EmailMessage()
        try:
            message["From"] = self.sender
            message["To"] = ", ".join(recipients)
            message["Subject"] = str(payload.get("subject") or "")
        except (ValueError, TypeError) as exc:  # a header the email package refuses (e.g. a newline)
            raise DeliveryError(f"email payload refused: {type(exc).__name__}", permanent=True) from exc
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=self._domain)
        message.set_content(text)
        html = payload.get("html")
        if isinstance(html, str) and html:
            message.add_alternative(html, subtype="html")
        return message

    async def __call__(self, payload: Mapping[str, Any]) -> None:
        message = self.message(payload)
        try:
            await aiosmtplib.send(
                message,
                hostname=self.host,
                port=self.port,
                username=self._username,
                password=self._password,
                use_tls=self.tls == "tls",
                start_tls=self.tls == "starttls",  # False: never, even if offered (none)
                tls_context=self._tls_context,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({r.code for r in exc.recipients})
            permanent = all(500 <= code < 600 for code in codes)
            raise DeliveryError(f"SMTP: every recipient refused ({', '.join(map(str, codes))})", permanent) from exc
        except aiosmtplib.SMTPTimeoutError as exc:
            raise DeliveryError(f"SMTP: timed out after {self.timeout:g} s ({self.host}:{self.port})") from exc
        except aiosmtplib.SMTPResponseException as exc:
            what = type(exc).__name__.removeprefix("SMTP")
            raise DeliveryError(f"SMTP {what}: {exc.code} {redact(exc.message)}"[:300]) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            message = f"SMTP {self.host}:{self.port}: {type(exc).__name__}: {redact(str(exc))}"
            raise DeliveryError(message[:300]) from exc

"""Server-rendered pages of the authorization flow: plain HTML forms, no JavaScript, accessible.

Every value is escaped; every form posts back with hidden ``tx`` (the pending authorization), ``csrf``
(the session's synchronizer token), ``step`` and ``lang``. The pages may not be framed (clickjacking a
consent page would grant access) and are never cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from .i18n import text

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1b1b1b}
h1{font-size:1.5rem}label{display:block;margin:.75rem 0 .25rem;font-weight:600}
input[type=text],input[type=password]{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}
fieldset{border:1px solid #888;padding:.5rem 1rem}legend{font-weight:600}
.choice label{display:inline;font-weight:400}.choice{margin:.5rem 0}
button{margin:1rem .5rem 0 0;padding:.6rem 1.2rem;font-size:1rem}
.error{color:#a00;border-left:4px solid #a00;padding-left:.5rem}
"""


@dataclass(frozen=True, slots=True)
class Form:
    """Where a page's form posts and the hidden fields it carries."""

    action: str
    hidden: Mapping[str, str]

    def open(self) -> str:
        fields = "".join(
            f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in self.hidden.items() if v
        )
        return f'<form method="post" action="{escape(self.action)}">{fields}'


def layout(lang: str, title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="{escape(lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def _error(message: str | None) -> str:
    return f'<p class="error" role="alert">{escape(message)}</p>' if message else ""


def login_page(lang: str, form: Form, client: str, *, error: str | None = None, username: str = "") -> str:
    body = (
        f"<p>{escape(text(lang, 'login_intro', client=client))}</p>{_error(error)}{form.open()}"
        f'<label for="username">{escape(text(lang, "username"))}</label>'
        f'<input type="text" id="username" name="username" value="{escape(username)}" autocomplete="username" '
        'autocapitalize="none" spellcheck="false" required autofocus>'
        f'<label for="password">{escape(text(lang, "password"))}</label>'
        '<input type="password" id="password" name="password" autocomplete="current-password" required>'
        f'<button type="submit">{escape(text(lang, "sign_in"))}</button></form>'
    )
    return layout(lang, text(lang, "login_title"), body)


def totp_page(lang: str, form: Form, *, error: str | None = None) -> str:
    body = (
        f"<p>{escape(text(lang, 'totp_intro'))}</p>{_error(error)}{form.open()}"
        f'<label for="code">{escape(text(lang, "totp_code"))}</label>'
        '<input type="text" id="code" name="code" inputmode="numeric" pattern="[0-9 ]*" maxlength="8" '
        'autocomplete="one-time-code" required autofocus>'
        f'<button type="submit">{escape(text(lang, "verify"))}</button></form>'
    )
    return layout(lang, text(lang, "totp_title"), body)


def picker_page(
    lang: str, form: Form, client: str, options: Sequence[tuple[str, str]] | None, *, error: str | None = None
) -> str:
    """A radio list of the records the user manages, or (``options`` None) a Patient id field."""
    intro = escape(text(lang, "picker_intro", client=client))
    if options is None:
        choice = (
            f'<label for="patient">{escape(text(lang, "picker_id"))}</label>'
            '<input type="text" id="patient" name="patient" pattern="[A-Za-z0-9.\\-]{1,64}" required autofocus>'
        )
    else:
        radios = "".join(
            f'<div class="choice"><input type="radio" id="p{i}" name="patient" value="{escape(pid)}"'
            f'{" checked" if i == 0 else ""} required> <label for="p{i}">{escape(label)}</label></div>'
            for i, (pid, label) in enumerate(options)
        )
        choice = f"<fieldset><legend>{intro}</legend>{radios}</fieldset>"
        intro = ""
    body = (
        f"{f'<p>{intro}</p>' if intro else ''}{_error(error)}{form.open()}{choice}"
        f'<button type="submit">{escape(text(lang, "continue"))}</button></form>'
    )
    return layout(lang, text(lang, "picker_title"), body)


def consent_page(
    lang: str, form: Form, client: str, items: Sequence[tuple[str, str, bool]], patient: str | None
) -> str:
    """``items``: (scope, plain words, mandatory). Mandatory ones are shown checked and disabled."""
    rows = []
    for i, (scope, words, mandatory) in enumerate(items):
        state = ' checked disabled aria-describedby="required"' if mandatory else " checked"
        note = f" <small>{escape(text(lang, 'required'))}</small>" if mandatory else ""
        rows.append(
            f'<div class="choice"><input type="checkbox" id="s{i}" name="scope" value="{escape(scope)}"{state}> '
            f'<label for="s{i}">{escape(words)}</label>{note} <code>{escape(scope)}</code></div>'
        )
    about = f"<p>{escape(text(lang, 'consent_patient', id=patient))}</p>" if patient else ""
    body = (
        f"{about}{form.open()}<fieldset><legend>{escape(text(lang, 'consent_intro', client=client))}</legend>"
        f'<p id="required">{escape(text(lang, "consent_optional"))}</p>{"".join(rows)}</fieldset>'
        f'<button type="submit" name="action" value="allow">{escape(text(lang, "allow"))}</button>'
        f'<button type="submit" name="action" value="deny">{escape(text(lang, "deny"))}</button></form>'
    )
    return layout(lang, text(lang, "consent_title"), body)


def message_page(lang: str, title: str, message: str, detail: str | None = None) -> str:
    extra = f"<p><code>{escape(detail)}</code></p>" if detail else ""
    return layout(lang, title, f'<p role="alert">{escape(message)}</p>{extra}')


def logout_page(lang: str, form: Form) -> str:
    body = f'{form.open()}<button type="submit">{escape(text(lang, "logout_title"))}</button></form>'
    return layout(lang, text(lang, "logout_title"), body)

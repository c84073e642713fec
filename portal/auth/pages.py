"""The pages a person sees while a client connects: log in, consent, and errors.

Server-rendered HTML with no external assets and no script. Every value is escaped.
Every page is sent with headers that forbid framing (clickjacking: `X-Frame-Options:
DENY` and CSP `frame-ancestors 'none'`), caching and referrers (the query strings of
these pages carry OAuth state).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse

__all__ = ["ConsentView", "LoginView", "consent_page", "error_page", "login_page", "page_response"]

_STYLE = """
body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}
main{max-width:30rem;margin:4rem auto;background:#fff;padding:2rem 2.25rem;border-radius:10px;
box-shadow:0 1px 4px rgba(0,0,0,.12)}
h1{font-size:1.35rem;margin:0 0 1rem}label{display:block;margin:.75rem 0 .25rem;font-weight:600}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}
button,.button{display:inline-block;margin-top:1.25rem;padding:.55rem 1.2rem;font-size:1rem;border-radius:6px;
border:1px solid #2857c5;background:#2857c5;color:#fff;cursor:pointer;text-decoration:none}
button.secondary{background:#fff;color:#2857c5}.error{color:#a11;font-weight:600}
ul.scopes{list-style:none;padding:0}ul.scopes li{margin:.35rem 0}code{background:#eef;padding:0 .25rem}
.muted{color:#5b6373;font-size:.9rem}hr{border:0;border-top:1px solid #dde;margin:1.5rem 0}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

_SCOPE_WORDS = {
    "tools:*": "use every tool you may use",
    "codemode": "run code against your tools (Code Mode)",
    "admin": "administer the portal",
    "audit:read": "read the audit log",
    "policies:write": "change access policies",
    "servers:write": "add and change servers",
}


def describe_scope(scope: str) -> str:
    if scope in _SCOPE_WORDS:
        return _SCOPE_WORDS[scope]
    parts = scope.split(":")
    if parts[0] == "tools" and len(parts) == 2:
        return f"use every tool of the server {parts[1]}"
    if parts[0] == "tools" and len(parts) == 3:
        return f"use the tool {parts[2]} of the server {parts[1]}"
    return scope


def _csp(form_action: Iterable[str]) -> str:
    return "; ".join(
        [
            "default-src 'none'",
            f"style-src 'sha256-{_STYLE_HASH}'",
            "img-src 'self'",
            f"form-action {' '.join(form_action)}",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


def page_response(
    title: str, body: str, *, status: int = 200, form_action: Sequence[str] = ("'self'",)
) -> HTMLResponse:
    html = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} · Portal</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )
    headers = {
        "Content-Security-Policy": _csp(form_action),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    return HTMLResponse(html, status_code=status, headers=headers)


def _hidden(name: str, value: str) -> str:
    return f'<input type=hidden name="{escape(name)}" value="{escape(value)}">'


@dataclass(frozen=True)
class LoginView:
    next_url: str
    csrf: str
    local_users: bool
    providers: Sequence[tuple[str, str, str]]
    """(name, label, start URL) of each OIDC provider."""
    error: str | None = None
    username: str = ""


def login_page(view: LoginView, *, status: int = 200) -> HTMLResponse:
    parts = ["<h1>Log in to Portal</h1>"]
    if view.error:
        parts.append(f"<p class=error role=alert>{escape(view.error)}</p>")
    if view.local_users:
        parts.append(
            "<form method=post action=/login>"
            + _hidden("csrf_token", view.csrf)
            + _hidden("next", view.next_url)
            + "<label for=username>User name</label>"
            + "<input type=text id=username name=username autocomplete=username required"
            + f' value="{escape(view.username)}">'
            + "<label for=password>Password</label>"
            + "<input type=password id=password name=password autocomplete=current-password required>"
            + "<button type=submit>Log in</button></form>"
        )
    if view.providers:
        if view.local_users:
            parts.append("<hr>")
        for _name, label, url in view.providers:
            parts.append(f'<p><a class=button href="{escape(url)}">Log in with {escape(label)}</a></p>')
    if not view.local_users and not view.providers:
        parts.append("<p>No way to log in is configured. Ask the operator to set up [auth].</p>")
    return page_response("Log in", "".join(parts), status=status)


@dataclass(frozen=True)
class ConsentView:
    client_name: str
    client_id: str
    redirect_uri: str
    user: str
    resource: str
    offered: Sequence[str]
    """Capabilities the person may grant (asked for and granted to them)."""
    refused: Sequence[str]
    """Capabilities asked for that the person was never granted (shown, not grantable)."""
    params: Sequence[tuple[str, str]]
    """The authorization request, carried through the form unchanged."""
    csrf: str


def _redirect_host(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.netloc or f"{parts.scheme}:"


def _form_action(redirect_uri: str) -> list[str]:
    # The consent POST answers with a redirect to the client; CSP form-action covers that redirect.
    parts = urlsplit(redirect_uri)
    target = f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") else f"{parts.scheme}:"
    return ["'self'", target]


def consent_page(view: ConsentView) -> HTMLResponse:
    host = _redirect_host(view.redirect_uri)
    parts = [
        "<h1>Allow access?</h1>",
        f"<p><strong>{escape(view.client_name)}</strong> wants to act for you, "
        f"<strong>{escape(view.user)}</strong>, at <code>{escape(view.resource)}</code>.</p>",
        f"<p class=muted>Client id: <code>{escape(view.client_id)}</code><br>"
        f"It will receive the answer at <strong>{escape(host)}</strong>.</p>",
        "<form method=post action=/consent>",
        _hidden("csrf_token", view.csrf),
        *(_hidden(name, value) for name, value in view.params),
    ]
    if view.offered:
        parts.append("<p>It asks to:</p><ul class=scopes>")
        for scope in view.offered:
            parts.append(
                f'<li><label><input type=checkbox name=consent_scope value="{escape(scope)}" checked> '
                f"{escape(describe_scope(scope))} <code>{escape(scope)}</code></label></li>"
            )
        parts.append("</ul>")
    else:
        parts.append("<p class=error>You have not been granted any of the capabilities it asks for.</p>")
    if view.refused:
        parts.append("<p class=muted>Not yours to give (not granted to you): ")
        parts.append(", ".join(f"<code>{escape(s)}</code>" for s in view.refused) + "</p>")
    if view.offered:
        parts.append("<button type=submit name=decision value=approve>Allow</button> ")
    parts.append("<button type=submit name=decision value=deny class=secondary>Deny</button></form>")
    return page_response("Allow access?", "".join(parts), form_action=_form_action(view.redirect_uri))


def error_page(title: str, message: str, *, status: int = 400) -> HTMLResponse:
    return page_response(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>", status=status)
